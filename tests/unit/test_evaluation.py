"""The metrics ``lambdagrad evaluate`` prints, against scikit-learn's (in tests only)."""

from __future__ import annotations

import numpy as np
import pytest
from lambdagrad.evaluation import classification_metrics, regression_metrics

metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log_loss_and_accuracy_match_scikit_learn_even_for_certain_wrong_answers(dtype):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 3)) * 4
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    proba[:3] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]  # 0 and 1 exactly
    proba = proba.astype(dtype)
    y = rng.integers(0, 3, size=50)
    y[:3] = [1, 1, 2]  # certain and wrong: clipped, as scikit-learn clips
    got = classification_metrics(y, proba)
    want = metrics.log_loss(y, proba, labels=[0, 1, 2])
    assert got["log_loss"] == pytest.approx(want, rel=1e-6)
    assert got["accuracy"] == metrics.accuracy_score(y, proba.argmax(axis=1))
    assert got["rows"] == 50


def test_regression_metrics_match_scikit_learn():
    rng = np.random.default_rng(1)
    y = rng.normal(size=40)
    pred = y + rng.normal(scale=0.3, size=40)
    got = regression_metrics(y, pred)
    assert got["mse"] == pytest.approx(metrics.mean_squared_error(y, pred), rel=1e-12)
    assert got["r2"] == pytest.approx(metrics.r2_score(y, pred), rel=1e-12)
