"""Events a step cannot trust: an execution's input replayed or edited by hand, or a function
invoked directly. A malformed one is refused by field before anything is written, and a
finished job's model, registered name and status are never rewritten by another execution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lambdagrad import steps
from lambdagrad.step_events import EventError
from lambdagrad.store import JobKeys, MemoryS3, Store

EVENTS = Path(__file__).resolve().parents[2] / "events"
BUCKET = "lambdagrad-example-bucket"
JOB = "job-a"
KEYS = JobKeys(JOB)


def spec_doc(rounds: int = 3) -> dict:
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    doc["training"] = {"batch_size": 64, "workers": 2, "rounds": rounds}
    doc["output"] = {"model_name": "m"}
    return doc


def run_rounds(store: Store, state: dict, execution: str, until: int | None = None) -> dict:
    """The state machine's rounds: workers, then the reducer, until Finalize (or ``until``)."""
    while True:
        results = [
            steps.worker(store, {"job_id": JOB, "round": state["round"], "shard": k})
            for k in state["shards"]
        ]
        state = steps.reduce(store, {**state, "results": results, "execution": execution})
        if state["next"] == "finalize" or state["round"] == until:
            return state


def prepared(until: int | None = None) -> tuple[Store, dict]:
    steps.clear_cache()
    store = Store(MemoryS3(), BUCKET)
    store.put_bytes("datasets/houses.csv", (EVENTS / "data" / "houses.csv").read_bytes())
    event = {"input": {"job_id": JOB, "spec": spec_doc()}, "execution": "first"}
    state = steps.prepare(store, event)
    return store, (run_rounds(store, state, "first", until) if until else state)


def finished() -> tuple[Store, dict]:
    store, last = prepared(until=None)
    last = run_rounds(store, last, "first")
    final = {"job_id": JOB, "round": last["round"], "progress": last["progress"]}
    steps.finalize(store, {**final, "execution": "first"})
    return store, last


def snapshot(store: Store) -> dict[str, bytes]:
    keys = [KEYS.model_json, KEYS.model_npz, KEYS.status, "models/m/current.json"]
    return {key: store.get_bytes(key) for key in keys}


def test_a_finished_jobs_replayed_input_is_refused_and_its_model_kept():
    store, last = finished()
    before = snapshot(store)
    replay = {"job_id": JOB, "round": 2, "shards": [0, 1], "segment_end": 3}
    replay["progress"] = last["progress"] | {"stop": None}
    with pytest.raises(steps.JobFinishedByAnotherExecution, match="job 'job-a' already finished"):
        run_rounds(store, replay, "replay")
    # past the job's rounds: refused before a round it never asked for is trained
    with pytest.raises(EventError, match="round: 3 is not before the job's last round"):
        run_rounds(store, {**replay, "round": 3, "segment_end": 9}, "replay")
    assert not store.exists(KEYS.params(4))
    assert snapshot(store) == before
    # the failure the state machine then records leaves the finished job's status alone
    failure = {"state": {"job_id": JOB, "error": {"Error": "EventError", "Cause": "{}"}}}
    assert steps.record_failure(store, failure)["recorded"] is False
    assert snapshot(store) == before


def test_an_early_stopped_jobs_replayed_input_trains_on_but_never_replaces_its_model():
    """The replay of an early-stopped job's last round finds no committed round after it:
    it trains new rounds (in its own execution), and Finalize refuses it by who wrote the
    model."""
    steps.clear_cache()
    store = Store(MemoryS3(), BUCKET)
    store.put_bytes("datasets/houses.csv", (EVENTS / "data" / "houses.csv").read_bytes())
    doc = spec_doc(rounds=40)
    doc["training"] |= {"patience": 1, "min_delta": 1e12}  # no round improves enough: stop
    state = steps.prepare(store, {"input": {"job_id": JOB, "spec": doc}, "execution": "first"})
    last = run_rounds(store, state, "first")
    assert last["progress"]["stop"] == "early_stopping" and last["round"] < 40
    final = {"job_id": JOB, "round": last["round"], "progress": last["progress"]}
    steps.finalize(store, {**final, "execution": "first"})
    before = snapshot(store)
    replay = {**last, "next": None, "progress": last["progress"] | {"stop": None}}
    again = run_rounds(store, replay, "replay")
    assert store.get_json(KEYS.status)["state"] == "RUNNING"  # the replay's rounds wrote it
    with pytest.raises(steps.JobFinishedByAnotherExecution, match="written by first"):
        steps.finalize(store, {**final, "round": again["round"], "execution": "replay"})
    after = snapshot(store)
    assert {k: after[k] for k in before if k != KEYS.status} == {
        k: before[k] for k in before if k != KEYS.status
    }
    # Finalize put back what the finished job's status said; the failure is not recorded
    failure = {"state": {"job_id": JOB, "error": {"Error": "JobFinishedByAnotherExecution"}}}
    assert steps.record_failure(store, failure)["recorded"] is False
    status, finished = store.get_json(KEYS.status), json.loads(before[KEYS.status])
    for key in ("state", "round", "model_round", "stopped", "model", "metrics", "execution"):
        assert status[key] == finished[key], key


def test_a_finalize_that_died_after_writing_the_model_is_retried(monkeypatch):
    """Step Functions retries a Finalize that timed out or crashed after model.json: the
    retry, in the same execution, finishes the job (it is not taken for another one)."""
    store, last = prepared(until=None)
    last = run_rounds(store, last, "first")
    event = {"job_id": JOB, "round": last["round"], "progress": last["progress"]}

    def crash(*args, **kwargs):
        raise TimeoutError("Sandbox.Timedout")

    with monkeypatch.context() as patch:
        patch.setattr(steps, "write_cost", crash)
        with pytest.raises(TimeoutError):
            steps.finalize(store, {**event, "execution": "first"})
    assert store.exists(KEYS.model_json) and store.get_json(KEYS.status)["state"] == "RUNNING"
    assert steps.finalize(store, {**event, "execution": "first"})["state"] == "SUCCEEDED"
    assert store.get_json(KEYS.status)["state"] == "SUCCEEDED"
    assert store.get_json("models/m/current.json")["job_id"] == JOB


def test_finalize_by_hand_is_refused_but_its_own_retry_is_not():
    store, last = prepared(until=2)
    with pytest.raises(EventError, match=r"round: 0 is not the job's last round \(2\)"):
        steps.finalize(store, {"job_id": JOB, "round": 0, "execution": "first"})
    assert not store.exists(KEYS.model_json)

    store, last = finished()
    before = snapshot(store)
    for event in ({"round": 0}, {"round": 3}, {"round": 3, "execution": "other"}):
        with pytest.raises(steps.JobFinishedByAnotherExecution):
            steps.finalize(store, {"job_id": JOB, **event})
    assert snapshot(store) == before
    # Finalize retried by the execution that ran it rewrites the same model
    again = {"job_id": JOB, "round": 3, "progress": last["progress"], "execution": "first"}
    assert steps.finalize(store, again)["state"] == "SUCCEEDED"
    assert store.get_bytes(KEYS.model_npz) == before[KEYS.model_npz]


WORKER = {"job_id": JOB, "round": 0, "shard": 0}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (None, "worker event: expected a JSON object, got None"),
        ([1, 2], "worker event: expected a JSON object, got [1, 2]"),
        ({"round": 0, "shard": 0}, "worker event: job_id: missing"),
        ({**WORKER, "job_id": 123}, "worker event: job_id: expected a non-empty string, got 123"),
        ({**WORKER, "round": "abc"}, "worker event: round: expected an integer, got 'abc'"),
        ({**WORKER, "round": 0.7}, "worker event: round: expected an integer, got 0.7"),
        ({**WORKER, "shard": True}, "worker event: shard: expected an integer, got True"),
        ({**WORKER, "round": -1}, "worker event: round: -1 is below 0"),
    ],
)
def test_a_malformed_worker_event_names_its_field(event, message):
    store, _ = prepared()
    with pytest.raises(EventError) as info:
        steps.worker(store, event)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"results": None}, "reduce event: results: expected the workers' results, got None"),
        ({"results": "abc"}, "reduce event: results: expected the workers' results, got 'abc'"),
        ({"segment_end": None}, "reduce event: segment_end: missing"),
        ({"segment_end": "x"}, "reduce event: segment_end: expected an integer, got 'x'"),
        ({"progress": "oops"}, "reduce event: progress: expected a JSON object, got 'oops'"),
        ({"progress": {}}, "reduce event: progress: missing best_loss, best_round, "),
        ({"segment_started": "yesterday"}, "reduce event: segment_started / segment_seconds: "),
        ({"segment_seconds": "abc"}, "reduce event: segment_started / segment_seconds: "),
        ({"r0": {"count": -16}}, "reduce event: results[0]: count: -16 is below 0"),
        ({"r0": {"loss_sum": "abc"}}, "reduce event: results[0]: loss_sum: expected a finite "),
        ({"r0": {"loss_sum": float("nan")}}, "reduce event: results[0]: loss_sum: expected a "),
        ({"r0": {"shard": None}}, "reduce event: results[0]: shard: missing"),
        ({"r0": {"count": 0}, "r1": {"count": 0}}, "reduce event: results: no rows in this "),
    ],
)
def test_a_malformed_reduce_event_is_refused_before_anything_is_written(change, message):
    store, state = prepared()
    results = [
        steps.worker(store, {"job_id": JOB, "round": 0, "shard": k}) for k in state["shards"]
    ]
    results = [r | change.pop(f"r{i}", {}) for i, r in enumerate(results)]
    event = {**state, "results": results, "segment_started": "2026-01-01T00:00:00Z"}
    event |= {"segment_seconds": "240", **change}
    with pytest.raises(EventError) as info:
        steps.reduce(store, event)
    assert str(info.value).startswith(message), str(info.value)
    for key in (KEYS.params(1), KEYS.optimizer(1), KEYS.metrics(1)):
        assert not store.exists(key)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"job_id": JOB}, "finalize event: round: missing"),
        ({"job_id": JOB, "round": "1"}, "finalize event: round: expected an integer, got '1'"),
        ({"job_id": JOB, "round": 2, "progress": "x"}, "finalize event: progress: expected a"),
    ],
)
def test_a_malformed_finalize_event_names_its_field(event, message):
    store, _ = prepared(until=2)
    with pytest.raises(EventError, match=message):
        steps.finalize(store, event)
    assert not store.exists(KEYS.model_json)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"progress": None}, "progress: missing"),
        ({"job_id": None, "segment_end": None}, "job_id: missing; segment_end: missing"),
        ({"shards": 5}, "shards: expected a non-empty list of shard numbers, got 5"),
        ({"shards": []}, "shards: expected a non-empty list of shard numbers, got []"),
    ],
)
def test_an_incomplete_continuation_is_refused_and_leaves_the_running_job_alone(change, message):
    """A continuation the state machine sends to Prepare (a field it loops on is missing):
    refused by field before the job id is claimed, and RecordFailure, told of it, leaves the
    job it names (running under another execution) as it was."""
    store, state = prepared(until=1)
    forged = {key: value for key, value in {**state, **change}.items() if value is not None}
    status = store.get_bytes(KEYS.status)
    with pytest.raises(steps.ContinuationError) as info:
        steps.prepare(store, {"input": forged, "execution": "by-hand"})
    assert message in str(info.value)
    assert "so it continues a job, but" in str(info.value)
    error = {"Error": "ContinuationError", "Cause": json.dumps({"errorMessage": str(info.value)})}
    recorded = steps.record_failure(
        store, {"state": {**forged, "error": error}, "execution": "by-hand"}
    )
    assert recorded["recorded"] is False
    assert store.get_bytes(KEYS.status) == status
    assert json.loads(store.get_bytes(KEYS.claim))["execution"] == "first"


def test_the_state_machine_takes_as_a_continuation_what_prepare_checks():
    """The ASL's IsContinuation and Prepare's check name the same fields: an input the
    machine does not loop on is one Prepare can say what is missing from."""
    asl = json.loads((EVENTS.parent / "statemachine" / "train.asl.json").read_text())
    rule = asl["States"]["IsContinuation"]["Choices"][0]
    assert rule["Next"] == "StartSegments"
    checked = {test["Variable"].removeprefix("$.").removesuffix("[0]") for test in rule["And"]}
    assert checked == {"round", *steps._CONTINUATION_FIELDS}
    loops_on = asl["States"]["StartSegments"]["Parameters"]
    assert {key.removesuffix(".$") for key in loops_on} - {"segments_left"} == checked
