"""The SAM template and the ASL it deploys: lint clean, substitutions complete, handlers import."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that keeps CloudFormation short-form tags as plain values."""


_CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)


def resources_of(kind: str) -> dict[str, dict]:
    return {k: v for k, v in template()["Resources"].items() if v["Type"] == kind}


def test_cfn_lint_clean():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    proc = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(resources_of("AWS::Serverless::StateMachine")))
def test_every_asl_placeholder_has_a_substitution(name):
    props = resources_of("AWS::Serverless::StateMachine")[name]["Properties"]
    asl_text = (ROOT / props["DefinitionUri"]).read_text()
    json.loads(asl_text)
    used = set(re.findall(r"\$\{(\w+)\}", asl_text))
    given = set(props.get("DefinitionSubstitutions", {}))
    assert used == given, f"missing {used - given}, unused {given - used}"


def test_asl_uses_jsonpath_only():
    for path in (ROOT / "statemachine").glob("*.asl.json"):
        text = path.read_text()
        assert "JSONata" not in text and '"Assign"' not in text, path


@pytest.mark.parametrize("name", sorted(resources_of("AWS::Serverless::Function")))
def test_every_function_handler_imports(name):
    props = resources_of("AWS::Serverless::Function")[name]["Properties"]
    module, _, attr = props["Handler"].rpartition(".")
    path = ROOT / props["CodeUri"] / f"{module.replace('.', '/')}.py"
    spec = importlib.util.spec_from_file_location(f"handler_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert callable(getattr(mod, attr))


def test_functions_are_python313_arm64():
    globals_ = template()["Globals"]["Function"]
    assert globals_["Runtime"] == "python3.13" and globals_["Architectures"] == ["arm64"]
    layer = resources_of("AWS::Serverless::LayerVersion")["CoreLayer"]
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
    # the layer's Makefile: arm64 wheels for Python 3.13, and the C kernels built for arm64
    makefile = (ROOT / layer["Properties"]["ContentUri"] / "Makefile").read_text()
    assert "build-CoreLayer:" in makefile
    assert "--python-version 3.13" in makefile and "manylinux2014_aarch64" in makefile
    assert "aarch64-linux-gnu-gcc" in makefile and "_kernels.so" in makefile


def test_bucket_is_encrypted_and_private():
    bucket = resources_of("AWS::S3::Bucket")["DataBucket"]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())


def test_function_policies_name_no_wildcard_actions():
    for name, res in resources_of("AWS::Serverless::Function").items():
        for policy in res["Properties"].get("Policies", []):
            for stmt in policy.get("Statement", []) if isinstance(policy, dict) else []:
                actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
                assert all("*" not in a for a in actions), (name, actions)


def test_layer_requirements_cover_runtime_imports():
    reqs = (ROOT / "layers" / "lambdagrad" / "requirements.txt").read_text()
    for dist in ("numpy", "pydantic", "aws-lambda-powertools"):
        assert dist in reqs


class _RefLoader(yaml.SafeLoader):
    """YAML loader that keeps ``!Ref X`` as ``{"Ref": "X"}`` (other short forms as None)."""


_RefLoader.add_multi_constructor("!", lambda loader, suffix, node: None)
_RefLoader.add_constructor("!Ref", lambda loader, node: {"Ref": loader.construct_scalar(node)})


def test_a_segment_survives_one_hung_attempt_in_its_last_round_within_express_limit():
    """Express runs 5 minutes at most; a segment's last round starts before SegmentSeconds and
    may take a hung attempt, its retry and a reducer at their timeout: all inside the limit."""
    doc = yaml.load(TEMPLATE.read_text(), Loader=_RefLoader)
    params, functions = doc["Parameters"], doc["Resources"]
    segment = json.loads((ROOT / "statemachine" / "segment.asl.json").read_text())
    assert segment["TimeoutSeconds"] == 300  # Express's limit, stated so the engine keeps it
    for name in ("WorkerFunction", "ReduceFunction"):
        assert functions[name]["Properties"]["Timeout"] == {"Ref": "RoundFunctionTimeout"}
    timeout = params["RoundFunctionTimeout"]["Default"]
    worker = segment["States"]["Workers"]["ItemProcessor"]["States"]["Worker"]
    retried = 1 + sum(
        r["MaxAttempts"] for r in worker["Retry"] if "Sandbox.Timedout" in r["ErrorEquals"]
    )
    assert retried == 2
    # with time to spare for the round's start, the retry's wait and the transitions
    assert params["SegmentSeconds"]["Default"] + retried * timeout + timeout <= 290
    # a segment cut at its limit anyway is started again once by the training execution
    run = json.loads((ROOT / "statemachine" / "train.asl.json").read_text())["States"]["RunSegment"]
    assert any(r["ErrorEquals"] == ["States.TaskFailed"] for r in run["Retry"])


class _TagLoader(yaml.SafeLoader):
    """YAML loader that keeps every short form as ``{"Fn": [tag, value]}``."""


def _tagged(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"Fn": [suffix, value]}


_TagLoader.add_multi_constructor("!", _tagged)


def test_a_reserved_concurrency_of_zero_is_refused_at_deploy():
    """0 reserved executions disables a function: every worker throttled, every job failed."""
    doc = yaml.load(TEMPLATE.read_text(), Loader=_TagLoader)
    reserved = [p for p in doc["Parameters"] if p.endswith("ReservedConcurrency")]
    assert reserved == ["WorkerReservedConcurrency", "PredictReservedConcurrency"]
    asserted = [a["Assert"] for rule in doc["Rules"].values() for a in rule["Assertions"]]
    for name in reserved:
        assert doc["Parameters"][name]["MinValue"] == -1
        zero = {"Fn": ["Equals", [{"Fn": ["Ref", name]}, 0]]}
        assert {"Fn": ["Not", [zero]]} in asserted, name


def test_every_log_group_expires():
    """Lambda's own /aws/lambda/<function> groups keep logs forever and outlive the stack:
    every function logs to the stack's group, which expires after LogRetentionDays."""
    doc = yaml.load(TEMPLATE.read_text(), Loader=_RefLoader)
    assert doc["Globals"]["Function"]["LoggingConfig"] == {"LogGroup": {"Ref": "FunctionLogGroup"}}
    groups = resources_of("AWS::Logs::LogGroup")
    assert set(groups) == {"FunctionLogGroup", "SegmentLogGroup"}
    for name in groups:
        props = doc["Resources"][name]["Properties"]
        assert props["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name
        assert doc["Resources"][name]["DeletionPolicy"] == "Delete", name
    for name, fn in resources_of("AWS::Serverless::Function").items():
        assert "LoggingConfig" not in fn["Properties"], name  # none opts out of the group


def test_a_job_start_that_failed_alarms_the_topic_given_and_costs_nothing_without_one():
    """moto's CloudFormation does not create alarms: the template is checked as written."""
    doc = yaml.load(TEMPLATE.read_text(), Loader=_TagLoader)
    alarm = doc["Resources"]["JobStartDeadLetterAlarm"]
    assert alarm["Condition"] == "AlarmOnFailedStarts"
    assert doc["Conditions"]["AlarmOnFailedStarts"] == {
        "Fn": ["Not", [{"Fn": ["Equals", [{"Fn": ["Ref", "AlarmTopicArn"]}, ""]]}]]
    }
    assert doc["Parameters"]["AlarmTopicArn"]["Default"] == ""
    props = alarm["Properties"]
    assert (props["Namespace"], props["MetricName"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
    )
    assert props["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn": ["GetAtt", "JobStartDeadLetterQueue.QueueName"]}}
    ]
    assert (props["ComparisonOperator"], props["Threshold"]) == ("GreaterThanThreshold", 0)
    assert props["AlarmActions"] == [{"Fn": ["Ref", "AlarmTopicArn"]}]
