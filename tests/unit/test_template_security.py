"""What template.yaml guarantees about security, read from the template and from the
CloudFormation SAM makes of it (docs/security.md says the same in prose).

moto's CloudFormation ignores bucket versioning, lifecycle rules and resource policies, so
they are checked here; tests/integration/test_lockdown.py deploys and trains with the
options on, tests/unit/test_least_privilege.py holds each policy to its step's S3 calls.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Any

from lambdagrad.local.sam import load_template, localize, to_cloudformation
from lambdagrad.store import SCRATCH_TAGGING

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def sam() -> dict[str, Any]:
    return load_template(ROOT / "template.yaml")


@functools.cache
def cfn() -> dict[str, Any]:
    localized, _ = localize(sam(), base_dir=ROOT, staging_bucket="staging")
    return to_cloudformation(localized, region="us-east-1")


def resource(logical_id: str) -> dict[str, Any]:
    return sam()["Resources"][logical_id]


def functions() -> dict[str, dict]:
    return {k: v for k, v in sam()["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}


# ---- bucket -----------------------------------------------------------------------------
def test_bucket_encryption_is_sse_s3_or_the_given_kms_key_with_a_bucket_key():
    (rule,) = resource("DataBucket")["Properties"]["BucketEncryption"][
        "ServerSideEncryptionConfiguration"
    ]
    condition, kms, s3 = rule["Fn::If"]
    assert condition == "UseKmsKey"
    assert sam()["Conditions"]["UseKmsKey"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "KmsKeyArn"}, ""]}]
    }
    assert sam()["Parameters"]["KmsKeyArn"]["Default"] == ""
    assert kms == {
        "ServerSideEncryptionByDefault": {
            "SSEAlgorithm": "aws:kms",
            "KMSMasterKeyID": {"Ref": "KmsKeyArn"},
        },
        "BucketKeyEnabled": True,
    }
    assert s3 == {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}


def test_bucket_is_private_versioned_and_retained():
    bucket = resource("DataBucket")
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"


def test_lifecycle_expires_tagged_scratch_old_versions_and_stale_uploads():
    rules = {
        r["Id"]: r for r in resource("DataBucket")["Properties"]["LifecycleConfiguration"]["Rules"]
    }
    assert all(r["Status"] == "Enabled" for r in rules.values())
    tag_key, tag_value = SCRATCH_TAGGING.split("=")
    scratch = rules["ExpireRoundScratch"]
    assert scratch["Prefix"] == "jobs/"
    assert scratch["TagFilters"] == [{"Key": tag_key, "Value": tag_value}]
    assert scratch["ExpirationInDays"] == {"Ref": "ScratchExpirationDays"}
    old = rules["ExpireNoncurrentVersions"]
    assert "Prefix" not in old and "TagFilters" not in old  # the whole bucket
    assert old["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": {"Ref": "NoncurrentVersionExpirationDays"}
    }
    assert old["ExpiredObjectDeleteMarker"] is True
    assert rules["AbortIncompleteMultipartUploads"]["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": 7
    }
    # no rule expires current objects other than the tagged scratch
    assert [k for k, r in rules.items() if "ExpirationInDays" in r] == ["ExpireRoundScratch"]


def test_bucket_policy_denies_requests_without_tls_1_2():
    policy = resource("DataBucketPolicy")["Properties"]
    assert policy["Bucket"] == {"Ref": "DataBucket"}
    conditions = []
    for stmt in policy["PolicyDocument"]["Statement"]:
        assert stmt["Effect"] == "Deny" and stmt["Principal"] == "*" and stmt["Action"] == "s3:*"
        assert stmt["Resource"] == [
            {"Fn::GetAtt": ["DataBucket", "Arn"]},
            {"Fn::Sub": "${DataBucket.Arn}/*"},
        ]
        conditions.append(stmt["Condition"])
    assert {"Bool": {"aws:SecureTransport": "false"}} in conditions
    assert {"NumericLessThan": {"s3:TlsVersion": "1.2"}} in conditions


# ---- IAM --------------------------------------------------------------------------------
def _statements(doc: dict) -> list[dict]:
    return doc["Statement"] if isinstance(doc["Statement"], list) else [doc["Statement"]]


#: What a state machine needs to send its logs to CloudWatch Logs; these APIs take no
#: resource ARN, so AWS documents ``Resource: "*"`` as the only form.
UNSCOPED_LOG_DELIVERY_ACTIONS = {
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
}


def test_no_generated_role_or_policy_allows_a_wildcard_resource():
    """Inline statements name ARNs or key prefixes; only AWS managed policies SAM attaches
    for logs and X-Ray (whose APIs take no resource) are broader."""
    found = []
    for logical_id, res in cfn()["Resources"].items():
        docs = []
        if res["Type"] == "AWS::IAM::Role":
            docs = [p["PolicyDocument"] for p in res["Properties"].get("Policies", [])]
            for arn in res["Properties"].get("ManagedPolicyArns", []):
                if isinstance(arn, str):
                    assert arn.split(":policy/")[1] in {
                        "service-role/AWSLambdaBasicExecutionRole",
                        "AWSXrayWriteOnlyAccess",
                    }, (logical_id, arn)
        elif res["Type"] == "AWS::IAM::ManagedPolicy":
            docs = [res["Properties"]["PolicyDocument"]]
        for doc in docs:
            for stmt in _statements(doc):
                resources = stmt["Resource"]
                actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
                for r in resources if isinstance(resources, list) else [resources]:
                    if r == "*" and not set(actions) <= UNSCOPED_LOG_DELIVERY_ACTIONS:
                        found.append((logical_id, stmt["Action"]))
                assert all(a != "*" and not a.endswith(":*") for a in actions), logical_id
    assert not found, f"statements with Resource '*': {found}"


def test_predict_url_requires_iam_auth_and_nothing_opens_it():
    url = resource("PredictFunction")["Properties"]["FunctionUrlConfig"]
    assert url == {"AuthType": "AWS_IAM"}
    generated = {k: v for k, v in cfn()["Resources"].items() if v["Type"] == "AWS::Lambda::Url"}
    assert [v["Properties"]["AuthType"] for v in generated.values()] == ["AWS_IAM"]
    for logical_id, res in cfn()["Resources"].items():
        if res["Type"] == "AWS::Lambda::Permission":
            props = res["Properties"]
            assert props.get("FunctionUrlAuthType") != "NONE", logical_id
            assert props.get("Principal") != "*", logical_id


# ---- Lambda settings --------------------------------------------------------------------
def test_memory_and_timeouts_are_parameters_with_sane_defaults():
    params = sam()["Parameters"]
    for logical_id, fn in functions().items():
        props = fn["Properties"]
        memory = props.get("MemorySize", sam()["Globals"]["Function"]["MemorySize"])
        timeout = props.get("Timeout", sam()["Globals"]["Function"]["Timeout"])
        if isinstance(memory, dict):
            p = params[memory["Ref"]]
            assert 128 <= p["MinValue"] <= p["Default"] <= p["MaxValue"] <= 10240, logical_id
        assert isinstance(timeout, dict), f"{logical_id}: timeout is not a parameter"
        p = params[timeout["Ref"]]
        assert 1 <= p["MinValue"] <= p["Default"] <= p["MaxValue"] <= 900, logical_id
    heavy = {"PrepareFunction", "WorkerFunction", "ReduceFunction", "FinalizeFunction"}
    for logical_id in heavy | {"PredictFunction"}:
        assert isinstance(functions()[logical_id]["Properties"]["MemorySize"], dict), logical_id


def test_reserved_concurrency_is_a_parameter_unreserved_by_default():
    for logical_id, param, condition in (
        ("WorkerFunction", "WorkerReservedConcurrency", "ReserveWorkerConcurrency"),
        ("PredictFunction", "PredictReservedConcurrency", "ReservePredictConcurrency"),
    ):
        assert sam()["Parameters"][param]["Default"] == -1
        assert sam()["Conditions"][condition] == {"Fn::Not": [{"Fn::Equals": [{"Ref": param}, -1]}]}
        value = functions()[logical_id]["Properties"]["ReservedConcurrentExecutions"]
        assert value == {"Fn::If": [condition, {"Ref": param}, {"Ref": "AWS::NoValue"}]}


def test_upload_rule_target_retries_then_dead_letters_to_an_encrypted_queue():
    event = resource("TrainStateMachine")["Properties"]["Events"]["JobSpecUploaded"]
    props = event["Properties"]
    assert props["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["JobStartDeadLetterQueue", "Arn"]}}
    assert props["RetryPolicy"]["MaximumRetryAttempts"] > 0
    queue = resource("JobStartDeadLetterQueue")["Properties"]
    assert queue["SqsManagedSseEnabled"] is True
    (allow,) = [
        s
        for s in resource("JobStartDeadLetterQueuePolicy")["Properties"]["PolicyDocument"][
            "Statement"
        ]
        if s["Effect"] == "Allow"
    ]
    assert allow["Principal"] == {"Service": "events.amazonaws.com"}
    assert allow["Action"] == "sqs:SendMessage"
    # only the upload rule may send, and that rule exists once SAM has transformed the template
    source = allow["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::GetAtt"][0]
    assert cfn()["Resources"][source]["Type"] == "AWS::Events::Rule"


# ---- no pickle ----------------------------------------------------------------------------
def _python_files() -> list[Path]:
    return sorted((ROOT / "layers" / "lambdagrad" / "lambdagrad").rglob("*.py")) + sorted(
        (ROOT / "functions").rglob("*.py")
    )


def test_arrays_are_never_unpickled():
    """Every np.load passes allow_pickle=False, and nothing imports pickle."""
    loads, offenders = 0, []
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in {"pickle", "cPickle", "dill", "joblib"} for n in names):
                    offenders.append(f"{path}:{node.lineno} imports pickle")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in {"np", "numpy"}
            ):
                loads += 1
                kw = {k.arg: k.value for k in node.keywords}
                flag = kw.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    offenders.append(f"{path}:{node.lineno} np.load without allow_pickle=False")
    assert loads >= 3, "no np.load found: is the scan looking in the right place?"
    assert not offenders, offenders
