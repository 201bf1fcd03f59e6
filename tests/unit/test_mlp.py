"""MLP: exact gradients (central differences), layout, init statistics, XOR, errors."""

import itertools
import math

import numpy as np
import pytest
from lambdagrad import models
from lambdagrad.models import ACTIVATIONS, ModelError, build_model, l1_prox, l2_penalty

from tests.gradcheck import fd_grad, rel_err

DEPTHS = {1: (4,), 2: (4, 3), 3: (4, 3, 5)}
TASKS = {"regression": 1, "binary": 2, "3-class": 3}
H = 1e-6  # central-difference step


# ---- an independent forward pass: explicit offsets, written from the documented layout ----

_C = math.sqrt(2.0 / math.pi)
_REF_ACT = {
    "relu": lambda z: np.where(z > 0, z, 0.0),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "gelu": lambda z: 0.5 * z * (1.0 + np.tanh(_C * (z + 0.044715 * z**3))),
}


def _unpack(params, sizes):
    """[(W1, b1), (W2, b2), ...] from the flat vector: W_i row-major (fan_in, fan_out)."""
    out, k = [], 0
    for fan_in, fan_out in itertools.pairwise(sizes):
        W = params[k : k + fan_in * fan_out].reshape(fan_in, fan_out)
        k += fan_in * fan_out
        b = params[k : k + fan_out]
        k += fan_out
        out.append((W, b))
    assert k == params.size
    return out


def _reference_forward(params, X, hidden, n_out, activation):
    """Output logits (n, n_out), hidden inputs [X, a1, ...] and pre-activations [z1, ...]."""
    layers = _unpack(params, (X.shape[1], *hidden, n_out))
    inputs, pre, a = [X], [], X
    for W, b in layers[:-1]:
        z = sum(np.outer(a[:, k], W[k]) for k in range(W.shape[0])) + b  # no BLAS on purpose
        a = _REF_ACT[activation](z)
        pre.append(z)
        inputs.append(a)
    W, b = layers[-1]
    return a @ W + b, inputs, pre


def _reference_loss(params, X, y, hidden, n_classes, activation):
    out, _, _ = _reference_forward(params, X, hidden, n_classes, activation)
    if n_classes == 1:
        return np.mean(0.5 * (out[:, 0] - y) ** 2)
    logp = out - np.log(np.exp(out).sum(axis=1, keepdims=True))  # small logits: naive is fine
    return -np.mean(logp[np.arange(len(y)), y])


def _problem(activation, depth, n_classes, n=6, d=3, seed=0):
    """Model, perturbed init params (so biases are non-zero and no relu sits at a kink), data."""
    hidden = DEPTHS[depth]
    model = build_model("mlp", d, n_classes, hidden=hidden, activation=activation)
    rng = np.random.default_rng(1000 * seed + 100 * depth + 10 * n_classes)
    params = model.init(rng) + 0.1 * rng.normal(size=model.n_params)
    X = rng.normal(size=(n, d))
    if n_classes == 1:
        y = rng.normal(size=n)
    else:
        y = np.arange(n) % n_classes  # every class present
        rng.shuffle(y)
    return model, params, X, y


def _kink_bound(params, X, hidden, n_out, h=H):
    """Per hidden layer, an upper bound on how far ANY single-coordinate perturbation of
    ``params`` by ``±h`` moves any pre-activation (relu is 1-Lipschitz)."""
    layers = _unpack(params, (X.shape[1], *hidden, n_out))
    _, inputs, _ = _reference_forward(params, X, hidden, n_out, "relu")
    bounds, delta_in = [], 0.0  # delta_in: max change of the layer's input
    for (W, _), a in zip(layers[:-1], inputs[:-1], strict=True):
        own = h * max(1.0, np.abs(a).max() + delta_in)  # this layer's own W entry or bias
        upstream = delta_in * np.abs(W).sum(axis=0).max()  # change coming from below
        delta_in = own + upstream
        bounds.append(delta_in)
    return bounds


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradient_matches_central_differences(activation, depth, task):
    n_classes = TASKS[task]
    model, params, X, y = _problem(activation, depth, n_classes)
    hidden = DEPTHS[depth]
    if activation == "relu":
        # Central differences are exact up to O(h^2) only where the loss is smooth between
        # params - h e_i and params + h e_i. We do not hope: we bound how far any single
        # coordinate step of size h can move each pre-activation and require every
        # pre-activation to be farther than that from relu's kink at 0. (gelu, tanh and
        # sigmoid are smooth, so the same 1e-6 tolerance holds without this.)
        _, _, pre = _reference_forward(params, X, hidden, n_classes, "relu")
        for z, bound in zip(pre, _kink_bound(params, X, hidden, n_classes), strict=True):
            assert np.abs(z).min() > 10 * bound
    loss, grad = model.loss_and_grad(params, X, y)
    assert grad.shape == (model.n_params,) and grad.dtype == np.float64
    assert loss == pytest.approx(_reference_loss(params, X, y, hidden, n_classes, activation))
    # h = 1e-6: truncation error ~ h^2 |L'''| ~ 1e-12 and round-off ~ eps |L| / h ~ 1e-10,
    # so a correct gradient lands near 1e-9; any wrong term (e.g. the erf-GELU derivative,
    # see below) is >= 1e-4.
    assert rel_err(grad, fd_grad(lambda p: model.loss(p, X, y), params)) < 1e-6


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradient_with_equal_widths(activation):
    """Equal hidden widths: mixing up which layer's activations backprop uses would go
    unnoticed by shapes alone (the widths above all differ, which catches transposes)."""
    model = build_model("mlp", 3, 3, hidden=(4, 4, 4), activation=activation)
    rng = np.random.default_rng(7)
    params = model.init(rng) + 0.1 * rng.normal(size=model.n_params)
    X = rng.normal(size=(6, 3))
    y = np.array([0, 1, 2, 0, 1, 2])
    if activation == "relu":
        _, _, pre = _reference_forward(params, X, (4, 4, 4), 3, "relu")
        for z, bound in zip(pre, _kink_bound(params, X, (4, 4, 4), 3), strict=True):
            assert np.abs(z).min() > 10 * bound
    loss, grad = model.loss_and_grad(params, X, y)
    assert loss == pytest.approx(_reference_loss(params, X, y, (4, 4, 4), 3, activation))
    assert rel_err(grad, fd_grad(lambda p: model.loss(p, X, y), params)) < 1e-6


def _erf_gelu_grad(z, a):
    """Derivative of the EXACT (erf) GELU, Phi(z) + z phi(z): close to, but not, ours."""
    erf = np.vectorize(math.erf)
    return 0.5 * (1.0 + erf(z / math.sqrt(2.0))) + z * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


@pytest.mark.parametrize("wrong", ["erf-gelu", "dropped-term"])
def test_gradient_check_catches_a_wrong_derivative(monkeypatch, wrong):
    """The check above can fail: a subtly wrong activation derivative is caught."""
    if wrong == "erf-gelu":
        bad = _erf_gelu_grad
    else:  # forget the d tanh / dz term of the product rule

        def bad(z, a):
            return 0.5 * (1.0 + np.tanh(_C * (z + 0.044715 * z**3)))

    monkeypatch.setitem(models._ACTIVATION_FNS, "gelu", (models._gelu, bad))
    model, params, X, y = _problem("gelu", 2, 3)
    _, grad = model.loss_and_grad(params, X, y)
    assert rel_err(grad, fd_grad(lambda p: model.loss(p, X, y), params)) > 1e-5


def test_gelu_is_the_tanh_approximation():
    z = np.array([-3.0, -1.0, 0.0, 1.0, 2.5])
    expected = 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
    np.testing.assert_allclose(models._gelu(z), expected, rtol=0, atol=1e-15)
    assert models._gelu(np.array([1.0]))[0] == pytest.approx(0.8411919906082768, abs=1e-12)
    exact_erf_gelu_at_1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    assert abs(models._gelu(np.array([1.0]))[0] - exact_erf_gelu_at_1) > 1e-4
    assert "tanh approximation" in models.MLP.__doc__


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_matches_independent_layout(activation, task):
    """W1 is (d, h1) row-major, then b1, W2, b2, ...: predictions match a by-hand pass."""
    n_classes = TASKS[task]
    model, params, X, _ = _problem(activation, 3, n_classes, n=9)
    out, _, _ = _reference_forward(params, X, DEPTHS[3], n_classes, activation)
    if n_classes == 1:
        assert model.task == "regression"
        pred = model.predict(params, X)
        assert pred.shape == (9,) and pred.dtype == np.float64
        np.testing.assert_allclose(pred, out[:, 0], rtol=1e-12)
        with pytest.raises(ModelError, match="no predict_proba"):
            model.predict_proba(params, X)
    else:
        assert model.task == "classification"
        proba = model.predict_proba(params, X)
        expected = np.exp(out) / np.exp(out).sum(axis=1, keepdims=True)
        assert proba.shape == (9, n_classes)
        np.testing.assert_allclose(proba, expected, rtol=1e-12)
        pred = model.predict(params, X)
        assert pred.dtype == np.int64
        np.testing.assert_array_equal(pred, out.argmax(axis=1))


def test_layers_weight_mask_and_describe():
    model = build_model("mlp", 3, 2, hidden=[4, 5], activation="tanh")
    assert model.layers() == [
        {"name": "W1", "shape": [3, 4]},
        {"name": "b1", "shape": [4]},
        {"name": "W2", "shape": [4, 5]},
        {"name": "b2", "shape": [5]},
        {"name": "W3", "shape": [5, 2]},
        {"name": "b3", "shape": [2]},
    ]
    assert model.n_params == 12 + 4 + 20 + 5 + 10 + 2
    expected = [True] * 12 + [False] * 4 + [True] * 20 + [False] * 5 + [True] * 10 + [False] * 2
    assert model.weight_mask.tolist() == expected
    desc = model.describe()
    assert desc == {
        "kind": "mlp",
        "n_features": 3,
        "n_classes": 2,
        "hidden": [4, 5],
        "activation": "tanh",
    }
    again = build_model(**desc)
    assert again.layers() == model.layers() and again.activation == "tanh"
    reg = build_model("mlp", 3, 1, hidden=(2,))
    assert reg.describe()["activation"] == "relu" and reg.task == "regression"
    assert reg.layers()[-2:] == [{"name": "W2", "shape": [2, 1]}, {"name": "b2", "shape": [1]}]


def test_l1_prox_and_l2_leave_mlp_biases_alone():
    model = build_model("mlp", 3, 3, hidden=(4, 4), activation="gelu")
    params = np.random.default_rng(0).normal(size=model.n_params) * 0.1
    shrunk = l1_prox(model, params, 1.0)  # larger than every |w|
    assert not shrunk[model.weight_mask].any()
    np.testing.assert_array_equal(shrunk[~model.weight_mask], params[~model.weight_mask])
    _, g = l2_penalty(model, params, 0.5)
    assert not g[~model.weight_mask].any()


# ---- init ------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_init_statistics(activation):
    d, h, c = 400, 500, 300  # wide, and c large so He and Xavier differ on the output too
    model = build_model("mlp", d, c, hidden=(h,), activation=activation)
    params = model.init(np.random.default_rng(0))
    assert params.dtype == np.float64 and params.shape == (model.n_params,)
    views = model.layout.views(params)
    he, xavier = math.sqrt(2 / d), math.sqrt(2 / (d + h))
    assert abs(he / xavier - 1) > 0.3  # the test can tell them apart
    want_w1 = he if activation in ("relu", "gelu") else xavier
    assert views["W1"].std() == pytest.approx(want_w1, rel=0.1)
    assert abs(views["W1"].mean()) < 0.1 * want_w1
    out_xavier, out_he = math.sqrt(2 / (h + c)), math.sqrt(2 / h)
    assert abs(out_he / out_xavier - 1) > 0.2
    assert views["W2"].std() == pytest.approx(out_xavier, rel=0.1)  # output: always Xavier
    assert not views["b1"].any() and not views["b2"].any()


def test_init_is_deterministic_for_a_seed():
    model = build_model("mlp", 5, 3, hidden=(6, 7), activation="relu")
    a = model.init(np.random.default_rng(42))
    b = model.init(np.random.default_rng(42))
    c = model.init(np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(a[model.weight_mask] != 0.0) and not a[~model.weight_mask].any()


# ---- learning --------------------------------------------------------------------------


def _xor(n=200, seed=0):
    """Four clusters around (+-1, +-1); label 1 where x0 * x1 > 0: not linearly separable."""
    rng = np.random.default_rng(seed)
    X = rng.choice([-1.0, 1.0], size=(n, 2)) + 0.3 * rng.normal(size=(n, 2))
    return X, (X[:, 0] * X[:, 1] > 0).astype(np.int64)


def _gradient_descent(model, X, y, lr=1.0, steps=500):
    params = model.init(np.random.default_rng(0))
    for _ in range(steps):
        _, grad = model.loss_and_grad(params, X, y)
        params -= lr * grad
    return params


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_mlp_learns_xor_and_logistic_regression_does_not(activation):
    X, y = _xor()
    assert 0.3 < y.mean() < 0.7
    mlp = build_model("mlp", 2, 2, hidden=(8,), activation=activation)
    acc_mlp = np.mean(mlp.predict(_gradient_descent(mlp, X, y), X) == y)
    logistic = build_model("logistic", 2, 2)
    acc_lin = np.mean(logistic.predict(_gradient_descent(logistic, X, y), X) == y)
    assert acc_mlp >= 0.99
    assert acc_lin < 0.8


# ---- edge cases and errors -------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [1, 2, 3])
def test_empty_batch_gives_zero(n_classes):
    model = build_model("mlp", 3, n_classes, hidden=(4, 2))
    y = np.zeros(0, dtype=np.float64 if n_classes == 1 else np.int64)
    loss, grad = model.loss_and_grad(np.ones(model.n_params), np.zeros((0, 3)), y)
    assert loss == 0.0
    np.testing.assert_array_equal(grad, np.zeros(model.n_params))


def test_stable_at_huge_logits():
    model = build_model("mlp", 1, 3, hidden=(1,), activation="relu")
    # W1 = 1, b1 = 0, W2 = (1, 0, 0), b2 = 0: logits (relu(x), 0, 0)
    params = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    X = np.array([[1e4], [1e4]])
    loss, grad = model.loss_and_grad(params, X, np.array([1, 0]))
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == pytest.approx(1e4 / 2)  # row 0 costs 1e4, row 1 costs ~0
    proba = model.predict_proba(params, X)
    assert np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_classes": 2, "hidden": ()}, "mlp needs at least one hidden layer"),
        ({"n_classes": 2, "hidden": []}, "mlp needs at least one hidden layer"),
        ({"n_classes": 2, "hidden": (4,), "activation": "swish"}, "relu, tanh, sigmoid, gelu"),
        ({"n_classes": 2, "hidden": (4,), "activation": "ReLU"}, "unknown activation"),
        ({"n_classes": 2, "hidden": (4, 0)}, "positive integers"),
        ({"n_classes": 2, "hidden": (4, -1)}, "positive integers"),
        ({"n_classes": 2, "hidden": (4.5,)}, "positive integers"),
        ({"n_classes": 2, "hidden": (True,)}, "positive integers"),
        ({"n_classes": 2, "hidden": "64"}, "sequence"),
        ({"n_classes": 2, "hidden": 64}, "sequence"),
        ({"n_classes": 0, "hidden": (4,)}, "n_classes"),
        ({"n_classes": 2.0, "hidden": (4,)}, "n_classes"),
    ],
)
def test_build_mlp_rejects_bad_config(kwargs, match):
    with pytest.raises(ModelError, match=match):
        build_model("mlp", 3, **kwargs)


def test_mlp_shape_and_label_checks():
    model = build_model("mlp", 2, 3, hidden=(2,))
    with pytest.raises(ModelError, match="parameters"):
        model.loss_and_grad(np.zeros(5), np.zeros((1, 2)), np.array([0]))
    with pytest.raises(ModelError, match="X of shape"):
        model.loss_and_grad(np.zeros(model.n_params), np.zeros((1, 3)), np.array([0]))
    with pytest.raises(ModelError, match="class indices"):
        model.loss_and_grad(np.zeros(model.n_params), np.zeros((1, 2)), np.array([3]))
