"""Optimizers in optax's shape: a pair of pure functions with explicit state.

``init(params) -> state`` and ``update(grads, state, params) -> (updates, state)``, then
``params + updates``. State is a flat ``dict`` of numpy arrays (always with an int64
``"step"``) so the reducer can checkpoint it to S3 as an ``.npz`` next to the
parameters and resume in another Lambda invocation. Nothing is mutated in place, and
nothing lives on the Python side: the hyper-parameters are fixed when the optimizer is
built, everything that changes is in the state dict, so an optimizer rebuilt from the
same arguments continues a reloaded state exactly.

The learning rate of an update is ``schedule(int(state["step"]))``, the step *before*
the update, so the first update uses ``schedule(0)``; the step then increases by one.
Schedules (:func:`constant`, :func:`step_decay`, :func:`exponential`,
:func:`inverse_time`, :func:`cosine`, :func:`warmup`, :func:`make_schedule`) are pure
functions of that integer step, so a job restarted at step ``k`` continues exactly.

State keys, per optimizer: ``sgd`` and ``clip_by_global_norm``: ``step``; ``momentum``
and ``nesterov``: ``step``, ``velocity``; ``adam`` and ``adamw``: ``step``, ``mu``,
``nu``; ``adagrad``: ``step``, ``sum_of_squares``; ``rmsprop``: ``step``, ``nu``.
:func:`chain` stores transformation ``i``'s key ``k`` as ``"{i}/{k}"`` (nested chains
nest the prefix, ``"1/0/mu"``), plus its own ``step``; ``np.savez`` and
``np.load(allow_pickle=False)`` keep such keys as they are.

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

import inspect
import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "GradientTransformation",
    "OptimizerError",
    "Schedule",
    "adagrad",
    "adam",
    "adamw",
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "constant",
    "cosine",
    "exponential",
    "inverse_time",
    "make_optimizer",
    "make_schedule",
    "momentum",
    "nesterov",
    "rmsprop",
    "sgd",
    "step_decay",
    "warmup",
]

Schedule = Callable[[int], float]
State = dict[str, np.ndarray]

CHAIN_SEPARATOR = "/"


class OptimizerError(ValueError):
    """Unknown optimizer or schedule, or an invalid hyper-parameter."""


@dataclass(frozen=True)
class GradientTransformation:
    """``init(params) -> state``; ``update(grads, state, params) -> (updates, new_state)``."""

    init: Callable[[np.ndarray], State]
    update: Callable[[np.ndarray, State, np.ndarray], tuple[np.ndarray, State]]


# --------------------------------------------------------------------------- validation


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise OptimizerError(f"{name} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise OptimizerError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise OptimizerError(f"{name} must be finite, got {value!r}")
    return out


def _positive(name: str, value: Any) -> float:
    out = _number(name, value)
    if out <= 0.0:
        raise OptimizerError(f"{name} must be > 0, got {value!r}")
    return out


def _non_negative(name: str, value: Any) -> float:
    out = _number(name, value)
    if out < 0.0:
        raise OptimizerError(f"{name} must be >= 0, got {value!r}")
    return out


def _check_unit(name: str, value: Any) -> float:
    out = _number(name, value)
    if not 0.0 <= out < 1.0:
        raise OptimizerError(f"{name} must be in [0, 1), got {value!r}")
    return out


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool):
        raise OptimizerError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        out = operator.index(value)
    except TypeError:
        raise OptimizerError(f"{name} must be an integer, got {value!r}") from None
    if out < minimum:
        raise OptimizerError(f"{name} must be >= {minimum}, got {value!r}")
    return out


def _check_mask(mask: Any) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise OptimizerError(f"mask must be a boolean array, got dtype {arr.dtype}")
    arr = arr.copy()
    arr.flags.writeable = False
    return arr


# ---------------------------------------------------------------------------- schedules


class _Schedule:
    """A pure function of the step with a JSON description.

    ``config`` is a JSON-serialisable dict such that ``make_schedule(**config)`` builds
    the same schedule (``None`` when it cannot be described that way).
    """

    __slots__ = ("_config", "_fn")

    def __init__(self, fn: Callable[[int], float], config: dict[str, Any] | None) -> None:
        self._fn = fn
        self._config = config

    @property
    def config(self) -> dict[str, Any] | None:
        return None if self._config is None else dict(self._config)

    def __call__(self, step: int) -> float:
        try:
            t = operator.index(step)
        except TypeError:
            raise OptimizerError(f"a schedule's step must be an integer, got {step!r}") from None
        if t < 0:
            raise OptimizerError(f"a schedule's step must be >= 0, got {step!r}")
        return self._fn(t)

    def __repr__(self) -> str:
        return f"<schedule {json.dumps(self._config) if self._config else 'custom'}>"


def constant(lr: float) -> Schedule:
    """A schedule that returns ``lr`` at every step.

    Examples
    --------
    >>> constant(0.3)(12345)
    0.3
    """
    lr = float(lr)
    return _Schedule(lambda t: lr, {"name": "constant", "learning_rate": lr, "warmup": 0})


def step_decay(lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """Piecewise constant: ``lr * gamma ** (t // step_size)`` (PyTorch ``StepLR``,
    ``optax.exponential_decay(staircase=True)``).

    Examples
    --------
    >>> s = step_decay(1.0, 10, gamma=0.5)
    >>> s(9), s(10), s(25)
    (1.0, 0.5, 0.25)
    """
    lr = _positive("learning_rate", lr)
    step_size = _integer("step_size", step_size, 1)
    gamma = _decay_factor(gamma)
    config = {"name": "step", "learning_rate": lr, "warmup": 0}
    config |= {"step_size": step_size, "gamma": gamma}
    return _Schedule(lambda t: lr * gamma ** (t // step_size), config)


def exponential(lr: float, gamma: float) -> Schedule:
    """``lr * gamma ** t`` (PyTorch ``ExponentialLR``; ``optax.exponential_decay`` with
    ``transition_steps=1``).

    Examples
    --------
    >>> exponential(2.0, 0.5)(3)
    0.25
    """
    lr = _positive("learning_rate", lr)
    gamma = _decay_factor(gamma)
    config = {"name": "exponential", "learning_rate": lr, "warmup": 0, "gamma": gamma}
    return _Schedule(lambda t: lr * gamma**t, config)


def inverse_time(lr: float, decay: float) -> Schedule:
    """``lr / (1 + decay * t)`` (Keras ``InverseTimeDecay`` with ``decay_steps=1``).

    Examples
    --------
    >>> inverse_time(1.0, 0.5)(2)
    0.5
    """
    lr = _positive("learning_rate", lr)
    decay = _non_negative("decay", decay)
    config = {"name": "inverse_time", "learning_rate": lr, "warmup": 0, "decay": decay}
    return _Schedule(lambda t: lr / (1.0 + decay * t), config)


def cosine(lr: float, total_steps: int, final_lr: float = 0.0) -> Schedule:
    """Cosine from ``lr`` at ``t = 0`` to ``final_lr`` (``>= 0``, usually below ``lr``) at
    ``t = total_steps``, then ``final_lr``: ``optax.cosine_decay_schedule`` with
    ``alpha = final_lr / lr`` (Loshchilov & Hutter 2017, SGDR, without restarts):

    ``c = (1 + cos(pi * min(t, T) / T)) / 2``, ``lr_t = c * lr + (1 - c) * final_lr``.

    Examples
    --------
    >>> s = cosine(1.0, 10, final_lr=0.1)
    >>> s(0), s(10), s(99)
    (1.0, 0.1, 0.1)
    """
    lr = _positive("learning_rate", lr)
    total_steps = _integer("total_steps", total_steps, 1)
    final_lr = _non_negative("final_lr", final_lr)

    def schedule(t: int) -> float:
        c = 0.5 * (1.0 + math.cos(math.pi * min(t, total_steps) / total_steps))
        return c * lr + (1.0 - c) * final_lr

    config = {"name": "cosine", "learning_rate": lr, "warmup": 0}
    config |= {"total_steps": total_steps, "final_lr": final_lr}
    return _Schedule(schedule, config)


def warmup(schedule: Schedule, warmup_steps: int) -> Schedule:
    """Linear warm-up in front of ``schedule``:
    ``lr_t = schedule(0) * (t + 1) / warmup_steps`` for ``t < warmup_steps``, then
    ``schedule(t - warmup_steps)``. ``warmup_steps = 0`` returns ``schedule`` itself.

    Examples
    --------
    >>> s = warmup(constant(1.0), 4)
    >>> [s(t) for t in range(6)]
    [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    """
    if not callable(schedule):
        raise OptimizerError(f"warmup needs a schedule (a function of the step), got {schedule!r}")
    warmup_steps = _integer("warmup", warmup_steps, 0)
    if warmup_steps == 0:
        return schedule
    lr0 = float(schedule(0))

    def warm(t: int) -> float:
        if t < warmup_steps:
            return lr0 * (t + 1) / warmup_steps
        return float(schedule(t - warmup_steps))

    inner = schedule.config if isinstance(schedule, _Schedule) else None
    config = None
    if inner is not None and inner.get("warmup") == 0:
        config = inner | {"warmup": warmup_steps}
    return _Schedule(warm, config)


_warmup = warmup  # make_schedule's ``warmup`` argument shadows the function


def _decay_factor(gamma: Any) -> float:
    gamma = _number("gamma", gamma)
    if not 0.0 < gamma <= 1.0:
        raise OptimizerError(f"gamma must be in (0, 1], got {gamma!r}")
    return gamma


_SCHEDULES: dict[str, tuple[Callable[..., Schedule], dict[str, bool]]] = {
    # name -> (builder, {parameter: required})
    "constant": (constant, {}),
    "step": (step_decay, {"step_size": True, "gamma": False}),
    "exponential": (exponential, {"gamma": True}),
    "inverse_time": (inverse_time, {"decay": True}),
    "cosine": (cosine, {"final_lr": False}),
}


def make_schedule(
    name: str,
    learning_rate: float,
    *,
    warmup: int = 0,
    total_steps: int | None = None,
    **params: Any,
) -> Schedule:
    """Build a schedule by name, optionally behind a linear warm-up of ``warmup`` steps.

    ``constant``; ``step`` (``step_size``, ``gamma=0.1``); ``exponential`` (``gamma``);
    ``inverse_time`` (``decay``); ``cosine`` (``final_lr=0.0``, needs ``total_steps``).
    The result is ``warmup(builder(learning_rate, **params), warmup)``: ``total_steps``
    is the cosine's own length, counted *after* the warm-up (the cosine reaches
    ``final_lr`` at ``t = warmup + total_steps``; unlike optax's
    ``warmup_cosine_decay_schedule``, whose ``decay_steps`` includes the warm-up). The
    other schedules do not use ``total_steps``, so a trainer may always pass it. The
    result's ``config`` is a JSON-serialisable dict with ``make_schedule(**config)``
    rebuilding it.

    Examples
    --------
    >>> s = make_schedule("cosine", 1.0, warmup=2, total_steps=4)
    >>> [round(s(t), 3) for t in range(8)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0, 0.0]
    >>> s.config
    {'name': 'cosine', 'learning_rate': 1.0, 'warmup': 2, 'total_steps': 4, 'final_lr': 0.0}
    """
    entry = _SCHEDULES.get(name)
    if entry is None:
        raise OptimizerError(
            f"unknown schedule {name!r}; choose one of {', '.join(sorted(_SCHEDULES))}"
        )
    builder, allowed = entry
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise OptimizerError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for schedule {name!r}; "
            f"allowed: {', '.join(allowed) or 'none'} (and warmup, total_steps)"
        )
    missing = [p for p, required in allowed.items() if required and p not in params]
    if missing:
        raise OptimizerError(f"schedule {name!r} needs {', '.join(missing)}")
    _positive("learning_rate", learning_rate)
    warmup_steps = _integer("warmup", warmup, 0)
    if total_steps is not None:
        total_steps = _integer("total_steps", total_steps, 1)
    if name == "cosine":
        if total_steps is None:
            raise OptimizerError("schedule 'cosine' needs total_steps")
        params = {"total_steps": total_steps, **params}
    return _warmup(builder(learning_rate, **params), warmup_steps)


def _as_schedule(learning_rate: float | Schedule) -> Schedule:
    if callable(learning_rate):
        return learning_rate
    return constant(_positive("learning_rate", learning_rate))


# --------------------------------------------------------------------------- optimizers


def _step(state: State) -> np.ndarray:
    return np.asarray(int(state["step"]) + 1, dtype=np.int64)


def _zero_step() -> np.ndarray:
    return np.asarray(0, dtype=np.int64)


def _grads(grads: np.ndarray) -> np.ndarray:
    return np.asarray(grads, dtype=np.float64)


def sgd(learning_rate: float | Schedule) -> GradientTransformation:
    """Plain gradient descent, as ``optax.sgd``: ``update = -lr * g``. State: ``step``."""
    schedule = _as_schedule(learning_rate)

    def init(params: np.ndarray) -> State:
        return {"step": _zero_step()}

    def update(grads: np.ndarray, state: State, params: np.ndarray) -> tuple[np.ndarray, State]:
        lr = schedule(int(state["step"]))
        return -lr * _grads(grads), {"step": _step(state)}

    return GradientTransformation(init, update)


def momentum(
    learning_rate: float | Schedule, beta: float = 0.9, nesterov: bool = False
) -> GradientTransformation:
    """Heavy-ball momentum, optax/PyTorch convention (no ``1 - beta`` damping).

    ``v = beta * v + g`` and ``update = -lr * v``; with ``nesterov=True`` the update
    is ``-lr * (g + beta * v)`` using the new ``v`` (``optax.sgd(momentum=beta,
    nesterov=True)``, i.e. ``optax.trace``). State: ``step``, ``velocity`` (starts at 0).

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
    if nesterov not in (True, False):
        raise OptimizerError(f"nesterov must be true or false, got {nesterov!r}")
    use_nesterov = bool(nesterov)

    def init(params: np.ndarray) -> State:
        return {"step": _zero_step(), "velocity": np.zeros_like(params, dtype=np.float64)}

    def update(grads: np.ndarray, state: State, params: np.ndarray) -> tuple[np.ndarray, State]:
        g = _grads(grads)
        lr = schedule(int(state["step"]))
        v = beta * state["velocity"] + g
        direction = g + beta * v if use_nesterov else v
        return -lr * direction, {"step": _step(state), "velocity": v}

    return GradientTransformation(init, update)


def nesterov(learning_rate: float | Schedule, beta: float = 0.9) -> GradientTransformation:
    """Nesterov momentum: ``momentum(learning_rate, beta, nesterov=True)``.

    ``v = beta * v + g``, ``update = -lr * (g + beta * v)`` (new ``v``), as
    ``optax.sgd(lr, momentum=beta, nesterov=True)`` (Sutskever et al. 2013, in the
    form PyTorch uses). State: ``step``, ``velocity``.
    """
    return momentum(learning_rate, beta=beta, nesterov=True)


def _adam_core(
    learning_rate: float | Schedule, b1: float, b2: float, eps: float
) -> tuple[Schedule, Callable[[np.ndarray], State], Callable[..., tuple[np.ndarray, State]]]:
    schedule = _as_schedule(learning_rate)
    b1 = _check_unit("b1", b1)
    b2 = _check_unit("b2", b2)
    eps = _non_negative("eps", eps)

    def init(params: np.ndarray) -> State:
        zeros = np.zeros_like(params, dtype=np.float64)
        return {"step": _zero_step(), "mu": zeros, "nu": zeros.copy()}

    def update(g: np.ndarray, state: State, lr: float) -> tuple[np.ndarray, State]:
        t = int(state["step"]) + 1
        mu = b1 * state["mu"] + (1.0 - b1) * g
        nu = b2 * state["nu"] + (1.0 - b2) * (g * g)
        mu_hat = mu / (1.0 - b1**t)
        nu_hat = nu / (1.0 - b2**t)
        updates = -lr * mu_hat / (np.sqrt(nu_hat) + eps)
        return updates, {"step": _step(state), "mu": mu, "nu": nu}

    return schedule, init, update


def adam(
    learning_rate: float | Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> GradientTransformation:
    """Adam with bias correction, as ``optax.adam`` (``eps`` outside the square root;
    Kingma & Ba 2015, Algorithm 1).

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, ``t = step + 1``,
    ``update = -lr * m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m / (1 - b1^t)``,
    ``v_hat = v / (1 - b2^t)``. State: ``step``, ``mu``, ``nu``.
    """
    schedule, init, core = _adam_core(learning_rate, b1, b2, eps)

    def update(grads: np.ndarray, state: State, params: np.ndarray) -> tuple[np.ndarray, State]:
        return core(_grads(grads), state, schedule(int(state["step"])))

    return GradientTransformation(init, update)


def adamw(
    learning_rate: float | Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    mask: np.ndarray | None = None,
) -> GradientTransformation:
    """Adam with decoupled weight decay, as ``optax.adamw`` (Loshchilov & Hutter 2019).

    ``update = -lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * w * params)`` with
    ``m_hat``, ``v_hat`` exactly as :func:`adam` (the gradient alone feeds the moments)
    and ``w = mask`` (1 where decay applies, 0 elsewhere; all ones when ``mask`` is
    ``None``). Pass the model's ``weight_mask`` so biases are not decayed. The decay is
    scaled by the scheduled ``lr`` (optax's convention, not PyTorch's ``lr``-free
    ``weight_decay``), and ``weight_decay = 0`` is :func:`adam`. State: ``step``, ``mu``,
    ``nu``.
    """
    schedule, init_adam, core = _adam_core(learning_rate, b1, b2, eps)
    weight_decay = _non_negative("weight_decay", weight_decay)
    mask_arr = None if mask is None else _check_mask(mask)

    def check_shape(params: np.ndarray) -> None:
        if mask_arr is not None and mask_arr.shape != np.shape(params):
            raise OptimizerError(
                f"mask has shape {mask_arr.shape}, the parameters {np.shape(params)}"
            )

    def init(params: np.ndarray) -> State:
        check_shape(params)
        return init_adam(params)

    def update(grads: np.ndarray, state: State, params: np.ndarray) -> tuple[np.ndarray, State]:
        check_shape(params)
        lr = schedule(int(state["step"]))
        updates, new_state = core(_grads(grads), state, lr)
        p = np.asarray(params, dtype=np.float64)
        decayed = p if mask_arr is None else np.where(mask_arr, p, 0.0)
        # Equal to -lr * (direction + wd * decayed); written so that wd = 0 and the
        # coordinates outside the mask are Adam's updates bit for bit.
        return updates - (lr * weight_decay) * decayed, new_state

    return GradientTransformation(init, update)


def adagrad(
    learning_rate: float | Schedule, initial_accumulator_value: float = 0.1, eps: float = 1e-7
) -> GradientTransformation:
    """AdaGrad, as ``optax.adagrad`` (Duchi, Hazan & Singer 2011).

    ``G = G + g^2`` (``G`` starts at ``initial_accumulator_value``) and
    ``update = -lr * g / sqrt(G + eps)`` where ``G > 0``, ``0`` where ``G == 0``
    (``eps`` inside the square root, as ``optax.scale_by_rss``). State: ``step``,
    ``sum_of_squares``.
    """
    schedule = _as_schedule(learning_rate)
    initial = _non_negative("initial_accumulator_value", initial_accumulator_value)
    eps = _non_negative("eps", eps)

    def init(params: np.ndarray) -> State:
        return {
            "step": _zero_step(),
            "sum_of_squares": np.full(np.shape(params), initial, dtype=np.float64),
        }

    def update(grads: np.ndarray, state: State, params: np.ndarray) -> tuple[np.ndarray, State]:
        g = _grads(grads)
        lr = schedule(int(state["step"]))
        acc = state["sum_of_squares"] + g * g
        direction = np.divide(g, np.sqrt(acc + eps), out=np.zeros_like(g), where=acc > 0)
        return -lr * direction, {"step": _step(state), "sum_of_squares": acc}

    return GradientTransformation(init, update)


def rmsprop(
    learning_rate: float | Schedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    eps_in_sqrt: bool = False,
) -> GradientTransformation:
    """RMSProp, non-centred, no momentum, as ``optax.rmsprop`` with ``initial_scale=0``
    (Tieleman & Hinton 2012, lecture 6.5).

    ``nu = decay * nu + (1 - decay) * g^2`` (``nu`` starts at 0) and
    ``update = -lr * g / (sqrt(nu) + eps)``: ``eps`` after the square root, as PyTorch
    and ``optax.rmsprop(eps_in_sqrt=False)``. ``eps_in_sqrt=True`` gives
    ``-lr * g / sqrt(nu + eps)``, the default of recent optax versions. No bias
    correction, so the first step is ``-lr * sign(g) / sqrt(1 - decay)`` (for
    ``|g| >> eps``). State: ``step``, ``nu``.
    """
    schedule = _as_schedule(learning_rate)
    decay = _check_unit("decay", decay)
    eps = _non_negative("eps", eps)
    if eps_in_sqrt not in (True, False):
        raise OptimizerError(f"eps_in_sqrt must be true or false, got {eps_in_sqrt!r}")
    inside = bool(eps_in_sqrt)

    def init(params: np.ndarray) -> State:
        return {"step": _zero_step(), "nu": np.zeros_like(params, dtype=np.float64)}

    def update(grads: np.ndarray, state: State, params: np.ndarray) -> tuple[np.ndarray, State]:
        g = _grads(grads)
        lr = schedule(int(state["step"]))
        nu = decay * state["nu"] + (1.0 - decay) * (g * g)
        denom = np.sqrt(nu + eps) if inside else np.sqrt(nu) + eps
        return -lr * (g / denom), {"step": _step(state), "nu": nu}

    return GradientTransformation(init, update)


def _global_norm(g: np.ndarray) -> float:
    """``sqrt(sum(g^2))``, scaled so that huge gradients do not overflow."""
    if g.size == 0:
        return 0.0
    scale = float(np.max(np.abs(g)))
    if scale == 0.0 or not math.isfinite(scale):
        return scale
    return scale * math.sqrt(float(np.sum(np.square(g / scale))))


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Rescale the gradient to L2 norm ``max_norm`` when its norm exceeds it, as
    ``optax.clip_by_global_norm`` (Pascanu, Mikolov & Bengio 2013).

    ``n = ||g||_2``; ``update = g`` if ``n < max_norm`` else ``g / n * max_norm``. The
    parameters are one array, so the global norm is the norm of the whole gradient. A
    non-finite gradient passes through unchanged (for the caller's divergence check).
    Use it in front of an optimizer: ``chain(clip_by_global_norm(1.0), adam(1e-3))``.
    State: ``step``.

    Examples
    --------
    >>> clip = clip_by_global_norm(1.0)
    >>> clip.update(np.array([3.0, 4.0]), clip.init(np.zeros(2)), np.zeros(2))[0]
    array([0.6, 0.8])
    """
    max_norm = _positive("max_norm", max_norm)

    def init(params: np.ndarray) -> State:
        return {"step": _zero_step()}

    def update(grads: np.ndarray, state: State, params: np.ndarray) -> tuple[np.ndarray, State]:
        g = np.array(grads, dtype=np.float64)  # a copy: updates never alias the input
        norm = _global_norm(g)
        if math.isfinite(norm) and norm >= max_norm:
            g = (g / norm) * max_norm
        return g, {"step": _step(state)}

    return GradientTransformation(init, update)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations in sequence, each to the previous one's output.

    The state stays one flat dict of arrays (``.npz``-able): transformation ``i``'s
    entry ``key`` is stored as ``"{i}/{key}"``, plus a top-level ``"step"``.
    """

    def init(params: np.ndarray) -> State:
        state: State = {"step": _zero_step()}
        for i, t in enumerate(transforms):
            state.update({f"{i}{CHAIN_SEPARATOR}{k}": v for k, v in t.init(params).items()})
        return state

    def update(grads: np.ndarray, state: State, params: np.ndarray) -> tuple[np.ndarray, State]:
        new_state: State = {"step": _step(state)}
        updates = _grads(grads)
        for i, t in enumerate(transforms):
            prefix = f"{i}{CHAIN_SEPARATOR}"
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            updates, sub = t.update(updates, sub, params)
            new_state.update({prefix + k: v for k, v in sub.items()})
        return updates, new_state

    return GradientTransformation(init, update)


_OPTIMIZERS: dict[str, Callable[..., GradientTransformation]] = {
    "sgd": sgd,
    "momentum": momentum,
    "nesterov": nesterov,
    "adam": adam,
    "adamw": adamw,
    "adagrad": adagrad,
    "rmsprop": rmsprop,
}


def _hyper_names(factory: Callable[..., GradientTransformation]) -> list[str]:
    params = list(inspect.signature(factory).parameters)
    return [p for p in params[1:] if p != "mask"]


def make_optimizer(
    name: str,
    learning_rate: float | Schedule,
    *,
    clip_norm: float | None = None,
    mask: np.ndarray | None = None,
    **hyper: Any,
) -> GradientTransformation:
    """Build an optimizer by name, with its hyper-parameters:

    ``sgd``; ``momentum`` (``beta``, ``nesterov``); ``nesterov`` (``beta``); ``adam``
    (``b1``, ``b2``, ``eps``); ``adamw`` (``b1``, ``b2``, ``eps``, ``weight_decay``);
    ``adagrad`` (``initial_accumulator_value``, ``eps``); ``rmsprop`` (``decay``,
    ``eps``, ``eps_in_sqrt``). ``learning_rate`` is a number or a schedule.

    ``clip_norm`` (``None`` = off) puts :func:`clip_by_global_norm` in front:
    ``chain(clip_by_global_norm(clip_norm), optimizer)``, so the state keys gain the
    chain's prefixes (``"1/mu"``). ``mask`` (boolean, True where weight decay applies)
    is used by ``adamw`` and ignored by the optimizers without weight decay, so a
    trainer may always pass the model's ``weight_mask``.

    Examples
    --------
    >>> make_optimizer("adam", 1e-3, b1=0.8).init(np.zeros(2))["step"]
    array(0)
    >>> sorted(make_optimizer("adam", 1e-3, clip_norm=1.0).init(np.zeros(2)))
    ['0/step', '1/mu', '1/nu', '1/step', 'step']
    """
    factory = _OPTIMIZERS.get(name)
    if factory is None:
        raise OptimizerError(
            f"unknown optimizer {name!r}; choose one of {', '.join(sorted(_OPTIMIZERS))}"
        )
    allowed = _hyper_names(factory)
    unknown = sorted(set(hyper) - set(allowed))
    if unknown:
        raise OptimizerError(
            f"unknown hyper-parameter(s) {', '.join(map(repr, unknown))} for {name}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    if mask is not None:
        mask = _check_mask(mask)
        if "mask" in inspect.signature(factory).parameters:
            hyper["mask"] = mask
    optimizer = factory(learning_rate, **hyper)
    if clip_norm is None:
        return optimizer
    return chain(clip_by_global_norm(_positive("clip_norm", clip_norm)), optimizer)


def apply_updates(params: np.ndarray, updates: np.ndarray) -> np.ndarray:
    """New parameters ``params + updates`` (a new array; the inputs are not touched)."""
    return np.asarray(params, dtype=np.float64) + updates
