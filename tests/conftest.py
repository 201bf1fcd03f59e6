"""Shared fixtures: one embedded-engine deployment of template.yaml per test session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"


LAMBDA_BUCKET = "lambdagrad-example-bucket"  # the bucket the sample events in events/ name


@pytest.fixture
def lambda_s3(monkeypatch):
    """What a handler sees in Lambda, over moto S3: the template's variables, one bucket."""
    import boto3
    from moto import mock_aws

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "BUCKET": LAMBDA_BUCKET,
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "lambdagrad",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=LAMBDA_BUCKET)
        yield client


@pytest.fixture(autouse=True)
def fresh_step_cache():
    """Tests re-create buckets and job ids; a warm Lambda's cache must not carry over."""
    from lambdagrad import steps

    steps.clear_cache()
    yield


@pytest.fixture(scope="session")
def engine():
    """template.yaml deployed into moto, with the real handlers."""
    from lambdagrad.local.engine import LocalEngine

    with LocalEngine(ROOT / "template.yaml", stack_name="lambdagrad-test") as eng:
        yield eng


@pytest.fixture
def stack(engine):
    """A StackClient on the embedded deployment; finished executions are forgotten after."""
    from lambdagrad.client import StackClient

    yield StackClient.from_outputs(engine.outputs, engine.client)
    engine.reset()


def job_doc(name: str, **groups) -> dict:
    """An example job spec from events/jobs with groups replaced field by field."""
    doc = json.loads((EVENTS / "jobs" / name).read_text())
    for group, fields in groups.items():
        if group == "job_id":
            doc["job_id"] = fields
            continue
        merged = {**doc.get(group, {}), **fields}
        if "rounds" in fields:
            merged.pop("epochs", None)
        if "epochs" in fields:
            merged.pop("rounds", None)
        doc[group] = merged
    return doc
