"""Models: exact gradients (central differences), stability, shapes, conventions."""

import numpy as np
import pytest
from lambdagrad.models import ModelError, build_model, l2_penalty

CASES = [("linear", 1), ("logistic", 2), ("softmax", 2), ("softmax", 4)]


def _data(kind, n_classes, n=7, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if kind == "linear":
        y = rng.normal(size=n)
    else:
        y = rng.integers(0, n_classes, size=n).astype(np.int64)
    return X, y


def _fd_grad(f, params, h=1e-6):
    grad = np.zeros_like(params)
    for i in range(params.size):
        e = np.zeros_like(params)
        e[i] = h
        grad[i] = (f(params + e) - f(params - e)) / (2 * h)
    return grad


def _rel_err(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-12)


@pytest.mark.parametrize(("kind", "n_classes"), CASES)
def test_gradient_matches_central_differences(kind, n_classes):
    model = build_model(kind, n_features=3, n_classes=n_classes)
    X, y = _data(kind, n_classes)
    params = np.random.default_rng(1).normal(size=model.n_params)
    loss, grad = model.loss_and_grad(params, X, y)
    assert grad.shape == (model.n_params,) and grad.dtype == np.float64
    assert loss == pytest.approx(model.loss(params, X, y))
    assert _rel_err(grad, _fd_grad(lambda p: model.loss(p, X, y), params)) < 1e-6


@pytest.mark.parametrize(("kind", "n_classes"), CASES)
def test_l2_penalty_gradient_and_bias_exemption(kind, n_classes):
    model = build_model(kind, n_features=3, n_classes=n_classes)
    params = np.random.default_rng(2).normal(size=model.n_params)
    pen, grad = l2_penalty(model, params, 0.3)
    w = params[model.weight_mask]
    assert pen == pytest.approx(0.5 * 0.3 * np.sum(w**2))
    assert np.all(grad[~model.weight_mask] == 0.0)
    assert _rel_err(grad, _fd_grad(lambda p: l2_penalty(model, p, 0.3)[0], params)) < 1e-6


def test_weight_mask_and_layers():
    lin = build_model("linear", 3, 1)
    assert lin.weight_mask.tolist() == [True, True, True, False]
    assert lin.layers() == [{"name": "w", "shape": [3]}, {"name": "b", "shape": [1]}]
    soft = build_model("softmax", 3, 4)
    assert soft.n_params == 3 * 4 + 4
    assert soft.layers() == [{"name": "W", "shape": [3, 4]}, {"name": "b", "shape": [4]}]
    assert soft.weight_mask.sum() == 12 and not soft.weight_mask[12:].any()


def test_softmax_layout_is_row_major_w_then_b():
    model = build_model("softmax", 2, 3)
    params = np.arange(9.0)
    X = np.array([[1.0, 0.0]])
    W, b = params[:6].reshape(2, 3), params[6:]
    expected = np.exp(X @ W + b) / np.exp(X @ W + b).sum()
    np.testing.assert_allclose(model.predict_proba(params, X), expected)


def test_linear_loss_by_hand():
    model = build_model("linear", 2, 1)
    params = np.array([1.0, -2.0, 0.5])  # w = (1, -2), b = 0.5
    X = np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    y = np.array([0.0, 1.0, -4.0])
    # predictions: -0.5, 2.5, -5.5; residuals: -0.5, 1.5, -1.5
    loss, grad = model.loss_and_grad(params, X, y)
    assert loss == pytest.approx(0.5 * (0.25 + 2.25 + 2.25) / 3)
    r = np.array([-0.5, 1.5, -1.5])
    np.testing.assert_allclose(grad, np.append(X.T @ r / 3, r.mean()))


def test_logistic_loss_by_hand_at_zero():
    model = build_model("logistic", 2, 2)
    X = np.array([[1.0, 2.0], [3.0, 4.0]])
    loss, grad = model.loss_and_grad(np.zeros(3), X, np.array([0, 1]))
    assert loss == pytest.approx(np.log(2.0))
    np.testing.assert_allclose(grad, np.append(X.T @ np.array([0.5, -0.5]) / 2, 0.0))


@pytest.mark.parametrize(("kind", "n_classes"), [("logistic", 2), ("softmax", 3)])
def test_stable_at_huge_logits(kind, n_classes):
    model = build_model(kind, n_features=2, n_classes=n_classes)
    params = np.zeros(model.n_params)
    params[0] = 1.0  # logistic: z = x0; softmax: logits (x0, 0, 0)
    X = np.array([[1e4, 0.0], [-1e4, 0.0], [1e4, 0.0]])
    y = np.array([0, 1, 1]) if kind == "logistic" else np.array([1, 0, 0])
    loss, grad = model.loss_and_grad(params, X, y)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    # Rows 0 and 1 are confidently wrong and cost about |z| = 1e4 each (not inf); row 2
    # costs 0 for logistic and 0 for softmax too (the other logits are 1e4 below).
    expected = 2e4 / 3 if kind == "logistic" else (2e4 + np.log(2.0)) / 3
    assert loss == pytest.approx(expected)
    proba = model.predict_proba(params, X)
    assert np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_logistic_confident_and_right_has_tiny_loss():
    model = build_model("logistic", 1, 2)
    loss, grad = model.loss_and_grad(np.array([1.0, 0.0]), np.array([[1e4], [-1e4]]), [1, 0])
    assert loss == 0.0 and np.all(grad == 0.0)


@pytest.mark.parametrize(("kind", "n_classes"), CASES)
def test_predict_shapes_and_types(kind, n_classes):
    model = build_model(kind, n_features=3, n_classes=n_classes)
    X, _ = _data(kind, n_classes, n=5)
    params = np.random.default_rng(3).normal(size=model.n_params)
    pred = model.predict(params, X)
    assert pred.shape == (5,)
    if kind == "linear":
        assert pred.dtype == np.float64
        with pytest.raises(ModelError):
            model.predict_proba(params, X)
    else:
        assert pred.dtype == np.int64
        proba = model.predict_proba(params, X)
        assert proba.shape == (5, n_classes)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        np.testing.assert_array_equal(pred, proba.argmax(axis=1))


@pytest.mark.parametrize(("kind", "n_classes"), CASES)
def test_empty_batch_gives_zero(kind, n_classes):
    model = build_model(kind, n_features=3, n_classes=n_classes)
    params = np.ones(model.n_params)
    y = np.zeros(0, dtype=np.float64 if kind == "linear" else np.int64)
    loss, grad = model.loss_and_grad(params, np.zeros((0, 3)), y)
    assert loss == 0.0
    np.testing.assert_array_equal(grad, np.zeros(model.n_params))


@pytest.mark.parametrize(("kind", "n_classes"), CASES)
def test_init_is_zeros(kind, n_classes):
    model = build_model(kind, n_features=3, n_classes=n_classes)
    p = model.init(np.random.default_rng(0))
    assert p.dtype == np.float64 and p.shape == (model.n_params,) and not p.any()


@pytest.mark.parametrize(
    ("kind", "n_classes"), [("mlp2", 2), ("linear", 2), ("logistic", 3), ("softmax", 1)]
)
def test_build_model_rejects_bad_config(kind, n_classes):
    with pytest.raises(ModelError):
        build_model(kind, n_features=3, n_classes=n_classes)


def test_shape_and_label_checks():
    model = build_model("softmax", 2, 3)
    with pytest.raises(ModelError, match="parameters"):
        model.loss_and_grad(np.zeros(5), np.zeros((1, 2)), np.array([0]))
    with pytest.raises(ModelError, match="X of shape"):
        model.loss_and_grad(np.zeros(9), np.zeros((1, 3)), np.array([0]))
    with pytest.raises(ModelError, match="class indices"):
        model.loss_and_grad(np.zeros(9), np.zeros((1, 2)), np.array([3]))
    with pytest.raises(ModelError, match="class indices"):
        build_model("logistic", 2, 2).loss_and_grad(np.zeros(3), np.zeros((1, 2)), [2])
