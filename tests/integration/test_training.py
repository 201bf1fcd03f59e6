"""Training through the real state machine on the embedded engine (template.yaml in moto).

The yardstick is the reference loop in tests/reference.py: same spec and seed must give
the same parameters, whatever the engine, retries or continue-as-new splits.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from lambdagrad.client import JobFailedError
from lambdagrad.data import Standardizer, load_dataset, train_validation_split
from lambdagrad.spec import parse_spec
from lambdagrad.store import JobKeys
from lambdagrad.training import (
    EVENTS_PER_ROUND_FIXED,
    EVENTS_PER_ROUND_PER_WORKER,
    EVENTS_PER_SEGMENT,
    segment_rounds_for,
)

from tests.conftest import EVENTS, job_doc
from tests.reference import reference_train


def data_path(data_file: str | Path) -> Path:
    """A bundled example dataset by name, or a path as given."""
    return Path(data_file) if Path(data_file).is_absolute() else EVENTS / "data" / data_file


def run_job(
    stack, doc: dict, data_file: str | Path, timeout: float = 600
) -> tuple[dict, np.ndarray]:
    path = data_path(data_file)
    doc = {**doc, "dataset": {**doc["dataset"], "uri": stack.upload_dataset(path)}}
    spec = parse_spec(doc)
    stack.start(spec)
    status = stack.follow(spec.job_id, timeout=timeout)
    params = stack.store.get_array(JobKeys(spec.job_id).params(status["round"]))
    return status, params


def reference_params(doc: dict, data_file: str | Path) -> np.ndarray:
    """Final parameters of the plain numpy reference loop for the same spec and data."""
    path = data_path(data_file)
    return reference_train(parse_spec(doc), path.read_bytes(), path.name)[0]


def executions_of(stack, job_id: str) -> list[dict]:
    listing = stack.sfn.list_executions(stateMachineArn=stack.state_machine_arn)["executions"]
    return [e for e in listing if e["name"] == job_id or e["name"].startswith(job_id + "-r")]


def houses_least_squares() -> np.ndarray:
    """The closed-form linear fit of houses.csv's training split (standardized, bias last):
    what full-batch gradient descent converges to."""
    ds = load_dataset(
        (EVENTS / "data" / "houses.csv").read_bytes(),
        source="houses.csv",
        fmt=None,
        label="price",
        task="regression",
    )
    train_idx, _ = train_validation_split(len(ds.y), 0.1, 0)
    X = Standardizer.fit(ds.X[train_idx]).transform(ds.X[train_idx])
    exact, *_ = np.linalg.lstsq(np.hstack([X, np.ones((len(X), 1))]), ds.y[train_idx], rcond=None)
    return exact


def segments_of(stack, job_id: str) -> list[dict]:
    """The job's segment executions (Express children), oldest first, with their input."""
    arn = stack.output("SegmentStateMachineArn")
    found = []
    for e in stack.sfn.list_executions(stateMachineArn=arn)["executions"]:
        desc = stack.sfn.describe_execution(executionArn=e["executionArn"])
        if json.loads(desc["input"])["job_id"] == job_id:
            found.append(desc)
    return sorted(found, key=lambda d: json.loads(d["input"])["round"])


def write_buy_csv(directory: Path) -> Path:
    """400 rows of a linearly separable yes/no label over three features: buy.csv."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 3))
    y = np.where(X @ np.array([2.0, -1.0, 0.5]) + 0.3 > 0, "yes", "no")
    csv = "a,b,c,buy\n" + "\n".join(f"{a},{b},{c},{t}" for (a, b, c), t in zip(X, y, strict=True))
    path = directory / "buy.csv"
    path.write_text(csv)
    return path


def history_length(stack, execution_arn: str) -> int:
    # finalize marks the job SUCCEEDED before the execution records its last events
    stack.wait_execution(execution_arn, poll_seconds=0.05, timeout=60)
    history = stack.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)
    return len(history["events"])


@pytest.mark.parametrize(
    ("name", "data", "groups"),
    [
        ("houses-linear.json", "houses.csv", {"training": {"rounds": 12, "batch_size": 32}}),
        ("iris-softmax.json", "iris.csv", {"training": {"rounds": 15}}),
        (
            "iris-softmax.json",
            "iris.csv",
            {
                "training": {"rounds": 15, "batch_size": 10, "workers": 3},
                "optimizer": {"name": "momentum", "learning_rate": 0.05},
            },
        ),
    ],
    ids=["linear-sgd", "softmax-adam-full", "softmax-momentum-minibatch"],
)
def test_state_machine_matches_reference_loop(stack, name, data, groups):
    doc = job_doc(name, job_id=f"ref-{name[:5]}-{len(str(groups))}", **groups)
    status, params = run_job(stack, doc, data)
    expected = reference_params(doc, data)
    assert status["state"] == "SUCCEEDED"
    np.testing.assert_allclose(params, expected, rtol=0, atol=1e-10)


def test_local_sgd_matches_the_model_averaging_reference(stack):
    """steps_per_round K=4 through the state machine: workers average, as the reference does."""
    doc = job_doc(
        "houses-linear.json",
        job_id="local-sgd-k4",
        model={"type": "linear", "l2": 0.01},
        optimizer={"name": "momentum", "learning_rate": 0.02},
        training={"rounds": 8, "batch_size": 30, "workers": 3, "steps_per_round": 4},
    )
    status, params = run_job(stack, doc, "houses.csv")
    assert status["state"] == "SUCCEEDED" and status["round"] == 8
    np.testing.assert_allclose(params, reference_params(doc, "houses.csv"), rtol=1e-9, atol=0)


def test_logistic_regression_trains(stack, tmp_path):
    path = write_buy_csv(tmp_path)
    doc = {
        "job_id": "logistic-1",
        "dataset": {"uri": "s3://placeholder-bucket/buy.csv", "label": "buy", "validation": 0.25},
        "model": {"type": "logistic"},
        "training": {"batch_size": 40, "workers": 2, "epochs": 5},
    }
    status, params = run_job(stack, doc, path)
    expected = reference_params(doc, path)
    np.testing.assert_allclose(params, expected, rtol=0, atol=1e-10)
    assert status["metrics"]["validation"]["accuracy"] >= 0.9


def test_full_batch_gd_reaches_least_squares(stack):
    doc = job_doc(
        "houses-linear.json",
        job_id="closed-form",
        optimizer={"name": "sgd", "learning_rate": 0.5},
        training={"batch_size": "full", "workers": 2, "rounds": 250},
    )
    _, params = run_job(stack, doc, "houses.csv")
    exact = houses_least_squares()
    assert np.linalg.norm(params - exact) / np.linalg.norm(exact) <= 1e-6


def test_transient_worker_failure_gives_identical_model(engine, stack):
    doc = job_doc("houses-linear.json", job_id="flaky-worker", training={"rounds": 6, "workers": 3})
    engine.fail_next("WorkerFunction", times=1)
    before = engine.invocations("WorkerFunction")
    status, params = run_job(stack, doc, "houses.csv")
    assert engine.invocations("WorkerFunction") - before == 6 * 3 + 1  # one retried
    expected = reference_params(doc, "houses.csv")
    assert status["state"] == "SUCCEEDED"
    np.testing.assert_array_equal(params, expected)


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "sgd", "learning_rate": 0.05},
        {"name": "adam", "learning_rate": 0.05, "schedule": "cosine", "warmup": 2},
    ],
    ids=["sgd", "adam-cosine-warmup"],
)
def test_segments_split_rounds_without_changing_the_result(stack, optimizer):
    """Rounds run in Express segments of segment_rounds; one Standard execution waits on them."""
    job_id = f"segments-{optimizer['name']}"
    doc = job_doc(
        "houses-linear.json",
        job_id=job_id,
        optimizer=optimizer,
        training={"rounds": 7, "segment_rounds": 3},
    )
    status, params = run_job(stack, doc, "houses.csv")
    assert [e["name"] for e in executions_of(stack, job_id)] == [job_id]
    segments = segments_of(stack, job_id)
    assert [json.loads(s["input"])["round"] for s in segments] == [0, 3, 6]
    assert [json.loads(s["output"])["next"] for s in segments] == [
        "continue",
        "continue",
        "finalize",
    ]
    parent = executions_of(stack, job_id)[0]["executionArn"]
    assert all(json.loads(s["input"])["execution"] == parent for s in segments)
    expected = reference_params(doc, "houses.csv")
    np.testing.assert_array_equal(params, expected)
    assert status["round"] == 7


def test_training_execution_continues_as_new_after_its_segments(tmp_path):
    """SegmentsPerExecution segments, then continue-as-new; the next execution takes the job
    from the continuation input {job_id, round, shards, segment_end, progress}."""
    from lambdagrad.client import StackClient
    from lambdagrad.local.engine import LocalEngine

    from tests.conftest import ROOT

    with LocalEngine(
        ROOT / "template.yaml",
        stack_name="lambdagrad-test-cas",
        parameters={"SegmentsPerExecution": 2},
    ) as eng:
        stack = StackClient.from_outputs(eng.outputs, eng.client)
        job_id = "handover"
        doc = job_doc(
            "houses-linear.json", job_id=job_id, training={"rounds": 7, "segment_rounds": 2}
        )
        status, params = run_job(stack, doc, "houses.csv")
        names = sorted(e["name"] for e in executions_of(stack, job_id))
        assert names == [job_id, f"{job_id}-r4"]
        assert [json.loads(s["input"])["round"] for s in segments_of(stack, job_id)] == [0, 2, 4, 6]
        np.testing.assert_array_equal(params, reference_params(doc, "houses.csv"))
        assert status["round"] == 7


def test_history_events_per_round_keep_segments_under_limit(stack):
    """Measure events per round (in a segment) for 1 and 3 workers, and events per segment
    (in the training execution); the segment formulas must cover them."""
    counts = {}
    for workers in (1, 3):
        for rounds in (2, 4):
            doc = job_doc(
                "houses-linear.json",
                job_id=f"events-{workers}-{rounds}",
                training={"rounds": rounds, "workers": workers},
            )
            run_job(stack, doc, "houses.csv")
            (segment,) = segments_of(stack, doc["job_id"])
            counts[workers, rounds] = history_length(stack, segment["executionArn"])
    per_round = {w: (counts[w, 4] - counts[w, 2]) / 2 for w in (1, 3)}
    per_worker = (per_round[3] - per_round[1]) / 2
    fixed = per_round[1] - per_worker
    parent = {}
    for segment_rounds in (1, 2):  # 4 or 2 segments of the same job
        doc = job_doc(
            "houses-linear.json",
            job_id=f"events-seg-{segment_rounds}",
            training={"rounds": 4, "workers": 1, "segment_rounds": segment_rounds},
        )
        run_job(stack, doc, "houses.csv")
        (execution,) = executions_of(stack, doc["job_id"])
        parent[segment_rounds] = history_length(stack, execution["executionArn"])
    per_segment = (parent[1] - parent[2]) / 2
    print(
        f"events per round: {fixed:g} + {per_worker:g} x workers "
        f"(1 worker: {per_round[1]:g}, 3 workers: {per_round[3]:g}); "
        f"per segment in the training execution: {per_segment:g}"
    )
    assert per_worker <= EVENTS_PER_ROUND_PER_WORKER
    assert fixed <= EVENTS_PER_ROUND_FIXED
    assert per_segment <= EVENTS_PER_SEGMENT
    # A full default segment, plus its start and end, stays under 20,000 events.
    overhead = counts[1, 2] - 2 * per_round[1]
    for workers in (1, 4, 40, 1000):
        spec = parse_spec(job_doc("houses-linear.json", training={"workers": workers}))
        assert segment_rounds_for(spec) * (fixed + per_worker * workers) + overhead < 20_000


def test_bad_data_fails_with_named_error_in_status(stack, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b,price\n1,2,3\n4,x,6\n7,8,9\n")
    doc = job_doc("houses-linear.json", job_id="bad-data")
    with pytest.raises(JobFailedError) as err:
        run_job(stack, doc, path)
    assert err.value.error == "DataError"
    assert "bad.csv line 3, column 'b'" in err.value.message
    status = stack.status("bad-data")
    assert status["state"] == "FAILED" and status["error"] == "DataError"
    (execution,) = executions_of(stack, "bad-data")
    # RecordFailure writes the status just before the execution fails: wait for the end
    desc = stack.wait_execution(execution["executionArn"], poll_seconds=0.05, timeout=60)
    assert desc["status"] == "FAILED" and desc.get("error") == "DataError"
    assert not stack.store.exists(JobKeys("bad-data").model_json)


def test_divergence_fails_with_model_diverged(stack):
    doc = job_doc(
        "houses-linear.json",
        job_id="diverge",
        optimizer={"name": "sgd", "learning_rate": 900.0},
        training={"batch_size": "full", "rounds": 400, "workers": 2},
    )
    with pytest.raises(JobFailedError) as err:
        run_job(stack, doc, "houses.csv")
    assert err.value.error == "ModelDiverged"
    assert "smaller learning rate" in err.value.message
    # raised in a segment (Express), reported by the training execution under its own name
    (execution,) = executions_of(stack, "diverge")
    desc = stack.wait_execution(execution["executionArn"], poll_seconds=0.05, timeout=60)
    assert desc["status"] == "FAILED" and desc["error"] == "ModelDiverged"
    assert json.loads(desc["cause"])["errorType"] == "ModelDiverged"
    assert "smaller learning rate" in json.loads(desc["cause"])["errorMessage"]


def test_worker_failure_in_a_segment_fails_the_job_with_its_name(engine, stack):
    """A worker error that no Retry covers ends the segment and the job with that error."""
    doc = job_doc("houses-linear.json", job_id="worker-fails", training={"rounds": 3, "workers": 2})
    engine.fail_next("WorkerFunction", times=1, error="KMSAccessDeniedException")
    with pytest.raises(JobFailedError) as err:
        run_job(stack, doc, "houses.csv")
    assert err.value.error == "Lambda.KMSAccessDeniedException"
    (execution,) = executions_of(stack, "worker-fails")
    desc = stack.wait_execution(execution["executionArn"], poll_seconds=0.05, timeout=60)
    assert desc["status"] == "FAILED" and desc["error"] == "Lambda.KMSAccessDeniedException"
    assert "Injected KMSAccessDeniedException" in desc["cause"]
    (segment,) = segments_of(stack, "worker-fails")
    assert segment["status"] == "SUCCEEDED"  # it handed the error to the parent


@pytest.mark.slow
def test_two_thousand_rounds_across_executions(stack):
    doc = job_doc(
        "houses-linear.json",
        job_id="long-job",
        training={"rounds": 2000, "workers": 1, "batch_size": 16, "segment_rounds": 500},
    )
    status, params = run_job(stack, doc, "houses.csv", timeout=1800)
    assert status["state"] == "SUCCEEDED" and status["round"] == 2000
    assert len(executions_of(stack, "long-job")) == 1
    # segments of at most 500 rounds, one after the other (a slow machine may cut them on time)
    spans = [
        (json.loads(s["input"])["round"], json.loads(s["output"])["round"])
        for s in segments_of(stack, "long-job")
    ]
    assert spans[0][0] == 0 and spans[-1][1] == 2000 and len(spans) >= 4
    assert all(a[1] == b[0] for a, b in pairwise(spans))
    assert all(0 < end - start <= 500 for start, end in spans)
    expected = reference_params(doc, "houses.csv")
    np.testing.assert_array_equal(params, expected)


def test_execution_failing_before_any_status_still_ends_follow(stack):
    """An execution that ends without its steps recording why still ends the follow."""
    doc = job_doc("houses-linear.json")
    doc.pop("job_id")  # Prepare cannot name the job, so nothing records a status
    started = stack.sfn.start_execution(
        stateMachineArn=stack.state_machine_arn, name="orphan", input=json.dumps({"spec": doc})
    )
    stack.attach("orphan", started["executionArn"])
    with pytest.raises(JobFailedError) as err:
        stack.follow("orphan", poll_seconds=0.05, timeout=120)
    assert err.value.error == "SpecError"
    assert "job_id: missing" in err.value.message
    assert not stack.store.exists(JobKeys("orphan").status)


def test_float32_matches_reference_and_keeps_accuracy(stack):
    """float32 shards and gradients: the state machine still matches the reference loop
    bit for bit, and the model lands within 1e-5 of the float64 run and of least squares."""
    groups = {
        "optimizer": {"name": "sgd", "learning_rate": 0.5},
        "training": {"batch_size": "full", "workers": 2, "rounds": 250, "dtype": "float32"},
    }
    doc = job_doc("houses-linear.json", job_id="closed-form-f32", **groups)
    status, params = run_job(stack, doc, "houses.csv")
    np.testing.assert_allclose(params, reference_params(doc, "houses.csv"), rtol=0, atol=1e-10)
    doc64 = job_doc("houses-linear.json", job_id="closed-form-f64", **groups)
    doc64["training"] = {**doc64["training"], "dtype": "float64"}
    status64, params64 = run_job(stack, doc64, "houses.csv")
    exact = houses_least_squares()
    print(
        "relative distance to least squares: float32",
        np.linalg.norm(params - exact) / np.linalg.norm(exact),
        "float64",
        np.linalg.norm(params64 - exact) / np.linalg.norm(exact),
    )
    assert np.linalg.norm(params - exact) / np.linalg.norm(exact) <= 1e-5
    assert np.linalg.norm(params - params64) / np.linalg.norm(params64) <= 1e-5
    rmse, rmse64 = (s["metrics"]["validation"]["rmse"] for s in (status, status64))
    assert rmse == pytest.approx(rmse64, rel=1e-5)


def test_float32_logistic_keeps_accuracy(stack, tmp_path):
    path = write_buy_csv(tmp_path)
    results = {}
    for dtype in ("float64", "float32"):
        doc = {
            "job_id": f"logistic-{dtype}",
            "dataset": {
                "uri": "s3://placeholder-bucket/buy.csv",
                "label": "buy",
                "validation": 0.25,
            },
            "model": {"type": "logistic"},
            "training": {"batch_size": 40, "workers": 2, "epochs": 5, "dtype": dtype},
        }
        status, params = run_job(stack, doc, path)
        np.testing.assert_allclose(params, reference_params(doc, path), rtol=0, atol=1e-10)
        results[dtype] = (status["metrics"]["validation"], params)
    (m64, p64), (m32, p32) = results["float64"], results["float32"]
    assert m32["accuracy"] == pytest.approx(m64["accuracy"], abs=0.01)
    assert m32["log_loss"] == pytest.approx(m64["log_loss"], rel=1e-4)
    assert np.linalg.norm(p32 - p64) / np.linalg.norm(p64) <= 1e-4
