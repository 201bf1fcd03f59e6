"""lambdagrad.resume over an in-memory S3: the continuation input rebuilt from checkpoints
equals what the live state machine carried, and a job stopped at any round and continued
from it ends with the parameters of an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lambdagrad import steps
from lambdagrad.resume import (
    JobFinishedError,
    NoCheckpointError,
    ResumeError,
    claim_resume,
    continuation_input,
    resumable_round,
)
from lambdagrad.store import JobKeys, MemoryS3, Store, StoreError

EVENTS = Path(__file__).resolve().parents[2] / "events"
BUCKET = "lambdagrad-example-bucket"
JOB = "job-1"


def spec_doc(**training) -> dict:
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    doc["optimizer"] = {"name": "adam", "learning_rate": 0.05, "schedule": "cosine", "warmup": 2}
    doc["training"] = {**doc["training"], "workers": 3, "batch_size": 32, **training}
    doc["training"].pop("epochs", None)
    return doc


def fresh_store() -> Store:
    store = Store(MemoryS3(), BUCKET)
    store.put_bytes("datasets/houses.csv", (EVENTS / "data" / "houses.csv").read_bytes())
    return store


def run(store: Store, state: dict, until: int | None = None) -> tuple[dict, list[dict]]:
    """Drive rounds from a state-machine input; stop after round ``until`` or at Finalize.

    Returns the last reducer output and every input the rounds started from."""
    seen = []
    while True:
        seen.append(state)
        results = [
            steps.worker(store, {"job_id": JOB, "round": state["round"], "shard": k})
            for k in state["shards"]
        ]
        state = steps.reduce(store, {**state, "results": results})
        if state["next"] == "finalize" or (until is not None and state["round"] >= until):
            return state, seen


def finalize(store: Store, state: dict) -> np.ndarray:
    steps.finalize(store, {"job_id": JOB, "round": state["round"], "progress": state["progress"]})
    return store.get_arrays(JobKeys(JOB).model_npz)["params"]


def uninterrupted(doc: dict) -> tuple[np.ndarray, list[dict]]:
    store = fresh_store()
    state = steps.prepare(store, {"input": {"job_id": JOB, "spec": doc}, "execution": "e"})
    last, seen = run(store, state)
    return finalize(store, last), seen


@pytest.mark.parametrize(
    "training",
    [{"rounds": 12, "segment_rounds": 5}, {"rounds": 40, "patience": 2, "min_delta": 1e9}],
    ids=["cosine-segments", "early-stopping"],
)
def test_resume_from_every_round_is_bit_identical(training):
    doc = spec_doc(**training)
    expected, live_inputs = uninterrupted(doc)
    assert len(live_inputs) > 2
    for stop_after in range(0, len(live_inputs)):
        steps.clear_cache()
        store = fresh_store()
        state = steps.prepare(store, {"input": {"job_id": JOB, "spec": doc}, "execution": "e"})
        carried = {**state["progress"], "stop": None}
        if stop_after:
            carried = run(store, state, until=stop_after)[0]["progress"]
        start = continuation_input(store, JOB)
        # what the state machine carried out of this round, rebuilt from S3 alone
        assert start["round"] == stop_after
        assert start["progress"] == carried
        assert start["shards"] == [0, 1, 2]
        last, _ = run(store, start)
        np.testing.assert_array_equal(finalize(store, last), expected)


def test_a_round_missing_its_metrics_record_is_not_complete():
    store = fresh_store()
    state = steps.prepare(
        store, {"input": {"job_id": JOB, "spec": spec_doc(rounds=9)}, "execution": "e"}
    )
    run(store, state, until=5)
    keys = JobKeys(JOB)
    assert resumable_round(store, JOB)[0] == 5
    # killed between the reducer's params and its metrics record
    del store.client.objects[(BUCKET, keys.metrics(5))]
    assert resumable_round(store, JOB)[0] == 4
    # a truncated optimizer file (cannot happen with S3, but a copied mirror might have one)
    store.put_bytes(keys.optimizer(4), b"PK\x03\x04 truncated")
    assert resumable_round(store, JOB)[0] == 3
    start = continuation_input(store, JOB)
    assert start["round"] == 3 and start["segment_end"] == 9


def _damage(store: Store, keys: JobKeys, r: int, how: str) -> None:
    if how == "junk params":
        store.put_bytes(keys.params(r), b"not an array")
    elif how == "nan params":
        store.put_array(keys.params(r), np.full_like(store.get_array(keys.params(r)), np.nan))
    elif how == "short params":
        store.put_array(keys.params(r), store.get_array(keys.params(r))[:-1])
    else:  # another round's optimizer state
        store.put_bytes(keys.optimizer(r), store.get_bytes(keys.optimizer(r - 1)))


@pytest.mark.parametrize("how", ["junk params", "nan params", "short params", "stale state"])
def test_a_damaged_checkpoint_is_recomputed_not_trusted(how):
    """Round 5's record says it is committed, but its arrays are damaged: the resume starts
    from round 4, and round 4's reducer recomputes round 5 rather than hand its damaged
    params to the next workers (or its stale optimizer state to the next step)."""
    doc = spec_doc(rounds=9)
    expected, _ = uninterrupted(doc)
    steps.clear_cache()
    store = fresh_store()
    state = steps.prepare(store, {"input": {"job_id": JOB, "spec": doc}, "execution": "e"})
    run(store, state, until=5)  # killed after round 5 was committed
    keys = JobKeys(JOB)
    _damage(store, keys, 5, how)
    steps.clear_cache()  # a new process: nothing of round 5 remembered
    start = continuation_input(store, JOB)
    assert start["round"] == 4
    last, _ = run(store, start)
    np.testing.assert_array_equal(finalize(store, last), expected)


def test_a_job_stopped_between_reducer_and_finalize_finalizes():
    doc = spec_doc(rounds=6)
    expected, _ = uninterrupted(doc)
    store = fresh_store()
    state = steps.prepare(store, {"input": {"job_id": JOB, "spec": doc}, "execution": "e"})
    last, _ = run(store, state)  # round 6 written, Finalize never ran
    assert last["next"] == "finalize"
    start = continuation_input(store, JOB)
    assert start["round"] == 5  # its reducer finds round 6 complete and stops
    last, _ = run(store, start)
    assert last["next"] == "finalize" and last["round"] == 6
    np.testing.assert_array_equal(finalize(store, last), expected)


def test_refusals_name_the_job():
    store = fresh_store()
    with pytest.raises(NoCheckpointError, match="job 'job-1' has no checkpoint"):
        continuation_input(store, JOB)
    # claimed but Prepare never finished
    store.put_json(JobKeys(JOB).claim, {"execution": "e"})
    with pytest.raises(NoCheckpointError):
        continuation_input(store, JOB)
    steps.clear_cache()
    store = fresh_store()
    state = steps.prepare(
        store, {"input": {"job_id": JOB, "spec": spec_doc(rounds=2)}, "execution": "e"}
    )
    finalize(store, run(store, state)[0])
    with pytest.raises(JobFinishedError, match="job 'job-1' already finished"):
        continuation_input(store, JOB)


def test_a_damaged_spec_or_meta_is_named_not_taken_for_no_checkpoint():
    store = fresh_store()
    state = steps.prepare(
        store, {"input": {"job_id": JOB, "spec": spec_doc(rounds=6)}, "execution": "e"}
    )
    run(store, state, until=3)
    for key in (JobKeys(JOB).spec, JobKeys(JOB).meta):
        good = store.get_bytes(key)
        store.put_bytes(key, b"{bad")
        steps.clear_cache()
        with pytest.raises(StoreError, match=rf"{key} is not valid JSON") as info:
            continuation_input(store, JOB)
        assert not isinstance(info.value, NoCheckpointError)
        store.put_bytes(key, good)


def test_each_resume_gets_its_own_execution_name():
    store = fresh_store()
    start = {"round": 3}
    assert claim_resume(store, JOB, start) == "job-1-resume-1"
    assert claim_resume(store, JOB, start) == "job-1-resume-2"
    # a racing resume that counted before the other's claim landed is refused
    store.client.objects.pop((BUCKET, "jobs/job-1/resumes/2.json"))
    store.put_json("jobs/job-1/resumes/3.json", {})
    with pytest.raises(ResumeError, match="being resumed"):
        claim_resume(store, JOB, start)
