"""Throughput of the worker's loss-and-gradient kernel against a memory roofline.

For linear, logistic and softmax (10 classes) regression on 1e5 and 1e6 rows x 100
features, in float64 and float32, time ``training.worker_gradient`` (the worker's real code
path, through ``Model.loss_and_grad``) with the fused C kernels (``lambdagrad.native``) and
with the numpy kernels they replace, and compare each with a roofline of two streaming
passes over the batch (``X @ w`` then ``X.T @ r``) at the machine's streaming-read bandwidth,
measured with numpy in the same run. Softmax with 10 classes does 40 flops per float64 read:
the roofline is the larger of the memory time and the products at the square-``matmul`` peak
(measured here too).

A Lambda worker at <= 1,769 MB has one vCPU, so BLAS runs single-threaded here (set before
numpy loads). The machine is shared and its speed drifts (seen: matmul 20-38 GFLOP/s, reads
9-13 GB/s) from minute to minute, so each kernel run is paired with a bandwidth reading and
a matmul taken just before it: ``% roof`` is the median over N pairs, with their range.
Each pair also times numpy's ``exp`` on a block in cache (``exp ns``): the core's own speed,
which drops by up to half when the other thread of its physical core is busy, while the
memory bandwidth (and so the roofline) does not.

For softmax the script also prints numpy's *floor*: the time numpy needs for the ``rows x C``
exponentials alone (on a cache-sized block) plus the products at the matmul peak, which no
numpy kernel can beat.

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
from contextlib import contextmanager
from functools import partial

import numpy as np
from lambdagrad import native
from lambdagrad.models import build_model
from lambdagrad.training import worker_gradient

FEATURES = 100
MODELS = (("linear", 1), ("logistic", 2), ("softmax", 10))


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Shortest CPU time of ``repeat`` calls (CPU time: the machine is shared)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


@contextmanager
def kernels(path: str):
    """Run the models on the C kernels ("native") or on their numpy kernels ("numpy")."""
    saved = native.KERNELS
    native.KERNELS = saved if path == "native" else None
    try:
        yield
    finally:
        native.KERNELS = saved


def paired(
    kernel: Callable[[], object],
    stream: np.ndarray,
    square: np.ndarray,
    roof: Callable[[float, float], float],
    repeat: int,
    core: Callable[[], float],
) -> tuple[float, list[float], list[float]]:
    """Best kernel seconds, roofline / kernel time for ``repeat`` pairs, and a reading of the
    core's speed in each: every roofline is ``roof(bandwidth, flops per second)`` from a
    streaming ``sum`` of ``stream`` and a ``square @ square``, and ``core()`` (ns a value
    of an in-cache ``exp``) is taken, all just before the kernel run."""
    times, fractions, cores = [], [], []
    for _ in range(repeat):
        bandwidth = stream.nbytes / best_of(stream.sum, 1)
        flop_rate = 2 * square.shape[0] ** 3 / best_of(lambda: square @ square, 1)
        cores.append(core())
        times.append(best_of(kernel, 1))
        fractions.append(roof(bandwidth, flop_rate) / times[-1])
    return min(times), fractions, cores


def read_bandwidth(stream: np.ndarray, repeat: int) -> float:
    """Streaming-read bytes/s of numpy: the best of an 800 MB ``sum`` (one read) and a
    ``copy`` (counted as its read half)."""
    out = np.empty_like(stream)
    t_sum = best_of(stream.sum, repeat)
    t_copy = best_of(lambda: np.copyto(out, stream), repeat)
    return stream.nbytes / min(t_sum, t_copy)


def square_matrix(dtype: type) -> np.ndarray:
    """The matrix whose product with itself measures the matmul peak."""
    return np.random.default_rng(2).standard_normal((1024, 1024)).astype(dtype)


def peak_gflops(dtype: type, repeat: int) -> float:
    a = square_matrix(dtype)
    return 2 * a.shape[0] ** 3 / best_of(lambda: a @ a, repeat) / 1e9


def exp_ns_per_value(dtype: type, repeat: int, calls: int = 200) -> float:
    """numpy ``exp`` on a 64 KiB block in cache (no memory traffic), ns per value."""
    z = np.random.default_rng(4).standard_normal(65536 // np.dtype(dtype).itemsize)
    z = z.astype(dtype)
    out = np.empty_like(z)
    t = best_of(lambda: [np.exp(z, out=out) for _ in range(calls)], repeat)
    return t / calls / z.size * 1e9


def dataset(rows: int, n_classes: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Random rows, on a cache-line boundary as the worker's shard cache holds them."""
    rng = np.random.default_rng(0)
    X = native.aligned_empty((rows, FEATURES), dtype)
    X[...] = rng.standard_normal((rows, FEATURES))
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


def print_normal_speed_pairs(
    pairs: list[tuple[str, int, type, list[float], list[float]]], path: str
) -> None:
    """% of roofline over the pairs whose core ran at its normal speed: ``exp ns`` within
    20 % of the fastest reading of the run for that dtype. The core slows when its other
    thread is busy and the roofline (memory) does not; this separates the two. When the
    whole run is slow, every pair counts and the figure is the table's."""
    print(
        f"{path} kernels in the pairs where the core ran at the run's fastest (exp ns within 20 %):"
    )
    for kind, rows, dtype, fractions, cores in pairs:
        fastest = min(c for _, _, each, _, ns in pairs if each is dtype for c in ns)
        normal = [f for f, c in zip(fractions, cores, strict=True) if c <= 1.2 * fastest]
        line = f"  {kind:<9}{rows:>9} {np.dtype(dtype).name:<8}"
        if normal:
            line += f"{100 * np.median(normal):>5.0f}% ({len(normal)} of {len(fractions)} pairs)"
        else:
            line += f"   - (0 of {len(fractions)} pairs)"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9, help="pairs per case (default 9)")
    ap.add_argument("--quick", action="store_true", help="1e5 rows only")
    args = ap.parse_args()

    stream = np.random.default_rng(1).standard_normal(100_000_000)
    bandwidth = read_bandwidth(stream, args.repeat)
    peak = {np.float64: peak_gflops(np.float64, 3), np.float32: peak_gflops(np.float32, 3)}
    exp_ns = {dt: exp_ns_per_value(dt, 5) for dt in (np.float64, np.float32)}
    core = {dt: partial(exp_ns_per_value, dt, 3, 20) for dt in (np.float64, np.float32)}
    paths = ("native", "numpy") if native.KERNELS is not None else ("numpy",)
    print(
        f"streaming read {bandwidth / 1e9:.2f} GB/s; matmul peak float64 "
        f"{peak[np.float64]:.1f}, float32 {peak[np.float32]:.1f} GFLOP/s; numpy exp in cache "
        f"{exp_ns[np.float64]:.2f} / {exp_ns[np.float32]:.2f} ns a value (1 thread); "
        f"C kernels {native.STATUS}"
    )
    header = f"{'model':<9}{'rows':>9} {'dtype':<8}" + "".join(
        f"{p + ' ms':>11}{'% roof':>8}{'(range)':>11}" for p in paths
    )
    header += f"{'speedup':>9}" if len(paths) == 2 else ""
    header += f"{'exp ns':>8}"
    print(header)
    print("-" * len(header))
    worst = float("inf")
    floors = []
    native_pairs: list[tuple[str, int, type, list[float], list[float]]] = []
    first: dict[tuple[str, int], dict[type, float]] = {}
    for rows in (100_000,) if args.quick else (100_000, 1_000_000):
        for kind, n_classes in MODELS:
            for dtype in (np.float64, np.float32):
                kernel, nbytes = kernel_call(kind, n_classes, rows, dtype)
                flops = 2 * 2 * rows * FEATURES * n_classes  # forward and backward products
                compute_s = flops / (peak[dtype] * 1e9)
                square = square_matrix(dtype)

                def roof(bw: float, flop_rate: float, nbytes: int = nbytes, flops: int = flops):
                    return max(2 * nbytes / bw, flops / flop_rate)

                line = f"{kind:<9}{rows:>9} {np.dtype(dtype).name:<8}"
                best, core_ns = {}, []
                for path in paths:
                    with kernels(path):
                        best[path], fractions, cores = paired(
                            kernel, stream, square, roof, args.repeat, core[dtype]
                        )
                    median = float(np.median(fractions))
                    if path == paths[0]:
                        core_ns = cores
                        worst = min(worst, median)
                        native_pairs.append((kind, rows, dtype, fractions, cores))
                    span = f"{100 * min(fractions):.0f}-{100 * max(fractions):.0f}%"
                    line += f"{best[path] * 1e3:>11.1f}{100 * median:>7.0f}%{span:>11}"
                first.setdefault((kind, rows), {})[dtype] = best[paths[0]]
                if len(paths) == 2:
                    line += f"{best['numpy'] / best['native']:>8.2f}x"
                print(line + f"{np.median(core_ns):>8.2f}")
                if kind == "softmax":
                    floor_s = rows * n_classes * exp_ns[dtype] * 1e-9 + compute_s
                    floors.append(
                        (rows, dtype, floor_s, max(2 * nbytes / bandwidth, compute_s) / floor_s)
                    )
    print(
        "% roof = median over the pairs of max(two streaming passes over the batch at the "
        "bandwidth, the products at the matmul rate, both read just before) / kernel time; "
        "speedup = best numpy time / best native time; exp ns = numpy's exp in cache, median "
        f"over the {paths[0]} pairs (read just before each): how fast the core ran, against "
        "the first line's reading (a shared core slows by up to 2x when its other thread is busy)"
    )
    for rows, dtype, floor_s, reach in floors:
        print(
            f"numpy floor, softmax {rows} rows {np.dtype(dtype).name}: {floor_s * 1e3:.1f} ms "
            f"(its exps + the products at peak): a numpy kernel reaches at most "
            f"{100 * min(1.0, reach):.0f}% of the roofline"
        )
    print(f"lowest % of roofline ({paths[0]} kernels, median of pairs): {100 * worst:.0f}%")
    print_normal_speed_pairs(native_pairs, paths[0])
    for (kind, rows), t in first.items():
        print(
            f"float32 speedup ({paths[0]}) {kind:<9}{rows:>9} rows: "
            f"{t[np.float64] / t[np.float32]:.2f}x (float64 {t[np.float64] * 1e3:.1f} ms -> "
            f"float32 {t[np.float32] * 1e3:.1f} ms)"
        )


if __name__ == "__main__":
    main()
