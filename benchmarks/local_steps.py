"""Rounds to a target loss with local SGD: ``training.steps_per_round`` K = 1, 4, 16.

Linear regression on events/data/houses.csv (the example job: sgd, learning rate 0.05,
global batch 64, 4 workers), run through the real training steps (prepare / worker /
reduce, the code the Lambdas run) over an in-memory S3. After every round the reducer
records the validation loss; the target is a multiple of the validation loss of the exact
least-squares fit on the same training split, computed in the same run. Each round of K
costs one Map + Reduce (the state transitions and Lambda invocations that dominate
orchestration) but K local mini-batch steps per worker.

Usage::

    python benchmarks/local_steps.py [--k 1 4 16] [--rounds 400] [--targets 1.10 1.05]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from lambdagrad import steps
from lambdagrad.store import JobKeys, MemoryS3, Store

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "bench-bucket"


def run(k: int, rounds: int) -> tuple[list[float], Store]:
    """Validation loss after each round of a job with K local steps."""
    store = Store(MemoryS3(), BUCKET)
    store.put_bytes("data/houses.csv", (ROOT / "events" / "data" / "houses.csv").read_bytes())
    doc = json.loads((ROOT / "events" / "jobs" / "houses-linear.json").read_text())
    doc["dataset"] = {**doc["dataset"], "uri": f"s3://{BUCKET}/data/houses.csv"}
    doc["training"] = {"batch_size": 64, "workers": 4, "rounds": rounds, "steps_per_round": k}
    state = steps.prepare(store, {"input": {"job_id": "job", "spec": doc}, "execution": "e"})
    losses = []
    while True:
        results = [
            steps.worker(store, {"job_id": "job", "round": state["round"], "shard": s})
            for s in state["shards"]
        ]
        state = steps.reduce(store, {**state, "results": results})
        losses.append(store.get_json(JobKeys("job").metrics(state["round"]))["validation_loss"])
        if state["next"] == "finalize":
            return losses, store


def least_squares_loss(store: Store, workers: int = 4) -> float:
    """Validation loss (0.5 * mean squared error) of the exact least-squares fit."""
    keys = JobKeys("job")
    shards = [store.get_arrays(keys.shard(s)) for s in range(workers)]
    X = np.vstack([s["X"] for s in shards])
    y = np.concatenate([s["y"] for s in shards])
    A = np.hstack([X, np.ones((len(X), 1))])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    val = store.get_arrays(keys.validation)
    r = np.hstack([val["X"], np.ones((len(val["X"]), 1))]) @ coef - val["y"]
    return 0.5 * float(r @ r) / len(r)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--targets", type=float, nargs="+", default=[1.10, 1.05])
    args = ap.parse_args(argv)
    runs = {k: run(k, args.rounds) for k in args.k}
    optimum = least_squares_loss(next(iter(runs.values()))[1])
    print(
        "local SGD on houses.csv (linear, sgd lr 0.05, batch 64, 4 workers); "
        f"least-squares validation loss {optimum:.5g}"
    )
    header = f"{'K':>3}  {'target':>10}  {'rounds':>6}  {'vs K=1':>7}  {'local steps':>11}"
    print(header + f"  {'final loss / optimum':>20}")
    for target in args.targets:
        base = None
        for k, (losses, _) in runs.items():
            hit = next((i + 1 for i, v in enumerate(losses) if v <= target * optimum), None)
            if base is None:
                base = hit
            ratio = f"{hit / base:.3f}" if hit and base else "-"
            final = losses[-1] / optimum
            print(
                f"{k:>3}  {target:>9.2f}x  {hit or '>' + str(args.rounds):>6}  {ratio:>7}  "
                f"{(hit or 0) * k:>11}  {final:>20.4f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
