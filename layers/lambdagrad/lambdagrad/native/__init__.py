"""Fused C kernels for the linear, logistic and softmax loss-and-gradient, through ctypes.

Each kernel reads every row of the batch once, where the numpy kernels in
:mod:`lambdagrad.models` stream it twice and run softmax's skinny matrix products at a third
of the BLAS peak (benchmarks/README.md). The C source (``kernels.c``) is plain C with vector
extensions and no Python API: ``pip install`` builds it for this machine (setup.py) and the
Lambda layer's build cross-compiles it for arm64 (layers/lambdagrad/Makefile).

Without the library (no compiler at install time, or ``LAMBDAGRAD_NATIVE=0``) :data:`KERNELS`
is None, :data:`STATUS` says why, and the models use their numpy kernels: same results to
rounding, slower.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["KERNELS", "STATUS", "Kernels", "LabelError", "aligned_empty", "load"]

_P = ctypes.c_void_p
_I = ctypes.c_int64


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


class LabelError(ValueError):
    """A class label outside ``[0, C)``, found by the softmax kernel."""


@dataclass(frozen=True)
class Kernels:
    """The loaded library, with numpy-facing wrappers that return sums over the rows."""

    lib: ctypes.CDLL
    vector_bytes: int  # kernels.c's VEC_BYTES

    def softmax_fits(self, n_features: int, dtype: np.dtype) -> bool:
        """Whether a row holds one vector of features (4 in float64, 8 in float32): the
        softmax kernel takes its features a vector at a time."""
        return n_features * dtype.itemsize >= self.vector_bytes

    def softmax(
        self, X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """Sums over the rows of ``(X, y)`` (C-contiguous float32/float64, C-contiguous int64
        classes) of the softmax cross-entropy and of its gradient for ``W`` (d x C) and ``b``
        (C), given in any float dtype (cast to the dtype of ``X``). The gradient comes flat,
        ``W``'s row-major then ``b``'s: the softmax model's parameter layout.

        The kernel checks the classes as it reads them (no pass of the caller's over ``y``):
        :class:`LabelError` if one is outside ``[0, C)``."""
        dt = X.dtype
        n, d = X.shape
        C = W.shape[1]
        if y.dtype != np.int64 or not y.flags.c_contiguous or y.shape != (n,):
            raise ValueError(f"y must be {n} C-contiguous int64 classes, got {y.dtype} {y.shape}")
        W = np.ascontiguousarray(W, dt)
        b = np.ascontiguousarray(b, dt)
        grad = np.zeros(d * C + C)
        work = np.empty(self.lib.lg_softmax_work(d, C), dt)
        fn = self.lib.lg_softmax_f64 if dt == np.float64 else self.lib.lg_softmax_f32
        G, gb = _ptr(grad), _ptr(grad) + d * C * grad.itemsize
        loss = fn(_ptr(X), n, d, _ptr(y), _ptr(W), _ptr(b), C, G, gb, _ptr(work))
        if loss == -2.0:
            raise LabelError(f"y must hold class indices in [0, {C})")
        if loss < 0:  # kernels.c refuses rows narrower than a vector
            raise ValueError(f"{d} features are fewer than a vector of the native softmax")
        return loss, grad

    def affine(
        self, X: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, logistic: bool
    ) -> tuple[float, np.ndarray, float]:
        """Sums over the rows of the squared error / 2 (``logistic`` False) or the binary
        cross-entropy of ``z = X @ w + b``, and of its gradient for ``w`` and ``b``. ``y``
        and ``w`` in the dtype of ``X``."""
        dt = X.dtype
        n, d = X.shape
        g, gb = np.zeros(d), np.zeros(1)
        work = np.empty(self.lib.lg_affine_work(d), dt)
        if dt == np.float64:
            fn, scalar = self.lib.lg_affine_f64, ctypes.c_double
        else:
            fn, scalar = self.lib.lg_affine_f32, ctypes.c_float
        loss = fn(
            _ptr(X), n, d, _ptr(y), _ptr(w), scalar(b), int(logistic), _ptr(g), _ptr(gb),
            _ptr(work),
        )  # fmt: skip
        return loss, g, float(gb[0])


ALIGNMENT = 64  # a cache line


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """``np.empty`` on a cache-line boundary. numpy aligns large arrays to 16 bytes only, so
    a 32-byte vector load from them straddles two cache lines every other time; the
    softmax kernel runs ~9 % slower on such rows (benchmarks/README.md)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


#: kernels.c's lg_abi_version: the contract these wrappers and the models rely on (2: the
#: softmax kernel checks the class labels, so the models skip their own pass over them).
ABI_VERSION = 2


def _stale(lib: ctypes.CDLL) -> str | None:
    """Why a library built from another kernels.c must not be used, or None."""
    version = getattr(lib, "lg_abi_version", None)
    if version is None:
        return f"was built from an older kernels.c (no lg_abi_version; {ABI_VERSION} needed)"
    version.restype, version.argtypes = _I, []
    if version() != ABI_VERSION:
        return f"was built for kernel ABI {version()}, not {ABI_VERSION}"
    return None


def _library_path() -> Path | None:
    """The built library beside this file: ``_kernels*.so`` (setuptools names it after
    the Python it was built for; the layer build names it ``_kernels.so``)."""
    found = sorted(Path(__file__).parent.glob("_kernels*.so"))
    return found[0] if found else None


def load() -> tuple[Kernels | None, str]:
    """The kernels, or None and the reason they are off."""
    if os.environ.get("LAMBDAGRAD_NATIVE", "1") == "0":
        return None, "off: LAMBDAGRAD_NATIVE=0"
    path = _library_path()
    if path is None:
        return None, "off: no _kernels*.so beside lambdagrad/native (built without a C compiler?)"
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        return None, f"off: {path.name} does not load ({exc})"
    stale = _stale(lib)
    if stale:
        return None, f"off: {path.name} {stale}; rebuild it (pip install -e .)"
    for sfx in ("f64", "f32"):
        fn = getattr(lib, f"lg_softmax_{sfx}")
        fn.restype, fn.argtypes = ctypes.c_double, [_P, _I, _I, _P, _P, _P, _I, _P, _P, _P]
        fn = getattr(lib, f"lg_affine_{sfx}")
        scalar = ctypes.c_double if sfx == "f64" else ctypes.c_float
        fn.restype = ctypes.c_double
        fn.argtypes = [_P, _I, _I, _P, _P, scalar, ctypes.c_int, _P, _P, _P]
    lib.lg_softmax_work.restype, lib.lg_softmax_work.argtypes = _I, [_I, _I]
    lib.lg_affine_work.restype, lib.lg_affine_work.argtypes = _I, [_I]
    lib.lg_vector_bytes.restype = _I
    kernels = Kernels(lib, lib.lg_vector_bytes())
    return kernels, f"on: {path.name}"


KERNELS, STATUS = load()
