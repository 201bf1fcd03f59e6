"""Training on upload: a spec put under jobs/incoming/ starts the job with no other call."""

from __future__ import annotations

import json
import time

import pytest
from lambdagrad.client import JobFailedError
from lambdagrad.store import JobKeys
from lambdagrad.uploads import upload_job_id

from tests.conftest import EVENTS, job_doc


def upload_spec(stack, name: str, doc: dict) -> str:
    """Put a spec under jobs/incoming/ and return the job id the upload derives."""
    key = f"jobs/incoming/{name}.json"
    put = stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=json.dumps(doc).encode())
    return upload_job_id(key, put["ETag"])


def executions_for(stack, needle: str, n: int, timeout: float = 60) -> list[dict]:
    """Wait until n ended executions of the training machine mention ``needle`` in their
    input (an upload's key) and return them."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for e in stack.sfn.list_executions(stateMachineArn=stack.state_machine_arn)["executions"]:
            if e["status"] == "RUNNING":
                continue
            desc = stack.sfn.describe_execution(executionArn=e["executionArn"])
            if needle in desc.get("input", ""):
                found.append(desc)
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def dataset_doc(stack, **groups) -> dict:
    doc = job_doc("houses-linear.json", **groups)
    doc.pop("job_id")
    doc["dataset"]["uri"] = stack.upload_dataset(EVENTS / "data" / "houses.csv")
    return doc


def test_uploaded_spec_trains_a_model(stack):
    doc = dataset_doc(stack, training={"rounds": 5})
    job_id = upload_spec(stack, "houses-upload", doc)
    status = stack.follow(job_id, timeout=120)
    assert status["state"] == "SUCCEEDED" and status["round"] == 5
    assert stack.store.exists(JobKeys(job_id).model_json)


def test_same_upload_delivered_twice_runs_one_job(stack):
    doc = dataset_doc(stack, training={"rounds": 20})
    first = upload_spec(stack, "twice", doc)
    second = upload_spec(stack, "twice", doc)  # same bytes, same key: same ETag
    assert first == second
    status = stack.follow(first, timeout=120)
    assert status["state"] == "SUCCEEDED"
    ended = executions_for(stack, "jobs/incoming/twice.json", 2)
    outcomes = sorted((d["status"], d.get("error", "")) for d in ended)
    assert outcomes == [("FAILED", "JobExistsError"), ("SUCCEEDED", "")]
    # the refused execution left the job as the first one wrote it
    assert stack.status(first)["state"] == "SUCCEEDED"
    assert stack.store.get_json(JobKeys(first).model_json)["rounds"] == 20


def test_invalid_uploaded_spec_fails_with_a_named_error_and_says_why(stack):
    doc = dataset_doc(stack)
    doc["optimizer"] = {"name": "sgd", "learning_rate": -1}
    job_id = upload_spec(stack, "bad-spec", doc)
    with pytest.raises(JobFailedError) as err:
        stack.follow(job_id, timeout=120)
    assert err.value.error == "SpecError"
    assert "jobs/incoming/bad-spec.json" in err.value.message
    assert "optimizer.learning_rate" in err.value.message
    (execution,) = executions_for(stack, "jobs/incoming/bad-spec.json", 1)
    assert execution["status"] == "FAILED" and execution["error"] == "SpecError"
    assert not stack.store.exists(JobKeys(job_id).model_json)


def test_other_uploads_start_nothing(stack):
    before = len(stack.sfn.list_executions(stateMachineArn=stack.state_machine_arn)["executions"])
    stack.s3.put_object(Bucket=stack.bucket, Key="jobs/incoming/notes.txt", Body=b"hello")
    stack.s3.put_object(Bucket=stack.bucket, Key="datasets/x.json", Body=b"{}")
    time.sleep(1.0)
    after = len(stack.sfn.list_executions(stateMachineArn=stack.state_machine_arn)["executions"])
    assert after == before
