"""Every function's IAM policy in template.yaml against the S3 calls its real step makes.

moto does not enforce IAM, so the embedded engine cannot tell a policy that is too tight
from a right one. Here the steps run over an in-memory S3 that records each call as the IAM
action and resource AWS would authorize (a read of a missing key also needs s3:ListBucket,
or S3 answers 403 instead of 404), tagged with the function that made it. Then:

- every recorded call is allowed by that function's policy statements (not too tight);
- every statement is used by at least one call (nothing granted that no step needs).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from lambdagrad import steps, sweep, transfer
from lambdagrad.local.sam import load_template
from lambdagrad.serving import ModelCache, PredictError, predict
from lambdagrad.spec import SpecError
from lambdagrad.store import MemoryS3, Store

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
BUCKET = "lambdagrad-example-bucket"
BUCKET_ARN = f"arn:aws:s3:::{BUCKET}"

FUNCTIONS = {
    "prepare": "PrepareFunction",
    "worker": "WorkerFunction",
    "reduce": "ReduceFunction",
    "finalize": "FinalizeFunction",
    "record_failure": "RecordFailureFunction",
    "predict": "PredictFunction",
    "select_best": "SelectBestFunction",
}


# ---- the template's statements, resolved for this bucket --------------------------------
@functools.cache
def resources() -> dict[str, Any]:
    return load_template(ROOT / "template.yaml")["Resources"]


def _resolve(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value == {"Fn::GetAtt": ["DataBucket", "Arn"]}:
        return BUCKET_ARN
    if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
        return value["Fn::Sub"].replace("${DataBucket.Arn}", BUCKET_ARN)
    raise AssertionError(f"unexpected resource expression {value!r}")


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def statements(logical_id: str) -> list[tuple[str, str]]:
    """(action, resource) pairs a function's inline statements allow (policy templates and
    the KMS policies, which exist only with KmsKeyArn, are checked elsewhere)."""
    props = resources()[logical_id]["Properties"]
    pairs = []
    for policy in props.get("Policies", []):
        if not (isinstance(policy, dict) and "Statement" in policy):
            continue
        for stmt in policy["Statement"]:
            assert stmt["Effect"] == "Allow" and "Condition" not in stmt, stmt
            for action in _as_list(stmt["Action"]):
                for resource in _as_list(stmt["Resource"]):
                    pairs.append((action, _resolve(resource)))
    return pairs


def _matches(pattern: str, value: str) -> bool:
    """IAM wildcards: ``*`` is any run of characters (``/`` included), ``?`` one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value) is not None


# ---- an S3 that records what IAM would check ---------------------------------------------
class RecordingS3(MemoryS3):
    """MemoryS3 that notes (function, IAM action, resource ARN) for every request."""

    def __init__(self) -> None:
        super().__init__()
        self.function = "setup"
        self.calls: list[tuple[str, str, str]] = []

    def _note(self, action: str, bucket: str, key: str | None = None) -> None:
        arn = f"arn:aws:s3:::{bucket}" + (f"/{key}" if key is not None else "")
        self.calls.append((self.function, action, arn))

    def _read(self, Bucket: str, Key: str) -> None:
        self._note("s3:GetObject", Bucket, Key)  # GetObject and HeadObject
        if (Bucket, Key) not in self.objects:
            self._note("s3:ListBucket", Bucket)  # else a 403, not NoSuchKey

    def put_object(self, Bucket: str, Key: str, Body: bytes, **kw: Any) -> dict:
        self._note("s3:PutObject", Bucket, Key)
        if kw.get("Tagging"):
            self._note("s3:PutObjectTagging", Bucket, Key)
        return super().put_object(Bucket=Bucket, Key=Key, Body=Body, **kw)

    def get_object(self, Bucket: str, Key: str, **kw: Any) -> dict:
        self._read(Bucket, Key)
        return super().get_object(Bucket=Bucket, Key=Key, **kw)

    def head_object(self, Bucket: str, Key: str, **kw: Any) -> dict:
        self._read(Bucket, Key)
        return super().head_object(Bucket=Bucket, Key=Key, **kw)

    def list_objects_v2(self, Bucket: str, Prefix: str = "", **kw: Any) -> dict:
        self._note("s3:ListBucket", Bucket)
        return super().list_objects_v2(Bucket=Bucket, Prefix=Prefix, **kw)

    @contextmanager
    def acting_as(self, function: str) -> Iterator[None]:
        self.function = function
        try:
            yield
        finally:
            self.function = "setup"


def _spec(job_id: str, **training: Any) -> dict:
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    doc["job_id"] = job_id
    doc["training"] = {**doc["training"], "workers": 2, "batch_size": 32, **training}
    doc["training"].pop("epochs", None)
    doc["output"] = {"model_name": "houses"}
    return doc


def _train(s3: RecordingS3, store: Store, job_id: str, rounds: int) -> dict:
    with s3.acting_as("prepare"):
        state = steps.prepare(
            store, {"input": {"job_id": job_id, "spec": _spec(job_id, rounds=rounds)}}
        )
    while True:
        with s3.acting_as("worker"):
            results = [
                steps.worker(store, {"job_id": job_id, "round": state["round"], "shard": k})
                for k in state["shards"]
            ]
        with s3.acting_as("reduce"):
            state = steps.reduce(store, {**state, "results": results})
        if state["next"] == "finalize":
            return state


@pytest.fixture(scope="module")
def recorded() -> RecordingS3:
    """One life of the bucket: a job trained and served, a job failed, a sweep ranked."""
    steps.clear_cache()
    s3 = RecordingS3()
    store = Store(s3, BUCKET)
    store.put_bytes("datasets/houses.csv", (EVENTS / "data" / "houses.csv").read_bytes())

    state = _train(s3, store, "good-job", rounds=3)
    with pytest.MonkeyPatch.context() as mp:  # gradients too big to travel inline: via S3
        mp.setattr(transfer, "INLINE_BUDGET_BYTES", 0)
        _train(s3, store, "wide-job", rounds=2)
    with s3.acting_as("finalize"):
        steps.finalize(store, {"job_id": "good-job", "round": 3, "progress": state["progress"]})

    with s3.acting_as("prepare"):
        steps.prepare(store, {"input": {"job_id": "bad-job", "spec": _spec("bad-job")}})
    with s3.acting_as("reduce"):  # one round made it, then the job broke
        store.put_json("jobs/bad-job/metrics/00000001.json", {"round": 1, "train_loss": 1.0,
                       "validation_loss": None, "finished_at": 2.0})  # fmt: skip
    with s3.acting_as("record_failure"):
        error = {"Error": "ModelDiverged", "Cause": json.dumps({"errorMessage": "round 1"})}
        steps.record_failure(store, {"state": {"job_id": "bad-job", "error": error}})

    refused = _spec("refused-job")  # claimed, then refused before any status was written
    refused["optimizer"]["learning_rate"] = -1
    with s3.acting_as("prepare"), pytest.raises(SpecError):
        steps.prepare(store, {"input": {"job_id": "refused-job", "spec": refused}})
    with s3.acting_as("record_failure"):
        error = {"Error": "SpecError", "Cause": "optimizer.learning_rate"}
        steps.record_failure(store, {"state": {"job_id": "refused-job", "error": error}})

    with s3.acting_as("prepare"):  # a job still running when the sweep asks about it
        steps.prepare(store, {"input": {"job_id": "busy-job", "spec": _spec("busy-job")}})

    cache = ModelCache()
    row = [1500.0, 3.0, 20.0, 2.5]  # sqft, bedrooms, age, distance_km
    with s3.acting_as("predict"):
        assert predict(store, cache, {"model": "houses", "instances": [row]}, 10)["predictions"]
        with pytest.raises(PredictError):
            predict(store, cache, {"model": "no-such-model", "instances": [row]}, 10)

    with s3.acting_as("select_best"):
        points = [
            {"index": 0, "job_id": "good-job", "params": {}, "failed": False, "error": None},
            {"index": 1, "job_id": "bad-job", "params": {}, "failed": True, "error": "X"},
        ]
        sweep.select_best_step(store, {"sweep_id": "sw", "points": points})
        for job_id in ("good-job", "busy-job"):
            sweep.select_best_step(store, {"action": "point_status", "job_id": job_id})
    steps.clear_cache()
    return s3


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_policy_allows_every_call_the_step_makes(recorded, function):
    allowed = statements(FUNCTIONS[function])
    calls = sorted({(a, r) for f, a, r in recorded.calls if f == function})
    assert calls, f"{function} made no S3 call: the scenario does not exercise it"
    denied = [
        (action, arn)
        for action, arn in calls
        if not any(a == action and _matches(res, arn) for a, res in allowed)
    ]
    assert not denied, f"{FUNCTIONS[function]} would be denied: {denied}"


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_policy_grants_nothing_the_step_does_not_use(recorded, function):
    calls = {(a, r) for f, a, r in recorded.calls if f == function}
    unused = [
        (action, res)
        for action, res in statements(FUNCTIONS[function])
        if not any(a == action and _matches(res, arn) for a, arn in calls)
    ]
    assert not unused, f"{FUNCTIONS[function]} is granted more than it uses: {unused}"


def test_every_function_with_s3_statements_is_exercised():
    """A new function with its own S3 policy needs a place in the scenario above."""
    with_statements = {
        k
        for k, v in resources().items()
        if v["Type"] == "AWS::Serverless::Function"
        and any(isinstance(p, dict) and "Statement" in p for p in v["Properties"]["Policies"])
    }
    assert with_statements == set(FUNCTIONS.values())


def test_worker_tags_its_gradients_as_scratch(recorded):
    tagged = {r for f, a, r in recorded.calls if a == "s3:PutObjectTagging"}
    grads = {r for f, a, r in recorded.calls if a == "s3:PutObject" and "/grads/" in r}
    assert grads and tagged == grads


def test_kms_policies_follow_reads_and_writes():
    """With KmsKeyArn, writers get Decrypt + GenerateDataKey, the read-only predict Decrypt."""
    for logical_id in FUNCTIONS.values():
        writes = any(a == "s3:PutObject" for a, _ in statements(logical_id))
        expected = "KmsReadWritePolicy" if writes else "KmsReadPolicy"
        conditional = [
            p["Fn::If"]
            for p in resources()[logical_id]["Properties"]["Policies"]
            if isinstance(p, dict) and "Fn::If" in p
        ]
        assert conditional == [["UseKmsKey", {"Ref": expected}, {"Ref": "AWS::NoValue"}]]
    for name, actions in (
        ("KmsReadPolicy", ["kms:Decrypt"]),
        ("KmsReadWritePolicy", ["kms:Decrypt", "kms:GenerateDataKey"]),
    ):
        policy = resources()[name]
        assert policy["Condition"] == "UseKmsKey"
        (stmt,) = policy["Properties"]["PolicyDocument"]["Statement"]
        assert _as_list(stmt["Action"]) == actions
        assert stmt["Resource"] == {"Ref": "KmsKeyArn"}
        assert stmt["Condition"] == {
            "StringEquals": {"kms:ViaService": {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}}
        }


def test_no_function_may_write_where_an_upload_starts_a_job(recorded):
    """IAM's ``*`` spans ``/``: ``jobs/*/status.json`` also grants
    ``jobs/incoming/status.json``, whose write would start a job. Every function that writes
    carries an explicit Deny there, and no step writes there."""
    deny = resources()["NoJobStartWritesPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert deny == [
        {
            "Effect": "Deny",
            "Action": "s3:PutObject",
            "Resource": {"Fn::Sub": "${DataBucket.Arn}/jobs/incoming/*"},
        }
    ]
    for logical_id in FUNCTIONS.values():
        writes = any(a == "s3:PutObject" for a, _ in statements(logical_id))
        attached = {"Ref": "NoJobStartWritesPolicy"} in resources()[logical_id]["Properties"][
            "Policies"
        ]
        assert attached == writes, logical_id
    incoming = f"{BUCKET_ARN}/jobs/incoming/*"
    assert not [c for c in recorded.calls if c[1] == "s3:PutObject" and _matches(incoming, c[2])]
    # and the grants it guards against do reach there
    assert any(
        _matches(r, f"{BUCKET_ARN}/jobs/incoming/status.json")
        for _, r in statements("PrepareFunction")
    )
