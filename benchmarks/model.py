"""Scale out on paper: seconds per round and dollars per epoch for 10-1,000 workers.

A 10 GB dataset (float64, 100 features: 12.4 M rows) trained by full-batch gradient descent
(one round = one epoch) with a linear model. The figures come from:

- the worker's compute per row x parameter, **measured in this run** with the real
  ``steps.worker`` over an in-memory S3 (printed next to the cost model's default,
  measured when it was set);
- the cost model (``lambdagrad.cost``): the round structure (exact counts of transitions,
  invocations and S3 requests, checked against the engine by tests/integration/
  test_cost.py), the duration model and the dated prices;
- AWS's published latencies and limits (DESIGN.md §7): 100 ms per S3 request (S3
  performance guidelines, low end), inline Map concurrency 40, Distributed Map up to
  10,000 children, S3 3,500 PUT / 5,500 GET per second per prefix, 256 KiB state payload,
  Lambda 10,240 MB.

Where a limit bites, the table says so:

- ``S3``: a burst of W requests to one prefix (every worker GETs ``params/<t>.npy`` and
  PUTs under ``grads/<t>/``) arriving within one request latency exceeds the prefix's
  rate; with the inline Map at most 40 run at once, so only a Distributed Map (all W at
  once) can hit it.
- ``256K``: the Map's output (W worker results) or the reducer's input exceeds 256 KiB.
  As coded a result is ~100 bytes (tests/unit/test_payload_sizes.py keeps every payload
  under 256 KiB at 1,000 workers); with gradients inline (float32, base64) each result
  grows by 4/3 x 4 bytes per parameter.

Usage::

    python benchmarks/model.py [--features 100] [--gigabytes 10] [--plot docs/scale-model.png]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from lambdagrad import steps
from lambdagrad.cost import DEFAULT_DURATIONS, INLINE_MAP_CONCURRENCY, JobShape, estimate
from lambdagrad.pricing import DEFAULT_PRICES
from lambdagrad.store import MemoryS3, Store

ROOT = Path(__file__).resolve().parents[1]
WORKERS = (10, 20, 50, 100, 200, 500, 1000)
STATE_LIMIT = 256 * 1024
S3_PUT_PER_PREFIX, S3_GET_PER_PREFIX = 3500, 5500
LAMBDA_MAX_MB = 10_240


def measure_worker(rows: int = 40_000, features: int = 100) -> float:
    """Seconds per row x parameter of the real worker step (warm shard), best of 5."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, features))
    y = X @ rng.normal(size=features)
    store = Store(MemoryS3(), "model")
    buf = __import__("io").BytesIO()
    np.save(buf, np.column_stack([X, y]))
    store.put_bytes("datasets/d.npy", buf.getvalue())
    spec = {
        "dataset": {"uri": "s3://model/datasets/d.npy", "validation": 0.0},
        "model": {"type": "linear"},
        "training": {"batch_size": "full", "workers": 1, "rounds": 10},
    }
    steps.clear_cache()
    steps.prepare(store, {"input": {"job_id": "m", "spec": spec}, "execution": "e"})
    event = {"job_id": "m", "round": 0, "shard": 0}
    steps.worker(store, event)
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        steps.worker(store, event)
        best = min(best, time.perf_counter() - t)
    return (best - DEFAULT_DURATIONS.worker_overhead_s) / (rows * (features + 1))


def state_bytes(workers: int, inline_params: int = 0) -> int:
    """The reducer's input (the largest state): the round state plus W worker results."""
    grad = "A" * math.ceil(inline_params * 4 / 3) if inline_params else None
    result = {"shard": 999, "loss_sum": -1.2345678901234567e300, "count": 10_000_000}
    result["seconds"] = 899.1234567890123
    if grad is not None:
        result["grad"] = grad
    state = {
        "job_id": "j" * 60,
        "round": 9_999_999,
        "shards": list(range(workers)),
        "segment_end": 9_999_999,
        "progress": {"finished_at": 1.8e9, "train_loss": 1.2e300, "best_round": 9_999_999},
        "execution": "arn:aws:states:us-east-1:123456789012:execution:lambdagrad-train:" + "j" * 60,
    }
    return len(json.dumps(state)) + workers * (len(json.dumps(result)) + 2)


def memory_for(shard_bytes: float) -> int:
    """Lambda MB for a shard held in memory plus one batch copy and the runtime."""
    need = 2.5 * shard_bytes / 2**20 + 300
    return int(min(LAMBDA_MAX_MB, max(1769, 64 * math.ceil(need / 64))))


def scale_rows(gigabytes: float, features: int, per_row_param: float) -> list[dict]:
    rows = int(gigabytes * 1e9 / (8 * (features + 1)))
    durations = replace(DEFAULT_DURATIONS, worker_per_row_param_s=per_row_param)
    lat = durations.s3_request_s
    out = []
    for w in WORKERS:
        shard = gigabytes * 1e9 / w
        memory = memory_for(shard)
        shape = JobShape(
            rows=rows,
            features=features,
            n_params=features + 1,
            workers=w,
            rounds=1,
            segment_rounds=1000,
            batch_rows=rows,
        )
        std = estimate(shape, memory_mb=memory, durations=durations)
        exp = estimate(shape, memory_mb=memory, durations=durations, orchestration="express")
        inl = estimate(shape, memory_mb=memory, durations=durations, inline_gradients=True)
        sec = std.details["seconds"]
        # Distributed Map: every worker at once, no waves
        distributed_s = 2 * durations.invoke_s + sec["worker"] + sec["reduce"]
        orchestration = {
            "standard": std.line("Step Functions Standard").dollars_per_round,
            "express": sum(
                line.dollars_per_round
                for line in exp.lines
                if line.item.startswith("Step Functions")
            ),
        }
        burst = w / lat  # requests/s if all W arrive within one latency (Distributed Map)
        inline_burst = min(w, INLINE_MAP_CONCURRENCY) / lat
        limits = []
        if inline_burst > S3_PUT_PER_PREFIX:
            limits.append("S3 (inline)")
        if burst > S3_PUT_PER_PREFIX:
            limits.append("S3 PUT (distributed)")
        if burst > S3_GET_PER_PREFIX:
            limits.append("S3 GET (distributed)")
        if state_bytes(w) >= STATE_LIMIT:
            limits.append("256K")
        if state_bytes(w, features + 1) >= STATE_LIMIT:
            limits.append("256K inline grads")
        if memory >= LAMBDA_MAX_MB:
            limits.append("memory")
        out.append(
            {
                "workers": w,
                "memory_mb": memory,
                "shard_mb": shard / 1e6,
                "worker_s": sec["worker"],
                "reduce_s": sec["reduce"],
                "round_s_inline": sec["round"],
                "round_s_distributed": distributed_s,
                "round_s_inline_grads": inl.details["seconds"]["round"],
                "dollars_per_epoch_inline_grads": inl.dollars_per_round,
                "dollars_per_epoch": std.dollars_per_round,
                "dollars_per_epoch_express": exp.dollars_per_round,
                "orchestration_standard": orchestration["standard"],
                "orchestration_express": orchestration["express"],
                "state_kib": state_bytes(w) / 1024,
                "state_kib_inline": state_bytes(w, features + 1) / 1024,
                "limits": limits,
            }
        )
    return out


def bite_points(features: int, latency: float) -> dict[str, int]:
    """The smallest worker count at which each limit bites (search up to 10,000)."""
    points = {}
    points["S3 PUT burst (Distributed Map)"] = math.floor(S3_PUT_PER_PREFIX * latency) + 1
    points["S3 GET burst (Distributed Map)"] = math.floor(S3_GET_PER_PREFIX * latency) + 1
    for name, params in (("256 KiB state", 0), ("256 KiB state, inline grads", features + 1)):
        w = 1
        while w <= 10_000 and state_bytes(w, params) < STATE_LIMIT:
            w += 1
        points[name] = w
    return points


def plot(rows: list[dict], path: Path, bites: dict[str, int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = [r["workers"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(w, [r["round_s_inline"] for r in rows], "o-", label="inline Map (40 at once)")
    ax1.plot(w, [r["round_s_distributed"] for r in rows], "s--", label="Distributed Map")
    ax1.plot(w, [r["round_s_inline_grads"] for r in rows], "^-.", label="gradients inline")
    ax1.plot(w, [r["reduce_s"] for r in rows], ":", label="reducer alone (as coded)")
    ax1.set(xscale="log", yscale="log", xlabel="workers", ylabel="seconds per round (= epoch)")
    ax1.set_title("10 GB, full batch: time per epoch")
    ax2.plot(w, [r["dollars_per_epoch"] for r in rows], "o-", label="Standard loop")
    ax2.plot(w, [r["dollars_per_epoch_express"] for r in rows], "s--", label="Express segments")
    ax2.plot(w, [r["orchestration_standard"] for r in rows], ":", label="of which Standard SFN")
    ax2.set(xscale="log", yscale="log", xlabel="workers", ylabel="USD per epoch")
    ax2.set_title("dollars per epoch")
    for ax in (ax1, ax2):
        for name, at in bites.items():
            if at <= max(w):
                ax.axvline(at, color="grey", lw=0.8, alpha=0.6)
                ax.annotate(name, (at, ax.get_ylim()[0]), rotation=90, fontsize=7, va="bottom")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=10.0)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--plot", default=str(ROOT / "docs" / "scale-model.png"))
    args = parser.parse_args()

    measured = measure_worker(features=args.features)
    default = DEFAULT_DURATIONS.worker_per_row_param_s
    print(
        f"worker compute, measured now: {measured:.3g} s per row x parameter "
        f"({measured / default:.2f}x the cost model's default {default:.3g})"
    )
    rows = scale_rows(args.gigabytes, args.features, measured)
    base = rows[0]
    print(
        f"\n{args.gigabytes:g} GB, {args.features} features, full batch (1 round = 1 epoch), "
        f"prices of {DEFAULT_PRICES.as_of}; ratios against {base['workers']} workers\n"
    )
    head = (
        f"{'W':>5} {'MB':>6} {'worker s':>9} {'reduce s':>9} {'round s':>8} {'speedup':>8} "
        f"{'distr. s':>9} {'grads in s':>10} {'$/epoch':>9} {'x cost':>7} "
        f"{'SFN std $':>10} {'SFN expr $':>11} "
        f"{'state KiB':>10} {'inline KiB':>11}  limits"
    )
    print(head)
    for r in rows:
        print(
            f"{r['workers']:>5} {r['memory_mb']:>6} {r['worker_s']:>9.3f} {r['reduce_s']:>9.2f} "
            f"{r['round_s_inline']:>8.2f} {base['round_s_inline'] / r['round_s_inline']:>7.2f}x "
            f"{r['round_s_distributed']:>9.2f} {r['round_s_inline_grads']:>10.2f} "
            f"{r['dollars_per_epoch']:>9.5f} "
            f"{r['dollars_per_epoch'] / base['dollars_per_epoch']:>6.2f}x "
            f"{r['orchestration_standard']:>10.6f} {r['orchestration_express']:>11.2e} "
            f"{r['state_kib']:>10.1f} {r['state_kib_inline']:>11.1f}  "
            + (", ".join(r["limits"]) or "-")
        )
    bites = bite_points(args.features, DEFAULT_DURATIONS.s3_request_s)
    print("\nwhere limits bite (workers):")
    for name, at in bites.items():
        print(f"  {name:<32} {at:>6}" + ("" if at <= 1000 else "  (beyond the 1,000 maximum)"))
    ten = rows[0]
    print(
        f"\norchestration per round at {ten['workers']} workers: Standard "
        f"${ten['orchestration_standard']:.6f}, Express segments "
        f"${ten['orchestration_express']:.2e} "
        f"({ten['orchestration_standard'] / ten['orchestration_express']:.0f}x cheaper)"
    )
    plot(rows, Path(args.plot), bites)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
