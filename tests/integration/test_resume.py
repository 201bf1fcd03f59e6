"""`lambdagrad resume` through the real state machine: after a killed `lambdagrad train`
process, after a failed and after a stopped execution, on the embedded engine and on a stack
by name -- each ending with the parameters of an uninterrupted run, bit for bit. And two
jobs at once on one engine, and a job id that exists."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from lambdagrad import transfer
from lambdagrad.artifact import TrainedModel
from lambdagrad.cli import main
from lambdagrad.client import JobFailedError
from lambdagrad.local import moto_fixes
from lambdagrad.spec import parse_spec
from lambdagrad.store import JobKeys

from tests.conftest import EVENTS, ROOT, job_doc
from tests.reference import reference_train

ROUNDS = 100
FLAGS = [
    "--label",
    "price",
    "--rounds",
    str(ROUNDS),
    "--batch-size",
    "16",
    "--workers",
    "2",
    "--segment-rounds",
    "30",
]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """300 rows of houses.csv: quick rounds."""
    path = tmp_path_factory.mktemp("data") / "houses300.csv"
    path.write_text("".join((EVENTS / "data" / "houses.csv").read_text().splitlines(True)[:301]))
    return path


def stack_flags(engine) -> list[str]:
    return ["--stack", engine.stack_name, "--region", engine.region]


def params_of(run_dir: Path) -> np.ndarray:
    return TrainedModel.load(run_dir).params


@pytest.fixture(scope="module")
def uninterrupted(engine, small, tmp_path_factory) -> np.ndarray:
    """The final parameters of the same spec, trained in one go."""
    out = tmp_path_factory.mktemp("solo")
    args = ["train", str(small), *FLAGS, "--job-id", "solo", "--out", str(out), "--quiet"]
    assert main([*args, *stack_flags(engine)]) == 0
    engine.reset()
    params = params_of(out)
    # and it is the plain numpy loop's result for the same spec
    spec = parse_spec(json.loads((out / "model.json").read_text())["spec"])
    np.testing.assert_array_equal(params, reference_train(spec, small.read_bytes(), small.name)[0])
    return params


def wait_for(predicate, timeout: float = 300, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def resumed_from(store, job_id: str) -> int:
    return store.get_json(f"jobs/{job_id}/resumes/1.json")["round"]


# ---- a killed process -----------------------------------------------------------------
def test_killed_train_process_resumes_bit_identical(small, uninterrupted, tmp_path, capsys):
    out = tmp_path / "run"
    metrics = out / "state" / "DataBucket" / "jobs" / "killed" / "metrics"
    cmd = [sys.executable, "-m", "lambdagrad.cli", "train", str(small), *FLAGS]
    cmd += ["--job-id", "killed", "--out", str(out), "--quiet"]
    log = tmp_path / "train.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ), stdout=sink, stderr=sink)
        try:

            def some_rounds() -> bool:
                assert proc.poll() is None, f"train ended early: {log.read_text()}"
                return metrics.is_dir() and len(list(metrics.glob("*.json"))) >= 10

            wait_for(some_rounds, what="10 rounds of checkpoints on disk")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.json").exists()
    assert len(list(metrics.glob("*.json"))) < ROUNDS
    assert not list((out / "state").rglob("grads/*"))  # scratch is not mirrored

    # a resume of it was killed a moment ago, between its claim and its execution: locally
    # that is no race (the run directory's lock keeps one process), so it holds nothing back
    claims = metrics.parent / "resumes"
    claims.mkdir()
    (claims / "1.json").write_text(json.dumps({"round": 3, "n": 1, "claimed_at": time.time()}))
    assert main(["resume", "killed", "--out", str(out), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rounds"] == ROUNDS
    claim = json.loads((claims / "2.json").read_text())
    assert 10 <= claim["round"] < ROUNDS
    np.testing.assert_array_equal(params_of(out), uninterrupted)
    # the history has every round once, across the kill
    rounds = [line.split(",")[0] for line in (out / "history.csv").read_text().splitlines()[1:]]
    assert rounds == [str(r) for r in range(1, ROUNDS + 1)]

    # finished: nothing left to resume
    assert main(["resume", "killed", "--out", str(out), "--quiet"]) == 1
    assert "job 'killed' already finished" in capsys.readouterr().err


# ---- a failed and a stopped execution, resumed on a stack by name ----------------------
def start_job(stack, small: Path, job_id: str, wait: bool = True) -> None:
    doc = {
        "job_id": job_id,
        "dataset": {"uri": stack.upload_dataset(small), "label": "price"},
        "training": {"rounds": ROUNDS, "batch_size": 16, "workers": 2, "segment_rounds": 30},
    }
    stack.start(parse_spec(doc))
    if wait:
        wait_for(
            lambda: stack.store.exists(JobKeys(job_id).metrics(5)), what=f"round 5 of {job_id}"
        )


def test_resume_after_a_worker_failed_past_its_retries(
    engine, stack, small, uninterrupted, tmp_path, capsys
):
    # shard 1 of round 7 times out on its first try and its one retry (a timeout is retried
    # once; waits scaled to 0): the Map fails, RecordFailure marks the job
    previous = engine.set_retry_delay_scale(0.0)
    try:
        match = {"job_id": "failed-job", "round": 7, "shard": 1}
        engine.fail_matching("WorkerFunction", match, times=2)
        start_job(stack, small, "failed-job", wait=False)
        with pytest.raises(JobFailedError, match=r"Sandbox\.Timedout"):
            stack.follow("failed-job", poll_seconds=0.05, timeout=300)
    finally:
        moto_fixes.set_retry_delay_scale(previous)
    assert not stack.store.exists(JobKeys("failed-job").model_json)

    # another process has just claimed a resume and not started its execution yet: this one
    # stops before starting a second (the job would train twice at once, billed twice)
    from lambdagrad.resume import claim_resume, continuation_input

    start = continuation_input(stack.store, "failed-job")
    racing = claim_resume(stack.store, "failed-job", start)
    refused = tmp_path / "refused"
    rc = main(["resume", "failed-job", "--out", str(refused), "--quiet", *stack_flags(engine)])
    assert rc == 1 and not refused.exists()
    err = capsys.readouterr().err
    assert "job 'failed-job' is being resumed by another process right now" in err
    assert f"(resume 1, execution {racing})" in err
    # ... which died before starting it: once its claim is old, resuming goes ahead
    key = JobKeys("failed-job").prefix + "resumes/1.json"
    stack.store.put_json(key, {**stack.store.get_json(key), "claimed_at": 0.0})

    out = tmp_path / "failed"
    rc = main(["resume", "failed-job", "--out", str(out), "--quiet", *stack_flags(engine)])
    assert rc == 0, capsys.readouterr().err
    assert resumed_from(stack.store, "failed-job") == 7
    np.testing.assert_array_equal(params_of(out), uninterrupted)


def test_resume_after_a_stopped_execution(engine, stack, small, uninterrupted, tmp_path, capsys):
    start_job(stack, small, "stopped-job")
    flags = ["--out", str(tmp_path / "stopped"), "--quiet", *stack_flags(engine)]
    # still running: refused
    assert main(["resume", "stopped-job", *flags]) == 1
    assert "job 'stopped-job' is still running" in capsys.readouterr().err
    # the train execution (its Express segment runs on until the segment ends)
    machine = stack.state_machine_arn.rsplit(":", 1)[-1]
    running = [a for a in stack.running_executions("stopped-job") if f":{machine}:" in a]
    assert len(running) == 1
    stack.sfn.stop_execution(executionArn=running[0])
    wait_for(lambda: not stack.running_executions("stopped-job"), what="the stop")

    assert main(["resume", "stopped-job", *flags]) == 0
    assert 5 <= resumed_from(stack.store, "stopped-job") < ROUNDS
    np.testing.assert_array_equal(params_of(tmp_path / "stopped"), uninterrupted)


def test_resume_refuses_a_job_without_checkpoints(engine, stack, tmp_path, capsys):
    flags = ["--out", str(tmp_path / "x"), "--quiet"]
    assert main(["resume", "never-ran", *flags, *stack_flags(engine)]) == 1
    assert "job 'never-ran' has no checkpoint" in capsys.readouterr().err
    # on the embedded engine, without the run directory
    assert main(["resume", "never-ran", *flags]) == 1
    assert "no local checkpoints of job never-ran" in capsys.readouterr().err


def test_a_local_resume_names_the_run_directory_not_the_engines_bucket(tmp_path, capsys):
    out = tmp_path / "run"
    houses = str(EVENTS / "data" / "houses.csv")
    diverging = ["--label", "price", "--optimizer", "sgd", "--lr", "900", "--rounds", "300"]
    assert main(["train", houses, *diverging, "--job-id", "dv", "--out", str(out), "--quiet"]) == 1
    capsys.readouterr()
    # a job the run directory does not hold is named as such before anything else about it
    (out / "model.json").write_text(json.dumps({"job_id": "someone"}))
    assert main(["resume", "other", "--out", str(out), "--quiet"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: no local checkpoints of job other in {out / 'state'}/ (it holds job dv): give "
        "the --out it was trained with, or --stack NAME for a job on a deployed stack"
    )
    (out / "model.json").unlink()
    # a damaged record is named where it is on disk: the engine's bucket is gone by now
    spec = out / "state" / "DataBucket" / "jobs" / "dv" / "spec.json"
    spec.write_text("{")
    assert main(["resume", "dv", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {spec} is not valid JSON"), err
    assert "s3://" not in err


# ---- isolation ------------------------------------------------------------------------
def job_files(store, job_id: str) -> dict[str, object]:
    """Every object of a job by its key below the job's prefix, comparable across runs."""
    prefix = JobKeys(job_id).prefix
    files: dict[str, object] = {}
    for key in store.list_keys(prefix):
        rel = key[len(prefix) :]
        if rel.endswith(".npz"):
            files[rel] = {k: v.tobytes() for k, v in store.get_arrays(key).items()}
        elif rel.endswith(".npy"):
            files[rel] = store.get_bytes(key)
        elif rel.startswith("metrics/"):
            record = store.get_json(key)  # without times (finished_at, lambda_seconds)
            files[rel] = {k: record[k] for k in ("round", "train_loss", "validation_loss")}
        else:
            files[rel] = None  # documents with times and execution names: presence only
    return files


def test_two_jobs_at_once_keep_to_their_own_keys(stack, monkeypatch):
    docs = {
        "iso-a": job_doc("houses-linear.json", training={"rounds": 15, "workers": 2}),
        "iso-b": job_doc(
            "iris-softmax.json", training={"rounds": 15, "workers": 3, "batch_size": 10}
        ),
    }
    data = {"iso-a": "houses.csv", "iso-b": "iris.csv"}

    def run(names: list[str], suffix: str) -> None:
        for name in names:
            doc = {**docs[name], "job_id": name + suffix}
            doc["dataset"] = {
                **doc["dataset"],
                "uri": stack.upload_dataset(EVENTS / "data" / data[name]),
            }
            stack.start(parse_spec(doc))
        for name in names:
            assert (
                stack.follow(name + suffix, poll_seconds=0.05, timeout=300)["state"] == "SUCCEEDED"
            )

    # gradients via S3 too, so that the scratch keys of both jobs are compared as well
    monkeypatch.setattr(transfer, "INLINE_BUDGET_BYTES", 0)
    run(["iso-a", "iso-b"], "")  # at once
    run(["iso-a"], "-solo")
    run(["iso-b"], "-solo")
    for name in docs:
        together, alone = job_files(stack.store, name), job_files(stack.store, name + "-solo")
        assert sorted(together) == sorted(alone)
        assert together == alone, name
        assert any(k.startswith("grads/") for k in together)


# ---- a job id that exists -------------------------------------------------------------
def test_a_job_id_that_exists_is_refused_not_overwritten(small, tmp_path, capsys):
    """On the embedded engine the run directory brings the first job's bucket back, and
    with it the job's claim: the CLI sees it and refuses the second start before the engine
    starts (Prepare's conditional write on the claim would refuse it there too:
    tests/unit/test_steps.py)."""
    out = tmp_path / "dup"
    args = ["train", str(small), "--label", "price", "--rounds", "5", "--job-id", "dup"]
    args += ["--out", str(out), "--quiet"]
    assert main(args) == 0
    model = (out / "model.npz").read_bytes()
    spec = out / "state" / "DataBucket" / "jobs" / "dup" / "spec.json"
    spec_before = spec.read_bytes()
    capsys.readouterr()

    assert main([*args, "--overwrite", "--lr", "0.2"]) == 1
    err = capsys.readouterr().err
    assert "job 'dup' already ran in" in err and "give --job-id NEW" in err
    assert (out / "model.npz").read_bytes() == model
    assert spec.read_bytes() == spec_before
