"""Optimizers in optax's shape: a pair of pure functions with explicit state.

``init(params) -> state`` and ``update(grads, state, params) -> (updates, state)``, then
``params + updates``. State is a flat ``dict`` of numpy arrays (always with an int64
``"step"``) so the reducer can checkpoint it to S3 as an ``.npz`` next to the
parameters and resume in another Lambda invocation. Nothing is mutated in place.

The learning rate of an update is ``schedule(int(state["step"]))``, the step *before*
the update, so the first update uses ``schedule(0)``; the step then increases by one.

Examples
--------
>>> import numpy as np
>>> opt = make_optimizer("sgd", 0.1)
>>> params = np.array([1.0, 2.0])
>>> state = opt.init(params)
>>> updates, state = opt.update(np.array([1.0, -1.0]), state, params)
>>> apply_updates(params, updates), int(state["step"])
(array([0.9, 2.1]), 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "GradientTransformation",
    "OptimizerError",
    "Schedule",
    "adam",
    "apply_updates",
    "chain",
    "constant",
    "make_optimizer",
    "momentum",
    "sgd",
]

Schedule = Callable[[int], float]
State = dict[str, np.ndarray]


class OptimizerError(ValueError):
    """Unknown optimizer or invalid hyper-parameter."""


@dataclass(frozen=True)
class GradientTransformation:
    """``init(params) -> state``; ``update(grads, state, params) -> (updates, new_state)``."""

    init: Callable[[np.ndarray], State]
    update: Callable[[np.ndarray, State, np.ndarray], tuple[np.ndarray, State]]


def constant(lr: float) -> Schedule:
    """A schedule that returns ``lr`` at every step."""
    lr = float(lr)

    def schedule(step: int) -> float:
        return lr

    return schedule


def _as_schedule(learning_rate: float | Schedule) -> Schedule:
    if callable(learning_rate):
        return learning_rate
    lr = float(learning_rate)
    if not math.isfinite(lr) or lr <= 0:
        raise OptimizerError(f"learning_rate must be a positive number, got {learning_rate!r}")
    return constant(lr)


def _check_unit(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise OptimizerError(f"{name} must be in [0, 1), got {value!r}")
    return value


def _step(state: State) -> np.ndarray:
    return np.asarray(int(state["step"]) + 1, dtype=np.int64)


def _zero_step() -> np.ndarray:
    return np.asarray(0, dtype=np.int64)


def sgd(learning_rate: float | Schedule) -> GradientTransformation:
    """Plain gradient descent: ``update = -lr * g``."""
    schedule = _as_schedule(learning_rate)

    def init(params: np.ndarray) -> State:
        return {"step": _zero_step()}

    def update(grads: np.ndarray, state: State, params: np.ndarray) -> tuple[np.ndarray, State]:
        lr = schedule(int(state["step"]))
        return -lr * np.asarray(grads, dtype=np.float64), {"step": _step(state)}

    return GradientTransformation(init, update)


def momentum(
    learning_rate: float | Schedule, beta: float = 0.9, nesterov: bool = False
) -> GradientTransformation:
    """Heavy-ball momentum, optax/PyTorch convention (no ``1 - beta`` damping).

    ``v = beta * v + g`` and ``update = -lr * v``; with ``nesterov=True`` the update
    is ``-lr * (g + beta * v)`` using the new ``v``. State: ``step``, ``velocity``.

    Examples
    --------
    >>> opt = momentum(1.0, beta=0.5)
    >>> p = np.zeros(1)
    >>> u, s = opt.update(np.ones(1), opt.init(p), p)
    >>> u, s = opt.update(np.ones(1), s, p)
    >>> u
    array([-1.5])
    """
    schedule = _as_schedule(learning_rate)
    beta = _check_unit("beta", beta)

    def init(params: np.ndarray) -> State:
        return {"step": _zero_step(), "velocity": np.zeros_like(params, dtype=np.float64)}

    def update(grads: np.ndarray, state: State, params: np.ndarray) -> tuple[np.ndarray, State]:
        g = np.asarray(grads, dtype=np.float64)
        lr = schedule(int(state["step"]))
        v = beta * state["velocity"] + g
        direction = g + beta * v if nesterov else v
        return -lr * direction, {"step": _step(state), "velocity": v}

    return GradientTransformation(init, update)


def adam(
    learning_rate: float | Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> GradientTransformation:
    """Adam with bias correction, as ``optax.adam`` (``eps`` outside the square root).

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, ``t = step + 1``,
    ``update = -lr * m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m / (1 - b1^t)``,
    ``v_hat = v / (1 - b2^t)``. State: ``step``, ``mu``, ``nu``.
    """
    schedule = _as_schedule(learning_rate)
    b1 = _check_unit("b1", b1)
    b2 = _check_unit("b2", b2)
    eps = float(eps)
    if not eps >= 0.0:
        raise OptimizerError(f"eps must be >= 0, got {eps!r}")

    def init(params: np.ndarray) -> State:
        zeros = np.zeros_like(params, dtype=np.float64)
        return {"step": _zero_step(), "mu": zeros, "nu": zeros.copy()}

    def update(grads: np.ndarray, state: State, params: np.ndarray) -> tuple[np.ndarray, State]:
        g = np.asarray(grads, dtype=np.float64)
        lr = schedule(int(state["step"]))
        t = int(state["step"]) + 1
        mu = b1 * state["mu"] + (1.0 - b1) * g
        nu = b2 * state["nu"] + (1.0 - b2) * (g * g)
        mu_hat = mu / (1.0 - b1**t)
        nu_hat = nu / (1.0 - b2**t)
        updates = -lr * mu_hat / (np.sqrt(nu_hat) + eps)
        return updates, {"step": _step(state), "mu": mu, "nu": nu}

    return GradientTransformation(init, update)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations in sequence, each to the previous one's output.

    The state stays one flat dict of arrays (``.npz``-able): transformation ``i``'s
    entry ``key`` is stored as ``"{i}/{key}"``, plus a top-level ``"step"``.
    """

    def init(params: np.ndarray) -> State:
        state: State = {"step": _zero_step()}
        for i, t in enumerate(transforms):
            state.update({f"{i}/{k}": v for k, v in t.init(params).items()})
        return state

    def update(grads: np.ndarray, state: State, params: np.ndarray) -> tuple[np.ndarray, State]:
        new_state: State = {"step": _step(state)}
        updates = np.asarray(grads, dtype=np.float64)
        for i, t in enumerate(transforms):
            prefix = f"{i}/"
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            updates, sub = t.update(updates, sub, params)
            new_state.update({prefix + k: v for k, v in sub.items()})
        return updates, new_state

    return GradientTransformation(init, update)


_OPTIMIZERS: dict[str, Callable[..., GradientTransformation]] = {
    "sgd": sgd,
    "momentum": momentum,
    "adam": adam,
}


def make_optimizer(
    name: str, learning_rate: float | Schedule, **hyper: float | bool
) -> GradientTransformation:
    """Build an optimizer by name: ``sgd``, ``momentum`` (``beta``, ``nesterov``) or
    ``adam`` (``b1``, ``b2``, ``eps``).

    Examples
    --------
    >>> make_optimizer("adam", 1e-3, b1=0.8).init(np.zeros(2))["step"]
    array(0)
    """
    factory = _OPTIMIZERS.get(name)
    if factory is None:
        raise OptimizerError(
            f"unknown optimizer {name!r}; choose one of {', '.join(sorted(_OPTIMIZERS))}"
        )
    try:
        return factory(learning_rate, **hyper)
    except TypeError as exc:
        raise OptimizerError(f"bad hyper-parameters for {name}: {exc}") from exc


def apply_updates(params: np.ndarray, updates: np.ndarray) -> np.ndarray:
    """New parameters ``params + updates`` (a new array; the inputs are not touched)."""
    return np.asarray(params, dtype=np.float64) + updates
