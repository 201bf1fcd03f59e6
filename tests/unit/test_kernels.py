"""The blocked loss-and-gradient kernels against the plain formulas, across block edges,
in float64 and float32 (DESIGN.md §5: workers stream the batch in cache-sized blocks)."""

from __future__ import annotations

import numpy as np
import pytest
from lambdagrad import models
from lambdagrad.models import build_model


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
        r = 1.0 / (1.0 + np.exp(-z)) - y
    return loss, np.append(X.T @ r, r.sum()) / n


@pytest.mark.parametrize("kind,C", [("linear", 1), ("logistic", 2), ("softmax", 4)])
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_blocked_kernels_match_plain_formulas_across_blocks(kind, C, dtype, rtol, monkeypatch):
    # 64-row blocks over 1,000 rows: 15 full blocks and a short last one (40 rows).
    monkeypatch.setattr(models, "BLOCK_BYTES", 64 * 7 * np.dtype(dtype).itemsize)
    rng = np.random.default_rng(5)
    X = rng.standard_normal((1000, 7))
    y = rng.integers(0, C, 1000) if C > 1 else rng.standard_normal(1000)
    model = build_model(kind, 7, C)
    params = rng.standard_normal(model.n_params)
    want_loss, want_grad = _plain(kind, params, X.astype(dtype).astype(np.float64), y, C)
    loss, grad = model.loss_and_grad(params, X.astype(dtype), y)
    assert grad.dtype == np.float64
    assert loss == pytest.approx(want_loss, rel=rtol)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=rtol * np.abs(want_grad).max())
