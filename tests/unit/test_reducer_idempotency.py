"""Reducer idempotency, "check, don't trust", on an in-memory S3 (no engine).

A round's checkpoint is committed by its metrics record, written after the params and the
optimizer state. A reducer re-run for a committed round must not apply the optimizer again;
a re-run after a crash between the writes must rebuild the round from checkpoint ``t`` and
end with exactly the bytes an uninterrupted reducer writes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from lambdagrad import steps
from lambdagrad.store import JobKeys, MemoryS3, Store

from tests.unit.test_steps import BUCKET, EVENTS

JOB = "idem"
KEYS = JobKeys(JOB)


def spec_doc() -> dict:
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    doc["optimizer"] = {"name": "adam", "learning_rate": 0.05}  # stateful: a 2nd step shows
    doc["training"] = {"batch_size": 32, "workers": 3, "rounds": 5}
    return doc


def prepared() -> tuple[Store, dict]:
    store = Store(MemoryS3(), BUCKET)
    store.put_bytes("datasets/houses.csv", (EVENTS / "data" / "houses.csv").read_bytes())
    state = steps.prepare(store, {"input": {"job_id": JOB, "spec": spec_doc()}, "execution": "e"})
    return store, state


def reduce_event(store: Store, state: dict) -> dict:
    results = [
        steps.worker(store, {"job_id": JOB, "round": state["round"], "shard": k})
        for k in state["shards"]
    ]
    return {**state, "results": results}


def round_objects(store: Store, round_: int) -> dict[str, bytes]:
    keys = (KEYS.params(round_), KEYS.optimizer(round_), KEYS.metrics(round_))
    return {k: store.get_bytes(k) for k in keys if store.exists(k)}


@pytest.fixture
def after_one_reduce():
    """A store where round 0 was reduced once, the event to reduce it again, the output."""
    store, state = prepared()
    event = reduce_event(store, state)
    out = steps.reduce(store, event)
    return store, event, out, round_objects(store, 1)


@pytest.fixture
def count_steps(monkeypatch):
    """How many optimizer steps the reducer takes."""
    calls = []
    real = steps.reduce_round

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(steps, "reduce_round", counting)
    return calls


def test_rerun_of_a_committed_round_applies_no_optimizer_step(after_one_reduce, count_steps):
    store, event, out, written = after_one_reduce
    steps.clear_cache()  # a cold Lambda: nothing remembered from the first attempt
    again = steps.reduce(store, event)
    assert count_steps == []
    assert round_objects(store, 1) == written  # not even the record's time was rewritten
    assert again["round"] == out["round"] == 1 and again["next"] == out["next"]


@pytest.mark.parametrize(
    "lost",
    [
        pytest.param(["optimizer", "metrics"], id="params-only"),
        pytest.param(["metrics"], id="params-and-optimizer"),
        pytest.param(["params"], id="record-without-params"),
        pytest.param(["optimizer"], id="record-without-optimizer"),
    ],
)
def test_partial_round_is_rebuilt_from_the_previous_checkpoint(after_one_reduce, count_steps, lost):
    """A crash between the writes (or a lost object): the round is recomputed from
    checkpoint 0 and ends with the uninterrupted bytes, never trusted half-written."""
    store, event, _, written = after_one_reduce
    for what in lost:
        del store.client.objects[(BUCKET, getattr(KEYS, what)(1))]
    steps.clear_cache()
    steps.reduce(store, event)
    assert count_steps == [1]  # one step, from checkpoint 0
    after = round_objects(store, 1)
    assert after[KEYS.params(1)] == written[KEYS.params(1)]
    assert after[KEYS.optimizer(1)] == written[KEYS.optimizer(1)]
    record, first = json.loads(after[KEYS.metrics(1)]), json.loads(written[KEYS.metrics(1)])
    assert {k: record[k] for k in ("round", "train_loss", "validation_loss")} == {
        k: first[k] for k in ("round", "train_loss", "validation_loss")
    }


def test_uncommitted_params_are_not_trusted(after_one_reduce, count_steps):
    """Params t+1 from an interrupted attempt that differ (say, a half-applied update) are
    replaced by the recomputed ones: without the record, nothing of round t+1 counts."""
    store, event, _, written = after_one_reduce
    del store.client.objects[(BUCKET, KEYS.metrics(1))]
    store.put_array(KEYS.params(1), np.zeros_like(store.get_array(KEYS.params(1))))
    steps.clear_cache()
    steps.reduce(store, event)
    assert count_steps == [1]
    assert store.get_bytes(KEYS.params(1)) == written[KEYS.params(1)]


def test_a_record_of_another_round_does_not_commit(after_one_reduce, count_steps):
    store, event, _, written = after_one_reduce
    store.put_json(KEYS.metrics(1), {**json.loads(written[KEYS.metrics(1)]), "round": 7})
    steps.clear_cache()
    steps.reduce(store, event)
    assert count_steps == [1]
    assert json.loads(store.get_bytes(KEYS.metrics(1)))["round"] == 1


def test_every_retry_pattern_ends_bit_identical():
    """Reduce every round twice, with a partial loss in between: same final parameters."""
    plain, state = prepared()
    while state.get("next") != "finalize":
        state = steps.reduce(plain, reduce_event(plain, state))
    expected = plain.get_array(KEYS.params(state["round"]))

    store, state = prepared()
    while state.get("next") != "finalize":
        event = reduce_event(store, state)
        steps.reduce(store, event)
        nxt = event["round"] + 1
        del store.client.objects[(BUCKET, KEYS.metrics(nxt))]  # crash before the record
        steps.clear_cache()
        steps.reduce(store, event)  # the retry rebuilds it
        state = steps.reduce(store, event)  # and a late duplicate changes nothing
    np.testing.assert_array_equal(store.get_array(KEYS.params(state["round"])), expected)


def test_last_complete_round_skips_partial_checkpoints(after_one_reduce):
    store, *_ = after_one_reduce
    assert steps.last_complete_round(store, KEYS) == 1
    del store.client.objects[(BUCKET, KEYS.optimizer(1))]
    assert steps.last_complete_round(store, KEYS) == 0
    empty = Store(MemoryS3(), BUCKET)
    assert steps.last_complete_round(empty, KEYS) is None


def test_record_failure_names_the_last_complete_checkpoint(after_one_reduce):
    store, *_ = after_one_reduce
    store.put_array(KEYS.params(2), np.zeros(3))  # a partial round 2: no optimizer, no record
    event = {
        "state": {"job_id": JOB, "error": {"Error": "Sandbox.Timedout", "Cause": "{}"}},
        "execution": "e",
    }
    assert steps.record_failure(store, event)["recorded"]
    status = store.get_json(KEYS.status)
    assert status["state"] == "FAILED" and status["error"] == "Sandbox.Timedout"
    assert status["round"] == 1
    assert status["checkpoint"] == {
        "round": 1,
        "params": KEYS.params(1),
        "optimizer": KEYS.optimizer(1),
    }


def test_a_replayed_round_does_not_move_the_status_back(after_one_reduce, monkeypatch):
    """A segment run again after a cut replays its committed rounds: the job's status keeps
    the furthest round, not the replayed one (a --follow would see training go backwards)."""
    store, event, out, _ = after_one_reduce
    assert out["next"] == "round"
    ahead = {**store.get_json(KEYS.status), "round": 4}  # where the cut segment had got to
    store.put_json(KEYS.status, ahead)
    monkeypatch.setattr(steps, "_STATUS_WRITTEN", {})  # as in a new container: due at once
    assert steps.reduce(store, event)["round"] == 1
    assert store.get_json(KEYS.status) == ahead
