"""Sweeps, serving and upload-started jobs from the CLI, against a stack by name (moto)."""

from __future__ import annotations

import json

import numpy as np
from lambdagrad.cli import main

from tests.conftest import EVENTS

HOUSES = EVENTS / "data" / "houses.csv"


def stack_flags(engine) -> list[str]:
    return ["--stack", engine.stack_name, "--region", engine.region]


def test_sweep_finds_the_lowest_validation_loss_and_keeps_diverged_points(engine, tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = main(
        [
            "sweep",
            str(HOUSES),
            "--label",
            "price",
            "--lr",
            "0.01,0.05,1000",
            "--batch-size",
            "32,full",
            "--rounds",
            "50",
            "--workers",
            "2",
            "--concurrency",
            "3",
            "--out",
            str(out),
            "--json",
            "--sweep-id",
            "houses-grid",
            *stack_flags(engine),
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = summary["results"]
    assert len(results) == 6
    diverged = [r for r in results if r["status"] == "DIVERGED"]
    assert {r["params"]["optimizer.learning_rate"] for r in diverged} == {1000.0}
    succeeded = [r for r in results if r["status"] == "SUCCEEDED"]
    best = min(succeeded, key=lambda r: r["validation_loss"])
    assert summary["best"]["lr"] == best["params"]["optimizer.learning_rate"]
    assert summary["best"]["batch_size"] == best["params"]["training.batch_size"]
    assert summary["best"]["validation_loss"] == best["validation_loss"]
    for name in ("result.json", "curves.png", "heatmap.png", "best/model.json", "best/loss.png"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best_model = json.loads((out / "best" / "model.json").read_text())
    assert best_model["job_id"] == best["job_id"]
    # the sweep's --out given where a run directory goes: pointed at its best/
    assert main(["predict", str(out), str(HOUSES)]) == 1
    assert error_line(capsys.readouterr().err) == (
        f"error: {out} is a sweep's output: its best model is {out / 'best'}"
    )
    engine.reset()


def test_registered_model_is_served_by_the_predict_function(engine, tmp_path, capsys):
    flags = stack_flags(engine)
    rc = main(
        [
            "train",
            str(HOUSES),
            "--label",
            "price",
            "--rounds",
            "30",
            "--quiet",
            "--out",
            str(tmp_path / "m"),
            "--model-name",
            "houses",
            *flags,
        ]
    )
    assert rc == 0
    capsys.readouterr()
    assert main(["models", "list", "--json", *flags]) == 0
    (model,) = [m for m in json.loads(capsys.readouterr().out) if m["name"] == "houses"]
    preds = tmp_path / "served.csv"
    assert (
        main(["predict", "--model-name", "houses", str(HOUSES), "--out", str(preds), *flags]) == 0
    )
    served = [float(v) for v in preds.read_text().split()[1:]]
    local = tmp_path / "local.csv"
    assert main(["predict", str(tmp_path / "m"), str(HOUSES), "--out", str(local)]) == 0
    # the same model and features; only BLAS blocking (chunks of 1000 rows) may differ
    np.testing.assert_allclose(
        served, [float(v) for v in local.read_text().split()[1:]], rtol=1e-12
    )
    assert len(served) == 2000

    # promote another job under the same name: the function serves it from the next call
    rc = main(
        [
            "train",
            str(HOUSES),
            "--label",
            "price",
            "--rounds",
            "3",
            "--quiet",
            "--out",
            str(tmp_path / "m2"),
            "--job-id",
            "houses-short",
            *flags,
        ]
    )
    assert rc == 0
    assert main(["models", "promote", "houses", "houses-short", *flags]) == 0
    capsys.readouterr()
    assert main(["predict", "--model-name", "houses", str(HOUSES), *flags]) == 0
    again = [float(v) for v in capsys.readouterr().out.split()[1:]]
    assert again != served and model["job_id"] != "houses-short"
    assert main(["predict", "--model-name", "nope", str(HOUSES), *flags]) == 1
    assert "no model named 'nope'" in capsys.readouterr().err
    engine.reset()


def test_predict_proba_from_the_stack_matches_the_run_directory(engine, tmp_path, capsys):
    iris = EVENTS / "data" / "iris.csv"
    flags = stack_flags(engine)
    train = ["train", str(iris), "--label", "species", "--model", "softmax", "--rounds", "20"]
    out = ["--quiet", "--out", str(tmp_path / "m"), "--model-name", "iris", "--job-id", "iris-p"]
    assert main([*train, *out, *flags]) == 0
    served, local = tmp_path / "served.csv", tmp_path / "local.csv"
    predict = ["predict", "--proba", "--out"]
    assert main([*predict, str(served), "--model-name", "iris", str(iris), *flags]) == 0
    assert main([*predict, str(local), str(tmp_path / "m"), str(iris)]) == 0
    rows = [line.split(",") for line in served.read_text().splitlines()]
    assert rows[0] == ["prediction", "p_setosa", "p_versicolor", "p_virginica"]
    assert len(rows) == 151 and {r[0] for r in rows[1:]} <= {"setosa", "versicolor", "virginica"}
    mine = [line.split(",") for line in local.read_text().splitlines()]
    assert [r[0] for r in mine] == [r[0] for r in rows]
    np.testing.assert_allclose(
        [[float(v) for v in r[1:]] for r in rows[1:]],
        [[float(v) for v in r[1:]] for r in mine[1:]],
        rtol=1e-12,
    )
    capsys.readouterr()
    engine.reset()


def test_a_model_promoted_while_predict_runs_stops_it(engine, tmp_path, capsys, monkeypatch):
    """The file's columns are put in the order of the model the name named when predict
    began; the rows after a promotion were scored by another model, silently."""
    from lambdagrad.client import StackClient
    from lambdagrad.registry import promote

    flags = stack_flags(engine)
    train = ["train", str(HOUSES), "--label", "price", "--rounds", "3", "--quiet", *flags]
    assert main([*train, "--out", str(tmp_path / "a"), "--job-id", "ha", "--model-name", "h"]) == 0
    assert main([*train, "--out", str(tmp_path / "b"), "--job-id", "hb"]) == 0
    calls = []
    served = StackClient.predict

    def promoted_meanwhile(self, name, instances):
        calls.append(len(instances))
        if len(calls) == 2:  # another user promotes between two requests
            promote(self.store, "h", "hb")
        return served(self, name, instances)

    monkeypatch.setattr(StackClient, "predict", promoted_meanwhile)
    out = tmp_path / "p.csv"
    capsys.readouterr()
    assert main(["predict", "--model-name", "h", str(HOUSES), "--out", str(out), *flags]) == 1
    err = capsys.readouterr().err
    row = calls[0] + 1
    assert f"model 'h' was promoted to job hb while predicting (from row {row} of the file" in err
    assert "it was job ha): nothing was written" in err and not out.exists()
    engine.reset()


def test_a_file_submitted_twice_at_once_is_two_jobs_under_ascii_keys(
    engine, tmp_path, capsys, monkeypatch
):
    from datetime import UTC, datetime

    from lambdagrad import cli

    class Frozen(datetime):  # both submits in the same second
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)

    monkeypatch.setattr(cli, "datetime", Frozen)
    flags = stack_flags(engine)
    spec = tmp_path / "jöb é.json"
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    doc["training"] = {"rounds": 3, "workers": 2}
    spec.write_text(json.dumps(doc))
    ids = []
    for _ in range(2):
        assert main(["submit", str(spec), "--data", str(HOUSES), "--quiet", *flags]) == 0
        ids.append(capsys.readouterr().out.split()[0])
    assert ids[0] != ids[1], ids
    listing = engine.client("s3").list_objects_v2(
        Bucket=engine.outputs["BucketName"], Prefix="jobs/incoming/j-b-"
    )
    keys = [o["Key"] for o in listing["Contents"] if "20261128-120000" in o["Key"]]
    assert len(keys) == 2 and all(k.isascii() and k.startswith("jobs/incoming/j-b-") for k in keys)
    for job_id in ids:
        assert main(["status", job_id, "--follow", "--json", *flags]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["state"] == "SUCCEEDED"
    engine.reset()


def test_submit_and_status(engine, tmp_path, capsys, monkeypatch):
    flags = stack_flags(engine)
    spec = tmp_path / "job.json"
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    doc["training"] = {"rounds": 5, "workers": 2}
    spec.write_text(json.dumps(doc))
    assert main(["submit", str(spec), "--data", str(HOUSES), "--follow", "--quiet", *flags]) == 0
    job_id = capsys.readouterr().out.split()[0]
    assert main(["status", job_id, "--json", *flags]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "SUCCEEDED" and status["round"] == 5
    assert main(["status", "no-such-job", *flags]) == 0  # may be a job just submitted
    out, err = capsys.readouterr()
    assert "PENDING" in out and "nothing is recorded for job no-such-job in stack" in err
    # followed, it gives up once nothing has been recorded for NO_RECORD_SECONDS
    from lambdagrad import cli

    monkeypatch.setattr(cli, "NO_RECORD_SECONDS", 0.5)
    assert main(["status", "no-such-job", "--follow", "--quiet", *flags]) == 1
    assert "or no such job; gave up after 0 s" in capsys.readouterr().err
    assert main(["models", "list"]) == 1
    assert "pass --stack NAME" in capsys.readouterr().err
    engine.reset()


def test_status_of_a_stopped_stack_job_says_so(engine, tmp_path, capsys):
    """A stopped execution runs no RecordFailure: status.json stayed RUNNING, and status
    said so for ever (only --follow asked Step Functions)."""
    import time

    flags = stack_flags(engine)
    spec = tmp_path / "long.json"
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    # segments of 5 rounds: the running one (an Express child, which a stop of its parent
    # does not stop) ends soon after, instead of training on through the tests that follow
    doc["training"] = {"rounds": 100_000, "workers": 2, "segment_rounds": 5}
    spec.write_text(json.dumps(doc))
    assert main(["submit", str(spec), "--data", str(HOUSES), "--quiet", *flags]) == 0
    job_id = capsys.readouterr().out.split()[0]
    sfn, status = engine.client("stepfunctions"), {}
    for _ in range(300):  # until Prepare has written a status naming its execution
        assert main(["status", job_id, "--json", *flags]) == 0
        status = json.loads(capsys.readouterr().out)
        if status.get("state") == "RUNNING" and status.get("execution"):
            break
        time.sleep(0.1)
    assert status["state"] == "RUNNING"
    sfn.stop_execution(executionArn=status["execution"])
    assert main(["status", job_id, *flags]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert f"{job_id}: STOPPED, round " in out
    resume = f"lambdagrad resume {job_id} --stack {engine.stack_name} --region {engine.region}"
    assert f"ABORTED: its execution was stopped; continue it with: {resume}" in out
    segments = engine.outputs["SegmentStateMachineArn"]
    for _ in range(300):  # the last segment ends within its 5 rounds
        running = sfn.list_executions(stateMachineArn=segments, statusFilter="RUNNING")
        if not running["executions"]:
            break
        time.sleep(0.1)
    assert not running["executions"]
    engine.reset()


def test_a_dataset_no_job_may_read_is_refused_before_anything_starts(engine, tmp_path, capsys):
    """Prepare refuses it; the CLI said so only after uploading the spec (submit) or
    starting the execution (train, sweep)."""
    from lambdagrad.client import StackClient

    flags = stack_flags(engine)
    stack = StackClient.from_outputs(engine.outputs, engine.client)
    spec = tmp_path / "job.json"
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    for uri, message in (
        ("s3://someone-elses-bucket/datasets/d.csv", "is not in this stack's bucket"),
        (f"s3://{stack.bucket}/jobs/other/shards/0.npz", "is a job's or the registry's own file"),
    ):
        doc["dataset"]["uri"] = uri
        spec.write_text(json.dumps(doc))
        before = stack.sfn.list_executions(stateMachineArn=stack.state_machine_arn)
        uploads = stack.store.list_keys("jobs/incoming/")
        for argv in (
            ["submit", str(spec)],
            ["train", "--config", str(spec), "--out", str(tmp_path / "r")],
            ["sweep", "--config", str(spec), "--lr", "0.1,0.2", "--out", str(tmp_path / "s")],
        ):
            assert main([*argv, "--quiet", *flags]) == 1, argv
            assert f"error: dataset.uri: {uri} {message}" in capsys.readouterr().err
        after = stack.sfn.list_executions(stateMachineArn=stack.state_machine_arn)
        assert after["executions"] == before["executions"]
        assert stack.store.list_keys("jobs/incoming/") == uploads
    engine.reset()


def sweep_args(engine, out, *extra: str) -> list[str]:
    return [
        "sweep",
        str(HOUSES),
        "--label",
        "price",
        "--lr",
        "0.01,0.05",
        "--rounds",
        "5",
        "--workers",
        "2",
        "--out",
        str(out),
        "--quiet",
        *extra,
        *stack_flags(engine),
    ]


def error_line(err: str) -> str:
    """The one ``error:`` line the CLI printed. Lines from elsewhere are set aside: a Lambda
    thread of an earlier test logging into that test's closed capture prints "--- Logging
    error ---" wherever stderr points now."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_sweep_replaces_a_full_out_only_when_asked_and_fails_when_no_point_succeeds(
    engine, tmp_path, capsys
):
    out = tmp_path / "sweep"
    (out / "best").mkdir(parents=True)
    (out / "result.json").write_text('{"best": {"job_id": "older"}}')
    (out / "best" / "model.json").write_text('{"job_id": "older"}')

    rc = main(sweep_args(engine, out, "--batch-size", "32"))
    assert rc == 1
    assert error_line(capsys.readouterr().err) == (
        f"error: {out} already holds files; pass --overwrite to replace them all "
        "or choose another --out"
    )
    assert (out / "best" / "model.json").read_text() == '{"job_id": "older"}'
    notes = tmp_path / "notes"  # not a sweep's output: --overwrite does not empty it
    notes.mkdir()
    (notes / "todo.txt").write_text("keep")
    rc = main(sweep_args(engine, notes, "--batch-size", "32", "--overwrite"))
    assert rc == 1
    assert error_line(capsys.readouterr().err) == (
        f"error: {notes} holds files but no sweep's result.json; --overwrite replaces only "
        "a sweep's output: choose another --out"
    )
    assert (notes / "todo.txt").read_text() == "keep"

    # a point Prepare would refuse (a batch larger than the training rows) is refused before
    # the sweep starts, by its place in the grid
    rc = main(sweep_args(engine, out, "--batch-size", "32,5000", "--overwrite"))
    assert rc == 1
    assert error_line(capsys.readouterr().err) == (
        "error: grid point 1 (optimizer.learning_rate=0.01, training.batch_size=5000): "
        "training.batch_size: 5000 is larger than the 1800 training rows (use a smaller batch "
        "or 'full')"
    )
    assert (out / "result.json").read_text() == '{"best": {"job_id": "older"}}'

    # every point diverges: a sweep with no model does not replace the earlier sweep's (its
    # result.json and best/ stay)
    nogo = ("--lr", "500,1000", "--optimizer", "sgd", "--batch-size", "32", "--rounds", "300")
    rc = main(sweep_args(engine, out, *nogo, "--overwrite", "--sweep-id", "nogo"))
    assert rc == 1
    err = error_line(capsys.readouterr().err)
    assert err.startswith(
        f"error: no point of sweep nogo succeeded (2 diverged); {out} keeps the earlier sweep; "
        "the first point's error: ModelDiverged: round"
    ), err
    assert (out / "result.json").read_text() == '{"best": {"job_id": "older"}}'
    assert (out / "best" / "model.json").read_text() == '{"job_id": "older"}'
    # into a new --out, the failed sweep's result.json is written, with no best/
    fresh = tmp_path / "fresh"
    rc = main(sweep_args(engine, fresh, *nogo, "--sweep-id", "nogo2"))
    assert rc == 1
    assert error_line(capsys.readouterr().err) == (
        f"error: no point of sweep nogo2 succeeded (2 diverged); "
        f"each point's error is in {fresh / 'result.json'}"
    )
    result = json.loads((fresh / "result.json").read_text())
    assert result["sweep_id"] == "nogo2" and result["best"] is None
    assert all(r["error"] == "ModelDiverged" for r in result["results"])
    assert not (fresh / "best").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "notes", "sweep"]  # no temps
    engine.reset()


def test_submit_checks_the_spec_before_uploading_the_data(engine, stack, tmp_path, capsys):
    data = tmp_path / "never-uploaded.csv"
    data.write_text(HOUSES.read_text())
    spec = tmp_path / "job.json"
    cases = {
        "error: {spec}: 'dataset' must be an object, not a string": {"dataset": "houses.csv"},
        "training.rounds": {"dataset": {"label": "price"}, "training": {"rounds": 0}},
    }
    for expected, doc in cases.items():
        spec.write_text(json.dumps(doc))
        argv = ["submit", str(spec), "--data", str(data), "--quiet", *stack_flags(engine)]
        assert main(argv) == 1
        assert expected.format(spec=spec) in error_line(capsys.readouterr().err)
    assert not [k for k in stack.store.list_keys("datasets/") if k.endswith(data.name)]


def test_a_sweep_refuses_a_model_name_a_used_sweep_id_and_files_it_did_not_write(
    engine, tmp_path, capsys
):
    out = tmp_path / "sweep"
    # each point's Finalize would register under the name: the last to finish, not the best
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"output": {"model_name": "prod"}}))
    rc = main(sweep_args(engine, out, "--batch-size", "32", "--config", str(config)))
    assert rc == 1
    assert error_line(capsys.readouterr().err) == (
        "error: output.model_name: a sweep trains one model per point, and each would take "
        "the name 'prod' in turn; leave it out and, after the sweep, point the name at the "
        "best point's job: lambdagrad models promote NAME JOB_ID"
    )
    assert not out.exists()

    assert main(sweep_args(engine, out, "--batch-size", "32", "--sweep-id", "once")) == 0
    capsys.readouterr()
    result = (out / "result.json").read_bytes()
    # the same --sweep-id again (the README's command run twice): refused by name
    again = tmp_path / "again"
    rc = main(sweep_args(engine, again, "--batch-size", "32", "--sweep-id", "once"))
    assert rc == 1
    err = error_line(capsys.readouterr().err)
    assert err.startswith("error: sweep 'once' already ran on this stack (its result: s3://")
    assert err.endswith(
        "/sweeps/once/result.json); nothing was started - choose another --sweep-id"
    )
    assert not again.exists()

    # a file beside a sweep's output (the data, notes): --overwrite would delete it
    (out / "houses.csv").write_bytes(HOUSES.read_bytes())
    (out / "NOTES.md").write_text("keep")
    rc = main(sweep_args(engine, out, "--batch-size", "32", "--sweep-id", "twice", "--overwrite"))
    assert rc == 1
    assert error_line(capsys.readouterr().err) == (
        f"error: {out} holds NOTES.md, houses.csv, which no sweep wrote, and --overwrite would "
        "delete it: move it or choose another --out"
    )
    assert (out / "NOTES.md").read_text() == "keep" and (out / "result.json").read_bytes() == result


def test_predict_sends_as_many_rows_as_the_stack_takes_and_names_the_files_row(tmp_path, capsys):
    """A stack deployed with PredictMaxRows=300 takes 300 rows a request: the CLI reads the
    limit from the stack's outputs, and an error about a request's row names the file's."""
    from lambdagrad.local.engine import LocalEngine

    from tests.conftest import ROOT

    with LocalEngine(
        ROOT / "template.yaml",
        stack_name="lambdagrad-test-rows",
        parameters={"PredictMaxRows": 300},
    ) as eng:
        flags = ["--stack", eng.stack_name, "--region", eng.region]
        model = ["--label", "price", "--rounds", "3", "--quiet", "--model-name", "houses"]
        assert main(["train", str(HOUSES), *model, "--out", str(tmp_path / "m"), *flags]) == 0
        calls = eng.invocations("PredictFunction")
        preds = tmp_path / "preds.csv"
        rc = main(["predict", "--model-name", "houses", str(HOUSES), "--out", str(preds), *flags])
        assert rc == 0, capsys.readouterr().err
        assert len(preds.read_text().split()) == 1 + 2000
        assert eng.invocations("PredictFunction") - calls == 7  # 2,000 rows, 300 a request

        lines = HOUSES.read_text().splitlines()
        cells = lines[1600].split(",")  # data row 1600: instances[99] of the 6th request
        lines[1600] = ",".join(["1e308"] * 4 + cells[4:])
        bad = tmp_path / "bad.csv"
        bad.write_text("\n".join(lines) + "\n")
        capsys.readouterr()
        assert main(["predict", "--model-name", "houses", str(bad), *flags]) == 1
        err = error_line(capsys.readouterr().err)
        assert err.startswith("error: predict: bad.csv: data row 1600: "), err


def test_a_queued_sweep_point_is_waited_for_while_its_sweep_runs():
    """Points of a sweep wait for a slot with no record; status --follow must not give up."""
    from types import SimpleNamespace

    from lambdagrad.cli import _may_still_start

    asked = []

    def describe_execution(executionArn):
        asked.append(executionArn)
        return {"status": "RUNNING" if executionArn.endswith(":grid") else "SUCCEEDED"}

    stack = SimpleNamespace(
        outputs={"SweepStateMachineArn": "arn:aws:states:r:1:stateMachine:s-sweep"},
        sfn=SimpleNamespace(describe_execution=describe_execution),
        running_executions=lambda job_id: [],
    )
    assert _may_still_start(stack, "grid-p003")
    assert asked == ["arn:aws:states:r:1:execution:s-sweep:grid"]
    assert not _may_still_start(stack, "done-p001")  # its sweep has ended
    assert not _may_still_start(stack, "no-such-job")  # not a point
