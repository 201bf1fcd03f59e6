"""The fault-injection switch and the retry policy it relies on (no engine).

Chaos decisions must be reproducible whatever order Map threads invoke in, and every fault
it injects must be one the state machine retries -- while our own named errors never are.
"""

from __future__ import annotations

import inspect
import json
import random
from pathlib import Path

import pytest
from lambdagrad import data, registry, spec, steps, store, sweep
from lambdagrad.local.chaos import (
    CRASH_ERROR,
    FAULT_KINDS,
    TIMEOUT_ERROR,
    TRANSIENT_ERRORS,
    Chaos,
    check_cli_fraction,
)

ROOT = Path(__file__).resolve().parents[2]
TRAIN_ASL = ROOT / "statemachine" / "train.asl.json"
SEGMENT_ASL = ROOT / "statemachine" / "segment.asl.json"
SWEEP_ASL = ROOT / "statemachine" / "sweep.asl.json"

#: What a Lambda task of the training loop must retry: transient service errors, the
#: function timing out, the runtime dying (and Lambda.Unknown, the name Step Functions uses
#: for an unhandled error without an errorType, e.g. a timeout on older runtimes).
LAMBDA_RETRY = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
    "Sandbox.Timedout",
    "Runtime.ExitError",
    "Lambda.Unknown",
]


def calls(n_rounds: int = 40, shards: int = 4) -> list[tuple[str, dict]]:
    out = []
    for r in range(n_rounds):
        out += [("w", {"job_id": "j", "round": r, "shard": k}) for k in range(shards)]
        out.append(("r", {"job_id": "j", "round": r, "results": [], "progress": {"t": r}}))
    return out


def run(chaos: Chaos, order: list[tuple[str, dict]]) -> dict[str, list]:
    """Invoke like Step Functions: retry each call until it gets through."""
    seen: dict[str, list] = {}
    for fn, event in order:
        key = f"{fn}/{event['round']}/{event.get('shard')}"
        while (fault := chaos.decide(fn, json.dumps(event))) is not None:
            seen.setdefault(key, []).append(fault)
        seen.setdefault(key, []).append(None)
    return seen


def test_decisions_do_not_depend_on_invocation_order():
    order = calls()
    first = run(Chaos(0.2, seed=5, functions=["w", "r"]), order)
    shuffled = order[:]
    random.Random(1).shuffle(shuffled)
    second = run(Chaos(0.2, seed=5, functions=["w", "r"]), shuffled)
    assert first == second
    third = run(Chaos(0.2, seed=6, functions=["w", "r"]), order)
    assert third != first


def test_fraction_kinds_and_streak_cap():
    chaos = Chaos(0.5, seed=2, functions={"physical-name-x1": "w", "r": "r"}, max_consecutive=2)
    seen = run(chaos, [("physical-name-x1", e) if f == "w" else (f, e) for f, e in calls(100)])
    assert 0.35 <= chaos.injected / chaos.invocations <= 0.6
    assert all(chaos.counts[k] > 0 for k in FAULT_KINDS)
    assert max(len(v) for v in seen.values()) <= 3  # at most 2 faults, then through
    faults = [f for v in seen.values() for f in v if f is not None]
    assert {f.error for f in faults if f.kind == "transient"} <= set(TRANSIENT_ERRORS)
    assert {f.error for f in faults if f.kind == "timeout"} == {TIMEOUT_ERROR}
    assert {f.error for f in faults if f.kind == "crash"} == {CRASH_ERROR}
    assert {f.run_handler for f in faults if f.kind == "timeout"} == {True, False}
    assert all(f.run_handler for f in faults if f.kind == "crash")
    assert not any(f.run_handler for f in faults if f.kind == "transient")


def test_a_call_times_out_at_most_once_as_the_state_machine_retries_a_timeout_once():
    chaos = Chaos(0.9, seed=4, functions=["w", "r"], max_consecutive=3)
    seen = run(chaos, calls(100))
    per_call = [sum(f is not None and f.kind == "timeout" for f in v) for v in seen.values()]
    assert max(per_call) == 1 and per_call.count(1) > 50
    assert max(len(v) for v in seen.values()) == 4  # still three faults in a row, then through
    only_timeouts = run(Chaos(0.9, seed=4, functions=["w"], kinds=["timeout"]), calls(30))
    assert max(len(v) for v in only_timeouts.values()) == 2  # one timeout, then through
    with pytest.raises(ValueError):
        Chaos(0.1, max_timeouts=-1)


def test_labels_make_decisions_independent_of_physical_names():
    a = run(
        Chaos(0.3, seed=1, functions={"stack-a-Worker-1": "Worker"}),
        [("stack-a-Worker-1", e) for _, e in calls(20)],
    )
    b = run(
        Chaos(0.3, seed=1, functions={"stack-b-Worker-9": "Worker"}),
        [("stack-b-Worker-9", e) for _, e in calls(20)],
    )
    assert list(a.values()) == list(b.values())
    assert any(f is not None for v in a.values() for f in v)


def test_only_named_functions_and_kinds():
    chaos = Chaos(0.9, seed=0, functions=["w"], kinds=["crash"])
    assert chaos.decide("prepare", '{"job_id": "j"}') is None
    faults = [chaos.decide("w", json.dumps({"job_id": "j", "round": r})) for r in range(50)]
    assert {f.kind for f in faults if f} == {"crash"}
    with pytest.raises(ValueError):
        Chaos(1.0)
    with pytest.raises(ValueError):
        Chaos(0.1, kinds=["flood"])


def test_error_documents_look_like_lambda():
    chaos = Chaos(0.99, seed=0, functions=["w"], kinds=["timeout", "crash"])
    docs = {}
    for r in range(20):
        fault = chaos.decide("w", json.dumps({"job_id": "j", "round": r}))
        docs[fault.kind] = fault.error_document("req-1", 30.0)
    assert docs["timeout"] == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": "RequestId: req-1 Error: Task timed out after 30.00 seconds",
    }
    assert docs["crash"] == {
        "errorType": "Runtime.ExitError",
        "errorMessage": "RequestId: req-1 Error: Runtime exited with error: exit status 1",
    }


def test_cli_fraction_is_checked():
    check_cli_fraction(None, "prod")
    check_cli_fraction(0.2, None)
    with pytest.raises(ValueError, match="embedded engine only"):
        check_cli_fraction(0.2, "prod")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        check_cli_fraction(1.5, None)


# ---------------------------------------------------------------------- retry policy
def lambda_tasks(states: dict) -> dict[str, dict]:
    found = {}
    for name, st in states.items():
        if st.get("Type") == "Task" and st["Resource"] == "arn:aws:states:::lambda:invoke":
            found[name] = st
        if st.get("Type") == "Map":
            found.update(lambda_tasks(st["ItemProcessor"]["States"]))
    return found


def own_error_names() -> set[str]:
    """Every exception class the package defines: named errors that must never be retried."""
    names = set()
    for module in (data, registry, spec, steps, store, sweep):
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Exception) and obj.__module__.startswith("lambdagrad"):
                names.add(obj.__name__)
    return names


def test_every_lambda_task_retries_transient_timeouts_and_crashes_only():
    tasks = lambda_tasks(json.loads(TRAIN_ASL.read_text())["States"])
    segment = lambda_tasks(json.loads(SEGMENT_ASL.read_text())["States"])
    tasks.update(segment)
    tasks.update(lambda_tasks(json.loads(SWEEP_ASL.read_text())["States"]))
    assert {"Prepare", "Worker", "Reduce", "Finalize", "RecordFailure"} <= set(tasks)
    assert {"PollPoint", "SelectBest"} <= set(tasks)
    own = own_error_names()
    assert {"ModelDiverged", "StoreError", "SpecError", "DataError", "JobExistsError"} <= own
    for name, task in tasks.items():
        retried = [e for r in task["Retry"] for e in r["ErrorEquals"]]
        assert sorted(retried) == sorted(LAMBDA_RETRY), name
        assert not set(retried) & (own | {"States.ALL", "States.TaskFailed"}), name
        for retrier in task["Retry"]:
            # inside a segment (5 minutes in all) a timed-out attempt is retried once
            once = name in segment and retrier["ErrorEquals"] == [TIMEOUT_ERROR]
            assert retrier["MaxAttempts"] == 1 if once else retrier["MaxAttempts"] >= 4, name
    for name in segment:
        assert segment[name]["Retry"][0]["ErrorEquals"] == [TIMEOUT_ERROR], name
    # every fault the chaos switch injects is one of them
    injected = {f"Lambda.{e}" for e in TRANSIENT_ERRORS} | {TIMEOUT_ERROR, CRASH_ERROR}
    assert injected <= set(LAMBDA_RETRY)


def test_every_execution_start_retries_the_step_functions_service_errors():
    """StartExecution of a segment, of the next execution or of a sweep point can be
    throttled or fail in the service: retried, as Lambda's service errors are."""
    service = {
        "StepFunctions.SdkClientException",
        "StepFunctions.ServiceException",
        "StepFunctions.AWSStepFunctionsException",
        "StepFunctions.ThrottlingException",
    }
    found = {}
    for path in (TRAIN_ASL, SWEEP_ASL):
        states = json.loads(path.read_text())["States"]
        states = (
            {**states, **states["Points"]["ItemProcessor"]["States"]}
            if "Points" in states
            else states
        )
        for name, st in states.items():
            if st.get("Resource", "").startswith("arn:aws:states:::states:startExecution"):
                found[name] = {e for r in st["Retry"] for e in r["ErrorEquals"]}
    assert set(found) == {"RunSegment", "ContinueAsNew", "TrainPoint"}
    for name, retried in found.items():
        assert service <= retried, name
