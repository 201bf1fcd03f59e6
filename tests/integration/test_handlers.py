"""Every sample event in events/ drives its real handler (Powertools and all) on moto S3."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from types import SimpleNamespace

import pytest
from lambdagrad.store import JobKeys

from tests.conftest import EVENTS, LAMBDA_BUCKET, ROOT

BUCKET = LAMBDA_BUCKET


def handler(name: str):
    path = ROOT / "functions" / name / "app.py"
    spec = importlib.util.spec_from_file_location(f"sample_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lambda_handler


def context(name: str) -> SimpleNamespace:
    return SimpleNamespace(
        function_name=name,
        function_version="$LATEST",
        memory_limit_in_mb="512",
        invoked_function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{name}",
        aws_request_id="req-1",
        get_remaining_time_in_millis=lambda: 60_000,
    )


def event(name: str) -> dict:
    return json.loads((EVENTS / f"{name}.json").read_text())


@pytest.fixture
def s3(lambda_s3):
    body = (EVENTS / "data" / "houses.csv").read_bytes()
    lambda_s3.put_object(Bucket=BUCKET, Key="datasets/houses.csv", Body=body)
    return lambda_s3


def test_sample_events_run_through_every_handler(s3, capsys):
    # Powertools binds its log handler to the sys.stdout of the first Logger of a service
    # (maybe another test's capture): point it at this test's.
    # It also keeps the level of the first configuration (an engine run may have set
    # WARNING): this test reads the INFO lines.
    for service in ("prepare", "worker", "reduce", "finalize", "record-failure"):
        logging.getLogger(f"lambdagrad-{service}").setLevel(logging.INFO)
        for handler_ in logging.getLogger(f"lambdagrad-{service}").handlers:
            if isinstance(handler_, logging.StreamHandler):
                handler_.stream = sys.stdout  # not setStream: it flushes the old, closed one
    prepared = handler("prepare")(event("prepare"), context("prepare"))
    assert prepared["round"] == 0 and prepared["shards"] == [0, 1, 2, 3]

    worker_event = event("worker")
    results = [
        handler("worker")({**worker_event, "shard": k}, context("worker"))
        for k in prepared["shards"]
    ]
    assert [r["count"] for r in results] == [16, 16, 16, 16]

    reduce_event = {**event("reduce"), "results": results}
    reduced = handler("reduce")(reduce_event, context("reduce"))
    assert reduced["round"] == 1 and reduced["next"] == "round"

    keys = JobKeys("houses-demo")
    failed = handler("record_failure")(event("record_failure"), context("record_failure"))
    assert failed["recorded"] and failed["error"] == "ModelDiverged"
    status = json.loads(s3.get_object(Bucket=BUCKET, Key=keys.status)["Body"].read())
    assert status["state"] == "FAILED"

    finalized = handler("finalize")(event("finalize"), context("finalize"))
    assert finalized["state"] == "SUCCEEDED"
    assert s3.head_object(Bucket=BUCKET, Key=keys.model_json)
    # a failure recorded after the job finished (a replayed input) leaves its status alone
    failed = handler("record_failure")(event("record_failure"), context("record_failure"))
    assert not failed["recorded"]
    status = json.loads(s3.get_object(Bucket=BUCKET, Key=keys.status)["Body"].read())
    assert status["state"] == "SUCCEEDED"

    logs = capsys.readouterr().out
    assert '"correlation_id":"houses-demo"' in logs.replace(" ", "")  # Powertools Logger
