"""The cost model's counts against what a job really does on the embedded engine.

One job with 3 workers, 5 rounds and segments of 2 (one Standard execution running three
Express segments): every Standard transition (``*StateEntered`` in the training
execution's history), every Express segment and the states it enters, every Lambda
invocation and
every S3 request the handlers make is counted and compared with
``lambdagrad.cost.round_structure``; then cost.json (written by finalize) must agree with
the estimate for the same spec on every count.
"""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from botocore.client import BaseClient
from lambdagrad import steps
from lambdagrad.cost import DurationModel, JobShape, cost_key, estimate, round_structure
from lambdagrad.data import load_dataset
from lambdagrad.local.moto_fixes import InProcessS3Client
from lambdagrad.spec import parse_spec

from tests.conftest import job_doc
from tests.integration.test_training import data_path, executions_of, run_job, segments_of

GET_OPS = {"GetObject", "HeadObject"}
PUT_OPS = {"PutObject", "ListObjectsV2"}
OPERATIONS = {
    "GetObject": "get_object",
    "HeadObject": "head_object",
    "PutObject": "put_object",
    "ListObjectsV2": "list_objects_v2",
}
FUNCTIONS = ("PrepareFunction", "WorkerFunction", "ReduceFunction", "FinalizeFunction")
# keys a warm Lambda caches per process: the engine runs every handler in one process,
# so workers, reducer and finalize share one copy where AWS reads one per function
SHARED_CACHE = ("/spec.json", "/meta.json", "/validation.npz")


@pytest.fixture
def s3_calls(monkeypatch):
    """(operation, key) of every S3 call the handlers make (they run off the main thread;
    the test's own uploads and status polls run on it)."""
    calls: list[tuple[str, str]] = []
    lock = threading.Lock()
    original = BaseClient._make_api_call

    def counting(self, operation_name, api_params):
        if (
            self.meta.service_model.service_name == "s3"
            and threading.current_thread() is not threading.main_thread()
        ):
            with lock:
                calls.append((operation_name, api_params.get("Key") or api_params.get("Prefix")))
        return original(self, operation_name, api_params)

    monkeypatch.setattr(BaseClient, "_make_api_call", counting)

    # on the engine the handlers reach moto's S3 backend directly (InProcessS3Client)
    def recording(operation: str, method):
        def call(self, **kwargs):
            with lock:
                calls.append((operation, kwargs.get("Key") or kwargs.get("Prefix")))
            return method(self, **kwargs)

        return call

    for operation, name in OPERATIONS.items():
        method = getattr(InProcessS3Client, name)
        monkeypatch.setattr(InProcessS3Client, name, recording(operation, method))
    return calls


def test_round_structure_matches_a_real_job(stack, engine, s3_calls, monkeypatch):
    # status.json every round, so the status writes are exact (the model's upper bound)
    monkeypatch.setattr(steps, "STATUS_INTERVAL_SECONDS", 0.0)
    workers, rounds, segment = 3, 5, 2
    doc = job_doc(
        "houses-linear.json",
        job_id="cost-structure",
        training={"rounds": rounds, "workers": workers, "segment_rounds": segment},
    )
    before = {f: engine.invocations(f) for f in FUNCTIONS}
    status, _ = run_job(stack, doc, "houses.csv")
    assert status["round"] == rounds
    executions = executions_of(stack, doc["job_id"])
    transitions = 0
    for execution in executions:
        stack.wait_execution(execution["executionArn"], poll_seconds=0.05, timeout=60)
        events = stack.sfn.get_execution_history(
            executionArn=execution["executionArn"], maxResults=1000
        )["events"]
        transitions += sum(1 for e in events if e["type"].endswith("StateEntered"))
    invoked = {f: engine.invocations(f) - before[f] for f in FUNCTIONS}

    # houses.csv: 5 parameters x 8 bytes x 3 workers travel inline (the workers' rule)
    s = round_structure(workers, inline_gradients=True, status_writes_per_round=1.0)
    assert s.orchestration == "express"
    segments = -(-rounds // segment)
    assert len(executions) == 1
    assert transitions == s.transitions(rounds, segments)
    children = segments_of(stack, doc["job_id"])
    assert len(children) == segments * s.express_requests_per_segment
    # inside the segments: Map + W workers + Reduce + Choice per round, and SegmentDone
    # once per segment (billed as Express duration, not per transition)
    entered = 0
    for child in children:
        events = stack.sfn.get_execution_history(
            executionArn=child["executionArn"], maxResults=1000
        )["events"]
        entered += sum(1 for e in events if e["type"].endswith("StateEntered"))
    assert entered == (workers + 3) * rounds + len(children)
    assert invoked == {
        "PrepareFunction": 1,
        "WorkerFunction": s.worker_invocations_per_round * rounds,
        "ReduceFunction": s.reduce_invocations_per_round * rounds,
        "FinalizeFunction": 1,
    }
    ops = Counter(op for op, _ in s3_calls)
    gets = sum(ops[o] for o in GET_OPS)
    puts = sum(ops[o] for o in PUT_OPS)
    assert set(ops) <= GET_OPS | PUT_OPS, ops
    shared = sum(1 for op, key in s3_calls if op in GET_OPS and key.endswith(SHARED_CACHE))
    model_gets, model_puts = s.s3_requests(rounds, segments)
    # in AWS: spec + meta per worker, per reducer and for finalize, + validation twice
    model_shared = 2 * workers + 2 + 2 + 2
    assert 3 <= shared <= model_shared
    # and each worker container GETs the round's params, which on the engine the reducer
    # that wrote them serves from the process they share
    params_read = sorted(k for op, k in s3_calls if op in GET_OPS and "/params/" in k)
    prefix = f"jobs/{doc['job_id']}/params"
    assert params_read == [f"{prefix}/0.npy", f"{prefix}/{rounds}.npy"]  # reducer, finalize
    assert gets - shared == model_gets - model_shared - workers * rounds
    assert puts == model_puts

    # cost.json: the same counts as the estimate of the same spec; durations differ
    cost = stack.store.get_json(cost_key(doc["job_id"]))
    data = load_dataset(
        data_path("houses.csv").read_bytes(),
        source="houses.csv",
        fmt=None,
        label="price",
        task="regression",
    )
    shape = JobShape.from_spec(parse_spec(doc), len(data.y), data.X.shape[1], 1)
    assert (shape.rounds, shape.segments, shape.workers) == (rounds, segments, workers)
    # a round estimated at >= 1 s writes status.json every round, as this job did
    est = estimate(shape, durations=DurationModel(s3_request_s=1.0)).to_json()
    assert cost["basis"] == "measured" and est["basis"] == "estimate"
    assert (cost["rounds"], cost["segments"]) == (rounds, segments)
    by_item = {(line["item"], line["unit"]): line for line in cost["lines"]}
    for line in est["lines"]:
        if line["unit"] == "GB-s":
            continue
        assert by_item[line["item"], line["unit"]]["total"] == pytest.approx(line["total"])
    measured = by_item["Lambda compute", "GB-s"]
    assert measured["total"] > 0 and measured["total"] != pytest.approx(est["lines"][0]["total"])
    assert cost["details"]["invocations"] == {
        "prepare": 1,
        "worker": workers * rounds,
        "reduce": rounds,
        "finalize": 1,
    }
    assert cost["dollars"] == pytest.approx(sum(line["dollars"] for line in cost["lines"]))
    # each function at its own memory: the template's, passed to the functions
    assert cost["details"]["memory_mb_by_function"] == {
        "prepare": 3008,
        "worker": 1769,
        "reduce": 1769,
        "finalize": 1769,
    }
    assert status["state"] == "SUCCEEDED"


def test_train_prints_the_cost_and_status_shows_it(engine, tmp_path, capsys):
    from lambdagrad.cli import main

    stack_flags = ["--stack", engine.stack_name, "--region", engine.region]
    train = [
        *("train", str(data_path("houses.csv")), "--label", "price", "--rounds", "3"),
        *("--workers", "2", "--job-id", "cost-cli", "--out", str(tmp_path / "run"), "--quiet"),
    ]
    assert main([*train, *stack_flags]) == 0
    out = capsys.readouterr().out
    assert "AWS cost of what ran: $" in out and "(3 rounds" in out
    assert main(["status", "cost-cli", *stack_flags]) == 0
    out = capsys.readouterr().out
    assert "SUCCEEDED" in out and "AWS cost (measured)" in out and "Lambda compute" in out
    assert main(["status", "cost-cli", "--json", *stack_flags]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["cost"]["rounds"] == 3 and status["cost"]["dollars"] > 0
