"""The embedded engine in isolation: deploy the fixture SAM app into moto and run its machines.

The fixture (tests/fixtures/engine/) has a bucket, two python3.13 functions with local
CodeUri folders, a loop state machine from DefinitionUri + DefinitionSubstitutions (Map over
items -> worker, step, Choice loop, continue-as-new through states:startExecution), a parent
machine that runs the loop with .sync:2 and an S3 -> EventBridge rule that starts the loop.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from lambdagrad.local import LocalEngine
from lambdagrad.local.sam import TemplateError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "engine" / "template.yaml"


def wait(sfn, execution_arn: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        d = sfn.describe_execution(executionArn=execution_arn)
        if d["status"] != "RUNNING":
            return d
        if time.monotonic() > deadline:
            raise TimeoutError(f"{execution_arn} still running after {timeout} s")
        time.sleep(0.02)


def follow(sfn, execution_arn: str) -> tuple[dict, int]:
    """Wait for an execution and the chain it continues as; return the last one and the count."""
    hops = 1
    d = wait(sfn, execution_arn)
    while d["status"] == "SUCCEEDED" and "continued_as" in json.loads(d["output"]):
        d = wait(sfn, json.loads(d["output"])["continued_as"])
        hops += 1
    return d, hops


def job(**overrides) -> str:
    spec = {
        "items": [1, 2, 3],
        "round": 0,
        "rounds": 3,
        "segment": 100,
        "total": 0,
        "generation": 0,
    }
    spec.update(overrides)
    return json.dumps(spec)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    log = tmp_path_factory.mktemp("engine") / "handlers.log"
    with LocalEngine(FIXTURE, stack_name="engine-test", log_path=log) as eng:
        yield eng


@pytest.fixture
def sfn(engine):
    engine.reset()
    return engine.client("stepfunctions")


def test_outputs_and_resources(engine):
    assert set(engine.outputs) == {
        "BucketName",
        "LoopStateMachineArn",
        "ParentStateMachineArn",
        "WorkFunctionName",
    }
    assert engine.outputs["LoopStateMachineArn"].startswith("arn:aws:states:us-east-1:")
    assert engine.resources["LoopStateMachine"] == engine.outputs["LoopStateMachineArn"]
    assert engine.function_name("WorkFunction") == engine.outputs["WorkFunctionName"]
    engine.client("s3").head_bucket(Bucket=engine.outputs["BucketName"])


def test_state_machine_definition_substituted(engine):
    sm = engine.client("stepfunctions").describe_state_machine(
        stateMachineArn=engine.outputs["LoopStateMachineArn"]
    )
    assert "${" not in sm["definition"]
    assert engine.resources["WorkFunction"] in sm["definition"]


def test_map_loop_catch_and_environment(engine, sfn):
    ex = sfn.start_execution(
        stateMachineArn=engine.outputs["LoopStateMachineArn"],
        name="loop-basic",
        input=job(items=[1, 2, 3, "boom"]),
    )
    d = wait(sfn, ex["executionArn"])
    assert d["status"] == "SUCCEEDED", d.get("cause")
    out = json.loads(d["output"])
    # 3 rounds of 2*(1+2+3); the "boom" item raised FooError, caught by name in round 1
    assert out == {
        "total": 36,
        "round": 3,
        "generation": 0,
        "caught": ["FooError"],
        "env": {
            "BUCKET": engine.outputs["BucketName"],
            "GREETING": "hello",
            "STEP_ONLY": "yes",
            "memory": "256",
        },
    }
    # handler output went to the log file, not the terminal; local runs don't trace
    assert os.environ["POWERTOOLS_TRACE_DISABLED"] == "true"
    assert os.environ["POWERTOOLS_METRICS_DISABLED"] == "true"


def test_handler_error_document(engine):
    lam = engine.client("lambda")
    resp = lam.invoke(FunctionName=engine.function_name("WorkFunction"), Payload=b'{"x": "boom"}')
    assert resp["StatusCode"] == 200
    assert resp["FunctionError"] == "Unhandled"
    doc = json.loads(resp["Payload"].read())
    assert doc["errorType"] == "FooError"
    assert doc["errorMessage"] == "cannot work on 'boom'"
    assert any("raise FooError" in line for line in doc["stackTrace"])


def test_lambda_context(engine):
    lam = engine.client("lambda")
    name = engine.function_name("WorkFunction")
    out = json.loads(lam.invoke(FunctionName=name, Payload=b'{"x": 4}')["Payload"].read())
    assert out["value"] == 8
    assert out["function"] == name
    assert 0 < out["remaining_ms"] <= 30_000
    assert len(out["request"]) == 36


def test_continue_as_new(engine, sfn):
    ex = sfn.start_execution(
        stateMachineArn=engine.outputs["LoopStateMachineArn"],
        name="loop-can",
        input=job(rounds=5, segment=2),
    )
    d, hops = follow(sfn, ex["executionArn"])
    assert d["status"] == "SUCCEEDED", d.get("cause")
    assert hops == 3  # rounds 1-2, 3-4, 5
    out = json.loads(d["output"])
    assert (out["total"], out["round"], out["generation"]) == (60, 5, 2)
    first = json.loads(wait(sfn, ex["executionArn"])["output"])
    assert isinstance(first["started"], int)  # StartDate as epoch milliseconds


def test_parent_runs_child_sync2(engine, sfn):
    ex = sfn.start_execution(
        stateMachineArn=engine.outputs["ParentStateMachineArn"], name="parent", input=job()
    )
    d = wait(sfn, ex["executionArn"])
    assert d["status"] == "SUCCEEDED", d.get("cause")
    assert json.loads(d["output"])["total"] == 36


def test_fail_next_is_retried(engine, sfn):
    engine.fail_next("WorkFunction", times=2)
    engine.fail_next("StepFunction", times=1)  # Resource: <function ARN> form
    ex = sfn.start_execution(
        stateMachineArn=engine.outputs["LoopStateMachineArn"],
        name="loop-retry",
        input=job(rounds=1),
    )
    d = wait(sfn, ex["executionArn"])
    assert d["status"] == "SUCCEEDED", d.get("cause")
    assert json.loads(d["output"])["total"] == 12
    assert engine.invocations("WorkFunction") == 3 + 2
    assert engine.invocations("StepFunction") == 1 + 1
    events = sfn.get_execution_history(executionArn=ex["executionArn"])["events"]
    errors = sorted(
        e.get("taskFailedEventDetails", e.get("lambdaFunctionFailedEventDetails", {}))["error"]
        for e in events
        if e["type"] in ("TaskFailed", "LambdaFunctionFailed")
    )
    assert errors == ["Lambda.TooManyRequestsException"] * 3


def test_fail_next_exhausts_retry(engine, sfn):
    engine.fail_next("WorkFunction", times=3, error="ServiceException")  # 1 try + 2 retries
    ex = sfn.start_execution(
        stateMachineArn=engine.outputs["LoopStateMachineArn"],
        name="loop-exhausted",
        input=job(items=[1], rounds=1),
    )
    d = wait(sfn, ex["executionArn"])
    assert d["status"] == "FAILED"
    assert d["error"] == "Lambda.ServiceException"


def test_s3_upload_starts_execution(engine, sfn):
    arn = engine.outputs["LoopStateMachineArn"]
    before = {e["executionArn"] for e in sfn.list_executions(stateMachineArn=arn)["executions"]}
    engine.client("s3").put_object(
        Bucket=engine.outputs["BucketName"], Key="jobs/incoming/job-1.json", Body=b"{}"
    )
    engine.client("s3").put_object(
        Bucket=engine.outputs["BucketName"], Key="elsewhere/job-2.json", Body=b"{}"
    )
    new = [
        e
        for e in sfn.list_executions(stateMachineArn=arn)["executions"]
        if e["executionArn"] not in before
    ]
    assert len(new) == 1
    started = sfn.describe_execution(executionArn=new[0]["executionArn"])
    event = json.loads(started["input"])
    assert event["source"] == "aws.s3"
    assert event["detail-type"] == "Object Created"
    assert event["detail"]["object"]["key"] == "jobs/incoming/job-1.json"
    assert event["time"].endswith("Z")
    wait(sfn, new[0]["executionArn"])  # (fails: the fixture loop wants a job, not an event)


def test_reset_forgets_finished_executions(engine, sfn):
    arn = engine.outputs["LoopStateMachineArn"]
    ex = sfn.start_execution(stateMachineArn=arn, name="to-forget", input=job(rounds=1))
    wait(sfn, ex["executionArn"])
    assert sfn.list_executions(stateMachineArn=arn)["executions"]
    engine.reset()
    assert sfn.list_executions(stateMachineArn=arn)["executions"] == []


def test_handler_output_goes_to_log_path(engine):
    engine.client("lambda").invoke(
        FunctionName=engine.function_name("WorkFunction"), Payload=b'{"x": 21}'
    )
    assert "work: x=21" in engine.log_path.read_text()


def test_environment_restored_and_bad_templates(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "someone-real")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    bad = tmp_path / "template.yaml"
    bad.write_text(
        "Transform: AWS::Serverless-2016-10-31\nResources:\n  F:\n"
        "    Type: AWS::Serverless::Function\n    Properties:\n"
        "      CodeUri: missing/\n      Handler: app.handler\n      Runtime: python3.13\n"
    )
    with pytest.raises(TemplateError, match="missing/"):
        LocalEngine(bad).__enter__()
    assert os.environ["AWS_PROFILE"] == "someone-real"
    assert "AWS_ACCESS_KEY_ID" not in os.environ


def test_second_engine_shares_moto(engine, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")  # must not matter inside an engine
    with LocalEngine(FIXTURE, stack_name="engine-test-2") as second:
        assert second.outputs["BucketName"] != engine.outputs["BucketName"]
        sfn = second.client("stepfunctions")
        ex = sfn.start_execution(
            stateMachineArn=second.outputs["LoopStateMachineArn"], input=job(rounds=1)
        )
        assert wait(sfn, ex["executionArn"])["status"] == "SUCCEEDED"
        with pytest.raises(RuntimeError, match="stack engine-test-2"):
            LocalEngine(FIXTURE, stack_name="engine-test-2").start()
    stacks = engine.client("cloudformation").describe_stacks()["Stacks"]
    live = {s["StackName"] for s in stacks if s["StackStatus"] != "DELETE_COMPLETE"}
    assert "engine-test" in live and "engine-test-2" not in live
    # the first engine still works
    lam = engine.client("lambda")
    out = lam.invoke(FunctionName=engine.function_name("WorkFunction"), Payload=b'{"x": 1}')
    assert json.loads(out["Payload"].read())["value"] == 2


def test_two_stacks_keep_their_own_environment(engine):
    """Handlers of each stack see their own variables, whichever stack deployed last."""
    with LocalEngine(FIXTURE, stack_name="engine-env-second") as second:
        assert engine.outputs["BucketName"] != second.outputs["BucketName"]
        for eng in (second, engine, second):
            sfn = eng.client("stepfunctions")
            ex = sfn.start_execution(
                stateMachineArn=eng.outputs["LoopStateMachineArn"],
                name=f"env-{eng.stack_name}-{time.monotonic_ns()}",
                input=job(rounds=1),
            )
            d = wait(sfn, ex["executionArn"])
            assert d["status"] == "SUCCEEDED", d.get("cause")
            assert json.loads(d["output"])["env"]["BUCKET"] == eng.outputs["BucketName"]
