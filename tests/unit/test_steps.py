"""The steps over an in-memory S3, driven in the state machine's order, against the
reference loop: same spec + same data -> the same parameters, bit for bit."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from lambdagrad import steps
from lambdagrad.artifact import TrainedModel
from lambdagrad.data import DataError, Dataset
from lambdagrad.spec import SpecError, parse_spec
from lambdagrad.store import JobKeys, MemoryS3, Store, StoreError

from tests.reference import reference_train

EVENTS = Path(__file__).resolve().parents[2] / "events"
BUCKET = "lambdagrad-example-bucket"


def drive(store: Store, spec_doc: dict, job_id: str = "job-1") -> dict:
    """Run the steps in the order the state machine runs them."""
    state = steps.prepare(store, {"input": {"job_id": job_id, "spec": spec_doc}, "execution": "e"})
    while True:
        results = [
            steps.worker(store, {"job_id": job_id, "round": state["round"], "shard": k})
            for k in state["shards"]
        ]
        state = steps.reduce(store, {**state, "results": results})
        if state["next"] == "finalize":
            return steps.finalize(
                store, {"job_id": job_id, "round": state["round"], "progress": state["progress"]}
            )


def store_with(name: str) -> tuple[Store, bytes]:
    store = Store(MemoryS3(), BUCKET)
    data = (EVENTS / "data" / name).read_bytes()
    store.put_bytes(f"datasets/{name}", data)
    return store, data


@pytest.mark.parametrize(
    ("spec_file", "data_file", "overrides"),
    [
        (
            "houses-linear.json",
            "houses.csv",
            {"training": {"batch_size": 64, "workers": 4, "epochs": 1}},
        ),
        (
            "houses-linear.json",
            "houses.csv",
            {
                "optimizer": {"name": "momentum", "learning_rate": 0.01},
                "model": {"type": "linear", "l2": 0.1},
                "training": {"batch_size": 7, "workers": 3, "rounds": 50},
            },
        ),
        ("iris-softmax.json", "iris.csv", {}),
    ],
)
def test_steps_match_reference_loop(spec_file, data_file, overrides):
    doc = json.loads((EVENTS / "jobs" / spec_file).read_text())
    for group, fields in overrides.items():
        doc[group] = fields if group != "training" else {**doc[group], **fields}
        if group == "training" and "rounds" in fields:
            doc[group].pop("epochs", None)
    store, data = store_with(data_file)
    result = drive(store, doc)
    keys = JobKeys("job-1")
    params = store.get_array(keys.params(result["rounds"]))
    expected, losses = reference_train(parse_spec(doc), data, data_file)
    np.testing.assert_array_equal(params, expected)
    assert len(losses) == result["rounds"]
    status = store.get_json(keys.status)
    assert status["state"] == "SUCCEEDED" and status["round"] == result["rounds"]
    npz_bytes, model_json = store.get_bytes(keys.model_npz), store.get_json(keys.model_json)
    assert model_json["npz_sha256"] == hashlib.sha256(npz_bytes).hexdigest()
    trained = TrainedModel.from_documents(npz_bytes, model_json)
    np.testing.assert_array_equal(trained.params, expected)
    history = store.get_bytes(keys.history).decode().splitlines()
    assert history[0] == "round,train_loss,validation_loss,seconds"
    assert len(history) == result["rounds"] + 1


def test_retried_reducer_does_not_step_twice():
    store, _ = store_with("houses.csv")
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    state = steps.prepare(store, {"input": {"job_id": "j", "spec": doc}})
    results = [
        steps.worker(store, {"job_id": "j", "round": 0, "shard": k}) for k in state["shards"]
    ]
    first = steps.reduce(store, {**state, "results": results})
    params1 = store.get_array(JobKeys("j").params(1))
    again = steps.reduce(store, {**state, "results": results})
    assert first == again
    np.testing.assert_array_equal(store.get_array(JobKeys("j").params(1)), params1)


def iso_ago(seconds: float) -> str:
    """An ISO 8601 start time ``seconds`` ago, as ``$$.Execution.StartTime`` gives it."""
    return datetime.fromtimestamp(time.time() - seconds, tz=UTC).isoformat()


def test_reducer_ends_a_segment_on_time_without_changing_the_step():
    """Past SegmentSeconds the segment ends (next: continue) whatever its rounds; the
    parameters are those of the same round without a time limit."""
    store, _ = store_with("houses.csv")
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    doc["training"] = {"batch_size": 32, "workers": 2, "rounds": 50, "segment_rounds": 10}
    state = steps.prepare(store, {"input": {"job_id": "t", "spec": doc}})
    results = [
        steps.worker(store, {"job_id": "t", "round": 0, "shard": k}) for k in state["shards"]
    ]
    event = {**state, "results": results, "segment_seconds": "120"}
    fresh = steps.reduce(store, {**event, "segment_started": iso_ago(1.0)})
    assert fresh["next"] == "round" and fresh["segment_end"] == 10
    params1 = store.get_array(JobKeys("t").params(1))
    late = steps.reduce(store, {**event, "segment_started": iso_ago(121.0)})
    assert late["next"] == "continue" and late["segment_end"] == 11  # the next segment's end
    assert late["round"] == fresh["round"] == 1
    np.testing.assert_array_equal(store.get_array(JobKeys("t").params(1)), params1)


def test_prepare_names_bad_input():
    store, _ = store_with("houses.csv")
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    with pytest.raises(DataError, match="no label column 'cost'"):
        steps.prepare(
            store,
            {
                "input": {
                    "job_id": "a",
                    "spec": {**doc, "dataset": {**doc["dataset"], "label": "cost"}},
                }
            },
        )
    with pytest.raises(SpecError, match=r"training\.batch_size: 5000 is larger than the 1800"):
        steps.prepare(
            store, {"input": {"job_id": "b", "spec": {**doc, "training": {"batch_size": 5000}}}}
        )


def test_second_execution_cannot_reuse_a_job_id():
    store, _ = store_with("houses.csv")
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    steps.prepare(store, {"input": {"job_id": "dup", "spec": doc}, "execution": "first"})
    with pytest.raises(steps.JobExistsError):
        steps.prepare(store, {"input": {"job_id": "dup", "spec": doc}, "execution": "second"})


def test_divergence_is_a_named_error():
    store, _ = store_with("houses.csv")
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    doc["optimizer"] = {"name": "sgd", "learning_rate": 900.0}
    doc["training"] = {"batch_size": "full", "workers": 2, "rounds": 500}
    with pytest.raises(steps.ModelDiverged, match="smaller learning rate"):
        drive(store, doc)


def test_record_failure_writes_status():
    store, _ = store_with("houses.csv")
    event = json.loads((EVENTS / "record_failure.json").read_text())
    out = steps.record_failure(store, event)
    assert out["recorded"] and out["error"] == "ModelDiverged"
    status = store.get_json(JobKeys("houses-demo").status)
    assert status["state"] == "FAILED" and "not finite" in status["message"]


@pytest.mark.parametrize(
    ("data_file", "groups"),
    [
        (
            "iris.csv",
            {
                "model": {"type": "mlp", "hidden": [8, 6], "activation": "tanh", "l1": 1e-3},
                "optimizer": {
                    "name": "adamw",
                    "learning_rate": 0.02,
                    "schedule": "cosine",
                    "warmup": 5,
                    "clip_norm": 1.0,
                },
                "training": {"batch_size": 16, "workers": 3, "rounds": 40},
            },
        ),
        (
            "houses.csv",
            {
                "model": {"type": "mlp", "hidden": [4], "activation": "gelu", "l2": 0.01},
                "optimizer": {
                    "name": "rmsprop",
                    "learning_rate": 0.01,
                    "schedule": "step",
                    "decay_steps": 10,
                    "decay_rate": 0.5,
                },
                "training": {"batch_size": 32, "workers": 2, "rounds": 30},
            },
        ),
        (
            "iris.csv",
            {
                "optimizer": {"name": "nesterov", "learning_rate": 0.5},
                "training": {
                    "batch_size": "full",
                    "workers": 2,
                    "rounds": 400,
                    "patience": 3,
                    "min_delta": 1e-4,
                },
            },
        ),
    ],
    ids=["mlp-adamw-cosine-clip-l1", "mlp-regression-rmsprop-step", "early-stopping"],
)
def test_deep_models_and_optimizers_match_reference(data_file, groups):
    base = "iris-softmax.json" if data_file == "iris.csv" else "houses-linear.json"
    doc = json.loads((EVENTS / "jobs" / base).read_text())
    for group, fields in groups.items():
        merged = {**doc.get(group, {}), **fields}
        if "rounds" in fields:
            merged.pop("epochs", None)
        doc[group] = merged
    store, data = store_with(data_file)
    result = drive(store, doc)
    keys = JobKeys("job-1")
    trained = TrainedModel.from_documents(
        store.get_bytes(keys.model_npz), store.get_json(keys.model_json)
    )
    expected, losses = reference_train(parse_spec(doc), data, data_file)
    np.testing.assert_array_equal(trained.params, expected)
    model_json = store.get_json(keys.model_json)
    if "patience" in groups["training"]:
        assert model_json["stopped"] == "early_stopping"
        assert model_json["model_round"] < result["rounds"] < 400
        np.testing.assert_array_equal(
            store.get_array(keys.params(model_json["model_round"])), trained.params
        )
    else:
        assert model_json["model_round"] == result["rounds"] == len(losses)


def test_gradients_over_the_inline_budget_travel_through_s3():
    """A model too large to inline: every worker writes grads/<round>/<k>.npy, same result."""
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    doc["model"] = {"type": "mlp", "hidden": [600], "task": "regression"}
    doc["training"] = {**doc["training"], "rounds": 3, "workers": 2}
    doc["training"].pop("epochs")
    doc["optimizer"] = {"name": "sgd", "learning_rate": 1e-3}
    store, data = store_with("houses.csv")
    state = steps.prepare(store, {"input": {"job_id": "big", "spec": doc}, "execution": "e"})
    results = [steps.worker(store, {"job_id": "big", "round": 0, "shard": k}) for k in (0, 1)]
    assert all("grad" not in r for r in results)
    assert store.exists(JobKeys("big").grad(0, 1))
    steps.reduce(store, {**state, "results": results})
    result = drive(store, doc, job_id="big2")
    expected, _ = reference_train(parse_spec(doc), data, "houses.csv")
    np.testing.assert_array_equal(
        store.get_array(JobKeys("big2").params(result["rounds"])), expected
    )


def test_small_gradients_travel_inline_and_skip_s3():
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    store, _ = store_with("houses.csv")
    state = steps.prepare(store, {"input": {"job_id": "small", "spec": doc}, "execution": "e"})
    results = [steps.worker(store, {"job_id": "small", "round": 0, "shard": k}) for k in range(4)]
    assert all(r["grad"].startswith("<f8:") for r in results)
    assert store.list_keys(JobKeys("small").prefix + "grads/") == []
    bad = [{**results[0], "grad": "<f8:AAAA"}, *results[1:]]
    with pytest.raises(StoreError, match="round 0, shard 0: gradient has 3 bytes"):
        steps.reduce(store, {**state, "results": bad})
    assert steps.reduce(store, {**state, "results": results})["round"] == 1


@pytest.mark.parametrize(
    "optimizer",
    [{"name": "sgd", "learning_rate": 0.05}, {"name": "momentum", "learning_rate": 0.02}],
)
def test_local_sgd_is_model_averaging(optimizer):
    """K=4 local steps: the steps match the reference's explicit parameter averaging."""
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    doc["model"] = {"type": "linear", "l2": 0.01}
    doc["optimizer"] = optimizer
    doc["training"] = {"batch_size": 30, "workers": 3, "rounds": 12, "steps_per_round": 4}
    store, data = store_with("houses.csv")
    result = drive(store, doc)
    params = store.get_array(JobKeys("job-1").params(result["rounds"]))
    expected, losses = reference_train(parse_spec(doc), data, "houses.csv")
    assert len(losses) == result["rounds"] == 12
    np.testing.assert_allclose(params, expected, rtol=1e-9, atol=0)


def test_a_warm_up_longer_than_the_job_is_refused():
    """The rate would never reach the one asked for (0.001 .. 0.01 of 0.1)."""
    spec = parse_spec(
        {
            "dataset": {"uri": "s3://bucket-name/d.csv"},
            "optimizer": {"learning_rate": 0.1, "warmup": 100},
            "training": {"rounds": 10, "batch_size": 4},
        }
    )
    with pytest.raises(
        SpecError,
        match=r"optimizer\.warmup: 100 rounds of warm-up in a job of "
        r"10 rounds: the learning rate would never reach 0\.1",
    ):
        steps.check_sizes(spec, 50)
    steps.check_sizes(
        spec.model_copy(update={"optimizer": spec.optimizer.model_copy(update={"warmup": 10})}), 50
    )


@pytest.mark.parametrize("standardize", [False, True])
def test_float32_shards_refuse_values_float32_cannot_hold(standardize):
    """A feature beyond 3.4e38 became inf in a float32 shard and failed the first round as
    ModelDiverged, telling the user to lower the learning rate."""
    X = np.ones((40, 2))
    X[::2, 1] = 4e38
    data = Dataset(X, np.arange(40.0), ["a", "big"], None, "y")
    spec = parse_spec(
        {
            "dataset": {"uri": "s3://bucket-name/d.csv", "standardize": standardize},
            "training": {"dtype": "float32", "batch_size": 8},
        }
    )
    if standardize:  # scaled, the values are small
        steps.split_and_scaler(spec, data, "d.csv")
    else:
        with pytest.raises(
            DataError,
            match=r"d\.csv: feature column 'big': values up to 4e\+38 "
            r"overflow float32 \(training\.dtype\) unscaled",
        ):
            steps.split_and_scaler(spec, data, "d.csv")
    label = Dataset(np.ones((40, 2)), np.full(40, -5e38), ["a", "b"], None, "y")
    with pytest.raises(DataError, match=r"d\.csv: label values up to 5e\+38 overflow float32"):
        steps.split_and_scaler(spec, label, "d.csv")
    float64 = spec.model_copy(
        update={"training": spec.training.model_copy(update={"dtype": "float64"})}
    )
    steps.split_and_scaler(float64, data, "d.csv")


def test_history_seconds_do_not_count_the_time_a_job_sat_stopped():
    """A resumed job's first round counts from its segment's start, not the round before."""
    store = Store(MemoryS3(), "bucket-name")
    keys = JobKeys("hist")
    at = datetime(2026, 11, 28, 5, 0, tzinfo=UTC).timestamp()
    records = [
        (1, at + 1.0, "2026-11-28T05:00:00+00:00"),
        (2, at + 2.0, "2026-11-28T05:00:00+00:00"),
        # stopped after round 2, resumed an hour later: a new segment
        (3, at + 3600.5, "2026-11-28T06:00:00+00:00"),
        (4, at + 3601.5, None),  # a record without segment_started (an older version's)
    ]
    for r, finished, started in records:
        doc = {"round": r, "finished_at": finished, "train_loss": 1.0, "validation_loss": None}
        store.put_json(keys.metrics(r), {**doc, "segment_started": started})
    _, csv_bytes = steps._history(store, keys, {"prepared_at": at})
    seconds = [float(line.split(",")[3]) for line in csv_bytes.decode().splitlines()[1:]]
    assert seconds == [1.0, 1.0, 0.5, 1.0]
