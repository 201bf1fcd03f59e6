"""Guards for lambdagrad.local.moto_fixes: one group per fix.

Each group checks (a) that the moto internals a fix replaces still exist with the signature it
was written for -- and, where cheap, that stock moto still has the defect, so we learn when a
fix becomes unnecessary -- and (b) that the fixed behaviour works through boto3. A moto
upgrade that breaks any assumption fails here, loudly, rather than in a training run.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import re
import tempfile
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import boto3
import moto
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from lambdagrad.local import moto_fixes
from lambdagrad.local.invoker import InProcessInvoker, get_invoker, make_code_zip
from lambdagrad.store import is_claim_key
from moto import mock_aws

REGION = "us-east-1"
ACCOUNT = "123456789012"
CONFIG = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
MOTO_ROOT = Path(moto.__file__).parent


@pytest.fixture(scope="module", autouse=True)
def aws():
    """One moto session for the module (every test names its resources uniquely)."""
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        moto_fixes.apply_all()
        # (if a LocalEngine of another test module is still running, this mock nests in its
        # session: names are unique so that both can share moto's backends)
        with mock_aws(config=CONFIG):
            yield


@pytest.fixture(autouse=True)
def no_leftover_faults():
    yield
    get_invoker().clear_faults()


# ----------------------------------------------------------------------------- helpers


def client(service):
    return boto3.client(service, region_name=REGION)


def role_arn() -> str:
    iam = client("iam")
    try:
        return iam.get_role(RoleName="r")["Role"]["Arn"]
    except ClientError:
        doc = {"Version": "2012-10-17", "Statement": []}
        return iam.create_role(RoleName="r", AssumeRolePolicyDocument=json.dumps(doc))["Role"][
            "Arn"
        ]


def zip_of(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def create_function(name: str, source: str, env: dict | None = None, zipped: bytes | None = None):
    return client("lambda").create_function(
        FunctionName=name,
        Runtime="python3.13",
        Role=role_arn(),
        Handler="app.handler",
        Code={"ZipFile": zipped or zip_of({"app.py": source})},
        Environment={"Variables": env or {}},
        Timeout=10,
        MemorySize=512,
    )["FunctionArn"]


def create_machine(name: str, definition: dict) -> str:
    return client("stepfunctions").create_state_machine(
        name=name, definition=json.dumps(definition), roleArn=role_arn()
    )["stateMachineArn"]


def run(arn: str, payload: dict | None = None, name: str | None = None, timeout=10.0) -> dict:
    sfn = client("stepfunctions")
    kwargs = {"stateMachineArn": arn, "input": json.dumps(payload or {})}
    if name:
        kwargs["name"] = name
    ex = sfn.start_execution(**kwargs)
    return wait(ex["executionArn"], timeout)


def wait(execution_arn: str, timeout: float = 10.0) -> dict:
    sfn = client("stepfunctions")
    deadline = time.monotonic() + timeout
    while True:
        d = sfn.describe_execution(executionArn=execution_arn)
        if d["status"] != "RUNNING":
            return d
        assert time.monotonic() < deadline, f"{execution_arn} still running"
        time.sleep(0.02)


def stock(obj):
    """The original moto function that a fix replaced."""
    return obj.stock


def params(obj) -> list[str]:
    return list(inspect.signature(obj).parameters)


def modules_importing(name: str, source_pattern: str) -> set[str]:
    """Modules under moto/stepfunctions/parser whose source binds ``name`` by import."""
    found = set()
    root = MOTO_ROOT / "stepfunctions" / "parser"
    rx = re.compile(source_pattern, re.S)
    for path in root.rglob("*.py"):
        text = path.read_text()
        if rx.search(text):
            rel = path.relative_to(MOTO_ROOT.parent).with_suffix("")
            found.add(".".join(rel.parts))
    found.discard(f"moto.stepfunctions.parser.asl.utils.{name}")
    return found


# ------------------------------------------------------------------------- apply_all


def test_pinned_moto_version():
    assert moto.__version__ == moto_fixes.MOTO_VERSION


def test_apply_all_is_idempotent():
    from moto.awslambda_simple.models import LambdaSimpleBackend

    before = (moto_fixes.applied(), LambdaSimpleBackend.invoke)
    moto_fixes.apply_all()
    moto_fixes.apply_all()
    assert (moto_fixes.applied(), LambdaSimpleBackend.invoke) == before
    assert moto_fixes.applied() == [f.fix_name for f in moto_fixes.FIXES]


# ------------------------------------------------- fix_state_machine_cloudformation


def test_cfn_state_machine_internals_unchanged():
    from moto.stepfunctions import responses
    from moto.stepfunctions.models import StateMachine

    sm = StateMachine
    assert params(stock(sm.create_from_cloudformation_json.__func__)) == [
        "resource_name",
        "cloudformation_json",
        "account_id",
        "region_name",
        "kwargs",
    ]
    assert params(stock(sm.delete_from_cloudformation_json.__func__)) == [
        "resource_name",
        "cloudformation_json",
        "account_id",
        "region_name",
    ]
    assert params(stock(sm.update_from_cloudformation_json.__func__)) == [
        "original_resource",
        "new_resource_name",
        "cloudformation_json",
        "account_id",
        "region_name",
    ]
    assert params(responses.get_backend) == ["account", "region"]
    # the defect: stock moto creates CFN state machines in the non-executing backend
    assert "stepfunctions_backends[" in inspect.getsource(
        stock(sm.create_from_cloudformation_json.__func__)
    )
    assert "DefinitionSubstitutions" not in inspect.getsource(sm.get_cfn_properties)


def test_cfn_state_machine_executes_with_substitutions():
    definition = {
        "StartAt": "P",
        "States": {"P": {"Type": "Pass", "Result": {"greeting": "${Word}"}, "End": True}},
    }

    def template(word: str) -> str:
        return json.dumps(
            {
                "Resources": {
                    "Machine": {
                        "Type": "AWS::StepFunctions::StateMachine",
                        "Properties": {
                            "Definition": definition,
                            "DefinitionSubstitutions": {"Word": word},
                            "RoleArn": role_arn(),
                        },
                    }
                },
                "Outputs": {"Arn": {"Value": {"Ref": "Machine"}}},
            }
        )

    cf = client("cloudformation")
    cf.create_stack(StackName="s", TemplateBody=template("hello"))
    arn = cf.describe_stacks(StackName="s")["Stacks"][0]["Outputs"][0]["OutputValue"]
    d = run(arn)
    assert d["status"] == "SUCCEEDED"
    assert json.loads(d["output"]) == {"greeting": "hello"}

    cf.update_stack(StackName="s", TemplateBody=template("bye"))
    assert json.loads(run(arn)["output"]) == {"greeting": "bye"}

    cf.delete_stack(StackName="s")
    sfn = client("stepfunctions")
    assert arn not in [m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]]


# ------------------------------------------------------ fix_lambda_invoke_in_process

WORKER = """
import os

class FooError(Exception):
    pass

def handler(event, context):
    if event.get("fail"):
        raise FooError("bad " + event["fail"])
    return {
        "echo": event, "who": os.environ.get("WHO"), "fn": context.function_name,
        "mem": context.memory_limit_in_mb, "left": context.get_remaining_time_in_millis(),
        "arn": context.invoked_function_arn, "stream": context.log_stream_name,
    }
"""


def test_lambda_simple_invoke_internals_unchanged():
    from moto.awslambda.responses import LambdaResponse
    from moto.awslambda_simple.models import LambdaSimpleBackend

    assert params(stock(LambdaSimpleBackend.invoke)) == [
        "self",
        "function_name",
        "qualifier",
        "body",
        "headers",
        "response_headers",
    ]
    src = inspect.getsource(LambdaResponse.invoke)
    # the response path we rely on: backend.invoke fills response_headers, status 200
    assert "self.backend.invoke(" in src and "response_headers" in src
    assert "status_code = 200" in src
    assert "default_result" in inspect.getsource(stock(LambdaSimpleBackend.invoke))


def test_invoke_runs_handler_with_context_and_environment():
    arn = create_function("f1", WORKER, env={"WHO": "f1"})
    resp = client("lambda").invoke(FunctionName="f1", Payload=b'{"a": 1}')
    assert resp["StatusCode"] == 200
    assert "FunctionError" not in resp
    out = json.loads(resp["Payload"].read())
    assert out["echo"] == {"a": 1}
    assert out["who"] == "f1"
    assert out["fn"] == "f1"
    assert out["mem"] == "512"
    assert 0 < out["left"] <= 10_000
    assert out["arn"] == arn
    assert "[$LATEST]" in out["stream"]


def test_invoke_reports_handler_exception_like_lambda():
    create_function("f2", WORKER)
    resp = client("lambda").invoke(FunctionName="f2", Payload=b'{"fail": "input"}')
    assert resp["StatusCode"] == 200
    assert resp["FunctionError"] == "Unhandled"
    doc = json.loads(resp["Payload"].read())
    assert doc["errorType"] == "FooError"
    assert doc["errorMessage"] == "bad input"
    assert isinstance(doc["stackTrace"], list) and doc["stackTrace"]


def test_invoke_error_matches_catch_in_state_machine():
    arn = create_function("f3", WORKER)
    machine = create_machine(
        "catcher",
        {
            "StartAt": "T",
            "States": {
                "T": {
                    "Type": "Task",
                    "Resource": arn,
                    "Catch": [{"ErrorEquals": ["FooError"], "Next": "C"}],
                    "End": True,
                },
                "C": {"Type": "Pass", "Result": {"c": "caught"}, "End": True},
            },
        },
    )
    d = run(machine, {"fail": "x"})
    assert d["status"] == "SUCCEEDED"
    assert json.loads(d["output"]) == {"c": "caught"}


def test_same_module_name_in_two_functions_stays_apart():
    create_function("one", "def handler(e, c):\n    return 1\n")
    create_function("two", "def handler(e, c):\n    return 2\n")
    lam = client("lambda")
    got = [json.loads(lam.invoke(FunctionName=n)["Payload"].read()) for n in ("one", "two", "one")]
    assert got == [1, 2, 1]


def test_invoke_from_local_source_marker(tmp_path):
    (tmp_path / "app.py").write_text("import helper\n\ndef handler(e, c):\n    return helper.X\n")
    (tmp_path / "helper.py").write_text("X = 'from disk'\n")
    create_function("local", "", zipped=make_code_zip(tmp_path))
    out = client("lambda").invoke(FunctionName="local")["Payload"].read()
    assert json.loads(out) == "from disk"


def test_canned_results_queue_still_wins():
    from moto.awslambda_simple.models import lambda_simple_backends

    create_function("canned", WORKER)
    lambda_simple_backends[ACCOUNT][REGION].lambda_simple_results_queue.append("canned!")
    assert client("lambda").invoke(FunctionName="canned")["Payload"].read() == b"canned!"


def test_event_invocation_runs_in_background():
    create_function("ev", "import os\n\ndef handler(e, c):\n    os.environ['EV_RAN'] = 'yes'\n")
    resp = client("lambda").invoke(FunctionName="ev", InvocationType="Event")
    assert resp["StatusCode"] == 202
    deadline = time.monotonic() + 5
    import os

    while os.environ.get("EV_RAN") != "yes":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    del os.environ["EV_RAN"]


def test_injected_fault_is_a_lambda_client_error():
    create_function("flaky", WORKER)
    get_invoker().fail_next("flaky", times=1)
    no_retry = boto3.client(
        "lambda", region_name=REGION, config=Config(retries={"total_max_attempts": 1})
    )
    with pytest.raises(ClientError) as err:
        no_retry.invoke(FunctionName="flaky", Payload=b"{}")
    assert err.value.response["Error"]["Code"] == "TooManyRequestsException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert client("lambda").invoke(FunctionName="flaky", Payload=b"{}")["StatusCode"] == 200


def test_invalid_json_payload_is_a_400():
    create_function("badjson", WORKER)
    with pytest.raises(ClientError) as err:
        client("lambda").invoke(FunctionName="badjson", Payload=b"{not json")
    assert err.value.response["Error"]["Code"] == "InvalidRequestContentException"


def test_service_lambda_integration_names_client_errors():
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_lambda import (  # noqa: E501
        StateTaskServiceLambda,
    )

    # fail_next relies on this mapping: ClientError code X -> error name "Lambda.X"
    src = inspect.getsource(StateTaskServiceLambda._error_cause_from_client_error)
    assert 'f"Lambda.{error_code}"' in src
    arn = create_function("svc", WORKER)
    machine = create_machine(
        "svc",
        {
            "StartAt": "T",
            "States": {
                "T": {
                    "Type": "Task",
                    "Resource": "arn:aws:states:::lambda:invoke",
                    "Parameters": {"FunctionName": arn, "Payload.$": "$"},
                    "OutputPath": "$.Payload",
                    "End": True,
                }
            },
        },
    )
    get_invoker().fail_next("svc", times=1, error="ServiceException")
    d = run(machine)
    assert (d["status"], d["error"]) == ("FAILED", "Lambda.ServiceException")
    d = run(machine, {"k": 1})
    assert d["status"] == "SUCCEEDED"
    assert json.loads(d["output"])["echo"] == {"k": 1}


# ----------------------------------------------- fix_task_lambda_service_error_names


def test_task_lambda_from_error_internals_unchanged():
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task_lambda import (
        StateTaskLambda,
    )

    assert params(stock(StateTaskLambda._from_error)) == ["self", "env", "ex"]
    # the defect: stock names a Lambda API ClientError plain "Exception"
    assert 'error = "Exception"' in inspect.getsource(stock(StateTaskLambda._from_error))


def test_task_lambda_arn_resource_names_service_errors():
    arn = create_function("direct", WORKER)
    machine = create_machine(
        "direct",
        {
            "StartAt": "T",
            "States": {
                "T": {
                    "Type": "Task",
                    "Resource": arn,
                    "Retry": [
                        {
                            "ErrorEquals": ["Lambda.TooManyRequestsException"],
                            "IntervalSeconds": 1,
                            "MaxAttempts": 1,
                        }
                    ],
                    "End": True,
                }
            },
        },
    )
    get_invoker().fail_next("direct", times=2)
    d = run(machine)
    assert (d["status"], d["error"]) == ("FAILED", "Lambda.TooManyRequestsException")
    get_invoker().fail_next("direct", times=1)
    assert run(machine)["status"] == "SUCCEEDED"


# ---------------------------------------------------- fix_sfn_start_execution_shapes


def test_sfn_task_internals_unchanged():
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service import (  # noqa: E501
        StateTaskService,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn import (  # noqa: E501
        StateTaskServiceSfn,
    )

    p = ["self", "parameters", "boto_service_name", "service_action_name"]
    assert params(stock(StateTaskServiceSfn._normalise_parameters)) == p
    assert params(stock(StateTaskServiceSfn._normalise_response)) == [
        "self",
        "response",
        "boto_service_name",
        "service_action_name",
    ]
    assert params(StateTaskService._to_boto_request) == ["self", "parameters", "structure_shape"]
    assert params(StateTaskService._from_boto_response) == ["self", "response", "structure_shape"]
    # the defect: the base normalisation is a stub
    assert inspect.getsource(StateTaskService._normalise_response).rstrip().endswith("pass")


def test_start_execution_plain_sync_and_sync2():
    child = create_machine(
        "child",
        {
            "StartAt": "P",
            "States": {"P": {"Type": "Pass", "Parameters": {"got.$": "$.v"}, "End": True}},
        },
    )

    def parent(resource: str) -> str:
        return create_machine(
            "parent-" + resource.rsplit(":", 1)[-1].replace(".", "-"),
            {
                "StartAt": "Run",
                "States": {
                    "Run": {
                        "Type": "Task",
                        "Resource": resource,
                        "Parameters": {"StateMachineArn": child, "Input": {"v.$": "$.v"}},
                        "End": True,
                    }
                },
            },
        )

    base = "arn:aws:states:::states:startExecution"
    out = json.loads(run(parent(base), {"v": 1})["output"])
    assert set(out) == {"ExecutionArn", "StartDate"}
    assert isinstance(out["StartDate"], int) and out["StartDate"] > 1e12  # epoch ms
    wait(out["ExecutionArn"])

    out = json.loads(run(parent(base + ".sync"), {"v": 2})["output"])
    assert out["Status"] == "SUCCEEDED"
    assert json.loads(out["Output"]) == {"got": 2}  # .sync: Output is a JSON string
    assert isinstance(out["StopDate"], int)

    out = json.loads(run(parent(base + ".sync:2"), {"v": 3})["output"])
    assert out["Output"] == {"got": 3}  # .sync:2: Output is JSON
    assert out["Input"] == {"v": 3}
    assert {"ExecutionArn", "StateMachineArn", "Name", "StartDate", "StopDate"} <= set(out)


def test_continue_as_new_via_context_object():
    machine = create_machine(
        "again",
        {
            "StartAt": "Check",
            "States": {
                "Check": {
                    "Type": "Choice",
                    "Choices": [{"Variable": "$.n", "NumericGreaterThanEquals": 2, "Next": "Done"}],
                    "Default": "Inc",
                },
                "Inc": {
                    "Type": "Pass",
                    "Parameters": {"n.$": "States.MathAdd($.n, 1)"},
                    "Next": "Again",
                },
                "Again": {
                    "Type": "Task",
                    "Resource": "arn:aws:states:::states:startExecution",
                    "Parameters": {
                        "StateMachineArn.$": "$$.StateMachine.Id",
                        "Input": {"n.$": "$.n"},
                    },
                    "End": True,
                },
                "Done": {"Type": "Succeed"},
            },
        },
    )
    d = run(machine, {"n": 0})
    while d["status"] == "SUCCEEDED" and "ExecutionArn" in json.loads(d["output"]):
        d = wait(json.loads(d["output"])["ExecutionArn"])
    assert d["status"] == "SUCCEEDED"
    assert json.loads(d["output"]) == {"n": 2}


# -------------------------------------------------------- fix_execution_default_name


def test_execution_default_name():
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    assert params(stock(StepFunctionsParserBackend.start_execution)) == [
        "self",
        "state_machine_arn",
        "name",
        "execution_input",
        "trace_header",
    ]
    machine = create_machine(
        "named", {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}
    )
    sfn = client("stepfunctions")
    a = sfn.start_execution(stateMachineArn=machine)["executionArn"]
    b = sfn.start_execution(stateMachineArn=machine)["executionArn"]
    assert a != b
    assert not a.endswith(":None")
    assert re.fullmatch(r"[0-9a-f-]{36}", a.rsplit(":", 1)[-1])


# --------------------------------------------------------- fix_events_states_targets


def test_events_rule_internals_unchanged():
    from moto.events.models import Rule
    from moto.s3 import notifications

    assert params(stock(Rule.send_to_targets)) == ["self", "original_event", "transform_input"]
    assert "NotImplementedError" in inspect.getsource(stock(Rule.send_to_targets))
    # S3 -> EventBridge calls every rule with the raw event (and swallows errors)
    src = inspect.getsource(notifications._send_event_bridge_message)
    assert "rule.send_to_targets(event, transform_input=False)" in src


def _rule_to(machine: str, pattern: dict, **target) -> None:
    events = client("events")
    events.put_rule(Name="r", EventPattern=json.dumps(pattern))
    events.put_targets(
        Rule="r", Targets=[{"Id": "t", "Arn": machine, "RoleArn": role_arn(), **target}]
    )


def _executions(machine: str) -> list[dict]:
    sfn = client("stepfunctions")
    arns = [e["executionArn"] for e in sfn.list_executions(stateMachineArn=machine)["executions"]]
    return [wait(a) for a in arns]


def test_put_events_starts_state_machine():
    machine = create_machine(
        "evt", {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}
    )
    _rule_to(machine, {"source": ["my.app"]}, InputPath="$.detail")
    client("events").put_events(
        Entries=[
            {"Source": "my.app", "DetailType": "x", "Detail": json.dumps({"job": 7})},
            {"Source": "other", "DetailType": "x", "Detail": "{}"},
        ]
    )
    [d] = _executions(machine)
    assert d["status"] == "SUCCEEDED"
    assert json.loads(d["input"]) == {"job": 7}


def test_s3_eventbridge_notification_starts_state_machine():
    machine = create_machine(
        "s3evt", {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}
    )
    # (moto also emits "Object Tags Added" for every put_object: filter on the detail type)
    pattern = {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"object": {"key": [{"prefix": "in/"}]}},
    }
    _rule_to(machine, pattern)
    s3 = client("s3")
    s3.create_bucket(Bucket="bkt-evt")
    s3.put_bucket_notification_configuration(
        Bucket="bkt-evt", NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    s3.put_object(Bucket="bkt-evt", Key="in/job.json", Body=b"{}")
    s3.put_object(Bucket="bkt-evt", Key="out/other.json", Body=b"{}")
    [d] = _executions(machine)
    event = json.loads(d["input"])
    assert event["detail"]["object"]["key"] == "in/job.json"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["time"])


# ------------------------------------------------------------ fix_boto_client_cache


def test_boto_client_for_users_are_all_patched():
    from moto.stepfunctions.parser.asl.utils import boto_client

    assert params(stock(boto_client.boto_client_for)) == [
        "region",
        "service",
        "state_credentials",
    ]
    found = modules_importing("boto_client", r"boto_client import\s*\(?\s*boto_client_for")
    assert found == set(moto_fixes.BOTO_CLIENT_FOR_USERS)
    for name in found:
        assert importlib.import_module(name).boto_client_for is boto_client.boto_client_for


def test_boto_client_for_reuses_clients():
    from moto.stepfunctions.parser.asl.utils.boto_client import boto_client_for

    a = boto_client_for(REGION, "lambda")
    assert boto_client_for(REGION, "lambda") is a
    assert boto_client_for("eu-west-1", "lambda") is not a
    assert a.meta.config.retries["total_max_attempts"] == 1  # stock config kept


# --------------------------------------------------------- fix_json_path_parse_cache


def test_json_path_parse_is_memoised():
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.utils import json_path

    assert params(json_path.extract_json) == ["path", "data"]
    assert json_path.parse.cache_info is not None
    assert result_path.parse.cache_info is not None
    assert json_path.extract_json("$.a.b", {"a": {"b": 5}}) == 5
    hits = json_path.parse.cache_info().hits
    assert json_path.extract_json("$.a.b", {"a": {"b": 6}}) == 6
    assert json_path.parse.cache_info().hits == hits + 1
    machine = create_machine(
        "paths",
        {
            "StartAt": "P",
            "States": {
                "P": {
                    "Type": "Pass",
                    "Parameters": {"x.$": "$.a"},
                    "ResultPath": "$.r",
                    "End": True,
                }
            },
        },
    )
    assert json.loads(run(machine, {"a": 1})["output"]) == {"a": 1, "r": {"x": 1}}


# ------------------------------------------------------------- fix_tmp_threads_leak


def test_tmp_threads_users_are_all_patched():
    from moto.stepfunctions.parser import utils

    found = modules_importing(
        "utils", r"from moto\.stepfunctions\.parser\.utils import[^\n]*TMP_THREADS"
    )
    assert found == set(moto_fixes.TMP_THREADS_USERS)
    for name in found:
        assert importlib.import_module(name).TMP_THREADS is utils.TMP_THREADS


def test_tmp_threads_stays_empty():
    from moto.stepfunctions.parser import utils

    machine = create_machine(
        "threads",
        {
            "StartAt": "M",
            "States": {
                "M": {
                    "Type": "Map",
                    "ItemsPath": "$.xs",
                    "ItemProcessor": {
                        "StartAt": "P",
                        "States": {"P": {"Type": "Pass", "End": True}},
                    },
                    "End": True,
                }
            },
        },
    )
    assert json.loads(run(machine, {"xs": [1, 2, 3]})["output"]) == [1, 2, 3]
    assert len(utils.TMP_THREADS) == 0


# ------------------------------------------------------------------ invoker (no moto)


def test_output_routing_per_thread(tmp_path, capsys):
    class Fn:
        function_name = "printer"
        code_sha_256 = "x"
        handler = "app.handler"
        environment_vars: ClassVar[dict] = {}
        memory_size = 128
        timeout = 3
        function_arn = "arn:aws:lambda:us-east-1:123456789012:function:printer"
        code_bytes = make_code_zip(tmp_path)

    (tmp_path / "app.py").write_text("def handler(e, c):\n    print('from handler')\n")
    inv = InProcessInvoker()
    log = tmp_path / "h.log"
    inv.configure(["printer"], log_path=log)
    try:
        t = threading.Thread(target=inv.invoke, args=(Fn, None, b"{}", {}))
        t.start()
        t.join()
        print("from main")
    finally:
        inv.close()
    assert "from handler" in log.read_text()
    out = capsys.readouterr().out
    assert "from main" in out and "from handler" not in out


def test_import_error_is_reported_like_the_runtime(tmp_path):
    class Fn:
        function_name = "broken"
        code_sha_256 = "y"
        handler = "app.handler"
        environment_vars: ClassVar[dict] = {}
        memory_size = 128
        timeout = 3
        function_arn = "arn:aws:lambda:us-east-1:123456789012:function:broken"
        code_bytes = make_code_zip(tmp_path)

    (tmp_path / "app.py").write_text("import no_such_module_here\n")
    payload, errored = InProcessInvoker().invoke(Fn, None, b"{}", {})
    assert errored
    assert json.loads(payload)["errorType"] == "Runtime.ImportModuleError"


# ------------------------------------------------------------- fix_layer_version_ref


def test_layer_version_ref_is_its_arn():
    from moto.awslambda.models import LayerVersion
    from moto.cloudformation import parsing

    # moto resolves Ref through physical_resource_id, falling back to the object itself
    assert "physical_resource_id" in inspect.getsource(parsing.clean_json)
    assert isinstance(LayerVersion.__dict__["physical_resource_id"], property)
    client("s3").create_bucket(Bucket="layer-code")
    client("s3").put_object(Bucket="layer-code", Key="l.zip", Body=zip_of({"x.py": ""}))
    template = {
        "Resources": {
            "Layer": {
                "Type": "AWS::Lambda::LayerVersion",
                "Properties": {"Content": {"S3Bucket": "layer-code", "S3Key": "l.zip"}},
            },
        },
        "Outputs": {"LayerArn": {"Value": {"Ref": "Layer"}}},
    }
    cf = client("cloudformation")
    cf.create_stack(StackName="layered", TemplateBody=json.dumps(template))
    arn = cf.describe_stacks(StackName="layered")["Stacks"][0]["Outputs"][0]["OutputValue"]
    assert re.fullmatch(r"arn:aws:lambda:us-east-1:\d{12}:layer:[\w-]+:1", arn)


# ---------------------------------------------------------- fix_s3_url_module_reload


def test_s3_url_module_reloads_only_when_settings_change(monkeypatch):
    import moto.s3.urls as s3_urls
    from moto.s3.models import S3Backend, s3_backends

    stock_getter = S3Backend._url_module.fget.stock.fget
    assert "reload(" in inspect.getsource(stock_getter)  # the defect is still in moto
    s3 = client("s3")
    s3.create_bucket(Bucket="reload-check")
    s3.put_object(Bucket="reload-check", Key="k", Body=b"1")
    paths = s3_urls.url_paths
    assert s3.get_object(Bucket="reload-check", Key="k")["Body"].read() == b"1"
    assert s3_urls.url_paths is paths  # not re-executed by the request
    monkeypatch.setenv("MOTO_S3_CUSTOM_ENDPOINTS", "https://s3.example.test")
    backend = s3_backends[ACCOUNT]["aws"]
    assert "https://s3.example.test" in backend.url_bases  # a settings change is seen
    monkeypatch.delenv("MOTO_S3_CUSTOM_ENDPOINTS")
    assert "https://s3.example.test" not in backend.url_bases


# ---------------------------------------------------- fix_s3_overwrite_while_reading


def test_s3_overwrite_keeps_an_in_flight_read_working():
    from moto.s3.models import FakeKey

    # moto still disposes the old key when an object is overwritten
    assert "dispose()" in inspect.getsource(importlib.import_module("moto.s3.models"))
    assert list(inspect.signature(FakeKey.dispose.stock).parameters) == ["self", "garbage"]
    s3 = client("s3")
    s3.create_bucket(Bucket="overwrite-race")
    s3.put_object(Bucket="overwrite-race", Key="status.json", Body=b"old")
    from moto.s3.models import s3_backends

    old_key = s3_backends[ACCOUNT]["aws"].buckets["overwrite-race"].keys["status.json"]
    s3.put_object(Bucket="overwrite-race", Key="status.json", Body=b"new")
    assert old_key.value == b"old"  # a GET that already held the old key still reads it
    assert s3.get_object(Bucket="overwrite-race", Key="status.json")["Body"].read() == b"new"
    FakeKey.dispose.stock(old_key)  # the stock behaviour: the in-flight read breaks
    with pytest.raises(ValueError, match="closed file"):
        _ = old_key.value


# ----------------------------------------------------- fix_s3_value_spills_in_chunks


def test_s3_value_setter_internals_unchanged():
    from moto.s3.models import FakeKey

    stock_setter = FakeKey.value.fset.stock
    src = inspect.getsource(stock_setter)
    # the defect: the whole value goes into the spool in one write
    assert "self._value_buffer.write(new_value)" in src and "contentsize" in src
    key = FakeKey("k", b"", account_id=ACCOUNT, region_name="us-east-1")
    assert isinstance(key._value_buffer, tempfile.SpooledTemporaryFile)
    assert key._value_buffer._max_size > 4 * moto_fixes.S3_VALUE_WRITE_CHUNK


def test_large_s3_value_spills_to_disk_without_a_memory_copy():
    from moto.s3.models import FakeKey

    data = np.random.default_rng(0).bytes(24 * moto_fixes.S3_VALUE_WRITE_CHUNK + 7)
    key = FakeKey("k", b"", account_id=ACCOUNT, region_name="us-east-1")
    tracemalloc.start()
    key.value = data
    fixed_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    FakeKey.value.fset.stock(FakeKey("s", b"", account_id=ACCOUNT, region_name="us-east-1"), data)
    stock_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # moto's own setter copies the whole object at least once; ours holds at most the
    # spool's in-memory part (5 MiB) and its copy at the roll-over, whatever the size
    spill = key._value_buffer._max_size
    assert stock_peak > len(data) and fixed_peak <= 2 * spill + moto_fixes.S3_VALUE_WRITE_CHUNK
    assert key.value == data and key.contentsize == len(data) and key.size == len(data)
    assert key._value_buffer._rolled  # on disk, not a BytesIO holding a copy
    key.value = b"small"  # and back: small values take moto's own path
    assert key.value == b"small" and key.contentsize == 5
    s3 = client("s3")
    s3.create_bucket(Bucket="spill")
    s3.put_object(Bucket="spill", Key="big", Body=data)
    assert s3.get_object(Bucket="spill", Key="big")["Body"].read() == data


# ------------------------------------------------------------- fix_retry_delay_scale


def test_retrier_internals_unchanged():
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    src = inspect.getsource(retrier_decl.RetrierDecl._eval_body)
    # moto computes the wait, then sleeps it for real through the module's ``time``
    assert src.count("time.sleep(") == 1 and "time.sleep(interval_seconds)" in src
    assert retrier_decl.time.stock is time
    assert retrier_decl.time.monotonic is time.monotonic  # the rest of ``time`` untouched


def _retry_machine(name: str, arn: str, errors: list[str], interval: int = 2) -> str:
    return create_machine(
        name,
        {
            "StartAt": "T",
            "States": {
                "T": {
                    "Type": "Task",
                    "Resource": "arn:aws:states:::lambda:invoke",
                    "Parameters": {"FunctionName": arn, "Payload.$": "$"},
                    "Retry": [
                        {
                            "ErrorEquals": errors,
                            "IntervalSeconds": interval,
                            "BackoffRate": 3.0,
                            "MaxAttempts": 2,
                        }
                    ],
                    "End": True,
                }
            },
        },
    )


def test_retry_waits_are_scaled(monkeypatch):
    arn = create_function("slowretry", WORKER)
    machine = _retry_machine("slowretry", arn, ["Lambda.TooManyRequestsException"])
    slept: list[float] = []
    monkeypatch.setattr(moto_fixes, "_sleep", slept.append)
    previous = moto_fixes.set_retry_delay_scale(0.01)
    try:
        get_invoker().fail_next("slowretry", times=2)
        assert run(machine)["status"] == "SUCCEEDED"
        assert slept == pytest.approx([0.02, 0.06])  # 2 s, then 2 s x 3, scaled
        moto_fixes.set_retry_delay_scale(0.0)
        get_invoker().fail_next("slowretry", times=2)
        assert run(machine)["status"] == "SUCCEEDED"
        assert len(slept) == 2  # no sleep at all
    finally:
        moto_fixes.set_retry_delay_scale(previous)
    assert moto_fixes.retry_delay_scale() == previous
    with pytest.raises(ValueError):
        moto_fixes.set_retry_delay_scale(2.0)


SIDE_EFFECT = """
from pathlib import Path

def handler(event, context):
    Path(event["mark"]).write_text("ran")
    return {"ok": True}
"""


@pytest.mark.parametrize(
    ("kind", "error", "ran"),
    [("crash", "Runtime.ExitError", True), ("timeout", "Sandbox.Timedout", False)],
)
def test_injected_timeouts_and_crashes_reach_step_functions_by_name(tmp_path, kind, error, ran):
    from lambdagrad.local import chaos

    name = f"faulty-{kind}"
    arn = create_function(name, SIDE_EFFECT)
    machine = _retry_machine(name, arn, ["Lambda.TooManyRequestsException"])
    fault = chaos.crash() if kind == "crash" else chaos.timeout(run_handler=False)
    get_invoker().fail_matching(name, {"mark": str(tmp_path / "m")}, fault, times=1)
    d = run(machine, {"mark": str(tmp_path / "m")})
    assert (d["status"], d["error"]) == ("FAILED", error)
    cause = json.loads(d["cause"])
    assert cause["errorType"] == error and cause["errorMessage"].startswith("RequestId: ")
    assert (tmp_path / "m").exists() is ran  # a crash comes after the handler's writes
    # retried when the state machine lists the name; the second attempt gets through
    retrying = _retry_machine(name + "-r", arn, [error], interval=1)
    previous = moto_fixes.set_retry_delay_scale(0.0)
    try:
        get_invoker().fail_matching(name, {"mark": str(tmp_path / "n")}, fault, times=1)
        assert run(retrying, {"mark": str(tmp_path / "n")})["status"] == "SUCCEEDED"
    finally:
        moto_fixes.set_retry_delay_scale(previous)


# ------------------------------------------------------------- fix_sync_poll_backoff


def test_sync_poll_internals_unchanged():
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_callback as module,
    )

    assert module._DELAY_SECONDS_SYNC_CONDITION_CHECK == 0.5
    stock_eval = stock(module.StateTaskServiceCallback._eval_sync)
    assert params(stock_eval) == [
        "self",
        "env",
        "sync_resolver",
        "timeout_seconds",
        "callback_endpoint",
        "heartbeat_endpoint",
    ]
    # the defect: a fixed half-second sleep between two checks of the child
    assert "time.sleep(_DELAY_SECONDS_SYNC_CONDITION_CHECK)" in inspect.getsource(stock_eval)


def express_machine(name: str, states: dict, start: str) -> str:
    """An EXPRESS state machine, as the segment is."""
    return client("stepfunctions").create_state_machine(
        name=name,
        type="EXPRESS",
        roleArn=role_arn(),
        definition=json.dumps({"StartAt": start, "States": states}),
    )["stateMachineArn"]


def sync2_parent(name: str, child: str, **task: Any) -> str:
    """A Standard parent whose one task starts ``child`` with .sync:2 and waits for it."""
    resource = "arn:aws:states:::states:startExecution.sync:2"
    run_child = {"Type": "Task", "Resource": resource, "End": True, **task}
    run_child["Parameters"] = {"StateMachineArn": child, "Input.$": "$"}
    return create_machine(name, {"StartAt": "Run", "States": {"Run": run_child}})


def test_standard_parent_waits_on_express_child():
    """The training execution's pattern: an EXPRESS child started with .sync:2, its output
    as JSON; a failed child is States.TaskFailed with the child's error inside the cause."""
    sfn = client("stepfunctions")
    check = {"Variable": "$.fail", "BooleanEquals": True, "Next": "No"}
    states = {
        "Check": {"Type": "Choice", "Choices": [check], "Default": "Yes"},
        "Yes": {"Type": "Pass", "Parameters": {"got.$": "$.v"}, "End": True},
        "No": {"Type": "Fail", "Error": "ModelDiverged", "Cause": "too big"},
    }
    child = express_machine("express-child", states, "Check")
    assert sfn.describe_state_machine(stateMachineArn=child)["type"] == "EXPRESS"
    parent = sync2_parent("express-parent", child, ResultSelector={"output.$": "$.Output"})
    ok = run(parent, {"v": 7, "fail": False})
    assert json.loads(ok["output"]) == {"output": {"got": 7}}
    failed = run(parent, {"v": 7, "fail": True})
    assert failed["status"] == "FAILED" and failed["error"] == "States.TaskFailed"
    inner = json.loads(failed["cause"])
    assert inner["Status"] == "FAILED" and inner["Error"] == "ModelDiverged"
    assert inner["Cause"] == "too big"


def test_a_retried_sync_task_waits_for_its_new_child():
    """A parent that retries a failed child (the training execution's RunSegment) starts a
    second child and waits for it; stock moto failed the retry at once with States.Timeout."""
    sfn = client("stepfunctions")
    states = {
        "Work": {"Type": "Wait", "Seconds": 1, "Next": "No"},
        "No": {"Type": "Fail", "Error": "Cut", "Cause": "5 min"},
    }
    child = express_machine("express-child-fails", states, "Work")
    retry = {"ErrorEquals": ["States.TaskFailed"], "IntervalSeconds": 1, "MaxAttempts": 1}
    parent = sync2_parent("express-parent-retries", child, Retry=[retry])
    previous = moto_fixes.set_retry_delay_scale(0.0)
    try:
        failed = run(parent, {"v": 1})
    finally:
        moto_fixes.set_retry_delay_scale(previous)
    assert failed["status"] == "FAILED" and failed["error"] == "States.TaskFailed"
    events = sfn.get_execution_history(executionArn=failed["executionArn"])["events"]
    ends = [e["type"] for e in events if e["type"] in ("TaskFailed", "TaskTimedOut")]
    assert ends == ["TaskFailed", "TaskFailed"]  # two children, each waited for
    assert len(sfn.list_executions(stateMachineArn=child)["executions"]) == 2


# ------------------------------------------- lambdagrad.local.mirror: S3 write-through
def test_s3_put_object_internals_unchanged():
    from lambdagrad.local.mirror import install_put_hook
    from moto.s3.models import S3Backend

    install_put_hook()
    hooked = S3Backend.put_object
    assert params(stock(hooked))[:4] == ["self", "bucket_name", "key_name", "value"]
    # every write path of the S3 API goes through S3Backend.put_object
    responses = (MOTO_ROOT / "s3" / "responses.py").read_text()
    assert responses.count("self.backend.put_object(") == 2  # PutObject, POST upload
    models = (MOTO_ROOT / "s3" / "models.py").read_text()
    assert models.count("self.put_object(") == 3  # copy, multipart completion, logging


def test_mirror_writes_through_and_restores(tmp_path):
    from lambdagrad.local.mirror import BucketMirror, StateLockedError

    s3 = client("s3")
    s3.create_bucket(Bucket="mirror-src")
    mirror = BucketMirror(tmp_path / "state")
    mirror.lock()
    with pytest.raises(StateLockedError, match="in use by another lambdagrad process"):
        BucketMirror(tmp_path / "state").lock()
    try:
        mirror.attach({"mirror-src": "DataBucket"}, s3)
        s3.put_object(Bucket="mirror-src", Key="jobs/j/params/1.npy", Body=b"one")
        s3.put_object(Bucket="mirror-src", Key="jobs/j/params/1.npy", Body=b"two")
        s3.put_object(Bucket="mirror-src", Key="jobs/j/grads/1/0.npy", Body=b"scratch")
        s3.put_object(Bucket="mirror-src", Key="jobs/incoming/x.json", Body=b"{}")
        s3.upload_fileobj(io.BytesIO(b"data"), "mirror-src", "datasets/d/x.csv")
        with pytest.raises(ClientError, match="PreconditionFailed"):
            s3.put_object(Bucket="mirror-src", Key="jobs/j/claim.json", Body=b"x", IfNoneMatch="*")
            s3.put_object(Bucket="mirror-src", Key="jobs/j/claim.json", Body=b"y", IfNoneMatch="*")
    finally:
        mirror.close()
    s3.put_object(Bucket="mirror-src", Key="jobs/j/late.json", Body=b"after close")
    root = tmp_path / "state" / "DataBucket"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == ["datasets/d/x.csv", "jobs/j/claim.json", "jobs/j/params/1.npy"]
    assert (root / "jobs/j/params/1.npy").read_bytes() == b"two"
    assert (root / "jobs/j/claim.json").read_bytes() == b"x"

    s3.create_bucket(Bucket="mirror-dst")
    again = BucketMirror(tmp_path / "state")
    again.lock()  # released by close()
    try:
        assert again.attach({"mirror-dst": "DataBucket"}, s3) == 3
    finally:
        again.close()
    body = s3.get_object(Bucket="mirror-dst", Key="jobs/j/params/1.npy")["Body"].read()
    assert body == b"two"

    # a new job in the same run directory gets back only the claims (the ids stay taken)
    s3.create_bucket(Bucket="mirror-new")
    claims = BucketMirror(tmp_path / "state", restore=is_claim_key)
    claims.lock()
    try:
        assert claims.attach({"mirror-new": "DataBucket"}, s3) == 1
    finally:
        claims.close()
    listed = s3.list_objects_v2(Bucket="mirror-new")["Contents"]
    assert [o["Key"] for o in listed] == ["jobs/j/claim.json"]
    assert not is_claim_key("jobs/j/params/claim.json") and not is_claim_key("claim.json")


# ----------------------------------------------------------------- InProcessS3Client


def test_s3_backend_internals_unchanged():
    from moto.s3.exceptions import MissingBucket
    from moto.s3.models import S3Backend

    def params(fn):
        return list(inspect.signature(fn).parameters)

    assert params(getattr(S3Backend.put_object, "stock", S3Backend.put_object))[:4] == [
        "self",
        "bucket_name",
        "key_name",
        "value",
    ]
    assert params(S3Backend.get_object)[:3] == ["self", "bucket_name", "key_name"]
    assert params(S3Backend.head_object)[:3] == ["self", "bucket_name", "key_name"]
    assert params(S3Backend.get_bucket) == ["self", "bucket_name"]
    assert params(S3Backend.list_objects_v2) == [
        "self",
        "bucket",
        "prefix",
        "delimiter",
        "continuation_token",
        "start_after",
        "max_keys",
    ]
    assert MissingBucket.code == "NoSuchBucket"
    # put_object itself sends the S3 event notifications (EventBridge uploads rely on it)
    # (the checkpoint mirror may have wrapped it: read moto's own)
    put_object = getattr(S3Backend.put_object, "stock", S3Backend.put_object)
    assert "notifications.send_event" in inspect.getsource(put_object)


def test_in_process_s3_client_shares_objects_and_errors_with_boto3():
    from lambdagrad.store import Store, StoreError

    s3 = client("s3")
    s3.create_bucket(Bucket="in-process-s3")
    direct = moto_fixes.InProcessS3Client(ACCOUNT)
    store = Store(direct, "in-process-s3")
    store.put_json("jobs/a/spec.json", {"x": 1})
    got = s3.get_object(Bucket="in-process-s3", Key="jobs/a/spec.json")
    assert json.loads(got["Body"].read()) == {"x": 1}
    assert got["ContentType"] == "application/json"
    s3.put_object(Bucket="in-process-s3", Key="jobs/a/b.bin", Body=b"\x00\x01")
    assert store.get_bytes("jobs/a/b.bin") == b"\x00\x01"
    assert store.exists("jobs/a/b.bin") and not store.exists("jobs/a/none")
    with pytest.raises(StoreError, match="does not exist"):
        store.get_bytes("jobs/a/none")
    assert store.put_json_if_absent("jobs/a/claim.json", {"by": 1})
    assert not store.put_json_if_absent("jobs/a/claim.json", {"by": 2})
    assert store.get_json("jobs/a/claim.json") == {"by": 1}
    with pytest.raises(ClientError) as err:
        direct.get_object(Bucket="no-such-bucket-here", Key="k")
    assert err.value.response["Error"]["Code"] == "NoSuchBucket"
    for k in range(5):
        s3.put_object(Bucket="in-process-s3", Key=f"jobs/p/{k}", Body=b"")
    page = direct.list_objects_v2(Bucket="in-process-s3", Prefix="jobs/p/", MaxKeys=2)
    keys = [o["Key"] for o in page["Contents"]]
    while page["IsTruncated"]:
        page = direct.list_objects_v2(
            Bucket="in-process-s3",
            Prefix="jobs/p/",
            MaxKeys=2,
            ContinuationToken=page["NextContinuationToken"],
        )
        keys += [o["Key"] for o in page["Contents"]]
    assert keys == [f"jobs/p/{k}" for k in range(5)] == store.list_keys("jobs/p/")
    assert direct.requests["PutObject"] == 3 and direct.requests["ListObjectsV2"] >= 3
