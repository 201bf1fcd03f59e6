"""Models as pure functions of one flat float64 parameter vector.

A flat vector is what travels between Lambda workers and the reducer (one ``.npy`` per
round) and what optimizers update, so every model exposes its parameters that way and
keeps the layer structure in a :class:`Layout` of named views.

Loss conventions (all are the MEAN over the rows of the batch):

- ``linear``: squared error with a one-half factor, ``mean(0.5 * (X @ w + b - y) ** 2)``,
  so the gradient for row i is ``x_i (x_i . w + b - y_i)`` with no stray factor 2.
- ``logistic``: binary cross-entropy, ``y`` in {0, 1}, via ``logaddexp`` (stable).
- ``softmax``: softmax cross-entropy, ``y`` class indices, via log-sum-exp (stable).
- ``mlp``: a multi-layer perceptron (:class:`MLP`). With ``n_classes == 1`` it is a
  regression with the same loss as ``linear``; with ``n_classes >= 2`` its output layer
  gives ``n_classes`` logits under the same softmax cross-entropy as ``softmax`` (binary
  is a 2-class softmax, not one logit).

Regularisation acts on weights only (``weight_mask``), never on biases: L2 as a smooth
penalty with a gradient (:func:`l2_penalty`), L1 as a proximal step (:func:`l1_prox`).

Examples
--------
>>> import numpy as np
>>> m = build_model("linear", n_features=2, n_classes=1)
>>> p = m.init(np.random.default_rng(0))
>>> m.loss_and_grad(p, np.array([[1.0, 2.0]]), np.array([3.0]))[0]
4.5
"""

from __future__ import annotations

import abc
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lambdagrad import native

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "LinearRegression",
    "LogisticRegression",
    "Model",
    "ModelError",
    "SoftmaxRegression",
    "build_model",
    "l1_penalty",
    "l1_prox",
    "l2_penalty",
]

MODEL_KINDS = ("linear", "logistic", "softmax", "mlp")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu")


class ModelError(ValueError):
    """Bad model configuration or arguments that do not fit the model."""


@dataclass(frozen=True)
class Layout:
    """Names, shapes and weight/bias role of the blocks of a flat parameter vector.

    Examples
    --------
    >>> lay = Layout((("W", (2, 3), True), ("b", (3,), False)))
    >>> lay.size, [v.shape for v in lay.views(np.arange(9.0)).values()]
    (9, [(2, 3), (3,)])
    """

    blocks: tuple[tuple[str, tuple[int, ...], bool], ...]

    @property
    def size(self) -> int:
        return sum(math.prod(shape) for _, shape, _ in self.blocks)

    def views(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """Reshaped views (no copies) of ``params``, block by block, in order."""
        out: dict[str, np.ndarray] = {}
        start = 0
        for name, shape, _ in self.blocks:
            stop = start + math.prod(shape)
            out[name] = params[start:stop].reshape(shape)
            start = stop
        return out

    def weight_mask(self) -> np.ndarray:
        return np.concatenate(
            [np.full(math.prod(shape), is_w, dtype=bool) for _, shape, is_w in self.blocks]
        )

    def describe(self) -> list[dict]:
        return [{"name": name, "shape": list(shape)} for name, shape, _ in self.blocks]


class Model(abc.ABC):
    """A model: parameter layout, mean loss with exact gradient, and predictions.

    Subclasses set ``kind``, ``task``, ``n_features``, ``n_classes`` and ``layout``,
    and implement ``_loss_and_grad`` and ``_scores``.
    """

    kind: str
    task: str  # "regression" | "classification"
    n_features: int
    n_classes: int
    layout: Layout

    @property
    def n_params(self) -> int:
        return self.layout.size

    @property
    def weight_mask(self) -> np.ndarray:
        """Boolean ``(n_params,)``: True for weights (L2 applies), False for biases."""
        return self.layout.weight_mask()

    def init(self, rng: np.random.Generator) -> np.ndarray:
        """Initial parameters. Convex models start at zero, so ``rng`` is unused."""
        del rng
        return np.zeros(self.n_params, dtype=np.float64)

    def layers(self) -> list[dict]:
        """JSON-able layer description for ``model.json``: name and shape of each block,
        in the order of the flat vector."""
        return self.layout.describe()

    def describe(self) -> dict:
        """JSON-able arguments that rebuild this model: ``build_model(**m.describe())``.

        Always ``kind``, ``n_features`` and ``n_classes``; an ``mlp`` adds ``hidden``
        (list of widths) and ``activation``.
        """
        return {"kind": self.kind, "n_features": self.n_features, "n_classes": self.n_classes}

    def loss_and_grad(
        self, params: np.ndarray, X: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """Mean data loss over the rows of ``(X, y)`` and its exact gradient.

        An empty batch gives ``(0.0, zeros)``: a worker may own an empty shard or batch.
        """
        params, X = self._check(params, X)
        if X.shape[0] != len(y):
            raise ModelError(f"X has {X.shape[0]} rows but y has {len(y)}")
        if X.shape[0] == 0:
            return 0.0, np.zeros(self.n_params, dtype=np.float64)
        kernels = self._kernels(X)  # decided once: it also decides who checks the labels
        y = self._check_y(np.asarray(y), bounds=kernels is None or not self.kernel_checks_labels)
        loss, grad = self._loss_and_grad(self.layout.views(params), X, y, kernels)
        return float(loss), grad

    def loss(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
        """Mean data loss (see :meth:`loss_and_grad`)."""
        return self.loss_and_grad(params, X, y)[0]

    def predict(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Values ``(n,)`` for regression, class indices ``(n,)`` int64 for classification."""
        params, X = self._check(params, X)
        scores = self._scores(self.layout.views(params), X)
        if self.task == "regression":
            return scores
        if scores.ndim == 1:  # binary: one logit per row
            return (scores > 0).astype(np.int64)
        return np.argmax(scores, axis=1).astype(np.int64)

    def predict_proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` (classification only)."""
        raise ModelError(f"{self.kind} is a regression model: it has no predict_proba")

    def _check(self, params: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        params = np.asarray(params, dtype=np.float64)
        X = np.asarray(X)
        if X.dtype not in _COMPUTE_DTYPES:  # float32 shards compute in float32, no copy
            X = X.astype(np.float64)
        if params.shape != (self.n_params,):
            raise ModelError(f"expected {self.n_params} parameters, got shape {params.shape}")
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ModelError(f"expected X of shape (n, {self.n_features}), got {X.shape}")
        return params, X

    def _check_y(self, y: np.ndarray, bounds: bool = True) -> np.ndarray:
        """float64 targets for regression; int64 indices (in ``[0, n_classes)`` unless
        ``bounds`` is False: the kernel checks them) otherwise."""
        if y.ndim != 1:
            raise ModelError(f"y must be 1-D, got shape {y.shape}")
        if self.task == "regression":
            return y if y.dtype in _COMPUTE_DTYPES else y.astype(np.float64)
        idx = y.astype(np.int64, copy=False)
        # int64 labels (the shard cache's) are their own indices: no compare pass; as
        # unsigned, a negative index is above every class, so one max checks both bounds
        if (idx is not y and np.any(idx != y)) or (
            bounds and idx.view(np.uint64).max() >= self.n_classes
        ):
            raise ModelError(f"y must hold class indices in [0, {self.n_classes})")
        return idx

    #: Whether this model's native kernel checks the class labels as it reads them, so
    #: :meth:`_check_y` need not read them too (a pass over ``y`` from memory).
    kernel_checks_labels = False

    def _kernels(self, X: np.ndarray) -> native.Kernels | None:
        """The fused C kernels when they take ``X`` (:func:`_native_for`); None: numpy."""
        return _native_for(X)

    @abc.abstractmethod
    def _scores(self, p: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
        """Raw outputs: predictions, one logit per row, or ``(n, C)`` logits."""

    @abc.abstractmethod
    def _loss_and_grad(
        self,
        p: dict[str, np.ndarray],
        X: np.ndarray,
        y: np.ndarray,
        kernels: native.Kernels | None,
    ) -> tuple[float, np.ndarray]:
        """Loss and gradient for a non-empty, shape-checked batch, on ``kernels`` (the C
        kernels, from :meth:`_kernels`) or, when None, in numpy."""


class _AffineModel(Model):
    """``z = X @ w + b``: the shared core of linear and logistic regression.

    ``_loss_and_grad`` walks the batch in cache-sized row blocks (:func:`_row_blocks`):
    ``z = X_b @ w`` streams a block from memory, the per-row residual is formed in place,
    and ``r_b @ X_b`` reads the same block again while it is still in cache, so the batch
    crosses the memory bus about once instead of twice, with no ``n``-sized temporaries.
    Subclasses give the per-block residual and loss (:meth:`_residual`).
    """

    def __init__(self, n_features: int) -> None:
        self.n_features = n_features
        self.layout = Layout((("w", (n_features,), True), ("b", (1,), False)))

    def _scores(self, p: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
        return X @ p["w"].astype(X.dtype, copy=False) + p["b"][0]

    @staticmethod
    def _residual(z: np.ndarray, y: np.ndarray, work: np.ndarray) -> float:
        """Turn the scores ``z`` into ``d loss_i / d z_i`` in place; return the loss sum."""
        raise NotImplementedError

    def _loss_and_grad(self, p, X, y, kernels):
        n, d = X.shape
        dt = X.dtype
        w, b = p["w"].astype(dt, copy=False), dt.type(p["b"][0])
        y = y.astype(dt, copy=False)
        if kernels is not None:
            loss, gw, gb = kernels.affine(
                X, np.ascontiguousarray(y), np.ascontiguousarray(w), b, self.kind == "logistic"
            )
            return loss / n, np.append(gw, gb) / n
        rows = _row_blocks(X)
        z_buf, work_buf = np.empty(min(rows, n), dt), np.empty(min(rows, n), dt)
        g_part = np.empty(d, dt)
        gw, gb, loss = np.zeros(d), 0.0, 0.0
        for lo in range(0, n, rows):
            Xb, yb = X[lo : lo + rows], y[lo : lo + rows]
            z = z_buf[: len(yb)]
            np.matmul(Xb, w, out=z)
            z += b
            loss += self._residual(z, yb, work_buf[: len(yb)])
            np.matmul(z, Xb, out=g_part)  # X_b.T @ r_b while X_b is in cache
            gw += g_part
            gb += float(z.sum())
        grad = np.empty(d + 1)
        np.divide(gw, n, out=grad[:d])
        grad[d] = gb / n
        return loss / n, grad


class LinearRegression(_AffineModel):
    """Least squares, loss ``mean(0.5 * (X @ w + b - y) ** 2)`` (note the 0.5)."""

    kind = "linear"
    task = "regression"
    n_classes = 1

    @staticmethod
    def _residual(z, y, work):
        z -= y
        return 0.5 * float(z @ z)


class LogisticRegression(_AffineModel):
    """Binary cross-entropy on logits ``z = X @ w + b`` with ``y`` in {0, 1}."""

    kind = "logistic"
    task = "classification"
    n_classes = 2

    @staticmethod
    def _residual(z, y, work):
        # -[y log s(z) + (1-y) log s(-z)] = softplus(z) - y z, softplus = logaddexp(0, z);
        # s(z) = exp(z - softplus(z)): one logaddexp serves the loss and the gradient.
        sp = np.logaddexp(0.0, z, out=work)
        loss = float(sp.sum()) - float(y @ z)
        np.subtract(z, sp, out=z)
        np.exp(z, out=z)
        z -= y
        return loss

    def predict_proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        params, X = self._check(params, X)
        z = self._scores(self.layout.views(params), X)
        return np.column_stack([_sigmoid(-z), _sigmoid(z)])


class SoftmaxRegression(Model):
    """Multinomial logistic regression: ``W`` (d x C, row-major) then ``b`` (C).

    The gradient is computed block by block like :class:`_AffineModel`'s: ``Z_b = X_b @
    W``, softmax and cross-entropy in place on the small ``(rows, C)`` block, then
    ``X_b.T @ (P_b - Y_b)`` while ``X_b`` is still in cache.
    """

    kind = "softmax"
    task = "classification"

    def __init__(self, n_features: int, n_classes: int) -> None:
        self.n_features = n_features
        self.n_classes = n_classes
        self.layout = Layout((("W", (n_features, n_classes), True), ("b", (n_classes,), False)))

    def _scores(self, p, X):
        return X @ p["W"].astype(X.dtype, copy=False) + p["b"].astype(X.dtype, copy=False)

    kernel_checks_labels = True

    def _kernels(self, X):
        """The C kernels when they take ``X`` (rows of at least a vector of features)."""
        kernels = _native_for(X)
        if kernels is None or not kernels.softmax_fits(X.shape[1], X.dtype):
            return None
        return kernels

    def _loss_and_grad(self, p, X, y, kernels):
        n, d = X.shape
        C = self.n_classes
        dt = X.dtype
        if kernels is not None:
            try:
                loss, grad = kernels.softmax(X, np.ascontiguousarray(y), p["W"], p["b"])
            except native.LabelError as exc:
                raise ModelError(str(exc)) from None
            grad /= n
            return loss / n, grad
        # Scores are kept transposed, (C, rows): the per-row reductions of the softmax
        # then run across C contiguous rows of length ``rows`` (vectorised), not along
        # rows of length C.
        WT, b = np.ascontiguousarray(p["W"].T, dtype=dt), p["b"].astype(dt)[:, None]
        rows = _row_blocks(X)
        z_buf, s_buf = np.empty(C * min(rows, n), dt), np.empty(min(rows, n), dt)
        g_part = np.empty((C, d), dt)
        gWT, gb, loss = np.zeros((C, d)), np.zeros(C), 0.0
        for lo in range(0, n, rows):
            Xb, yb = X[lo : lo + rows], y[lo : lo + rows]
            m = len(yb)
            z, s = z_buf[: C * m].reshape(C, m), s_buf[:m]  # contiguous, also the last block
            np.matmul(WT, Xb.T, out=z)
            z += b
            loss += _softmax_block(z, yb, s)  # z becomes (P - onehot(y)).T
            np.matmul(z, Xb, out=g_part)
            gWT += g_part
            gb += z.sum(axis=1)
        grad = np.empty(d * C + C)
        np.divide(gWT.T, n, out=grad[: d * C].reshape(d, C))
        np.divide(gb, n, out=grad[d * C :])
        return loss / n, grad

    def predict_proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        params, X = self._check(params, X)
        z = self._scores(self.layout.views(params), X)
        return np.exp(z - _logsumexp_rows(z)[:, None])


_COMPUTE_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))
# Rows per block: a block of X (rows x features) is read a second time while it is still
# in cache, and each block costs a dozen numpy calls; 1 MiB (L2-to-L3 sized) measured best
# against 256 KiB to 2 MiB on 1e6 x 100 (benchmarks/kernel.py). At least 64 rows, so the
# Python loop stays cheap for narrow data.
BLOCK_BYTES = 1024 * 1024


def _native_for(X: np.ndarray) -> native.Kernels | None:
    """The fused C kernels (:mod:`lambdagrad.native`) when they are built and take ``X``
    as it is (row-major float32/float64); None sends the caller to its numpy kernel."""
    if native.KERNELS is None or not X.flags.c_contiguous:
        return None
    return native.KERNELS


def _row_blocks(X: np.ndarray) -> int:
    return max(64, BLOCK_BYTES // max(1, X.shape[1] * X.itemsize))


def _softmax_block(z: np.ndarray, y: np.ndarray, s: np.ndarray) -> float:
    """Cross-entropy sum of one block of transposed scores ``z`` (C, m); ``z`` becomes
    ``(softmax(z) - onehot(y)).T`` in place.

    Log-sum-exp with the column maximum subtracted first, so no exponent overflows.
    """
    m = z.shape[1]
    picked = y * m + np.arange(m)  # flat positions of z[y_i, i]; z is a contiguous block
    flat = z.reshape(-1)  # a view: the caller passes a contiguous block
    np.max(z, axis=0, out=s)
    z -= s
    loss = -float(flat[picked].sum())
    np.exp(z, out=z)
    np.sum(z, axis=0, out=s)
    loss += float(np.log(s).sum())
    z /= s
    flat[picked] -= 1.0
    return loss


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function without overflow: ``exp(-log(1 + e^-z))``."""
    return np.exp(-np.logaddexp(0.0, -z))


def _logsumexp_rows(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


def _softmax_cross_entropy(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of scores ``z`` (n, C) and its gradient w.r.t. ``z``."""
    n = z.shape[0]
    lse = _logsumexp_rows(z)
    rows = np.arange(n)
    loss = float(np.mean(lse - z[rows, y]))
    dz = np.exp(z - lse[:, None])  # softmax probabilities
    dz[rows, y] -= 1.0
    dz /= n
    return loss, dz


# ---- multi-layer perceptron ------------------------------------------------------------

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def _relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0)


def _relu_grad(z: np.ndarray, a: np.ndarray) -> np.ndarray:
    return (z > 0.0).astype(np.float64)  # 0 at the kink z == 0 (a subgradient)


def _tanh_grad(z: np.ndarray, a: np.ndarray) -> np.ndarray:
    return 1.0 - a * a


def _sigmoid_grad(z: np.ndarray, a: np.ndarray) -> np.ndarray:
    return a * (1.0 - a)


def _gelu(z: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation: ``0.5 z (1 + tanh(c (z + 0.044715 z^3)))``, c = sqrt(2/pi)."""
    return 0.5 * z * (1.0 + np.tanh(_GELU_C * (z + _GELU_A * z**3)))


def _gelu_grad(z: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Exact derivative of :func:`_gelu` (the tanh approximation, not of the erf GELU)."""
    t = np.tanh(_GELU_C * (z + _GELU_A * z**3))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_A * z * z)


# name -> (activation, derivative given the pre-activation z and the activation a = f(z))
_ACTIVATION_FNS: dict[
    str,
    tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray, np.ndarray], np.ndarray]],
] = {
    "relu": (_relu, _relu_grad),
    "tanh": (np.tanh, _tanh_grad),
    "sigmoid": (_sigmoid, _sigmoid_grad),
    "gelu": (_gelu, _gelu_grad),
}


class MLP(Model):
    """Multi-layer perceptron: hidden layers ``a = f(a_prev @ W_i + b_i)``, then a linear
    output layer.

    Parameters, in the flat vector in this order: ``W1`` ``(n_features, h1)`` row-major,
    ``b1`` ``(h1,)``, ``W2`` ``(h1, h2)``, ``b2``, ..., and last the output layer
    ``W{L+1}`` ``(h_L, n_out)``, ``b{L+1}`` ``(n_out,)`` where ``L = len(hidden)`` and
    ``n_out`` is 1 for regression and ``n_classes`` otherwise.

    - ``n_classes == 1``: regression, ``task = "regression"``, loss
      ``mean(0.5 * (pred - y) ** 2)`` as :class:`LinearRegression`.
    - ``n_classes >= 2``: classification, ``task = "classification"``, softmax
      cross-entropy on ``n_classes`` logits (log-sum-exp), as :class:`SoftmaxRegression`.

    Activations (``activation``, one for all hidden layers): ``relu``; ``tanh``;
    ``sigmoid``; ``gelu`` -- the **tanh approximation**
    ``0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))`` (as in BERT/GPT-2, PyTorch's
    ``approximate="tanh"``), and the gradient is the exact derivative of that formula,
    not of the erf-based GELU.

    The gradient is plain backprop with one BLAS matrix product per layer forward
    (``a @ W``) and two backward (``a.T @ dz`` and ``dz @ W.T``).

    Examples
    --------
    >>> m = build_model("mlp", 3, 2, hidden=(4,), activation="tanh")
    >>> [layer["name"] for layer in m.layers()], m.n_params
    (['W1', 'b1', 'W2', 'b2'], 26)
    """

    kind = "mlp"

    def __init__(
        self, n_features: int, n_classes: int, hidden: Sequence[int], activation: str
    ) -> None:
        self.n_features = n_features
        self.n_classes = n_classes
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.task = "regression" if n_classes == 1 else "classification"
        self._act, self._act_grad = _ACTIVATION_FNS[activation]
        sizes = (n_features, *self.hidden, n_classes)
        blocks: list[tuple[str, tuple[int, ...], bool]] = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes), start=1):
            blocks += [(f"W{i}", (fan_in, fan_out), True), (f"b{i}", (fan_out,), False)]
        self.layout = Layout(tuple(blocks))

    @property
    def n_layers(self) -> int:
        """Number of weight matrices: hidden layers plus the output layer."""
        return len(self.hidden) + 1

    def describe(self) -> dict:
        return {**super().describe(), "hidden": list(self.hidden), "activation": self.activation}

    def init(self, rng: np.random.Generator) -> np.ndarray:
        """Random weights, zero biases; deterministic given the state of ``rng``.

        Hidden weight matrices are He-normal, std ``sqrt(2 / fan_in)``, for ``relu`` and
        ``gelu``, and Xavier/Glorot-normal, std ``sqrt(2 / (fan_in + fan_out))``, for
        ``tanh`` and ``sigmoid``. The output layer is always Xavier-normal (it feeds no
        nonlinearity). Matrices are drawn in order ``W1, W2, ...`` from ``rng``.
        """
        params = np.zeros(self.n_params, dtype=np.float64)
        views = self.layout.views(params)
        he = self.activation in ("relu", "gelu")
        for i in range(1, self.n_layers + 1):
            W = views[f"W{i}"]
            fan_in, fan_out = W.shape
            if he and i < self.n_layers:
                std = math.sqrt(2.0 / fan_in)
            else:
                std = math.sqrt(2.0 / (fan_in + fan_out))
            W[...] = rng.standard_normal(W.shape) * std
        return params

    def _forward(
        self, p: dict[str, np.ndarray], X: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """Output logits ``(n, n_out)``, layer inputs ``[X, a1, ..., aL]`` and
        pre-activations ``[z1, ..., zL]``."""
        inputs = [X]
        pre: list[np.ndarray] = []
        a = X
        for i in range(1, self.n_layers):
            z = a @ p[f"W{i}"]
            z += p[f"b{i}"]
            a = self._act(z)
            pre.append(z)
            inputs.append(a)
        out = a @ p[f"W{self.n_layers}"]
        out += p[f"b{self.n_layers}"]
        return out, inputs, pre

    def _scores(self, p, X):
        out = self._forward(p, X)[0]
        return out[:, 0] if self.task == "regression" else out

    def _kernels(self, X):
        return None  # numpy throughout: its products are matrix-matrix (BLAS)

    def _loss_and_grad(self, p, X, y, kernels):
        del kernels
        n = X.shape[0]
        out, inputs, pre = self._forward(p, X)
        if self.task == "regression":
            r = out[:, 0] - y
            loss = 0.5 * float(r @ r) / n
            dz = (r / n)[:, None]
        else:
            loss, dz = _softmax_cross_entropy(out, y)
        grad = np.empty(self.n_params, dtype=np.float64)
        g = self.layout.views(grad)
        # dz holds d(loss)/d(z_i) for the layer i being processed, from the output down.
        for i in range(self.n_layers, 0, -1):
            g[f"W{i}"][...] = inputs[i - 1].T @ dz
            g[f"b{i}"][...] = dz.sum(axis=0)
            if i > 1:
                dz = dz @ p[f"W{i}"].T
                dz *= self._act_grad(pre[i - 2], inputs[i - 1])
        return loss, grad

    def predict_proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        if self.task == "regression":
            return super().predict_proba(params, X)
        params, X = self._check(params, X)
        z = self._scores(self.layout.views(params), X)
        return np.exp(z - _logsumexp_rows(z)[:, None])


def build_model(
    kind: str,
    n_features: int,
    n_classes: int,
    *,
    hidden: Sequence[int] = (),
    activation: str = "relu",
) -> Model:
    """Build a model by name.

    Parameters
    ----------
    kind : {"linear", "logistic", "softmax", "mlp"}
    n_features : int
        Number of input columns, at least 1.
    n_classes : int
        1 for ``linear``, exactly 2 for ``logistic``, at least 2 for ``softmax``; for
        ``mlp`` 1 means regression and 2 or more classification (softmax output).
    hidden : sequence of int, keyword-only
        Widths of the hidden layers of an ``mlp``, at least one, each positive. Must be
        empty for the other kinds.
    activation : {"relu", "tanh", "sigmoid", "gelu"}, keyword-only
        Hidden-layer activation of an ``mlp`` (``gelu`` is the tanh approximation);
        ignored by the other kinds.

    ``build_model(**model.describe())`` rebuilds a model.

    Examples
    --------
    >>> build_model("softmax", n_features=4, n_classes=3).n_params
    15
    >>> build_model("mlp", 4, 3, hidden=[8, 8], activation="gelu").n_params
    139
    """
    if kind not in MODEL_KINDS:
        raise ModelError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    if not isinstance(n_features, int | np.integer) or n_features < 1:
        raise ModelError(f"n_features must be a positive integer, got {n_features!r}")
    n_features = int(n_features)
    hidden = _check_hidden(hidden)
    if kind != "mlp" and hidden:
        raise ModelError(f"hidden layers are only for mlp, not {kind}; got hidden={list(hidden)}")
    if kind == "linear":
        if n_classes != 1:
            raise ModelError(f"linear regression needs n_classes=1, got {n_classes}")
        return LinearRegression(n_features)
    if kind == "logistic":
        if n_classes != 2:
            raise ModelError(
                f"logistic regression needs exactly 2 classes, got {n_classes}; "
                "use softmax for more"
            )
        return LogisticRegression(n_features)
    if kind == "softmax":
        if not isinstance(n_classes, int | np.integer) or n_classes < 2:
            raise ModelError(f"softmax regression needs at least 2 classes, got {n_classes}")
        return SoftmaxRegression(n_features, int(n_classes))
    # mlp
    if not hidden:
        raise ModelError("mlp needs at least one hidden layer")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ModelError(
            f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}"
        )
    if not isinstance(n_classes, int | np.integer) or isinstance(n_classes, bool) or n_classes < 1:
        raise ModelError(
            f"mlp needs n_classes >= 1 (1 = regression, 2+ = classification), got {n_classes!r}"
        )
    return MLP(n_features, int(n_classes), hidden, activation)


def _check_hidden(hidden: Sequence[int]) -> tuple[int, ...]:
    if isinstance(hidden, str | bytes) or not isinstance(hidden, Sequence | np.ndarray):
        raise ModelError(f"hidden must be a sequence of layer widths, got {hidden!r}")
    out = []
    for h in hidden:
        if isinstance(h, bool) or not isinstance(h, int | np.integer) or h < 1:
            raise ModelError(f"hidden layer widths must be positive integers, got {list(hidden)}")
        out.append(int(h))
    return tuple(out)


def l2_penalty(model: Model, params: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    """``0.5 * l2 * ||w||^2`` over weights only (biases are not shrunk), and its gradient.

    Examples
    --------
    >>> m = build_model("linear", 2, 1)
    >>> l2_penalty(m, np.array([1.0, 2.0, 5.0]), 0.1)[0]
    0.25
    """
    w = np.where(model.weight_mask, np.asarray(params, dtype=np.float64), 0.0)
    return 0.5 * l2 * float(w @ w), l2 * w


def l1_penalty(model: Model, params: np.ndarray, l1: float) -> float:
    """``l1 * sum(|w|)`` over weights only (biases are not shrunk), for reporting.

    The L1 term is not differentiable at 0, so training applies it with :func:`l1_prox`
    rather than through a gradient; this value is what the objective includes.

    Examples
    --------
    >>> m = build_model("linear", 2, 1)
    >>> l1_penalty(m, np.array([1.0, -2.0, 5.0]), 0.1)
    0.30000000000000004
    """
    w = np.asarray(params, dtype=np.float64)[model.weight_mask]
    return float(l1) * float(np.abs(w).sum())


def l1_prox(model: Model, params: np.ndarray, threshold: float) -> np.ndarray:
    """Proximal step of the L1 penalty: soft-threshold the weights, keep the biases.

    Returns a new vector (``params`` is not modified) equal to ``params`` except on
    ``model.weight_mask``, where ``w -> sign(w) * max(|w| - threshold, 0)``. This is the
    exact minimiser of ``0.5 * ||v - w||^2 + threshold * ||v||_1``, so a training step for
    ``loss + l1 * ||w||_1`` is a gradient step on the smooth part (data loss, L2) with step
    size ``lr`` followed by ``l1_prox(model, params, lr * l1)`` (proximal gradient / ISTA).

    Why proximal and not a (sub)gradient ``l1 * sign(w)`` added to the gradient: the
    subgradient step never lands on 0 -- a small weight is pushed across zero by
    ``lr * l1`` and back the next step, oscillating around 0 and never sparse -- while
    soft-thresholding sets every weight with ``|w| <= threshold`` to exactly 0 and keeps it
    there until the data gradient is strong enough to move it out. Zeros come out as
    ``+0.0``.

    Examples
    --------
    >>> m = build_model("linear", 3, 1)
    >>> l1_prox(m, np.array([0.05, -2.0, 0.5, -0.01]), 0.1)
    array([ 0.  , -1.9 ,  0.4 , -0.01])
    """
    threshold = float(threshold)
    if not threshold >= 0.0:  # also rejects NaN
        raise ModelError(f"l1 threshold must be >= 0, got {threshold}")
    out = np.array(params, dtype=np.float64, copy=True)
    if out.shape != (model.n_params,):
        raise ModelError(f"expected {model.n_params} parameters, got shape {out.shape}")
    mask = model.weight_mask
    w = out[mask]
    # "+ 0.0" turns the -0.0 of sign(w) * 0 for negative w into +0.0.
    out[mask] = np.sign(w) * np.maximum(np.abs(w) - threshold, 0.0) + 0.0
    return out
