"""The bad-input catalogue, engine half: the CLI exits non-zero with one line naming the
place, an execution fails with a named error (the States.TaskFailed cause carries the
error name), and neither leaves a model behind nor replaces a good one — not the files in
an existing ``--out`` directory, not the registry pointer of the same ``model_name``.

Every job here runs on the session's embedded engine (``--stack`` for the CLI), so the
module pays for one deployment and one small good model.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
from pathlib import Path

import numpy as np
import pytest
from lambdagrad.cli import main
from lambdagrad.client import JobFailedError, StackClient
from lambdagrad.registry import lookup
from lambdagrad.spec import MAX_SPEC_BYTES
from lambdagrad.store import JobKeys
from lambdagrad.uploads import upload_job_id

from tests.conftest import EVENTS, job_doc
from tests.integration.test_upload import executions_for

HOUSES = EVENTS / "data" / "houses.csv"
MODEL_NAME = "bad-input-good"


def unique(name: str) -> str:
    return f"bi-{name}-{secrets.token_hex(3)}"


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def client(engine) -> StackClient:
    return StackClient.from_outputs(engine.outputs, engine.client)


@pytest.fixture(scope="module")
def good(engine, client, tmp_path_factory) -> Path:
    """A good model in an --out directory, registered as MODEL_NAME."""
    out = tmp_path_factory.mktemp("good") / "model"
    rc = main(
        [
            "train",
            str(HOUSES),
            "--label",
            "price",
            "--rounds",
            "3",
            "--workers",
            "1",
            "--job-id",
            unique("good"),
            "--model-name",
            MODEL_NAME,
            "--out",
            str(out),
            "--quiet",
            *stack_flags(engine),
        ]
    )
    assert rc == 0 and (out / "model.json").is_file()
    engine.reset()
    return out


def stack_flags(engine) -> list[str]:
    return ["--stack", engine.stack_name, "--region", engine.region]


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """Bad files a user might hand the CLI."""
    made = {
        "ragged.csv": b"sqft,price\n1,2\n3\n5,6\n",
        "strings.csv": b"sqft,price\n1,2\nbig,4\n5,6\n",
        "wide.csv": b"a,b,c,d,price\n1,2,3,4,5\n6,7,8,9,10\n",
        "tiny.csv": b"sqft,price\n1,2\n3,4\n5,6\n7,8\n9,10\n",
        "bad-json.json": b'{"dataset": {"label": "price",}}',
        "list.json": b"[1, 2]",
        "latin1.json": b'{"dataset": {"label": "pr\xe9x"}}',
        "huge.json": json.dumps({"dataset": {"label": "p" * MAX_SPEC_BYTES}}).encode(),
        "colour.json": b'{"dataset": {"colour": "red"}}',
        "limit.json": b'{"dataset": {"max_features": 3}}',
    }
    array = np.empty((3, 2), dtype=object)
    array[:] = [[1.0, 2.0], [3.0, {"x": 1}], [5.0, 6.0]]
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    made["objects.npy"] = buf.getvalue()
    paths = {}
    for name, data in made.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    return paths


# ---- the CLI: non-zero exit, one line naming the place, --out and registry untouched ----
# (id, argv after "train" given the files, needles in the error line)
# fmt: off
CLI_TRAIN = [
    ("cli-data-missing", lambda f: [str(f["ragged.csv"].with_name("nope.csv"))],
     ["nope.csv: no such file"]),
    ("cli-ragged-csv", lambda f: [str(f["ragged.csv"]), "--label", "price"],
     ["ragged.csv line 3", "expected 2 fields"]),
    ("cli-non-numeric-csv", lambda f: [str(f["strings.csv"]), "--label", "price"],
     ["strings.csv line 3, column 'sqft'", "'big' is not a number"]),
    ("cli-object-npy", lambda f: [str(f["objects.npy"])],
     ["objects.npy holds Python objects; refusing to unpickle"]),
    ("cli-config-invalid-json", lambda f: [str(HOUSES), "--config", str(f["bad-json.json"])],
     ["bad-json.json line 1, column 31: invalid JSON"]),
    ("cli-config-not-an-object", lambda f: [str(HOUSES), "--config", str(f["list.json"])],
     ["list.json: a job spec must be a JSON object"]),
    ("cli-config-not-utf8", lambda f: [str(HOUSES), "--config", str(f["latin1.json"])],
     ["latin1.json line 1: not valid UTF-8"]),
    ("cli-config-oversized", lambda f: [str(HOUSES), "--config", str(f["huge.json"])],
     ["huge.json:", "a job spec is at most 65536 (64 KiB)"]),
    ("cli-config-unknown-field", lambda f: [str(HOUSES), "--config", str(f["colour.json"])],
     ["dataset.colour: unknown field"]),
    ("cli-features-over-limit", lambda f: [str(f["wide.csv"]), "--config", str(f["limit.json"])],
     ["wide.csv: 4 feature columns; the limit is 3"]),
    ("cli-negative-lr", lambda f: [str(HOUSES), "--label", "price", "--lr", "-0.1"],
     ["optimizer.learning_rate (--lr): Input should be greater than 0"]),
    ("cli-zero-workers", lambda f: [str(HOUSES), "--label", "price", "--workers", "0"],
     ["training.workers (--workers): Input should be greater than or equal to 1"]),
    ("cli-model-name-dotdot", lambda f: [str(HOUSES), "--model-name", "../houses"],
     ["output.model_name (--model-name): '../houses' does not match"]),
    ("cli-job-id-dotdot", lambda f: [str(HOUSES), "--job-id", "../other-job"],
     ["job_id: '../other-job' does not match"]),
    ("cli-s3-uri-dotdot", lambda f: ["s3://bucket/datasets/../../secret.csv"],
     ["dataset.uri", "no '..'"]),
]
# fmt: on


@pytest.mark.parametrize(
    ("argv", "needles"), [c[1:] for c in CLI_TRAIN], ids=[c[0] for c in CLI_TRAIN]
)
def test_cli_refuses_bad_input_and_keeps_the_good_model(
    engine, client, good, files, capsys, argv, needles
):
    before, pointer = digest(good), lookup(client.store, MODEL_NAME)
    args = ["train", *argv(files), "--out", str(good), "--overwrite", "--quiet"]
    rc = main([*args, *stack_flags(engine)])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.startswith("error: ") and "\n" not in err, err
    missing = [n for n in needles if n not in err]
    assert not missing, f"{err!r} lacks {missing}"
    assert digest(good) == before
    assert lookup(client.store, MODEL_NAME) == pointer


def test_cli_refuses_to_replace_a_model_without_overwrite(engine, good, capsys):
    before = digest(good)
    rc = main(["train", str(HOUSES), "--out", str(good), "--quiet", *stack_flags(engine)])
    assert rc == 1
    assert "already holds a model; pass --overwrite" in capsys.readouterr().err
    assert digest(good) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", str(HOUSES), "--batch-size", "zero"], "argument --batch-size: expected a "),
        # Python reads 1_0 as 10: a typo is not taken for another number
        (["train", str(HOUSES), "--lr", "1_0"], "argument --lr: expected a number, got '1_0'"),
        (["train", str(HOUSES), "--rounds", "1_0"], "argument --rounds: expected a whole number"),
        # an empty item was dropped: the sweep ran a grid the user did not write
        (["sweep", str(HOUSES), "--lr", "0.1,,0.2"], "argument --lr: an empty item in '0.1,,0.2'"),
        (["sweep", str(HOUSES), "--batch-size", "8,"], "argument --batch-size: an empty item in"),
        # the sweep's own name for it (max_concurrency) was what the user saw
        (
            ["sweep", str(HOUSES), "--lr", "0.1", "--concurrency", "0"],
            "argument --concurrency: expected a whole number of at least 1, got '0'",
        ),
        (["sweep", str(HOUSES), "--lr", "0.1", "--concurrency", "41"], "at most 40 points at once"),
        # --classes -3 said "got 1"; --rows 0 on a file fell back to the file's rows
        (
            ["estimate", str(HOUSES), "--classes", "-3"],
            "argument --classes: expected a whole number of at least 1, got '-3'",
        ),
        (["estimate", str(HOUSES), "--rows", "0"], "argument --rows: expected a whole number"),
    ],
)
def test_cli_bad_flag_value_is_a_usage_error(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_status_and_price_refuse_what_they_cannot_read(capsys):
    assert main(["status", "../x"]) == 1  # never a path: runs/../x
    assert capsys.readouterr().err.strip() == "error: invalid job id '../x'"
    argv = ["estimate", str(HOUSES), "--label", "price", "--price", "s3_get=1_0"]
    assert main(argv) == 1
    assert "--price 's3_get=1_0': '1_0' is not a number" in capsys.readouterr().err


def test_cli_batch_larger_than_data_is_refused_before_a_job_starts(
    engine, client, good, files, capsys
):
    """The CLI splits a local file as Prepare will and refuses a batch larger than the
    training rows before it starts anything (Prepare still refuses it for a job started any
    other way: test_execution_same_model_name_failing_keeps_the_registered_model); the same
    --out and model name keep the good model."""
    before, pointer = digest(good), lookup(client.store, MODEL_NAME)
    job_id = unique("batch")
    rc = main(
        [
            "train",
            str(files["tiny.csv"]),
            "--label",
            "price",
            "--batch-size",
            "64",
            "--workers",
            "1",
            "--job-id",
            job_id,
            "--model-name",
            MODEL_NAME,
            "--out",
            str(good),
            "--overwrite",
            "--quiet",
            *stack_flags(engine),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err == (
        "error: training.batch_size: 64 is larger than the 4 training rows "
        "(use a smaller batch or 'full')"
    )
    assert digest(good) == before
    assert lookup(client.store, MODEL_NAME) == pointer
    assert not client.store.list_keys(JobKeys(job_id).prefix)  # no job was started
    engine.reset()


def test_cli_predict_refuses_bad_rows(good, files, tmp_path, capsys):
    wrong_width = tmp_path / "wide.npy"
    np.save(wrong_width, np.ones((2, 7)))
    bad_cell = tmp_path / "rows.csv"  # the model's columns (only those are read), one bad cell
    bad_cell.write_text("id,sqft,bedrooms,age,distance_km\na,1,2,3,4\nb,big,2,3,4\n")
    cases = [
        (bad_cell, ["rows.csv line 3, column 'sqft'", "'big' is not a number"]),
        (files["strings.csv"], ["strings.csv: missing feature column(s) 'bedrooms', 'age'"]),
        (wrong_width, ["wide.npy: 7 feature columns, the model needs 4"]),
        (files["objects.npy"], ["objects.npy holds Python objects"]),
    ]
    for path, needles in cases:
        out = tmp_path / "predictions.csv"
        rc = main(["predict", str(good), str(path), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and all(n in err for n in needles), err
        assert not out.exists()


# ---- executions: a named error, the status says why, no model ---------------------------
def assert_failed_without_model(client: StackClient, job_id: str, error: str) -> dict:
    """The execution named ``job_id`` failed with ``error``; the job wrote no model."""
    arn = f"{client.state_machine_arn.replace(':stateMachine:', ':execution:')}:{job_id}"
    desc = client.wait_execution(arn, poll_seconds=0.05, timeout=60)
    assert desc["status"] == "FAILED" and desc.get("error") == error, desc
    assert not client.store.list_keys(JobKeys(job_id).prefix + "model/")
    return desc


def start_raw(client: StackClient, job_id: str, spec: dict) -> None:
    """Start the training machine with an input the CLI would have refused."""
    client.sfn.start_execution(
        stateMachineArn=client.state_machine_arn,
        name=job_id,
        input=json.dumps({"job_id": job_id, "spec": spec}),
    )


def houses_doc(client: StackClient, **groups) -> dict:
    doc = job_doc("houses-linear.json", **groups)
    doc["dataset"]["uri"] = client.upload_dataset(HOUSES)
    return doc


def test_execution_object_npy_fails_with_data_error(engine, client, files):
    job_id = unique("objects")
    doc = houses_doc(client, job_id=job_id, model={"type": "linear"})
    doc["dataset"] = {"uri": client.upload_dataset(files["objects.npy"])}
    start_raw(client, job_id, doc)
    with pytest.raises(JobFailedError) as err:
        client.follow(job_id, timeout=60)
    assert err.value.error == "DataError"
    assert "objects.npy holds Python objects; refusing to unpickle" in err.value.message
    assert_failed_without_model(client, job_id, "DataError")
    assert client.status(job_id)["state"] == "FAILED"
    engine.reset()


def test_execution_features_over_the_spec_limit_fails_with_data_error(engine, client):
    job_id = unique("wide")
    doc = houses_doc(client, job_id=job_id, dataset={"max_features": 3})
    start_raw(client, job_id, doc)
    with pytest.raises(JobFailedError) as err:
        client.follow(job_id, timeout=60)
    assert err.value.error == "DataError"
    assert "houses.csv: 4 feature columns; the limit is 3" in err.value.message
    assert_failed_without_model(client, job_id, "DataError")
    engine.reset()


def test_execution_spec_with_dotdot_uri_fails_with_spec_error(engine, client):
    """The engine's Prepare validates again: a spec that never went through the CLI."""
    job_id = unique("dotdot")
    doc = houses_doc(client, job_id=job_id)
    doc["dataset"]["uri"] = f"s3://{client.bucket}/datasets/../jobs/other/spec.json"
    start_raw(client, job_id, doc)
    desc = assert_failed_without_model(client, job_id, "SpecError")
    assert "dataset.uri" in desc["cause"] and "no '..'" in desc["cause"]
    assert client.status(job_id)["error"] == "SpecError"
    engine.reset()


def test_execution_job_id_with_dotdot_fails_before_any_write(engine, client):
    doc = houses_doc(client)
    name = unique("badid")
    client.sfn.start_execution(
        stateMachineArn=client.state_machine_arn,
        name=name,
        input=json.dumps({"job_id": "../" + name, "spec": doc}),
    )
    desc = assert_failed_without_model(client, name, "StoreError")
    assert f"invalid job id '../{name}'" in desc["cause"]
    assert not [key for key in client.store.list_keys("jobs/") if name in key]
    engine.reset()


def test_execution_same_model_name_failing_keeps_the_registered_model(engine, client, good):
    pointer = lookup(client.store, MODEL_NAME)
    job_id = unique("samename")
    doc = houses_doc(
        client, job_id=job_id, output={"model_name": MODEL_NAME}, training={"batch_size": 5000}
    )
    start_raw(client, job_id, doc)
    desc = assert_failed_without_model(client, job_id, "SpecError")
    assert "training.batch_size: 5000 is larger than the 1800 training rows" in desc["cause"]
    assert lookup(client.store, MODEL_NAME) == pointer
    engine.reset()


def test_a_finished_jobs_replayed_input_fails_and_keeps_its_model(engine, client, good):
    """A continuation input of a finished job started again (the console's "New execution"
    on one of its executions): it fails by name, and the job's model, status and
    registered name stay as they were."""
    job_id = json.loads((good / "model.json").read_text())["job_id"]
    keys = JobKeys(job_id)
    kept = [keys.model_json, keys.model_npz, keys.status, f"models/{MODEL_NAME}/current.json"]
    before = {key: client.store.get_bytes(key) for key in kept}
    progress = {"finished_at": 0.0, "train_loss": None, "best_round": None, "best_loss": None}
    replay = {"job_id": job_id, "round": 2, "shards": [0], "segment_end": 3}
    replay["progress"] = {**progress, "since_best": 0, "stop": None}
    name = unique("replay")
    client.sfn.start_execution(
        stateMachineArn=client.state_machine_arn, name=name, input=json.dumps(replay)
    )
    arn = f"{client.state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"
    desc = client.wait_execution(arn, poll_seconds=0.05, timeout=60)
    assert desc["status"] == "FAILED", desc
    assert desc.get("error") == "JobFinishedByAnotherExecution", desc
    assert f"job {job_id!r} already finished" in desc["cause"]
    assert {key: client.store.get_bytes(key) for key in kept} == before
    engine.reset()


@pytest.mark.parametrize(
    ("raw", "error", "needle"),
    [
        (
            [1, 2],
            "InvalidExecutionInput",
            "the execution input is not a job: expected a JSON object",
        ),
        (
            "train please",
            "InvalidExecutionInput",
            "the execution input is not a job: expected a JSON object",
        ),
        ({}, "InvalidExecutionInput", "an S3 upload event of jobs/incoming/<name>.json"),
        ({"colour": "red"}, "InvalidExecutionInput", "or a continuation of a job"),
        ({"round": 1, "shards": [0], "segment_end": 3}, "ContinuationError", "progress: missing"),
        (
            {"round": 1, "shards": 5, "segment_end": 3, "progress": {}},
            "ContinuationError",
            "shards: expected a non-empty list of shard numbers, got 5",
        ),
    ],
    ids=[
        "input-a-list",
        "input-a-string",
        "input-empty",
        "input-no-job",
        "continuation-without-progress",
        "continuation-shards-not-a-list",
    ],
)
def test_an_input_that_is_no_job_fails_by_name_and_touches_no_job(
    engine, client, good, raw, error, needle
):
    """Started by hand (the console, the API): an input that is not a job, or a continuation
    missing what the machine loops on, fails with a named error, not ``States.Runtime`` —
    and a continuation naming a job that exists leaves that job's records as they were."""
    job_id = json.loads((good / "model.json").read_text())["job_id"]
    if isinstance(raw, dict) and "round" in raw:
        raw = {"job_id": job_id, **raw}
    keys = JobKeys(job_id)
    before = {key: client.store.get_bytes(key) for key in (keys.status, keys.claim)}
    name = unique("raw")
    client.sfn.start_execution(
        stateMachineArn=client.state_machine_arn, name=name, input=json.dumps(raw)
    )
    arn = f"{client.state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"
    desc = client.wait_execution(arn, poll_seconds=0.05, timeout=60)
    assert desc["status"] == "FAILED" and desc.get("error") == error, desc
    assert needle in desc["cause"]
    assert {key: client.store.get_bytes(key) for key in before} == before
    assert not [key for key in client.store.list_keys("jobs/") if name in key]
    engine.reset()


def test_a_forged_continuation_of_no_job_fails_by_name_and_records_nothing(engine, client):
    """Every field a continuation carries, of the wrong type, for a job that never started:
    the worker names the field, and RecordFailure writes no status for a job that is not."""
    name = unique("forged")
    progress = {"finished_at": 0.0, "train_loss": None, "best_round": None, "best_loss": None}
    forged = {"job_id": name, "round": "x", "shards": [0], "segment_end": 3}
    forged["progress"] = {**progress, "since_best": 0, "stop": None}
    client.sfn.start_execution(
        stateMachineArn=client.state_machine_arn, name=name, input=json.dumps(forged)
    )
    arn = f"{client.state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"
    desc = client.wait_execution(arn, poll_seconds=0.05, timeout=60)
    assert desc["status"] == "FAILED" and desc.get("error") == "EventError", desc
    assert "round: expected an integer, got 'x'" in desc["cause"]
    assert not [key for key in client.store.list_keys("jobs/") if name in key]
    engine.reset()


# ---- uploaded job files -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "body", "needles"),
    [
        (
            "jobs/incoming/../../datasets/evil.json",
            None,
            ["'jobs/incoming/../../datasets/evil.json'", "no '..' segments"],
        ),
        (
            "jobs/incoming/huge.json",
            {"dataset": {"label": "p" * MAX_SPEC_BYTES}},
            ["jobs/incoming/huge.json", "a job spec is at most 65536"],
        ),
    ],
    ids=["upload-key-dotdot", "upload-oversized-spec"],
)
def test_uploaded_job_file_refused_with_spec_error(engine, client, key, body, needles):
    doc = houses_doc(client)
    doc.pop("job_id")
    doc["dataset"].update((body or {}).get("dataset", {}))
    put = client.s3.put_object(Bucket=client.bucket, Key=key, Body=json.dumps(doc).encode())
    job_id = upload_job_id(key, put["ETag"])
    (desc,) = executions_for(client, key, 1)
    assert desc["status"] == "FAILED" and desc.get("error") == "SpecError", desc
    missing = [n for n in needles if n not in desc["cause"]]
    assert not missing, f"{desc['cause']!r} lacks {missing}"
    assert not client.store.list_keys(JobKeys(job_id).prefix + "model/")
    engine.reset()
