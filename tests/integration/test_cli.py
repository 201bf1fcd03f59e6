"""The CLI as a user runs it: train on the embedded engine (and --stack against a moto
deployment), evaluate, predict, and clear one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from lambdagrad.cli import main

from tests.conftest import EVENTS, ROOT

HOUSES = EVENTS / "data" / "houses.csv"
IRIS = EVENTS / "data" / "iris.csv"


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        str(data),
        "--out",
        str(out),
        "--quiet",
        "--template",
        str(ROOT / "template.yaml"),
        *extra,
    ]


def test_train_evaluate_predict_regression(tmp_path, capsys):
    out = tmp_path / "price"
    rc = main(
        train_args(
            HOUSES,
            out,
            "--label",
            "price",
            "--model",
            "linear",
            "--optimizer",
            "sgd",
            "--lr",
            "0.05",
            "--batch-size",
            "64",
            "--workers",
            "4",
            "--epochs",
            "3",
            "--validation",
            "0.1",
            "--l2",
            "0",
            "--seed",
            "0",
            "--json",
        )
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rounds"] == 85  # ceil(3 * 1800 / 64)
    for name in ("model.npz", "model.json", "history.csv", "loss.png"):
        assert (out / name).is_file(), name
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 85 and set(rows[0]) == {"round", "train_loss", "validation_loss", "seconds"}

    assert main(["evaluate", str(out), str(HOUSES), "--label", "price", "--json"]) == 0
    printed = capsys.readouterr().out.strip()
    metrics = json.loads(printed)  # exactly one JSON object
    assert {"mse", "rmse", "r2"} <= set(metrics) and metrics["r2"] > 0.8

    preds = tmp_path / "predictions.csv"
    assert main(["predict", str(out), str(HOUSES), "--out", str(preds)]) == 0
    lines = preds.read_text().splitlines()
    assert lines[0] == "prediction" and len(lines) == 2001

    assert main(["predict", str(out), str(HOUSES), "--proba"]) == 1
    assert "--proba: the model is a regression" in capsys.readouterr().err

    # an --out that is a symlink is written through, as a shell's > would: the link stays
    target, link = tmp_path / "kept" / "predictions.csv", tmp_path / "latest.csv"
    target.parent.mkdir()
    target.write_text("old\n")
    link.symlink_to(target)
    assert main(["predict", str(out), str(HOUSES), "--out", str(link)]) == 0
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert target.read_text().splitlines() == lines


def test_train_classifier_with_config_and_flag_override(tmp_path, capsys):
    out = tmp_path / "iris"
    config = tmp_path / "job.json"
    doc = json.loads((EVENTS / "jobs" / "iris-softmax.json").read_text())
    doc.pop("job_id")
    config.write_text(json.dumps(doc))
    rc = main(train_args(IRIS, out, "--config", str(config), "--rounds", "120"))
    assert rc == 0
    model = json.loads((out / "model.json").read_text())
    assert model["rounds"] == 120 and model["classes"] == ["setosa", "versicolor", "virginica"]
    assert model["spec"]["optimizer"]["name"] == "adam"
    capsys.readouterr()
    assert main(["evaluate", str(out), str(IRIS), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0.9
    preds = tmp_path / "p.csv"
    assert main(["predict", str(out), str(IRIS), "--out", str(preds)]) == 0
    assert set(preds.read_text().split()[1:]) <= {"setosa", "versicolor", "virginica"}
    # --proba: a column per class; each row sums to 1 and its largest is the prediction
    assert main(["predict", str(out), str(IRIS), "--out", str(preds), "--proba"]) == 0
    with open(preds) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["prediction", "p_setosa", "p_versicolor", "p_virginica"]
    p = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    assert [rows[0][1:][i][2:] for i in p.argmax(axis=1)] == [r[0] for r in rows[1:]]


def test_defaults_train_well(tmp_path, capsys):
    """Only data, label and model: the defaults must give a sensible model."""
    out = tmp_path / "defaults"
    assert main(train_args(HOUSES, out, "--label", "price")) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), str(HOUSES), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["r2"] > 0.85


def test_train_against_a_stack_by_name(engine, tmp_path, capsys):
    """--stack goes through CloudFormation outputs and boto3, as against AWS."""
    out = tmp_path / "stacked"
    rc = main(
        [
            "train",
            str(IRIS),
            "--label",
            "species",
            "--model",
            "softmax",
            "--rounds",
            "20",
            "--batch-size",
            "full",
            "--out",
            str(out),
            "--quiet",
            "--stack",
            engine.stack_name,
            "--region",
            engine.region,
        ]
    )
    assert rc == 0
    assert (out / "model.json").is_file()
    engine.reset()


BAD_INPUTS = {
    "missing-label": ("sqft,price\n1,2\n3,4\n", ["--label", "cost"], "no label column 'cost'"),
    "non-numeric": ("sqft,price\n1,2\nabc,4\n5,6\n", ["--label", "price"], "line 3, column 'sqft'"),
    "nan": ("sqft,price\n1,2\nnan,4\n5,6\n", ["--label", "price"], "line 3, column 'sqft'"),
    "infinity": ("sqft,price\n1,2\n3,inf\n5,6\n", ["--label", "price"], "line 3, column 'price'"),
    "empty-file": ("", ["--label", "price"], "is empty"),
    "single-class": (
        "a,y\n1,cat\n2,cat\n3,cat\n",
        ["--label", "y", "--model", "logistic"],
        "only one class",
    ),
    # caught before the job starts (Prepare would fail it only once started)
    "three-classes-logistic": (
        "a,y\n1,cat\n2,dog\n3,fox\n",
        ["--label", "y", "--model", "logistic"],
        "data.csv: logistic regression needs exactly 2 classes, got 3; use softmax for more "
        "(the label's classes: 'cat', 'dog', 'fox')",
    ),
    "class-label-regression": (
        "a,y\n1,cat\n2,dog\n",
        ["--label", "y"],
        "line 2, column 'y': 'cat' is not a number; if the column holds classes, use model type "
        "logistic, softmax or mlp (--model)",
    ),
    # Prepare would fail it only once started, leaving a run directory
    "too-large-to-standardize": (
        "a,b,price\n1,1e308,1\n2,1.5e308,2\n3,1e308,3\n",
        ["--label", "price", "--batch-size", "full", "--workers", "1", "--validation", "0"],
        "feature column 'b': values up to 1.5e+308 are too large to standardize",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, capsys, case):
    text, flags, expected = BAD_INPUTS[case]
    data = tmp_path / "data.csv"
    data.write_text(text)
    out = tmp_path / "out"
    rc = main(train_args(data, out, *flags))
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert err.startswith("error: ") and "\n" not in err
    assert expected in err and "data.csv" in err
    assert not out.exists()


def test_bad_flag_values_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(HOUSES), "--batch-size", "zero"])
    assert exit_.value.code == 2
    rc = main(train_args(HOUSES, tmp_path / "o", "--label", "price", "--lr", "-1"))
    err = capsys.readouterr().err
    assert rc == 1 and "optimizer.learning_rate (--lr): Input should be greater than 0" in err
    # a field the --config set is named as the file names it
    config = tmp_path / "c.json"
    config.write_text('{"optimizer": {"learning_rate": -1}}')
    rc = main(train_args(HOUSES, tmp_path / "o", "--label", "price", "--config", str(config)))
    err = capsys.readouterr().err
    assert rc == 1 and "optimizer.learning_rate: Input should be greater than 0" in err
    rc = main(train_args(HOUSES, tmp_path / "o", "--label", "price", "--no-standardize",
                         "--workers", "0"))  # fmt: skip
    assert "training.workers (--workers): Input should be" in capsys.readouterr().err


def test_predict_checks_features(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(train_args(HOUSES, out, "--label", "price", "--rounds", "3")) == 0
    bad = tmp_path / "new.csv"
    bad.write_text("sqft,bedrooms\n1000,2\n")
    assert main(["predict", str(out), str(bad)]) == 1
    assert "missing feature column(s) 'age', 'distance_km'" in capsys.readouterr().err
    reordered = tmp_path / "reordered.csv"
    reordered.write_text("distance_km,age,bedrooms,sqft\n3,10,3,1500\n")
    capsys.readouterr()
    assert main(["predict", str(out), str(reordered)]) == 0
    ours = float(capsys.readouterr().out.split()[1])
    from lambdagrad.artifact import TrainedModel

    direct = TrainedModel.load(out).predict(np.array([[1500.0, 3, 10, 3]]))[0]
    assert ours == pytest.approx(direct)
    # --out naming the data file (by another path) would replace the data: refused
    (tmp_path / "sub").mkdir()
    (tmp_path / "linked.csv").hardlink_to(reordered)
    for same in (tmp_path / "sub" / ".." / "reordered.csv", tmp_path / "linked.csv"):
        assert main(["predict", str(out), str(reordered), "--out", str(same)]) == 1
        assert "is the data file: the predictions would replace it" in capsys.readouterr().err
    assert reordered.read_text().startswith("distance_km,age")
    # labels near the float64 limit: an mse of inf, printed as JSON null, and no warning
    huge = tmp_path / "huge.csv"
    huge.write_text(
        "sqft,bedrooms,age,distance_km,price\n1500,2,3,1.4,1e308\n1500,2,3,1.4,-1e308\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["evaluate", str(out), str(huge), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"mse": None, "rmse": None, "r2": None, "rows": 2}
    # --out naming a file of the run directory it reads: refused, model intact; a new file
    # in it (the README's runs/price/predictions.csv) is fine
    model = (out / "model.json").read_bytes()
    for own in (out / "model.json", out / "state" / "x.csv"):
        assert main(["predict", str(out), str(reordered), "--out", str(own)]) == 1
        assert "is one of the run directory's own files" in capsys.readouterr().err
    assert (out / "model.json").read_bytes() == model
    assert main(["predict", str(out), str(reordered), "--out", str(out / "predictions.csv")]) == 0
    assert (out / "predictions.csv").read_text().startswith("prediction\n")
    # a finished run whose model files were removed: not sent to resume, which refuses it
    (out / "model.json").rename(tmp_path / "moved.json")
    assert main(["predict", str(out), str(reordered)]) == 1
    err = capsys.readouterr().err
    assert f"{out} has no model.json, though its job (" in err and "resume" not in err, err


def test_deep_model_flags_reach_the_spec_and_predict_rebuilds_the_model(tmp_path, capsys):
    out = tmp_path / "mlp"
    rc = main(
        train_args(
            IRIS,
            out,
            "--label",
            "species",
            "--model",
            "mlp",
            "--hidden",
            "16,8",
            "--activation",
            "gelu",
            "--optimizer",
            "adamw",
            "--lr",
            "0.02",
            "--weight-decay",
            "0.001",
            "--beta1",
            "0.85",
            "--beta2",
            "0.99",
            "--clip-norm",
            "5",
            "--schedule",
            "cosine",
            "--warmup",
            "5",
            "--final-lr",
            "0.001",
            "--l1",
            "0.0001",
            "--l2",
            "0.001",
            "--patience",
            "20",
            "--min-delta",
            "0.0001",
            "--batch-size",
            "32",
            "--rounds",
            "60",
            "--validation",
            "0.2",
        )
    )
    assert rc == 0
    model = json.loads((out / "model.json").read_text())
    assert model["model"]["type"] == "mlp" and model["model"]["hidden"] == [16, 8]
    assert model["model"]["activation"] == "gelu"
    spec = model["spec"]
    assert spec["model"]["task"] == "classification" and spec["model"]["l1"] == 0.0001
    assert (spec["optimizer"]["name"], spec["optimizer"]["schedule"]) == ("adamw", "cosine")
    assert spec["optimizer"]["warmup"] == 5 and spec["optimizer"]["clip_norm"] == 5.0
    assert spec["training"]["patience"] == 20
    capsys.readouterr()
    assert main(["evaluate", str(out), str(IRIS), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0.9
    assert main(["predict", str(out), str(IRIS), "--out", str(tmp_path / "p.csv")]) == 0


def test_deep_model_bad_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", str(IRIS), "--hidden", "16,x"])
    rc = main(
        train_args(
            IRIS, tmp_path / "o", "--label", "species", "--model", "softmax", "--hidden", "8"
        )
    )
    assert rc == 1 and "hidden layers are for model type mlp" in capsys.readouterr().err
    rc = main(
        train_args(
            IRIS, tmp_path / "o", "--label", "species", "--schedule", "step", "--decay-rate", "2"
        )
    )
    assert rc == 1 and "would grow the learning rate" in capsys.readouterr().err
    rc = main(
        train_args(
            IRIS, tmp_path / "o", "--label", "species", "--patience", "3", "--validation", "0"
        )
    )
    assert rc == 1 and "needs a validation split" in capsys.readouterr().err
    rc = main(train_args(IRIS, tmp_path / "o", "--label", "species", "--momentum", "0.5"))
    err = capsys.readouterr().err
    assert rc == 1 and "momentum 0.5 is read by the momentum / nesterov optimizer only" in err
    assert not (tmp_path / "o").exists()


def test_a_run_says_why_it_stopped_and_a_job_id_is_used_once(tmp_path, capsys):
    """An early-stopped job's summary says so and which round is the model; training the
    same job id into the same run directory is refused before anything starts; predict
    takes its data after a flag too."""
    out = tmp_path / "es"
    flags = ["--label", "species", "--model", "softmax", "--lr", "300", "--batch-size", "16"]
    flags += ["--rounds", "80", "--patience", "3", "--job-id", "es-1"]
    assert main(train_args(IRIS, out, *flags)) == 0
    doc = json.loads((out / "model.json").read_text())
    assert doc["stopped"] == "early_stopping" and doc["rounds"] < 80
    why = "stopped early: no validation gain in 3 rounds (--patience)"
    if doc["model_round"] != doc["rounds"]:
        why += f"; the model is round {doc['model_round']}, the best on validation"
    assert f"done: {doc['rounds']} rounds in " in (text := capsys.readouterr().out)
    assert f" s ({why}); train loss " in text
    before = (out / "model.json").read_bytes()
    assert main(train_args(IRIS, out, *flags, "--overwrite")) == 1
    err = capsys.readouterr().err
    assert "job 'es-1' already ran in" in err and "give --job-id NEW to train" in err
    assert "continue it" not in err  # it finished
    assert (out / "model.json").read_bytes() == before
    # without --overwrite the advice names both flags a new run there needs (each refusal
    # named one, and the user went back and forth between them)
    assert main(train_args(IRIS, out, *flags)) == 1
    assert "give --job-id NEW --overwrite to train again there" in capsys.readouterr().err
    # a job that stopped with a checkpoint and no model: the message names its resume
    stopped = tmp_path / "stopped"
    shutil.copytree(out, stopped)
    (stopped / "model.json").unlink()
    (stopped / "state" / "DataBucket" / "jobs" / "es-1" / "model" / "model.json").unlink()
    assert main(train_args(IRIS, stopped, *flags)) == 1
    err = capsys.readouterr().err
    assert f"(or continue it: lambdagrad resume es-1 --out {stopped})" in err
    predictions = tmp_path / "p.csv"
    assert main(["predict", str(out), "--out", str(predictions), str(IRIS)]) == 0
    assert len(predictions.read_text().splitlines()) == 151


SECTION_NOT_AN_OBJECT = {
    "string": ({"dataset": "houses.csv", "training": {"rounds": 1}}, [], "'dataset'", "a string"),
    "array": ({"training": ["rounds", 1]}, [], "'training'", "an array"),
    "null-with-flag": ({"model": None}, ["--model", "linear"], "'model'", "null"),
}


@pytest.mark.parametrize("case", sorted(SECTION_NOT_AN_OBJECT))
def test_config_section_that_is_not_an_object_is_named(tmp_path, capsys, case):
    doc, flags, section, found = SECTION_NOT_AN_OBJECT[case]
    config = tmp_path / "spec.json"
    config.write_text(json.dumps(doc))
    out = tmp_path / "out"
    for argv in (
        train_args(HOUSES, out, "--label", "price", "--config", str(config), *flags),
        ["estimate", str(HOUSES), "--label", "price", "--config", str(config), *flags],
    ):
        assert main(argv) == 1, argv[0]
        err = capsys.readouterr().err.strip()
        assert err == f"error: {config}: {section} must be an object, not {found}", argv[0]
    assert not out.exists()


def test_out_that_cannot_be_written_is_one_clear_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    assert main(train_args(HOUSES, afile, "--label", "price", "--rounds", "3")) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {afile} is a file, not a directory; choose another --out"
    )
    assert main(train_args(HOUSES, afile / "run", "--label", "price", "--rounds", "3")) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {afile / 'run'}: {afile} is a file, not a directory"

    model = tmp_path / "m"
    assert main(train_args(HOUSES, model, "--label", "price", "--rounds", "3")) == 0
    capsys.readouterr()
    under_a_file = afile / "x.csv"
    assert main(["predict", str(model), str(HOUSES), "--out", str(under_a_file)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {under_a_file}: {afile} is a file, not a directory"
    folder = tmp_path / "preds"
    folder.mkdir()
    assert main(["predict", str(model), str(HOUSES), "--out", str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {folder} is a directory; --out names the file to write"
    assert main(["resume", "some-job", "--out", str(afile)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {afile} is a file, not a directory; choose another --out"
    assert afile.read_text() == "keep me\n" and not any(folder.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "m", "preds"]  # no temp files


def test_status_of_a_local_job_reads_its_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    args = train_args(HOUSES, out, "--label", "price", "--rounds", "2", "--job-id", "st1")
    assert main(args) == 0
    capsys.readouterr()
    assert main(["status", "st1", "--out", str(out), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "SUCCEEDED" and status["cost"]["rounds"] == 2
    assert main(["status", "st1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("st1: SUCCEEDED, round 2/2") and "AWS cost of what ran" in printed
    assert main(["status", "st1", "--out", str(tmp_path / "elsewhere")]) == 1
    err = capsys.readouterr().err
    assert "no local records of job st1 in" in err and "ran inside that submit command" in err
    assert main(["status", "st1", "--out", str(out), "--follow"]) == 1
    assert "--follow needs --stack" in capsys.readouterr().err
    records = out / "state" / "DataBucket" / "jobs" / "st1"
    good = {name: (records / name).read_text() for name in ("status.json", "cost.json")}
    # a hand-edited record is named, with what in it is damaged; nothing half-printed
    cost = json.loads(good["cost.json"])
    del cost["dollars"]
    (records / "cost.json").write_text(json.dumps(cost))
    assert main(["status", "st1", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"error: {records}/cost.json is damaged: it has no 'dollars'"
    assert captured.out == ""
    (records / "cost.json").write_text(good["cost.json"])
    for edited, damage in [
        ({}, "it has no 'state'"),
        ({"state": "SUCCEEDED", "train_loss": "low"}, "could not convert string to float"),
        ({"state": "RUNNING", "rounds": 9, "round": [1]}, "int() argument must be"),
    ]:
        (records / "status.json").write_text(json.dumps(edited))
        assert main(["status", "st1", "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {records}/status.json is damaged: {damage}"), err
    (records / "status.json").write_text("{")
    assert main(["status", "st1", "--out", str(out)]) == 1
    assert "status.json is not valid JSON" in capsys.readouterr().err


def test_file_system_errors_name_the_path(monkeypatch, capsys):
    # as root the tests cannot provoke a permission error: raise the one a write would
    import lambdagrad.cli as cli

    def denied(args):
        raise PermissionError(13, "Permission denied", "runs/x/model.npz")

    monkeypatch.setitem(cli.COMMANDS, "status", denied)
    assert main(["status", "x"]) == 1
    assert capsys.readouterr().err.strip() == "error: runs/x/model.npz: permission denied"


def test_a_label_flag_an_npz_would_ignore_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    data = tmp_path / "d.npz"
    np.savez(data, X=X, y=X @ [1.0, 2.0, 3.0])
    out = tmp_path / "m"
    assert main(train_args(data, out, "--label", "price")) == 1
    err = capsys.readouterr().err
    assert "d.npz: dataset.label 'price' does not apply to an .npz" in err
    assert not out.exists()
    assert main(train_args(data, out, "--rounds", "2")) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), str(data), "--label", "price"]) == 1
    assert "d.npz: --label 'price' does not apply to an .npz" in capsys.readouterr().err
    assert main(["evaluate", str(out), str(data), "--json"]) == 0


def test_a_directory_given_as_data_is_named_as_one(tmp_path, capsys):
    assert main(train_args(tmp_path, tmp_path / "out", "--label", "price")) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path} is a directory: give a data file (.csv, .npy or .npz)" in err
    assert not (tmp_path / "out").exists()


def _follow_then_interrupt(args, stack, job_id):
    """cli._follow_and_fetch as a user pressing Ctrl-C at round 3 sees it."""

    def on_status(status):
        if (status.get("round") or 0) >= 3:
            raise KeyboardInterrupt

    stack.follow(job_id, on_status=on_status)
    raise AssertionError("the job ended before the interrupt")


def test_ctrl_c_names_the_resume_command_and_the_unfinished_run_says_so(
    tmp_path, capsys, monkeypatch
):
    from lambdagrad import cli

    monkeypatch.setattr(cli, "_follow_and_fetch", _follow_then_interrupt)
    out = tmp_path / "run"
    flags = ["--label", "price", "--job-id", "ctrl-c", "--batch-size", "64", "--epochs", "3"]
    assert main(train_args(HOUSES, out, *flags)) == 130
    resume = f"lambdagrad resume ctrl-c --out {out}"
    assert f"interrupted: job ctrl-c stopped; continue it with: {resume}" in capsys.readouterr().err
    for argv in (["predict", str(out), str(HOUSES)], ["evaluate", str(out), str(HOUSES)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert (
            f"{out} has no model yet: its job (ctrl-c) did not finish; continue it with: {resume}"
            in err
        )
    # status: no process holds the run directory, so the job is not "RUNNING" but stopped
    assert main(["status", "ctrl-c", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith("ctrl-c: STOPPED, round ")
    # the round of its last checkpoint on disk, not status.json's (written once a second)
    records = out / "state" / "DataBucket" / "jobs" / "ctrl-c"
    saved = {int(p.stem) for p in (records / "params").glob("*.npy")}
    last = max(r for r in saved if (records / "optimizer" / f"{r}.npz").exists())
    assert printed.startswith(f"ctrl-c: STOPPED, round {last}/")
    assert (
        "Stopped: the process running it ended before the job did (killed or interrupted); "
        f"continue it with: {resume}" in printed
    )
    fcntl = pytest.importorskip("fcntl")
    with (out / "state" / ".lock").open("a+") as lock:  # as a live train process holds it
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["status", "ctrl-c", "--out", str(out)]) == 0
        assert capsys.readouterr().out.startswith("ctrl-c: RUNNING, round ")
    monkeypatch.undo()
    # the command it names does continue the job
    assert main(["resume", "ctrl-c", "--out", str(out), "--quiet"]) == 0
    assert (out / "model.json").is_file()


def test_submit_without_a_stack_says_its_model_is_not_kept(tmp_path, capsys):
    spec = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    spec["training"] = {"batch_size": "full", "workers": 1, "rounds": 2}
    path = tmp_path / "small.json"
    path.write_text(json.dumps(spec))
    assert main(["submit", str(path), "--data", str(HOUSES)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().endswith(": SUCCEEDED")
    assert (
        "note: without --stack the job runs on an embedded engine that ends with this "
        "command, and its model is not kept; `lambdagrad train --config SPEC DATA` keeps it"
    ) in captured.err
    assert main(["submit", str(path), "--data", str(HOUSES), "--quiet"]) == 0
    assert "note:" not in capsys.readouterr().err
    # without --data the embedded engine's empty bucket cannot hold the spec's dataset
    assert main(["submit", str(path), "--quiet"]) == 1
    assert "give --data FILE (it is uploaded), or --stack NAME" in capsys.readouterr().err


def test_a_stack_without_a_region_says_to_give_one(monkeypatch, capsys):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    assert main(["status", "some-job", "--stack", "prod"]) == 1
    err = capsys.readouterr().err
    assert "no AWS region for stack 'prod': pass --region REGION" in err


def test_model_name_without_a_stack_says_where_the_registry_stays(tmp_path, capsys):
    flags = ["--label", "price", "--rounds", "2", "--model-name", "houses"]
    argv = [a for a in train_args(HOUSES, tmp_path / "run", *flags) if a != "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "note: --model-name registers 'houses' in a stack's model registry, which the " in err
    assert (tmp_path / "run" / "model.json").is_file()


THREE_CLASSES = "a,y\n1,cat\n2,dog\n3,fox\n4,cat\n5,dog\n6,fox\n"


def test_sweep_and_estimate_refuse_a_model_the_labels_do_not_fit(tmp_path, capsys):
    data = tmp_path / "three.csv"
    data.write_text(THREE_CLASSES)
    sweep = ["sweep", str(data), "--label", "y", "--model", "logistic", "--lr", "0.1,0.01"]
    assert main([*sweep, "--out", str(tmp_path / "sw"), "--quiet"]) == 1
    assert (
        "three.csv: logistic regression needs exactly 2 classes, got 3" in capsys.readouterr().err
    )
    assert not (tmp_path / "sw").exists()
    assert main(["estimate", str(data), "--label", "y", "--model", "logistic"]) == 1
    assert "three.csv: logistic regression needs exactly 2 classes" in capsys.readouterr().err
    # a class count the cost model is given builds its model too: one line, no traceback
    two = tmp_path / "two.csv"
    two.write_text("a,y\n1,cat\n2,dog\n3,cat\n4,dog\n5,cat\n6,dog\n")
    argv = ["estimate", str(two), "--label", "y", "--model", "logistic", "--classes", "3"]
    argv += ["--workers", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "exactly 2 classes, got 3" in err and err.count("\n") == 1


def test_a_run_directory_whose_job_failed_says_so(tmp_path, capsys):
    records = tmp_path / "run" / "state" / "DataBucket" / "jobs" / "bad-job"
    records.mkdir(parents=True)
    (records / "status.json").write_text(
        json.dumps({"state": "FAILED", "error": "ModelDiverged", "message": "round 4: loss inf"})
    )
    assert main(["predict", str(tmp_path / "run"), str(HOUSES)]) == 1
    err = capsys.readouterr().err
    assert (
        f"{tmp_path / 'run'} has no model: its job (bad-job) failed: ModelDiverged: round 4" in err
    )


def test_an_interrupted_overwrite_resumes_with_overwrite(tmp_path, capsys, monkeypatch):
    from lambdagrad import cli

    out = tmp_path / "run"
    flags = ["--label", "price", "--batch-size", "64", "--epochs", "2"]
    assert main(train_args(HOUSES, out, *flags, "--job-id", "first")) == 0
    real = cli._follow_and_fetch

    monkeypatch.setattr(cli, "_follow_and_fetch", _follow_then_interrupt)
    assert main(train_args(HOUSES, out, *flags, "--job-id", "second", "--overwrite")) == 130
    resume = f"lambdagrad resume second --out {out} --overwrite"
    assert f"continue it with: {resume}" in capsys.readouterr().err
    assert json.loads((out / "model.json").read_text())["job_id"] == "first"  # untouched
    monkeypatch.setattr(cli, "_follow_and_fetch", real)
    assert main(["resume", "second", "--out", str(out), "--quiet"]) == 1
    assert "pass --overwrite to replace it" in capsys.readouterr().err
    assert main(["resume", "second", "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert json.loads((out / "model.json").read_text())["job_id"] == "second"


def test_a_data_file_named_with_spaces_and_accents_trains(tmp_path, capsys):
    # its name makes the default job id and the dataset's key: ASCII only, no spaces
    data = tmp_path / "données (1).csv"
    data.write_bytes(HOUSES.read_bytes())
    out = tmp_path / "run"
    assert main(train_args(data, out, "--label", "price", "--rounds", "2", "--json")) == 0
    job_id = json.loads(capsys.readouterr().out)["job_id"]
    assert job_id.startswith("donn-es--1-20") and job_id.isascii()
    keys = [p.name for p in (out / "state" / "DataBucket" / "datasets").rglob("*.csv")]
    assert keys == ["donn-es--1-.csv"]


def test_an_s3_dataset_without_a_stack_is_refused_before_anything_starts(tmp_path, capsys):
    # the README's job file names its data in S3: the embedded engine's bucket has none
    out = tmp_path / "run"
    config = str(EVENTS / "jobs" / "houses-linear.json")
    assert main(["train", "--config", config, "--rounds", "1", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "dataset s3://" in err and "which the embedded engine (no --stack) does not" in err
    assert "(lambdagrad train --config FILE DATA)" in err
    assert not out.exists()
    # a sweep's advice is a sweep
    argv = ["sweep", "--config", config, "--lr", "0.1", "--out", str(tmp_path / "sw")]
    assert main(argv) == 1
    assert "(lambdagrad sweep --config FILE DATA)" in capsys.readouterr().err
    # with the file given, the same job file trains
    assert main(train_args(HOUSES, out, "--config", config, "--rounds", "1")) == 0


def test_evaluate_looks_for_the_label_column_trained_on_when_the_spec_left_it_to_default(
    tmp_path, capsys
):
    out = tmp_path / "m"
    assert main(train_args(HOUSES, out, "--rounds", "3")) == 0  # the label: the last column
    assert json.loads((out / "model.json").read_text())["label_name"] == "price"
    # a file with an id where the label was: scored against the id before, now refused
    lines = HOUSES.read_text().splitlines()
    ids = ["id", "7", "8"]  # the header and two rows
    rows = [",".join([*line.split(",")[:4], i]) for line, i in zip(lines[:3], ids, strict=True)]
    withid = tmp_path / "withid.csv"
    withid.write_text("\n".join(rows) + "\n")
    capsys.readouterr()
    assert main(["evaluate", str(out), str(withid)]) == 1
    err = capsys.readouterr().err
    assert "withid.csv: no label column 'price'; columns are 'sqft'" in err
    assert err.rstrip().endswith("(the label column in training; name this file's with --label)")
    # named, another column is the label: the file's own name for it
    assert main(["evaluate", str(out), str(withid), "--label", "id", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2
    assert main(["evaluate", str(out), str(HOUSES), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2000


def test_a_sweep_out_that_holds_the_current_directory_is_refused(tmp_path, capsys, monkeypatch):
    """A sweep swaps its --out whole: the shell would be left in a deleted directory."""
    here = tmp_path / "e"
    here.mkdir()
    monkeypatch.chdir(here)
    sweep = ["sweep", str(HOUSES), "--label", "price", "--lr", "0.1,1", "--quiet"]
    for out in (".", str(tmp_path)):
        assert main([*sweep, "--out", out]) == 1
        assert f"{out} holds the current directory, and a sweep replaces" in capsys.readouterr().err
    assert here.is_dir() and not any(here.iterdir())
    # train and resume write file by file: --out . is theirs to use
    assert main(train_args(HOUSES, Path("."), "--rounds", "2")) == 0
    assert (here / "model.json").is_file()


def test_a_loss_that_rose_a_thousandfold_is_warned_of():
    from lambdagrad.cli import _loss_rose

    def history(train, validation=None):
        validation = validation or [""] * len(train)
        pairs = enumerate(zip(train, validation, strict=True))
        rows = "".join(f"{i},{t},{v},0.1\n" for i, (t, v) in pairs)
        return ("round,train_loss,validation_loss,seconds\n" + rows).encode()

    rose = _loss_rose(history([1.4, 1.5, 17584.0, 5.6e87]), 1000.0, full_batch=True)
    assert rose is not None and rose.startswith("the training loss rose from 1.4 to 5.6e+87")
    assert "smaller learning rate (now 1000)" in rose
    rose = _loss_rose(history([1.0] * 4, [1.2, 3.0, 9e5, 4e9]), 0.1, full_batch=False)
    assert rose is not None and rose.startswith("the validation loss rose from 1.2 to 4e+09")
    # heavy-tailed mini-batches: a tiny first batch and a normal last one, the model steady
    claims = [5e-5, 0.2, 3.0, 7500.0, 0.01, 20.0, 0.3, 7719.0]
    assert _loss_rose(history(claims, [7500.0] * 7 + [7519.0]), 0.1, full_batch=False) is None
    assert _loss_rose(history(claims), 0.1, full_batch=False) is None  # too few to tell
    noisy = [0.01 if i % 2 else 5.0 for i in range(200)]
    assert _loss_rose(history(noisy), 0.1, full_batch=False) is None
    assert _loss_rose(history([2.0, 1.0, 0.5]), 0.1, full_batch=True) is None
    assert _loss_rose(history([2.0]), 0.1, full_batch=True) is None
    rose = _loss_rose(history([1.0, 1e9]), None, full_batch=True)
    assert rose is not None and "(now" not in rose


def three_classes_csv(tmp_path: Path) -> Path:
    """200 rows of 3 features, 3 classes: an mlp at learning rate 1000 diverges on it."""
    X = np.random.default_rng(1).standard_normal((200, 3))
    data = tmp_path / "cls3.csv"
    data.write_text(
        "a,b,c,y\n" + "".join(f"{a},{b},{c},{int(a > 0) + int(b > 0)}\n" for a, b, c in X)
    )
    return data


def test_train_warns_when_the_job_diverged_without_overflowing(tmp_path, capsys):
    data = three_classes_csv(tmp_path)
    flags = ["--label", "y", "--model", "mlp", "--hidden", "3", "--rounds", "20", "--workers", "2"]
    assert main(train_args(data, tmp_path / "run", *flags, "--lr", "1000", "--json")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(summary["warnings"]) == 1 and "the job diverged" in summary["warnings"][0]
    assert main(train_args(data, tmp_path / "ok", *flags, "--lr", "0.05", "--json")) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["warnings"] == []


def test_a_job_that_overflows_fails_by_name_without_numpy_warnings(tmp_path, capsys):
    """numpy's overflow warnings reached the terminal before ModelDiverged said it all."""
    data = three_classes_csv(tmp_path)
    flags = ["--label", "y", "--model", "mlp", "--hidden", "3", "--rounds", "150"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a warning would fail the step instead
        rc = main(train_args(data, tmp_path / "run", *flags, "--workers", "2", "--lr", "1000"))
    assert rc == 1
    err = capsys.readouterr().err
    assert "failed: ModelDiverged: round" in err and "RuntimeWarning" not in err


def test_a_later_job_that_did_not_finish_is_named_beside_the_model_it_left(tmp_path, capsys):
    """An interrupted train --overwrite keeps the old model (as it should); evaluate and
    predict scored it without a word, though the user had asked for a new one."""
    out, other = tmp_path / "run", tmp_path / "other"
    flags = ["--label", "price", "--rounds", "3", "--workers", "2"]
    assert main(train_args(HOUSES, out, *flags, "--job-id", "old")) == 0
    assert main(train_args(HOUSES, other, *flags, "--job-id", "new")) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), str(HOUSES), "--json"]) == 0
    assert "warning" not in capsys.readouterr().err
    # job "new" as an interrupted train --overwrite into `out` leaves it: running, no model
    jobs = out / "state" / "DataBucket" / "jobs"
    shutil.copytree(other / "state" / "DataBucket" / "jobs" / "new", jobs / "new")
    (jobs / "new" / "model" / "model.json").unlink()
    status = json.loads((jobs / "new" / "status.json").read_text())
    (jobs / "new" / "status.json").write_text(json.dumps({**status, "state": "RUNNING"}))
    assert main(["evaluate", str(out), str(HOUSES), "--json"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"warning: {out}/model.json is job old's; job new, started here after it, stopped" in err
    assert f"continue it with: lambdagrad resume new --out {out} --overwrite" in err
    assert main(["predict", str(out), str(HOUSES), "--out", str(tmp_path / "p.csv")]) == 0
    assert "job new, started here after it, stopped" in " ".join(capsys.readouterr().err.split())


def test_counts_are_singular_for_one():
    from lambdagrad.cli import _counted

    assert (_counted(1, "round"), _counted(2, "round"), _counted(0, "point")) == (
        "1 round",
        "2 rounds",
        "0 points",
    )


def test_columns_excluded_from_training_are_ignored_by_evaluate_and_predict(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 3))
    data = tmp_path / "withid.csv"
    data.write_text(
        "id,a,b,c,notes,y\n"
        + "".join(
            f"h{i},{a},{b},{c},note {i},{a + 2 * b + 3 * c}\n" for i, (a, b, c) in enumerate(X)
        )
    )
    out = tmp_path / "run"
    flags = ["--label", "y", "--exclude", "id,notes", "--rounds", "60", "--workers", "2"]
    assert main(train_args(data, out, *flags)) == 0
    model = json.loads((out / "model.json").read_text())
    assert model["feature_names"] == ["a", "b", "c"]
    assert model["spec"]["dataset"]["exclude"] == ["id", "notes"]
    capsys.readouterr()
    assert main(["evaluate", str(out), str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["r2"] > 0.99
    assert main(["predict", str(out), str(data), "--out", str(tmp_path / "p.csv")]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 301
    # without it the id is "not a number"; a misspelt one is named with the header
    assert main(train_args(data, tmp_path / "no", "--label", "y")) == 1
    err = capsys.readouterr().err
    assert "column 'id': 'h0' is not a number (a column that is not a feature is left out" in err
    assert main(train_args(data, tmp_path / "no", "--label", "y", "--exclude", "ID")) == 1
    assert "dataset.exclude names no column 'ID'" in capsys.readouterr().err


def test_ctrl_c_quiets_the_interpreter_of_the_executions_it_cuts():
    """Interrupted, the engine stops its executions mid-step; moto's interpreter logged every
    task it cut (kilobytes after the resume command)."""
    import argparse
    import logging

    from lambdagrad.cli import open_stack

    moto_log = logging.getLogger("moto")
    level = moto_log.level
    try:
        with pytest.raises(KeyboardInterrupt), open_stack(argparse.Namespace(template=None)):
            raise KeyboardInterrupt
        assert moto_log.level > logging.CRITICAL
    finally:
        moto_log.setLevel(level)


def test_a_stopped_job_reports_its_last_committed_round(tmp_path, capsys):
    """status.json lags by up to a second; the metrics record, written last, commits a round
    (a round with params and optimizer state but no record is not resumed from)."""
    run = tmp_path / "run"
    flags = ["--label", "price", "--rounds", "12", "--workers", "2", "--job-id", "st"]
    assert main(train_args(HOUSES, run, *flags)) == 0
    records = run / "state" / "DataBucket" / "jobs" / "st"
    for path in (run / "model.json", run / "model.npz", records / "cost.json"):
        path.unlink()
    shutil.rmtree(records / "model")
    status = json.loads((records / "status.json").read_text())
    stale = {**status, "state": "RUNNING", "round": 5, "train_loss": 9.9}
    (records / "status.json").write_text(json.dumps(stale))
    (records / "metrics" / "00000012.json").unlink()  # killed between the writes of round 12
    eleven = json.loads((records / "metrics" / "00000011.json").read_text())
    capsys.readouterr()
    assert main(["status", "st", "--out", str(run), "--json"]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["round"]) == ("STOPPED", 11)
    assert shown["train_loss"] == eleven["train_loss"]
    assert main(["resume", "st", "--out", str(run)]) == 0  # from where status said
    assert "job st: resumed from round 11" in " ".join(capsys.readouterr().err.split())
