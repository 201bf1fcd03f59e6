"""Fault injection for the embedded engine: a seeded fraction of invocations fail like Lambda.

Only the in-process invoker of the embedded engine consults a :class:`Chaos`; nothing in the
handlers or the deployed template knows about it, so it can never be active in a deployment.

Three kinds of fault, each reported to Step Functions exactly as AWS reports it:

``transient``
    A Lambda *service* error before the handler runs (the request never reached the
    function): ``TooManyRequestsException`` (429), ``ServiceException`` or
    ``AWSLambdaException`` (500). Step Functions names them ``Lambda.<Code>``.
``timeout``
    The function hit its timeout. Half of the injected timeouts let the handler run to the
    end first (it wrote its outputs; only the answer is lost), the other half stop it before
    it starts. Lambda answers ``FunctionError: Unhandled`` with ``{"errorType":
    "Sandbox.Timedout", "errorMessage": "RequestId: ... Error: Task timed out after N
    seconds"}``; Step Functions' error name is the ``errorType``: ``Sandbox.Timedout``.
``crash``
    The runtime process died after the handler had written its outputs but before it
    returned (e.g. killed for memory): ``{"errorType": "Runtime.ExitError",
    "errorMessage": "RequestId: ... Error: Runtime exited with error: exit status 1"}``,
    error name ``Runtime.ExitError``.

Decisions are reproducible and independent of thread scheduling: whether an invocation fails
is a hash of (seed, function, job, round, shard, attempt number), not a draw from a shared
random stream that Map threads would consume in any order. At most ``max_consecutive``
attempts of one call fail in a row (3 by default, below the state machine's 6 retries) and at
most one of them times out (a timeout is retried once), so a chaos run tests recovery, not
the retry budget; stragglers that exhaust it are made with
:meth:`InProcessInvoker.fail_matching <lambdagrad.local.invoker.InProcessInvoker.fail_matching>`.

Example
-------
>>> chaos = Chaos(0.2, seed=7, functions=["worker-fn"])
>>> faults = [chaos.decide("worker-fn", {"job_id": "j", "round": r, "shard": 0})
...           for r in range(200)]
>>> 20 <= sum(f is not None for f in faults) <= 60
True
>>> chaos.decide("other-fn", {"job_id": "j", "round": 0, "shard": 0}) is None
True
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: The kinds of fault a :class:`Chaos` injects.
FAULT_KINDS = ("transient", "timeout", "crash")

#: ``errorType`` of a Lambda function that ran out of time (Step Functions' error name).
TIMEOUT_ERROR = "Sandbox.Timedout"

#: ``errorType`` of a Lambda runtime process that exited before returning a result.
CRASH_ERROR = "Runtime.ExitError"

#: Lambda service errors (``Lambda.<Code>`` in Step Functions) a transient fault raises.
TRANSIENT_ERRORS = ("TooManyRequestsException", "ServiceException", "AWSLambdaException")


@dataclass(frozen=True)
class Fault:
    """One injected failure of one invocation.

    ``run_handler`` says whether the handler runs (and writes its outputs) before the
    failure is reported; ``error`` is the service error code (``transient``) or the
    ``errorType`` of the error document.
    """

    kind: str
    error: str
    run_handler: bool = False

    @property
    def before_handler(self) -> bool:
        """A service error: the request fails before any code of the function runs."""
        return self.kind == "transient"

    def error_document(self, request_id: str, timeout_s: float) -> dict[str, str]:
        """The payload Lambda returns with ``FunctionError: Unhandled`` for this fault."""
        if self.kind == "timeout":
            message = f"RequestId: {request_id} Error: Task timed out after {timeout_s:.2f} seconds"
        else:
            message = f"RequestId: {request_id} Error: Runtime exited with error: exit status 1"
        return {"errorType": self.error, "errorMessage": message}


def transient(error: str = "TooManyRequestsException") -> Fault:
    return Fault("transient", error, run_handler=False)


def timeout(run_handler: bool = True) -> Fault:
    return Fault("timeout", TIMEOUT_ERROR, run_handler=run_handler)


def crash() -> Fault:
    return Fault("crash", CRASH_ERROR, run_handler=True)


def _identity(body: Any) -> str:
    """What makes two invocations "the same call": (job, round, shard), else the payload."""
    try:
        event = json.loads(body) if isinstance(body, (str, bytes, bytearray)) else body
    except ValueError:
        event = None
    if isinstance(event, dict) and "job_id" in event:
        return f"{event.get('job_id')}/{event.get('round')}/{event.get('shard')}"
    raw = body if isinstance(body, (bytes, bytearray)) else str(body).encode()
    return hashlib.sha256(raw).hexdigest()


def _unit(*parts: object) -> float:
    """A number in [0, 1) determined by ``parts``."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class Chaos:
    """Fail ``fraction`` of the invocations of ``functions`` (physical function names).

    Parameters
    ----------
    fraction
        Probability that an invocation fails, in [0, 1).
    seed
        Seed of the decisions: same seed, same job -> the same invocations fail.
    functions
        Names of the functions to disturb (others are never touched), or a mapping of
        names to stable labels (e.g. the template's logical ids) that the decisions hash
        instead of the names, so that a redeployed stack fails the same invocations.
    kinds
        Which of :data:`FAULT_KINDS` to inject, chosen uniformly per fault.
    max_consecutive
        At most this many attempts of one call fail in a row.
    max_timeouts
        At most this many attempts of one call time out (the state machine retries a timed-out
        worker or reducer once); past them, its faults are of the other kinds.

    Attributes
    ----------
    counts
        Injected faults by kind; ``invocations`` counts the calls considered. (A handler
        that raises its own error under a timeout or crash fault reports that error: the
        real failure wins, and such a fault is still counted.)
    """

    fraction: float
    seed: int = 0
    functions: Iterable[str] | Mapping[str, str] = ()
    kinds: Iterable[str] = FAULT_KINDS
    max_consecutive: int = 3
    max_timeouts: int = 1
    counts: dict[str, int] = field(default_factory=dict)
    invocations: int = 0
    _attempts: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)
    _streak: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)
    _timeouts: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _labels: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"chaos fraction must be in [0, 1), got {self.fraction}")
        functions = self.functions
        self._labels = (
            dict(functions) if isinstance(functions, Mapping) else {f: f for f in functions}
        )
        self.functions = frozenset(self._labels)
        self.kinds = tuple(self.kinds)
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"fault kinds must be some of {FAULT_KINDS}, got {self.kinds}")
        if self.max_consecutive < 1:
            raise ValueError("max_consecutive must be >= 1")
        if self.max_timeouts < 0:
            raise ValueError("max_timeouts must be >= 0")
        self.counts = {kind: 0 for kind in FAULT_KINDS}

    def decide(self, function_name: str, body: Any) -> Fault | None:
        """The fault this invocation must fail with, or ``None``; counts injected faults."""
        label = self._labels.get(function_name)
        if label is None:
            return None
        call = (label, _identity(body))
        with self._lock:
            self.invocations += 1
            attempt = self._attempts.get(call, 0)
            self._attempts[call] = attempt + 1
            streak = self._streak.get(call, 0)
            u = _unit(self.seed, *call, attempt)
            pick = _unit(self.seed, *call, attempt, "kind")
            kinds = self.kinds  # past its timeouts, a call fails only in the other ways
            if self._timeouts.get(call, 0) >= self.max_timeouts:
                kinds = tuple(k for k in kinds if k != "timeout")
            if u >= self.fraction or streak >= self.max_consecutive or not kinds:
                self._streak[call] = 0
                return None
            self._streak[call] = streak + 1
            kind = kinds[int(pick * len(kinds))]  # type: ignore[index]
            if kind == "timeout":
                self._timeouts[call] = self._timeouts.get(call, 0) + 1
            self.counts[kind] += 1
        if kind == "transient":
            return transient(TRANSIENT_ERRORS[int(pick * 1000) % len(TRANSIENT_ERRORS)])
        if kind == "timeout":
            return timeout(run_handler=int(pick * 1000) % 2 == 0)
        return crash()

    @property
    def injected(self) -> int:
        """Faults injected so far, all kinds."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line for people: how many faults of each kind, out of how many invocations."""
        kinds = ", ".join(f"{self.counts[k]} {k}" for k in FAULT_KINDS)
        return (
            f"chaos: {self.injected} faults injected ({kinds}) "
            f"in {self.invocations} worker/reducer invocations"
        )


#: Retry waits during a ``--chaos`` run: a hundredth of the real ones (order and jitter kept).
CLI_RETRY_DELAY_SCALE = 0.01


def check_cli_fraction(fraction: float | None, stack: str | None) -> None:
    """Refuse a ``--chaos`` that cannot apply: with ``--stack``, or outside [0, 1)."""
    if fraction is None:
        return
    if stack:
        raise ValueError(
            "--chaos injects faults into the embedded engine only; it cannot be used with "
            "--stack (a deployed stack never fails on purpose)"
        )
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--chaos: {fraction} is not a fraction in [0, 1), e.g. 0.2")


def start_for_cli(engine: Any, fraction: float, seed: int = 0) -> Chaos:
    """What ``lambdagrad train --chaos FRACTION`` does: chaos on the workers and the
    reducer, retry waits scaled by :data:`CLI_RETRY_DELAY_SCALE`."""
    engine.set_retry_delay_scale(CLI_RETRY_DELAY_SCALE)
    return engine.start_chaos(fraction, seed=seed)
