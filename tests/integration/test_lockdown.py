"""The locked-down stack on the embedded engine: template.yaml deploys into moto with every
security option switched on, trains there, and tags per-round scratch for the lifecycle rule.

moto ignores what it cannot model (bucket versioning and lifecycle rules, the bucket and
queue policies, the function URL): those are checked statically in
tests/unit/test_template_security.py, by cfn-lint and by checkov (tests/unit/test_checkov.py).
"""

from __future__ import annotations

import pytest
from lambdagrad import transfer
from lambdagrad.client import StackClient
from lambdagrad.local.engine import LocalEngine
from lambdagrad.spec import parse_spec
from lambdagrad.store import SCRATCH_TAGGING, JobKeys

from tests.conftest import EVENTS, ROOT, job_doc

KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ALARM_TOPIC = "arn:aws:sns:us-east-1:123456789012:lambdagrad-ops"
LOCKED = {
    "KmsKeyArn": KMS_KEY,
    "WorkerReservedConcurrency": 8,
    "PredictReservedConcurrency": 2,
    "WorkerMemorySize": 2048,
    "PrepareMemorySize": 4096,
    "ReduceMemorySize": 1024,
    "PredictMemorySize": 512,
    "PredictTimeout": 10,
    "ScratchExpirationDays": 1,
    "NoncurrentVersionExpirationDays": 7,
    "AlarmTopicArn": ALARM_TOPIC,
    "LogRetentionDays": 7,
}


def train(stack: StackClient, job_id: str, rounds: int) -> dict:
    doc = job_doc("houses-linear.json", job_id=job_id, training={"rounds": rounds})
    doc["dataset"]["uri"] = stack.upload_dataset(EVENTS / "data" / "houses.csv")
    spec = parse_spec(doc)
    stack.start(spec)
    return stack.follow(spec.job_id, timeout=300)


def tags(stack: StackClient, key: str) -> dict[str, str]:
    got = stack.s3.get_object_tagging(Bucket=stack.bucket, Key=key)["TagSet"]
    return {t["Key"]: t["Value"] for t in got}


def test_gradients_are_tagged_scratch_and_nothing_else_is(stack, monkeypatch):
    # a gradient too big to travel inline in the worker's result goes to S3 as scratch
    monkeypatch.setattr(transfer, "INLINE_BUDGET_BYTES", 0)
    status = train(stack, "lockdown-tags", rounds=2)
    assert status["state"] == "SUCCEEDED"
    keys = JobKeys("lockdown-tags")
    scratch_key, scratch_value = SCRATCH_TAGGING.split("=")
    grads = stack.store.list_keys(keys.prefix + "grads/")
    assert len(grads) == 2 * 4  # rounds x workers
    for key in grads:
        assert tags(stack, key) == {scratch_key: scratch_value}, key
    for key in (keys.params(2), keys.optimizer(2), keys.spec, keys.model_npz, keys.model_json):
        assert tags(stack, key) == {}, key


def test_default_stack_is_sse_s3_and_unreserved(engine):
    (rule,) = engine.client("s3").get_bucket_encryption(Bucket=engine.outputs["BucketName"])[
        "ServerSideEncryptionConfiguration"
    ]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    assert not {"KmsReadPolicy", "KmsReadWritePolicy", "JobStartDeadLetterAlarm"} & set(
        engine.resources
    )
    lam = engine.client("lambda")
    for logical_id in ("WorkerFunction", "PredictFunction"):
        assert "Concurrency" not in lam.get_function(FunctionName=engine.function_name(logical_id))


@pytest.fixture(scope="module")
def locked_engine(engine):
    """A second stack with a KMS key, reserved concurrency and every size set, beside the
    session's default one (engine: both share one moto)."""
    with LocalEngine(
        ROOT / "template.yaml", stack_name="lambdagrad-locked", parameters=LOCKED
    ) as eng:
        yield eng


def test_every_option_deploys_and_trains(locked_engine):
    eng = locked_engine
    stack = StackClient.from_outputs(eng.outputs, eng.client)
    bucket = eng.outputs["BucketName"]
    (rule,) = eng.client("s3").get_bucket_encryption(Bucket=bucket)[
        "ServerSideEncryptionConfiguration"
    ]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": KMS_KEY,
    }
    assert {"KmsReadPolicy", "KmsReadWritePolicy", "JobStartDeadLetterQueue"} <= set(eng.resources)
    lam = eng.client("lambda")
    expected = {
        "WorkerFunction": (2048, 8),
        "PrepareFunction": (4096, None),
        "ReduceFunction": (1024, None),
        "FinalizeFunction": (1024, None),
        "PredictFunction": (512, 2),
    }
    for logical_id, (memory, reserved) in expected.items():
        fn = lam.get_function(FunctionName=eng.function_name(logical_id))
        assert fn["Configuration"]["MemorySize"] == memory, logical_id
        assert fn.get("Concurrency", {}).get("ReservedConcurrentExecutions") == reserved
    status = train(stack, "lockdown-kms", rounds=2)
    assert status["state"] == "SUCCEEDED" and status["round"] == 2
    head = stack.s3.head_object(Bucket=bucket, Key=JobKeys("lockdown-kms").model_npz)
    assert head["ServerSideEncryption"] == "aws:kms"
    logs = eng.client("logs").describe_log_groups(
        logGroupNamePrefix="/aws/lambda/lambdagrad-locked"
    )
    assert [g["retentionInDays"] for g in logs["logGroups"]] == [7]


def test_upload_rule_has_a_dead_letter_queue_and_retries(engine):
    events = engine.client("events")
    (rule,) = [r for r in events.list_rules()["Rules"] if "JobSpecUploaded" in r["Name"]
               and r["Name"].startswith("lambdagrad-test-")]  # fmt: skip
    (target,) = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    queue_url = engine.outputs["JobStartDeadLetterQueueUrl"]
    attrs = engine.client("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])
    assert target["DeadLetterConfig"]["Arn"] == attrs["Attributes"]["QueueArn"]
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 8, "MaximumEventAgeInSeconds": 3600}
