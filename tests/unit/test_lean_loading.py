"""Loading and sharding without copies of the whole dataset (benchmarks/memory.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from lambdagrad.data import DataError, Standardizer, load_dataset


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_float32_npy_is_a_float32_view_of_the_bytes():
    arr = np.arange(12, dtype=np.float32).reshape(4, 3)
    data = _npy(arr)
    ds = load_dataset(data, source="d.npy", fmt="npy", label=None, task="regression")
    assert ds.X.dtype == np.float32 and np.shares_memory(ds.X, np.frombuffer(data, np.uint8))
    np.testing.assert_array_equal(ds.X, arr[:, :2])
    np.testing.assert_array_equal(ds.y, arr[:, 2])


def test_non_finite_feature_is_named_in_any_chunk():
    arr = np.zeros((70_000, 3), dtype=np.float32)
    arr[66_000, 1] = np.nan
    with pytest.raises(DataError, match=r"X row 66000, column 'x1' \(0-based\) is nan"):
        load_dataset(_npy(arr), source="d.npy", fmt="npy", label=None, task="regression")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fit_rows_matches_fit_on_the_selected_rows(dtype):
    rng = np.random.default_rng(1)
    X = (rng.standard_normal((1000, 4)) * [1.0, 10.0, 0.0, 3.0] + 5.0).astype(dtype)
    rows = rng.permutation(1000)[:900]
    lean = Standardizer.fit_rows(X, rows, chunk=128)
    full = Standardizer.fit(X[rows])
    np.testing.assert_allclose(lean.mean, full.mean, rtol=1e-12)
    np.testing.assert_allclose(lean.scale, full.scale, rtol=1e-10)
    assert lean.scale[2] == 1.0  # the constant column
