"""Chaos soak: many faults, one answer. Jobs under injected faults vs. the same job without.

Deploys ``template.yaml`` on the embedded engine, trains a fault-free baseline, then the same
spec (same seed) once per chaos seed with a fraction of worker and reducer invocations
failing (transient service errors, timeouts, crashes after writing; see
:mod:`lambdagrad.local.chaos`). For each run it prints the faults injected by kind, whether
the final parameters and the model arrays are bit-identical to the baseline, and the wall
time as a ratio of the baseline's (retry waits scaled by ``--retry-scale``).

Usage::

    python benchmarks/chaos_soak.py                         # 30 rounds x 4 workers, 3 seeds
    python benchmarks/chaos_soak.py --fraction 0.3 --seeds 1 2 3 4 5 --rounds 50
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "layers" / "lambdagrad"))

from lambdagrad.client import StackClient  # noqa: E402
from lambdagrad.local.chaos import FAULT_KINDS  # noqa: E402
from lambdagrad.local.engine import LocalEngine  # noqa: E402
from lambdagrad.spec import parse_spec  # noqa: E402
from lambdagrad.store import JobKeys  # noqa: E402


def spec_doc(job_id: str, uri: str, rounds: int, workers: int) -> dict:
    return {
        "job_id": job_id,
        "dataset": {"uri": uri, "label": "price", "validation": 0.1},
        "model": {"type": "linear"},
        "optimizer": {"name": "adam", "learning_rate": 0.05},
        "training": {"rounds": rounds, "workers": workers, "batch_size": 32, "seed": 0},
    }


def train(stack: StackClient, doc: dict) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
    started = time.perf_counter()
    stack.start(parse_spec(doc))
    status = stack.follow(doc["job_id"], timeout=3600)
    seconds = time.perf_counter() - started
    params = stack.store.get_array(JobKeys(doc["job_id"]).params(status["round"]))
    with np.load(io.BytesIO(stack.model_files(doc["job_id"])["model.npz"])) as f:
        arrays = {k: f[k] for k in f.files}
    return seconds, params, arrays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--retry-scale", type=float, default=0.0, help="factor on retry waits")
    args = ap.parse_args()

    with LocalEngine(ROOT / "template.yaml", retry_delay_scale=args.retry_scale) as engine:
        stack = StackClient.from_outputs(engine.outputs, engine.client)
        uri = stack.upload_dataset(ROOT / "events" / "data" / "houses.csv")
        train(stack, spec_doc("warm-up", uri, 2, args.workers))  # handlers imported once
        base_s, base_p, base_m = train(stack, spec_doc("calm", uri, args.rounds, args.workers))
        print(
            f"baseline: {args.rounds} rounds x {args.workers} workers in {base_s:.1f} s; "
            f"chaos fraction {args.fraction}, retry waits x{args.retry_scale}"
        )
        print(
            "| seed | invocations | " + " | ".join(FAULT_KINDS) + " | survived | bit-identical"
            " | time vs baseline |"
        )
        print("|---|---|" + "---|" * len(FAULT_KINDS) + "---|---|---|")
        total = 0
        for seed in args.seeds:
            chaos = engine.start_chaos(args.fraction, seed=seed)
            doc = spec_doc(f"chaos-{seed}", uri, args.rounds, args.workers)
            try:
                seconds, params, model = train(stack, doc)
                survived = "yes"
            except Exception as exc:  # a figure, not a crash of the benchmark
                seconds, params, model, survived = float("nan"), None, {}, f"no: {exc}"
            engine.stop_chaos()
            same = (
                params is not None
                and np.array_equal(params, base_p)
                and model.keys() == base_m.keys()
                and all(np.array_equal(model[k], base_m[k]) for k in model)
            )
            total += chaos.injected
            kinds = " | ".join(str(chaos.counts[k]) for k in FAULT_KINDS)
            print(
                f"| {seed} | {chaos.invocations} | {kinds} | {survived} | "
                f"{'yes' if same else 'NO'} | {seconds / base_s:.2f}x |"
            )
            engine.reset()
        print(f"faults injected and survived: {total}")


if __name__ == "__main__":
    main()
