"""Models: exact gradients (central differences), stability, shapes, conventions."""

import json

import numpy as np
import pytest
from lambdagrad.models import (
    MODEL_KINDS,
    ModelError,
    build_model,
    l1_penalty,
    l1_prox,
    l2_penalty,
)

from tests.gradcheck import fd_grad, rel_err

CASES = [("linear", 1), ("logistic", 2), ("softmax", 2), ("softmax", 4)]


def _data(kind, n_classes, n=7, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if kind == "linear":
        y = rng.normal(size=n)
    else:
        y = rng.integers(0, n_classes, size=n).astype(np.int64)
    return X, y


@pytest.mark.parametrize(("kind", "n_classes"), CASES)
def test_gradient_matches_central_differences(kind, n_classes):
    model = build_model(kind, n_features=3, n_classes=n_classes)
    X, y = _data(kind, n_classes)
    params = np.random.default_rng(1).normal(size=model.n_params)
    loss, grad = model.loss_and_grad(params, X, y)
    assert grad.shape == (model.n_params,) and grad.dtype == np.float64
    assert loss == pytest.approx(model.loss(params, X, y))
    assert rel_err(grad, fd_grad(lambda p: model.loss(p, X, y), params)) < 1e-6


@pytest.mark.parametrize(("kind", "n_classes"), CASES)
def test_l2_penalty_gradient_and_bias_exemption(kind, n_classes):
    model = build_model(kind, n_features=3, n_classes=n_classes)
    params = np.random.default_rng(2).normal(size=model.n_params)
    pen, grad = l2_penalty(model, params, 0.3)
    w = params[model.weight_mask]
    assert pen == pytest.approx(0.5 * 0.3 * np.sum(w**2))
    assert np.all(grad[~model.weight_mask] == 0.0)
    assert rel_err(grad, fd_grad(lambda p: l2_penalty(model, p, 0.3)[0], params)) < 1e-6


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


def test_build_model_error_messages():
    with pytest.raises(ModelError, match="choose one of linear, logistic, softmax, mlp"):
        build_model("mlp2", 3, 2)
    with pytest.raises(ModelError, match="n_features"):
        build_model("mlp", 0, 2, hidden=(4,))
    with pytest.raises(ModelError, match=r"^mlp needs at least one hidden layer$"):
        build_model("mlp", 3, 2)
    with pytest.raises(ModelError, match="choose one of relu, tanh, sigmoid, gelu"):
        build_model("mlp", 3, 2, hidden=(4,), activation="elu")


@pytest.mark.parametrize(("kind", "n_classes"), CASES)
def test_hidden_layers_are_only_for_mlp(kind, n_classes):
    with pytest.raises(ModelError, match="only for mlp"):
        build_model(kind, 3, n_classes, hidden=(4,))
    # activation is ignored by the convex models, and the defaults change nothing
    model = build_model(kind, 3, n_classes, hidden=(), activation="tanh")
    assert model.kind == kind


@pytest.mark.parametrize(("kind", "n_classes"), [*CASES, ("mlp", 1), ("mlp", 3)])
def test_describe_rebuilds_the_model(kind, n_classes):
    extra = {"hidden": (5, 2), "activation": "sigmoid"} if kind == "mlp" else {}
    model = build_model(kind, 3, n_classes, **extra)
    desc = model.describe()
    assert desc["kind"] == kind and desc["n_features"] == 3 and desc["n_classes"] == n_classes
    assert json.loads(json.dumps(desc)) == desc
    again = build_model(**desc)
    assert type(again) is type(model) and again.layers() == model.layers()
    assert again.describe() == desc
    assert kind in MODEL_KINDS


# ---- L1 ------------------------------------------------------------------------------------


def test_l1_prox_soft_thresholds_weights_only():
    model = build_model("softmax", 2, 3)  # W (2, 3) then b (3)
    params = np.array([0.5, -0.5, 0.2, -0.1, 2.0, -3.0, 0.05, -0.05, 7.0])
    before = params.copy()
    out = l1_prox(model, params, 0.2)
    expected_w = [0.3, -0.3, 0.0, 0.0, 1.8, -2.8]
    np.testing.assert_allclose(out[:6], expected_w, rtol=0, atol=1e-15)
    assert out[2] == 0.0 and out[3] == 0.0  # exact zeros, |w| <= threshold
    assert not np.signbit(out[:6][out[:6] == 0]).any()  # +0.0, not -0.0
    np.testing.assert_array_equal(out[6:], params[6:])  # small biases are not shrunk
    np.testing.assert_array_equal(params, before)  # input not mutated
    assert not np.shares_memory(out, params)
    np.testing.assert_array_equal(l1_prox(model, params, 0.0), params)
    assert out.dtype == np.float64


def test_l1_prox_is_the_proximal_operator():
    """v = prox(w) minimises 0.5 ||v - w||^2 + t ||v_weights||_1: no nearby point is lower."""
    model = build_model("softmax", 4, 3)
    rng = np.random.default_rng(0)
    w = rng.normal(size=model.n_params)
    t = 0.4
    mask = model.weight_mask

    def objective(v):
        return 0.5 * np.sum((v - w) ** 2) + t * np.abs(v[mask]).sum()

    v = l1_prox(model, w, t)
    best = objective(v)
    for _ in range(200):
        assert objective(v + 1e-3 * rng.normal(size=v.size)) > best


def test_l1_prox_rejects_bad_arguments():
    model = build_model("linear", 2, 1)
    with pytest.raises(ModelError, match=">= 0"):
        l1_prox(model, np.zeros(3), -0.1)
    with pytest.raises(ModelError, match=">= 0"):
        l1_prox(model, np.zeros(3), float("nan"))
    with pytest.raises(ModelError, match="parameters"):
        l1_prox(model, np.zeros(4), 0.1)


def test_l1_penalty_value_excludes_biases():
    model = build_model("softmax", 2, 2)
    params = np.array([1.0, -2.0, 0.5, -0.25, 100.0, -100.0])
    assert l1_penalty(model, params, 0.1) == pytest.approx(0.1 * 3.75)
    assert isinstance(l1_penalty(model, params, 0.1), float)
    assert l1_penalty(model, params, 0.0) == 0.0


def test_proximal_gradient_gives_exact_zeros_where_subgradient_does_not():
    """Lasso on 2 informative + 3 noise features: ISTA zeroes the noise weights exactly,
    the subgradient method leaves them dithering around 0."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = 3.0 * X[:, 0] - 2.0 * X[:, 1] + 0.1 * rng.normal(size=200)
    model = build_model("linear", 5, 1)
    lr, l1 = 0.1, 0.3
    prox = np.zeros(model.n_params)
    sub = np.zeros(model.n_params)
    for _ in range(500):
        prox = l1_prox(model, prox - lr * model.loss_and_grad(prox, X, y)[1], lr * l1)
        g = model.loss_and_grad(sub, X, y)[1] + l1 * np.sign(sub) * model.weight_mask
        sub = sub - lr * g
    assert np.all(prox[2:5] == 0.0) and np.all(np.abs(prox[:2]) > 1.0)
    assert np.all(sub[2:5] != 0.0)


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


@pytest.mark.parametrize(("kind", "n_classes"), [("logistic", 2), ("softmax", 3), ("mlp", 3)])
@pytest.mark.parametrize("case", ["too big", "negative", "fraction", "int32 too big"])
def test_loss_and_grad_rejects_labels_that_are_not_class_indices(kind, n_classes, case):
    C = n_classes
    labels = {
        "too big": np.array([0, 1, C]),
        "negative": np.array([0, -1, 1]),
        "fraction": np.array([0.0, 0.5, 1.0]),
        "int32 too big": np.array([0, C, 1], np.int32),
    }[case]
    model = build_model(kind, 2, C, hidden=(4,) if kind == "mlp" else ())
    with pytest.raises(ModelError, match=rf"class indices in \[0, {C}\)"):
        model.loss_and_grad(np.zeros(model.n_params), np.ones((3, 2)), labels)
