"""Models as pure functions of one flat float64 parameter vector.

A flat vector is what travels between Lambda workers and the reducer (one ``.npy`` per
round) and what optimizers update, so every model exposes its parameters that way and
keeps the layer structure in a :class:`Layout` of named views.

Loss conventions (all are the MEAN over the rows of the batch):

- ``linear``: squared error with a one-half factor, ``mean(0.5 * (X @ w + b - y) ** 2)``,
  so the gradient for row i is ``x_i (x_i . w + b - y_i)`` with no stray factor 2.
- ``logistic``: binary cross-entropy, ``y`` in {0, 1}, via ``logaddexp`` (stable).
- ``softmax``: softmax cross-entropy, ``y`` class indices, via log-sum-exp (stable).

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
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LinearRegression",
    "LogisticRegression",
    "Model",
    "ModelError",
    "SoftmaxRegression",
    "build_model",
    "l2_penalty",
]

MODEL_KINDS = ("linear", "logistic", "softmax")


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
        return sum(int(np.prod(shape)) for _, shape, _ in self.blocks)

    def views(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """Reshaped views (no copies) of ``params``, block by block, in order."""
        out: dict[str, np.ndarray] = {}
        start = 0
        for name, shape, _ in self.blocks:
            stop = start + int(np.prod(shape))
            out[name] = params[start:stop].reshape(shape)
            start = stop
        return out

    def weight_mask(self) -> np.ndarray:
        return np.concatenate(
            [np.full(int(np.prod(shape)), is_w, dtype=bool) for _, shape, is_w in self.blocks]
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
        """JSON-able layer description for ``model.json``."""
        return self.layout.describe()

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
        y = self._check_y(np.asarray(y))
        loss, grad = self._loss_and_grad(self.layout.views(params), X, y)
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
        X = np.asarray(X, dtype=np.float64)
        if params.shape != (self.n_params,):
            raise ModelError(f"expected {self.n_params} parameters, got shape {params.shape}")
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ModelError(f"expected X of shape (n, {self.n_features}), got {X.shape}")
        return params, X

    def _check_y(self, y: np.ndarray) -> np.ndarray:
        """float64 targets for regression; int64 indices in ``[0, n_classes)`` otherwise."""
        if y.ndim != 1:
            raise ModelError(f"y must be 1-D, got shape {y.shape}")
        if self.task == "regression":
            return y.astype(np.float64, copy=False)
        idx = y.astype(np.int64, copy=False)
        if np.any(idx != y) or idx.min() < 0 or idx.max() >= self.n_classes:
            raise ModelError(f"y must hold class indices in [0, {self.n_classes})")
        return idx

    @abc.abstractmethod
    def _scores(self, p: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
        """Raw outputs: predictions, one logit per row, or ``(n, C)`` logits."""

    @abc.abstractmethod
    def _loss_and_grad(
        self, p: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """Loss and gradient for a non-empty, shape-checked batch."""


class _AffineModel(Model):
    """``z = X @ w + b``: the shared core of linear and logistic regression."""

    def __init__(self, n_features: int) -> None:
        self.n_features = n_features
        self.layout = Layout((("w", (n_features,), True), ("b", (1,), False)))

    def _scores(self, p: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
        return X @ p["w"] + p["b"][0]

    @staticmethod
    def _affine_grad(X: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Gradient of a mean loss whose derivative w.r.t. ``z`` is ``r / n``."""
        n = X.shape[0]
        return np.concatenate([X.T @ r / n, [r.sum() / n]])


class LinearRegression(_AffineModel):
    """Least squares, loss ``mean(0.5 * (X @ w + b - y) ** 2)`` (note the 0.5)."""

    kind = "linear"
    task = "regression"
    n_classes = 1

    def _loss_and_grad(self, p, X, y):
        r = self._scores(p, X) - y
        return 0.5 * float(r @ r) / X.shape[0], self._affine_grad(X, r)


class LogisticRegression(_AffineModel):
    """Binary cross-entropy on logits ``z = X @ w + b`` with ``y`` in {0, 1}."""

    kind = "logistic"
    task = "classification"
    n_classes = 2

    def _loss_and_grad(self, p, X, y):
        z = self._scores(p, X)
        y = y.astype(np.float64)  # the check above guarantees 0 or 1
        # -[y log s(z) + (1-y) log s(-z)] = log(1 + e^z) - y z, stable via logaddexp.
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
        return loss, self._affine_grad(X, _sigmoid(z) - y)

    def predict_proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        params, X = self._check(params, X)
        z = self._scores(self.layout.views(params), X)
        return np.column_stack([_sigmoid(-z), _sigmoid(z)])


class SoftmaxRegression(Model):
    """Multinomial logistic regression: ``W`` (d x C, row-major) then ``b`` (C)."""

    kind = "softmax"
    task = "classification"

    def __init__(self, n_features: int, n_classes: int) -> None:
        self.n_features = n_features
        self.n_classes = n_classes
        self.layout = Layout((("W", (n_features, n_classes), True), ("b", (n_classes,), False)))

    def _scores(self, p, X):
        return X @ p["W"] + p["b"]

    def _loss_and_grad(self, p, X, y):
        n = X.shape[0]
        z = self._scores(p, X)
        lse = _logsumexp_rows(z)
        rows = np.arange(n)
        loss = float(np.mean(lse - z[rows, y]))
        g = np.exp(z - lse[:, None])  # softmax probabilities
        g[rows, y] -= 1.0
        g /= n
        return loss, np.concatenate([(X.T @ g).ravel(), g.sum(axis=0)])

    def predict_proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        params, X = self._check(params, X)
        z = self._scores(self.layout.views(params), X)
        return np.exp(z - _logsumexp_rows(z)[:, None])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function without overflow: ``exp(-log(1 + e^-z))``."""
    return np.exp(-np.logaddexp(0.0, -z))


def _logsumexp_rows(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


def build_model(kind: str, n_features: int, n_classes: int) -> Model:
    """Build a model by name.

    Parameters
    ----------
    kind : {"linear", "logistic", "softmax"}
    n_features : int
        Number of input columns, at least 1.
    n_classes : int
        1 for ``linear``, exactly 2 for ``logistic``, at least 2 for ``softmax``.

    Examples
    --------
    >>> build_model("softmax", n_features=4, n_classes=3).n_params
    15
    """
    if kind not in MODEL_KINDS:
        raise ModelError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    if not isinstance(n_features, int | np.integer) or n_features < 1:
        raise ModelError(f"n_features must be a positive integer, got {n_features!r}")
    n_features = int(n_features)
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
    if not isinstance(n_classes, int | np.integer) or n_classes < 2:
        raise ModelError(f"softmax regression needs at least 2 classes, got {n_classes}")
    return SoftmaxRegression(n_features, int(n_classes))


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
