"""Throughput of the worker's loss-and-gradient kernel against a memory roofline.

For linear, logistic and softmax (10 classes) regression on 1e5 and 1e6 rows x 100
features, in float64 and float32, time ``training.worker_gradient`` (the worker's real code
path, through ``Model.loss_and_grad``) and compare it with a roofline of two streaming
passes over the batch (``X @ w`` then ``X.T @ r``) at the machine's streaming-read
bandwidth, measured with numpy in the same run (best of a large-array ``sum`` and a
``copy``). Softmax with 10 classes does 40 flops per float64 read: it is also checked
against a compute roof (a square ``matmul``'s GFLOP/s, measured here too).

A Lambda worker at <= 1,769 MB has one vCPU, so BLAS runs single-threaded here (set
before numpy loads). The machine is shared and its memory bandwidth drifts by +-20 % from
minute to minute, so each kernel run is paired with a bandwidth reading taken just before
it: ``% roof`` is the median over N such pairs (the best kernel time against the best
bandwidth is printed beside it).

For softmax the script also prints the *library floor*: the time numpy needs for the
``rows x C`` exponentials alone (on a cache-sized block, so memory is not counted) plus the
two products at the square-``matmul`` peak. No numpy/BLAS kernel can beat it, so
``roof / floor`` is the most of the roofline a numpy kernel can reach on this machine.

Run: ``PYTHONPATH=layers/lambdagrad python benchmarks/kernel.py [--repeat N] [--quick]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
from lambdagrad.models import build_model
from lambdagrad.training import worker_gradient

FEATURES = 100
MODELS = (("linear", 1), ("logistic", 2), ("softmax", 10))


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Shortest CPU time of ``repeat`` calls. The machine is shared by many processes on
    two cores: wall time mostly measures waiting for a core, CPU time of this
    single-threaded process does not; the minimum is the run least disturbed."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def paired_roof_fractions(
    kernel: Callable[[], object],
    stream: np.ndarray,
    batch_bytes: int,
    compute_s: float,
    repeat: int,
) -> tuple[list[float], list[float]]:
    """Kernel seconds and roofline / kernel time for ``repeat`` pairs; each roofline is
    max(two passes over the batch at the bandwidth of a streaming ``sum`` of ``stream``
    timed just before the kernel run, ``compute_s``)."""
    times, fractions = [], []
    for _ in range(repeat):
        bandwidth = stream.nbytes / best_of(stream.sum, 1)
        times.append(best_of(kernel, 1))
        fractions.append(max(2 * batch_bytes / bandwidth, compute_s) / times[-1])
    return times, fractions


def exp_ns_per_value(dtype: type, repeat: int) -> float:
    """numpy ``exp`` on a 64 KiB block in cache (no memory traffic), ns per value."""
    z = np.random.default_rng(4).standard_normal(65536 // np.dtype(dtype).itemsize)
    z = z.astype(dtype)
    out = np.empty_like(z)
    calls = 200
    t = best_of(lambda: [np.exp(z, out=out) for _ in range(calls)], repeat)
    return t / calls / z.size * 1e9


def read_bandwidth(repeat: int) -> dict[str, float]:
    """Streaming-read GB/s of numpy on a 800 MB array: ``sum`` reads it once; ``copy``
    reads it once and writes it once (counted here as its read half)."""
    a = np.random.default_rng(1).standard_normal(100_000_000)
    out = np.empty_like(a)
    t_sum = best_of(a.sum, repeat)
    t_copy = best_of(lambda: np.copyto(out, a), repeat)
    return {"sum": a.nbytes / t_sum / 1e9, "copy": a.nbytes / t_copy / 1e9}


def peak_gflops(dtype: type, repeat: int) -> float:
    n = 1024
    a = np.random.default_rng(2).standard_normal((n, n)).astype(dtype)
    return 2 * n**3 / best_of(lambda: a @ a, repeat) / 1e9


def dataset(rows: int, n_classes: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, FEATURES)).astype(dtype)
    if n_classes == 1:
        y = (X[:, :5].sum(axis=1) + rng.standard_normal(rows)).astype(dtype)
    else:
        y = rng.integers(0, n_classes, rows).astype(np.int64)
    return X, y


def kernel_call(kind: str, n_classes: int, rows: int, dtype: type):
    """One worker gradient over the whole batch, as a call; and the batch's bytes."""
    X, y = dataset(rows, n_classes, dtype)
    model = build_model(kind, FEATURES, n_classes)
    params = np.random.default_rng(3).standard_normal(model.n_params) * 0.01
    return partial(worker_gradient, model, params, X, y), X.nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9, help="pairs per case (default 9)")
    ap.add_argument("--quick", action="store_true", help="1e5 rows only")
    args = ap.parse_args()

    bw = read_bandwidth(args.repeat)
    bandwidth = max(bw.values()) * 1e9
    peak = {np.float64: peak_gflops(np.float64, 3), np.float32: peak_gflops(np.float32, 3)}
    exp_ns = {
        np.float64: exp_ns_per_value(np.float64, 5),
        np.float32: exp_ns_per_value(np.float32, 5),
    }
    stream = np.random.default_rng(1).standard_normal(100_000_000)
    print(
        f"streaming read: sum {bw['sum']:.2f} GB/s, copy {bw['copy']:.2f} GB/s; matmul peak "
        f"float64 {peak[np.float64]:.1f}, float32 {peak[np.float32]:.1f} GFLOP/s; numpy exp "
        f"in cache {exp_ns[np.float64]:.2f} / {exp_ns[np.float32]:.2f} ns per value "
        f"(1 thread)"
    )
    header = (
        f"{'model':<9}{'rows':>9} {'dtype':<8}{'best ms':>8}{'Mrows/s':>9}"
        f"{'% roof':>8}{'(range)':>11}{'% best':>8}{'floor ms':>9}{'max %':>7}"
    )
    print(header)
    print("-" * len(header))
    speed: dict[tuple[str, int], dict[type, float]] = {}
    worst = float("inf")
    for rows in (100_000,) if args.quick else (100_000, 1_000_000):
        for kind, n_classes in MODELS:
            for dtype in (np.float64, np.float32):
                kernel, nbytes = kernel_call(kind, n_classes, rows, dtype)
                flops = 2 * 2 * rows * FEATURES * n_classes  # forward and backward products
                compute_s = flops / (peak[dtype] * 1e9)
                times, fractions = paired_roof_fractions(
                    kernel, stream, nbytes, compute_s, args.repeat
                )
                t, median = min(times), float(np.median(fractions))
                roof_best = max(2 * nbytes / bandwidth, compute_s)
                speed.setdefault((kind, rows), {})[dtype] = t
                worst = min(worst, median)
                floor = ""
                if kind == "softmax":  # the exps and the products, each at numpy's best
                    floor_s = rows * n_classes * exp_ns[dtype] * 1e-9 + compute_s
                    floor = f"{floor_s * 1e3:>9.1f}{100 * min(1.0, roof_best / floor_s):>6.0f}%"
                print(
                    f"{kind:<9}{rows:>9} {np.dtype(dtype).name:<8}{t * 1e3:>8.1f}"
                    f"{rows / t / 1e6:>9.1f}{100 * median:>7.0f}%"
                    f"{f'{100 * min(fractions):.0f}-{100 * max(fractions):.0f}%':>11}"
                    f"{100 * roof_best / t:>7.0f}%{floor}"
                )
    print(
        "% roof = median over the pairs of max(two streaming passes over the batch at the "
        "bandwidth read just before, products at the matmul peak) / kernel time; % best = "
        "the same with the best bandwidth and the best kernel time; floor = numpy's exp of "
        "rows x C values + the products at the matmul peak; max % = roofline / floor"
    )
    print(f"lowest % of roofline (median of pairs): {100 * worst:.0f}%")
    for (kind, rows), t in speed.items():
        print(
            f"float32 speedup {kind:<9}{rows:>9} rows: "
            f"{t[np.float64] / t[np.float32]:.2f}x (float64 {t[np.float64] * 1e3:.1f} ms -> "
            f"float32 {t[np.float32] * 1e3:.1f} ms)"
        )


if __name__ == "__main__":
    main()
