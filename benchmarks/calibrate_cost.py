"""Measure the duration model's constants (lambdagrad.cost.DurationModel) on this machine.

Runs the real step functions (``lambdagrad.steps``: prepare, worker, reduce, finalize)
over an in-memory S3, so what is timed is the handlers' own code path -- parsing, numpy,
(de)serialisation -- without network latency, which the model adds per request. Fits by
least squares on relative error, no negative terms:

- worker seconds   = overhead + c_w x batch rows x parameters   (linear model, warm shard)
- reduce seconds   = overhead + c_r x workers + c_rp x workers x parameters
- prepare seconds  = overhead + c_p x rows x features           (CSV)
- finalize seconds = overhead + c_f x rounds

and prints them next to the defaults in cost.py (the baseline: the same figures measured
when the defaults were set).

Usage::

    python benchmarks/calibrate_cost.py
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
from lambdagrad import steps
from lambdagrad.cost import DEFAULT_DURATIONS
from lambdagrad.store import MemoryS3, Store

BUCKET = "calibrate"


def _csv(rows: int, features: int) -> bytes:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, features))
    y = X @ rng.normal(size=features) + rng.normal(scale=0.1, size=rows)
    buf = io.StringIO()
    buf.write(",".join([f"x{i}" for i in range(features)] + ["y"]) + "\n")
    np.savetxt(buf, np.column_stack([X, y]), delimiter=",", fmt="%.6g")
    return buf.getvalue().encode()


def _job(rows: int, features: int, workers: int, rounds: int, job_id: str) -> tuple[Store, dict]:
    store = Store(MemoryS3(), BUCKET)
    store.put_bytes("datasets/d.csv", _csv(rows, features))
    spec = {
        "dataset": {"uri": f"s3://{BUCKET}/datasets/d.csv", "label": "y", "validation": 0.1},
        "model": {"type": "linear"},
        "optimizer": {"name": "sgd", "learning_rate": 0.01},
        "training": {"batch_size": "full", "workers": workers, "rounds": rounds},
    }
    started = time.perf_counter()
    state = steps.prepare(store, {"input": {"job_id": job_id, "spec": spec}, "execution": "e"})
    state["prepare_seconds"] = time.perf_counter() - started
    return store, state


def _best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def fit(x: list[list[float]], y: list[float]) -> np.ndarray:
    """Least squares on relative error (small jobs count as much as big), refitted
    without any term that comes out negative (a cost is never negative)."""
    A = np.column_stack([np.ones(len(y)), np.array(x)])
    b = np.array(y)
    keep = np.ones(A.shape[1], dtype=bool)
    while True:
        coef = np.zeros(A.shape[1])
        sol, *_ = np.linalg.lstsq(A[:, keep] / b[:, None], np.ones_like(b), rcond=None)
        coef[keep] = sol
        if (coef >= 0).all():
            return coef
        keep &= coef > 0


def main() -> None:
    steps.clear_cache()
    # worker: one shard, full batch, warm (shard cached), 50 features
    wx, wy = [], []
    for rows in (1_000, 10_000, 50_000):
        for features in (10, 100):
            store, state = _job(rows, features, 1, 10, f"w{rows}-{features}")
            event = {"job_id": state["job_id"], "round": 0, "shard": 0}
            steps.worker(store, event)
            n_train = int(rows * 0.9)
            wx.append([n_train * (features + 1)])
            wy.append(_best(lambda s=store, e=event: steps.worker(s, e)))
    worker = fit(wx, wy)
    # reduce: 1..64 workers, 11 or 1001 parameters (retried reducer state reset each time)
    rx, ry = [], []
    for workers in (1, 8, 32, 64):
        for features in (10, 1000):
            rows = max(workers * 4, 200)
            store, state = _job(rows, features, workers, 10_000, f"r{workers}-{features}")
            results = [
                steps.worker(store, {"job_id": state["job_id"], "round": 0, "shard": k})
                for k in range(workers)
            ]
            event = {**state, "results": results}
            metrics_key = f"jobs/{state['job_id']}/metrics/{1:08d}.json"

            def once(s=store, e=event, k=metrics_key) -> None:
                s.client.objects.pop((BUCKET, k), None)
                steps.reduce(s, e)

            once()
            rx.append([workers, workers * (features + 1)])
            ry.append(_best(once))
    reduce_ = fit(rx, ry)
    # prepare: CSV parse and shard writes
    px, py = [], []
    for rows in (1_000, 10_000, 40_000):
        features = 20
        _job(rows, features, 4, 10, "warm")
        best = min(_job(rows, features, 4, 10, f"p{i}")[1]["prepare_seconds"] for i in range(3))
        px.append([rows * features])
        py.append(best)
    prepare = fit(px, py)
    # finalize: reads one metrics record per round
    fx, fy = [], []
    for rounds in (5, 50, 200):
        store, state = _job(1_000, 10, 2, rounds, f"f{rounds}")
        job = state["job_id"]
        for r in range(rounds):
            results = [steps.worker(store, {"job_id": job, "round": r, "shard": k}) for k in (0, 1)]
            state = steps.reduce(store, {**state, "results": results})
        event = {"job_id": job, "round": rounds, "progress": state["progress"]}
        fx.append([rounds])
        fy.append(_best(lambda s=store, e=event: steps.finalize(s, e), repeat=3))
    finalize = fit(fx, fy)

    d = DEFAULT_DURATIONS
    rows = [
        ("worker_overhead_s", worker[0], d.worker_overhead_s),
        ("worker_per_row_param_s", worker[1], d.worker_per_row_param_s),
        ("reduce_overhead_s", reduce_[0], d.reduce_overhead_s),
        ("reduce_per_worker_s", reduce_[1], d.reduce_per_worker_s),
        ("reduce_per_worker_param_s", reduce_[2], d.reduce_per_worker_param_s),
        ("prepare_overhead_s", prepare[0], d.prepare_overhead_s),
        ("prepare_per_row_feature_s", prepare[1], d.prepare_per_row_feature_s),
        ("finalize_overhead_s", finalize[0], d.finalize_overhead_s),
        ("finalize_per_round_s", finalize[1], d.finalize_per_round_s),
    ]
    print(f"{'constant':<28}{'measured now':>14}{'default':>12}{'ratio':>8}")
    for name, now, default in rows:
        print(f"{name:<28}{now:>14.3g}{default:>12.3g}{now / default:>7.2f}x")
    print(json.dumps({name: float(f"{now:.3g}") for name, now, _ in rows}))


if __name__ == "__main__":
    main()
