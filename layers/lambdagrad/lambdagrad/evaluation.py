"""Evaluation metrics, pure numpy: what ``evaluate`` prints and ``model.json`` records."""

from __future__ import annotations

import numpy as np

__all__ = ["classification_metrics", "regression_metrics"]


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``mse``, ``rmse`` and ``r2`` (r2 is 0 for a constant target predicted exactly); labels
    near the float64 limit (1e308) give an mse of inf, without numpy's overflow warning."""
    with np.errstate(over="ignore", invalid="ignore"):
        resid = np.asarray(y_true, float) - np.asarray(y_pred, float)
        mse = float(np.mean(resid**2)) if resid.size else float("nan")
        var = float(np.var(y_true)) if resid.size else float("nan")
        r2 = 1.0 - mse / var if var > 0 else 0.0
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "r2": float(r2), "rows": int(resid.size)}


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """``accuracy`` and ``log_loss``, its probabilities clipped to [eps, 1 - eps] with eps the
    machine epsilon of their dtype, as scikit-learn (>= 1.5) does."""
    y_true = np.asarray(y_true, dtype=np.int64)
    if y_true.size == 0:
        return {"accuracy": float("nan"), "log_loss": float("nan"), "rows": 0}
    pred = np.argmax(proba, axis=1)
    proba = np.asarray(proba)
    eps = np.finfo(proba.dtype if np.issubdtype(proba.dtype, np.floating) else np.float64).eps
    picked = np.clip(proba[np.arange(y_true.size), y_true], eps, 1.0 - eps)
    return {
        "accuracy": float(np.mean(pred == y_true)),
        "log_loss": float(-np.mean(np.log(picked))),
        "rows": int(y_true.size),
    }
