"""The loss-and-gradient kernels against the plain formulas, in float64 and float32: the
fused C kernels (lambdagrad/native) across tile and block edges, and the numpy kernels
across their row blocks (DESIGN.md §5: workers stream the batch in cache-sized blocks)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from lambdagrad import models, native
from lambdagrad.data import load_npy_aligned
from lambdagrad.models import build_model


@pytest.fixture(params=["native", "numpy"])
def kernel_path(request, monkeypatch):
    """Run a test on the C kernels, then on the numpy ones (native switched off)."""
    if request.param == "numpy":
        monkeypatch.setattr(native, "KERNELS", None)
    return request.param


def test_native_kernels_are_built():
    # `pip install` builds them (setup.py) wherever there is a C compiler; only
    # LAMBDAGRAD_NATIVE=0 may switch them off.
    if os.environ.get("LAMBDAGRAD_NATIVE") == "0":
        assert native.KERNELS is None and "LAMBDAGRAD_NATIVE=0" in native.STATUS
    elif shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip(f"no C compiler: the numpy kernels run ({native.STATUS})")
    else:
        assert native.KERNELS is not None, native.STATUS


def test_a_library_from_another_kernels_c_is_not_loaded():
    # the models trust the softmax kernel to check the labels: a library built from an
    # older kernels.c (an editable install not rebuilt) would not, so it is refused
    class Old:
        pass

    assert "older kernels.c" in native._stale(Old())  # type: ignore[arg-type]
    other = Old()
    other.lg_abi_version = lambda: native.ABI_VERSION + 1  # type: ignore[attr-defined]
    assert f"ABI {native.ABI_VERSION + 1}, not {native.ABI_VERSION}" in native._stale(other)
    if native.KERNELS is not None:
        assert native._stale(native.KERNELS.lib) is None


def _plain(kind: str, params: np.ndarray, X: np.ndarray, y: np.ndarray, C: int):
    """Unblocked float64 formulas: mean loss and gradient."""
    n, d = X.shape
    if kind == "softmax":
        W, b = params[: d * C].reshape(d, C), params[d * C :]
        z = X @ W + b
        lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
        P = np.exp(z - lse[:, None])
        P[np.arange(n), y] -= 1.0
        return np.mean(lse - z[np.arange(n), y]), np.concatenate([(X.T @ P).ravel(), P.sum(0)]) / n
    z = X @ params[:d] + params[d]
    if kind == "linear":
        r = z - y
        loss = 0.5 * np.mean(r * r)
    else:
        loss = np.mean(np.logaddexp(0.0, z) - y * z)
        r = 0.5 * (1.0 + np.tanh(0.5 * z)) - y  # the sigmoid, without overflow
    return loss, np.append(X.T @ r, r.sum()) / n


CASES = [
    ("linear", 1), ("logistic", 2), ("softmax", 2), ("softmax", 4), ("softmax", 10),
    ("softmax", 16), ("softmax", 17),  # 16, 17: scores in two chunks (float64: 3-5 vectors)
    ("softmax", 40),  # a row of 5 (float32) / 10 (float64) vectors: the softmax's wide path
    # the last class is the reference (no scores of its own): 5, 9, 13, 17 put it at the
    # start of a vector (5 and 13: float64; 9 and 17: both dtypes)
    ("softmax", 5), ("softmax", 9), ("softmax", 13),
]  # fmt: skip


@pytest.mark.parametrize("kind,C", CASES)
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("rows", [1, 3, 1003])
@pytest.mark.parametrize("features", [7, 13, 100])
def test_kernels_match_plain_formulas(
    kind, C, dtype, rtol, rows, features, kernel_path, monkeypatch
):
    # numpy: 64-row blocks over 1,003 rows, 15 full blocks and a short last one (43 rows).
    # native: 4-row tiles and two 512-row blocks (the second 491 rows, its last tile 3).
    # Neither 7 nor 13 features is a whole number of vectors: linear and logistic end on a
    # scalar tail, softmax on a vector overlapping the one before; 7 features are fewer
    # than a float32 vector (8), so float32 softmax takes the numpy kernel there. With 100
    # features the softmax blocks are 160 (float64) / 320 (float32) rows and its gradient
    # takes them 40 / 81 rows at a time (32 KiB): whole and partial steps.
    monkeypatch.setattr(models, "BLOCK_BYTES", 64 * features * np.dtype(dtype).itemsize)
    rng = np.random.default_rng(5)
    # scores of order 1 at any width: with 100 features they would reach +-30, where the
    # plain formulas' sigmoid - y cancels to fewer digits than the kernels keep
    X = rng.standard_normal((rows, features)) / np.sqrt(features)
    y = rng.integers(0, C, rows) if C > 1 else rng.standard_normal(rows)
    model = build_model(kind, features, C)
    params = rng.standard_normal(model.n_params)
    want_loss, want_grad = _plain(kind, params, X.astype(dtype).astype(np.float64), y, C)
    loss, grad = model.loss_and_grad(params, X.astype(dtype), y)
    assert grad.dtype == np.float64
    assert loss == pytest.approx(want_loss, rel=rtol)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=rtol * np.abs(want_grad).max())


@pytest.mark.parametrize("kind,C", [("logistic", 2), ("softmax", 10)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("features", [2, 8])  # softmax: numpy below a vector, C above
def test_extreme_logits_stay_finite_and_exact(kind, C, dtype, features, kernel_path):
    # Scores of +-1e4 (exp underflows and overflows in any naive formula): the loss is the
    # margin, the gradient exactly the (p - onehot) of a saturated softmax / sigmoid.
    model = build_model(kind, features, C)
    params = np.zeros(model.n_params)
    params[0] = 1.0  # logistic: z = x0; softmax: class 0's logit is x0, the others 0
    X = np.zeros((5, features), dtype)
    X[:, :2] = [[1e4, 0.0], [-1e4, 0.0], [1e4, 1.0], [0.0, 0.0], [-1e4, 1.0]]
    y = np.array([1, 1, 0, 1, 0])
    loss, grad = model.loss_and_grad(params, X, y)
    want_loss, want_grad = _plain(kind, params, X.astype(np.float64), y, C)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == pytest.approx(want_loss, rel=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-9)


def test_strided_batches_take_the_numpy_kernel_with_the_same_result():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((200, 12))
    y = rng.integers(0, 10, 100)
    model = build_model("softmax", 6, 10)
    params = rng.standard_normal(model.n_params)
    strided = X[::2, ::2]  # not C-contiguous: the native kernels are skipped
    loss, grad = model.loss_and_grad(params, strided, y)
    want_loss, want_grad = model.loss_and_grad(params, np.ascontiguousarray(strided), y)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14)


def test_softmax_takes_the_native_kernel_from_one_vector_of_features(monkeypatch):
    # The C softmax reads features a vector at a time (4 float64 / 8 float32): narrower
    # rows go to the numpy kernel, wider ones (any class count) to C.
    if native.KERNELS is None:
        pytest.skip(f"the C kernels are off here ({native.STATUS})")
    calls = []
    real = native.Kernels.softmax
    monkeypatch.setattr(
        native.Kernels, "softmax", lambda self, X, *a: calls.append(X.shape) or real(self, X, *a)
    )
    rng = np.random.default_rng(2)
    for features in (7, 8):
        model = build_model("softmax", features, 40)
        X = rng.standard_normal((50, features)).astype(np.float32)
        model.loss_and_grad(rng.standard_normal(model.n_params), X, rng.integers(0, 40, 50))
    assert calls == [(50, 8)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bad", [-1, 5, 2**63 - 1])
def test_softmax_kernel_checks_the_class_labels_itself(kernel_path, dtype, bad, monkeypatch):
    # The C kernel checks the labels as it reads each block's, so the model skips its own
    # pass over them; a bad one in a late block still fails the call with the model's error.
    calls = []
    if kernel_path == "native":
        real = native.Kernels.softmax
        monkeypatch.setattr(
            native.Kernels, "softmax", lambda self, *a: calls.append(1) or real(self, *a)
        )
    rng = np.random.default_rng(5)
    model = build_model("softmax", 8, 5)
    X = rng.standard_normal((1200, 8)).astype(dtype)  # blocks of at most 512 rows
    y = rng.integers(0, 5, 1200)
    params = rng.standard_normal(model.n_params)
    assert np.isfinite(model.loss_and_grad(params, X, y)[0])
    y[1100] = bad
    with pytest.raises(models.ModelError, match=r"y must hold class indices in \[0, 5\)"):
        model.loss_and_grad(params, X, y)
    assert len(calls) == (2 if kernel_path == "native" else 0)


def test_native_softmax_takes_only_the_labels_it_can_read():
    # the kernel reads n int64 values from y's pointer: anything else is refused, not read
    if native.KERNELS is None:
        pytest.skip(f"the C kernels are off here ({native.STATUS})")
    X, W, b = np.ones((4, 8)), np.zeros((8, 3)), np.zeros(3)
    for y in (np.zeros(4, np.int32), np.zeros(8, np.int64)[::2], np.zeros(3, np.int64)):
        with pytest.raises(ValueError, match="y must be 4 C-contiguous int64 classes"):
            native.KERNELS.softmax(X, y, W, b)


def test_aligned_arrays_load_like_np_load(tmp_path):
    for shape, dtype in [((1000, 7), np.float32), ((3,), np.int64), ((1, 4), np.float64)]:
        a = native.aligned_empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.ctypes.data % 64 == 0
        want = np.arange(np.prod(shape), dtype=dtype).reshape(shape)
        np.save(tmp_path / "a.npy", want)
        got = load_npy_aligned(tmp_path / "a.npy")
        assert got.ctypes.data % 64 == 0 and got.dtype == dtype
        np.testing.assert_array_equal(got, want)
    np.save(tmp_path / "f.npy", np.asfortranarray(np.ones((3, 4))))
    assert load_npy_aligned(tmp_path / "f.npy").flags.f_contiguous  # as np.load
    (tmp_path / "cut.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:-8])
    with pytest.raises(ValueError, match="ends before"):
        load_npy_aligned(tmp_path / "cut.npy")
