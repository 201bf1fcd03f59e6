"""Faults on the embedded engine: chaos, crashes after writing, stragglers, divergence.

The yardstick is deterministic replay: a job that survives injected faults ends with the
parameters -- bit for bit -- of the same job run without them. Retry waits are scaled to
zero here (the engine's ``retry_delay_scale``), so faults cost no sleeping.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from lambdagrad.client import JobFailedError
from lambdagrad.local import chaos as chaos_faults
from lambdagrad.local import moto_fixes
from lambdagrad.local.invoker import get_invoker
from lambdagrad.registry import pointer_key
from lambdagrad.store import JobKeys

from tests.conftest import job_doc
from tests.integration.test_training import reference_params, run_job

#: A job with optimizer state (Adam), so a step applied twice could not go unnoticed.
GROUPS = {
    "optimizer": {"name": "adam", "learning_rate": 0.05},
    "training": {"rounds": 6, "workers": 3, "batch_size": 32},
}


@pytest.fixture
def no_retry_waits(engine):
    previous = engine.set_retry_delay_scale(0.0)
    yield
    moto_fixes.set_retry_delay_scale(previous)


def model_arrays(stack, job_id: str) -> dict[str, np.ndarray]:
    npz = stack.model_files(job_id)["model.npz"]
    with np.load(io.BytesIO(npz), allow_pickle=False) as f:
        return {name: f[name] for name in f.files}


def test_chaos_at_20_percent_gives_a_bit_identical_model(
    engine, stack, no_retry_waits, record_property
):
    calm_doc = job_doc("houses-linear.json", job_id="calm", **GROUPS)
    calm, calm_params = run_job(stack, calm_doc, "houses.csv")
    assert calm["state"] == "SUCCEEDED"

    doc = job_doc("houses-linear.json", job_id="chaotic", **GROUPS)
    chaos = engine.start_chaos(0.2, seed=3)
    # and, whatever chaos draws, the reducer crashes once after writing checkpoint 3 and
    # times out once after writing checkpoint 5 (its retries find them committed)
    engine.fail_matching("ReduceFunction", {"round": 2}, chaos_faults.crash(), times=1)
    engine.fail_matching("ReduceFunction", {"round": 4}, chaos_faults.timeout(True), times=1)
    workers, reducers = engine.invocations("WorkerFunction"), engine.invocations("ReduceFunction")
    status, params = run_job(stack, doc, "houses.csv")
    engine.stop_chaos()
    workers = engine.invocations("WorkerFunction") - workers
    reducers = engine.invocations("ReduceFunction") - reducers

    assert status["state"] == "SUCCEEDED" and status["round"] == calm["round"] == 6
    np.testing.assert_array_equal(params, calm_params)
    np.testing.assert_array_equal(params, reference_params(doc, "houses.csv"))
    calm_model, model = model_arrays(stack, "calm"), model_arrays(stack, "chaotic")
    assert calm_model.keys() == model.keys()
    for name in model:
        assert np.array_equal(model[name], calm_model[name]), name
    for r in range(1, 7):  # every checkpoint, optimizer state included, is the calm one
        a, b = JobKeys("calm"), JobKeys("chaotic")
        assert stack.store.get_bytes(a.params(r)) == stack.store.get_bytes(b.params(r))
        assert stack.store.get_bytes(a.optimizer(r)) == stack.store.get_bytes(b.optimizer(r))

    injected = chaos.injected + 2
    assert chaos.invocations == workers + reducers - 2  # the two targeted faults bypass chaos
    assert workers + reducers == 6 * 3 + 6 + injected  # one extra invocation per fault
    assert all(chaos.counts[kind] >= 1 for kind in chaos_faults.FAULT_KINDS), chaos.counts
    assert 0.1 <= chaos.injected / chaos.invocations <= 0.35
    print(f"\n{chaos.summary()}; +2 targeted reducer faults; {injected} survived")
    record_property("faults_injected", injected)
    record_property("faults_by_kind", json.dumps(chaos.counts))


def test_a_segment_cut_short_is_run_again_from_its_first_round_and_changes_nothing(
    engine, stack, no_retry_waits, monkeypatch
):
    """AWS ends an Express segment at 5 minutes whatever it is doing (say, a round of hung
    attempts); the training execution's RunSegment then fails with States.TaskFailed and
    starts the segment once more from its first round, whose committed rounds are not
    stepped twice. Here the running segment is stopped as round 3's first worker starts."""
    uncut, uncut_params = run_job(
        stack, job_doc("houses-linear.json", job_id="uncut", **GROUPS), "houses.csv"
    )
    worker, invoker = engine.function_name("WorkerFunction"), get_invoker()
    segments = stack.outputs["SegmentStateMachineArn"]
    admit, cut = invoker.admit, []

    def cut_the_segment_at_round_3(function_name, body=None):
        event = json.loads(body) if isinstance(body, (str, bytes)) else body or {}
        if function_name == worker and (event["round"], event["shard"]) == (3, 0) and not cut:
            running = stack.sfn.list_executions(stateMachineArn=segments, statusFilter="RUNNING")
            for execution in running["executions"]:
                stack.sfn.stop_execution(
                    executionArn=execution["executionArn"], error="States.Timeout"
                )
                cut.append(execution["executionArn"])
        return admit(function_name, body)

    monkeypatch.setattr(invoker, "admit", cut_the_segment_at_round_3)
    status, params = run_job(
        stack, job_doc("houses-linear.json", job_id="cut", **GROUPS), "houses.csv"
    )

    assert len(cut) == 1  # (moto ends a Map stopped mid-iteration FAILED, not ABORTED)
    assert stack.sfn.describe_execution(executionArn=cut[0])["status"] in ("ABORTED", "FAILED")
    assert status["state"] == "SUCCEEDED" and status["round"] == uncut["round"] == 6
    np.testing.assert_array_equal(params, uncut_params)
    for r in range(1, 7):
        a, b = JobKeys("uncut"), JobKeys("cut")
        assert stack.store.get_bytes(a.params(r)) == stack.store.get_bytes(b.params(r))
        assert stack.store.get_bytes(a.optimizer(r)) == stack.store.get_bytes(b.optimizer(r))
    (execution,) = [
        e
        for e in stack.sfn.list_executions(stateMachineArn=stack.state_machine_arn)["executions"]
        if e["name"] == "cut"
    ]
    events = stack.sfn.get_execution_history(
        executionArn=execution["executionArn"], maxResults=1000
    )["events"]
    failed = [e["taskFailedEventDetails"]["error"] for e in events if e["type"] == "TaskFailed"]
    assert failed == ["States.TaskFailed"]
    started = [e for e in events if e["type"] == "TaskStateEntered"]
    assert [e["stateEnteredEventDetails"]["name"] for e in started].count("RunSegment") == 1


def test_a_failure_that_cannot_be_recorded_still_fails_the_execution_by_its_name(
    engine, stack, no_retry_waits
):
    """RecordFailure failing on every attempt (here: timing out before it writes) must not
    put its own error in place of the job's: the execution fails with the original name."""
    engine.fail_matching("RecordFailureFunction", {})  # times out before it writes, always
    doc = job_doc("houses-linear.json", job_id="unrecorded", training={"batch_size": 5000})
    with pytest.raises(JobFailedError) as err:
        run_job(stack, doc, "houses.csv")
    assert err.value.error == "SpecError", err.value
    assert "training.batch_size: 5000 is larger than the 1800 training rows" in err.value.message
    assert engine.invocations("RecordFailureFunction") == 7  # 1 + 6 retries, then caught


def test_straggler_fails_the_job_and_keeps_a_resumable_checkpoint(engine, stack, no_retry_waits):
    name = "straggle-model"
    pointer = {  # another job's model, as the registry writes it
        "name": name,
        "job_id": "someone-else",
        "model_key": "jobs/someone-else/model/model.json",
        "npz_key": "jobs/someone-else/model/model.npz",
        "registered_at": 0.0,
        "version": "v1",
    }
    stack.store.put_json(pointer_key(name), pointer)
    before = stack.store.get_bytes(pointer_key(name))
    doc = job_doc("houses-linear.json", job_id="straggler", output={"model_name": name}, **GROUPS)
    engine.fail_matching("WorkerFunction", {"round": 3, "shard": 1})  # times out, always
    calls = engine.invocations("WorkerFunction")
    with pytest.raises(JobFailedError) as err:
        run_job(stack, doc, "houses.csv")
    assert err.value.error == "Sandbox.Timedout"
    assert "Task timed out after" in err.value.message
    # rounds 0-2: 3 workers each; round 3: shards 0 and 2 once, shard 1 on 1 + 1 retry (a
    # timeout is retried once: a segment has 5 minutes in all)
    assert engine.invocations("WorkerFunction") - calls == 3 * 3 + 2 + 2

    keys = JobKeys("straggler")
    status = stack.status("straggler")
    assert status["state"] == "FAILED" and status["error"] == "Sandbox.Timedout"
    assert status["round"] == 3
    assert status["checkpoint"] == {
        "round": 3,
        "params": keys.params(3),
        "optimizer": keys.optimizer(3),
    }
    for key in (keys.params(3), keys.optimizer(3), keys.metrics(3)):
        assert stack.store.exists(key), key
    for key in (keys.params(4), keys.metrics(4), keys.model_json, keys.model_npz):
        assert not stack.store.exists(key), key
    # the checkpoint is the one an uninterrupted 3-round run ends with
    three = job_doc(
        "houses-linear.json",
        job_id="straggler",
        **{**GROUPS, "training": {**GROUPS["training"], "rounds": 3}},
    )
    np.testing.assert_array_equal(
        stack.store.get_array(keys.params(3)), reference_params(three, "houses.csv")
    )
    assert stack.store.get_bytes(pointer_key(name)) == before


def test_divergence_keeps_the_last_finite_checkpoint(stack):
    doc = job_doc(
        "houses-linear.json",
        job_id="diverge-fast",
        dataset={"standardize": False},
        optimizer={"name": "sgd", "learning_rate": 1000.0},
        training={"batch_size": "full", "rounds": 200, "workers": 2},
    )
    with pytest.raises(JobFailedError) as err:
        run_job(stack, doc, "houses.csv")
    assert err.value.error == "ModelDiverged"
    message = err.value.message
    assert "smaller learning rate (now 1000.0)" in message and "clip_norm" in message
    status = stack.status("diverge-fast")
    last = status["round"]
    assert status["state"] == "FAILED" and status["error"] == "ModelDiverged"
    assert f"the last finite parameters are round {last}" in message
    keys = JobKeys("diverge-fast")
    assert status["checkpoint"]["round"] == last > 0
    assert np.all(np.isfinite(stack.store.get_array(keys.params(last))))
    state = stack.store.get_arrays(keys.optimizer(last))
    assert all(np.all(np.isfinite(v)) for v in state.values())
    for key in (keys.params(last + 1), keys.metrics(last + 1), keys.model_json):
        assert not stack.store.exists(key), key


def test_train_chaos_flag(engine, tmp_path, capsys):
    """``lambdagrad train --chaos`` on the embedded engine: survives, says what it injected;
    refused with --stack before anything starts."""
    from lambdagrad.cli import main

    from tests.conftest import EVENTS, ROOT

    base = ["train", str(EVENTS / "data" / "houses.csv"), "--label", "price", "--quiet"]
    assert main([*base, "--chaos", "0.2", "--stack", "prod"]) == 1
    assert "embedded engine only" in capsys.readouterr().err
    assert main([*base, "--chaos", "1.5"]) == 1
    assert "not a fraction" in capsys.readouterr().err

    out = tmp_path / "run"
    # The faults are a hash of the job id (among others), and the default id has the time in
    # it: a fixed id makes which invocations fail the same on every run (some 0.5 % of the
    # timed ids drew no fault in the 15+ invocations).
    args = [*base, "--rounds", "5", "--workers", "2", "--out", str(out), "--json"]
    args += ["--job-id", "chaos-flag"]
    rc = main([*args, "--chaos", "0.3", "--template", str(ROOT / "template.yaml")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    chaos = summary["chaos"]
    assert chaos["survived"] and chaos["invocations"] >= 5 * 3
    assert sum(chaos[k] for k in chaos_faults.FAULT_KINDS) >= 1
    assert (out / "model.npz").is_file()
    assert moto_fixes.retry_delay_scale() == 1.0  # the CLI's engine put the real waits back
