"""Sweeps: grid expansion, point job ids, the execution input, ranking over hand-written job
state in an in-memory S3, the follow-up of continued jobs, and the reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from lambdagrad import sweep, sweep_report
from lambdagrad.spec import JOB_ID_PATTERN, SpecError
from lambdagrad.store import JobKeys, MemoryS3, Store
from lambdagrad.sweep import SweepError

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "sweep-bucket"
LR, BS = "optimizer.learning_rate", "training.batch_size"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def base_spec() -> dict:
    doc = json.loads((ROOT / "events" / "jobs" / "houses-linear.json").read_text())
    doc["training"] = {**doc["training"], "rounds": 10}
    doc["training"].pop("epochs")
    return doc


# ---- grid -------------------------------------------------------------------------------
def test_grid_is_the_product_in_key_order_last_key_fastest():
    points = sweep.expand_grid(base_spec(), {LR: [0.1, 0.01, 50.0], BS: [32, "full"]})
    assert [tuple(p["params"].values()) for p in points] == [
        (0.1, 32),
        (0.1, "full"),
        (0.01, 32),
        (0.01, "full"),
        (50.0, 32),
        (50.0, "full"),
    ]
    assert [list(p["params"]) for p in points] == [[LR, BS]] * 6
    for p in points:
        assert p["spec"]["optimizer"]["learning_rate"] == p["params"][LR]
        assert p["spec"]["training"]["batch_size"] == p["params"][BS]
        assert p["spec"]["dataset"] == base_spec()["dataset"]
        assert "job_id" not in p["spec"]
    # the other order of keys is another order of points
    flipped = sweep.expand_grid(base_spec(), {BS: [32, "full"], LR: [0.1, 0.01, 50.0]})
    assert [tuple(p["params"].values()) for p in flipped][:3] == [
        (32, 0.1),
        (32, 0.01),
        (32, 50.0),
    ]


def test_grid_does_not_touch_the_base_spec_and_reaches_any_field():
    base = base_spec()
    before = json.dumps(base, sort_keys=True)
    points = sweep.expand_grid(
        base,
        {"model.type": ["mlp"], "model.hidden": [[8], [16, 8]], "optimizer.name": ["adam"]},
    )
    assert json.dumps(base, sort_keys=True) == before
    assert [p["spec"]["model"]["hidden"] for p in points] == [[8], [16, 8]]
    assert all(p["spec"]["model"]["l2"] == 0.0 for p in points)  # from the base
    # a group the base does not have is created
    del base["optimizer"]
    (point,) = sweep.expand_grid(base, {"optimizer.warmup": [5]})
    assert point["spec"]["optimizer"] == {"warmup": 5}


def test_invalid_points_are_named_with_their_field():
    with pytest.raises(SpecError) as err:
        sweep.expand_grid(base_spec(), {LR: [0.1, 5000.0], BS: [32, 0]})
    msg = str(err.value)
    assert "3 of 4 grid points are invalid" in msg
    assert "grid point 1 (optimizer.learning_rate=0.1, training.batch_size=0)" in msg
    assert "grid point 2 (optimizer.learning_rate=5000.0, training.batch_size=32)" in msg
    assert "optimizer.learning_rate" in msg and "training.batch_size" in msg
    assert "grid point 0 " not in msg


def test_a_broken_base_spec_is_reported_once():
    base = base_spec()
    base["dataset"]["uri"] = "not-s3"
    with pytest.raises(SpecError, match=r"all 2 grid points are invalid .*dataset\.uri"):
        sweep.expand_grid(base, {LR: [0.1, 0.2]})


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"optimizer.learnig_rate": [0.1]}, "optimizer has no field 'learnig_rate'"),
        ({"optimiser.learning_rate": [0.1]}, "the spec has no field 'optimiser'"),
        ({"optimizer": [{"name": "adam"}]}, "names a group"),
        ({"optimizer.name.x": ["adam"]}, "is a value"),
        ({"job_id": ["a"]}, "set by the sweep"),
        ({"optimizer..name": ["adam"]}, "dotted spec path"),
        ({LR: []}, "no values"),
        ({LR: 0.1}, "list of values"),
        ({LR: "0.1"}, "list of values"),
        ({LR: [0.1, 0.1]}, "listed twice"),
        ({LR: [0.1] * 1, BS: list(range(1, 1002))}, "at most 1000"),
    ],
)
def test_bad_grids_are_refused(grid, message):
    with pytest.raises(SweepError, match=re.escape(message)):
        sweep.expand_grid(base_spec(), grid)


# ---- ids and input ------------------------------------------------------------------------
def test_a_grid_of_mini_batches_without_a_validation_split_is_refused():
    """Ranked by the last round's training loss, a 4-row batch's loss beat full batches."""
    doc = base_spec()
    doc["dataset"] = {**doc["dataset"], "validation": 0}
    with pytest.raises(
        SweepError,
        match=r"grid point 0 .* has no validation split and trains "
        r"on mini-batches: .*set dataset\.validation",
    ):
        sweep.expand_grid(doc, {LR: [0.01, 0.1], BS: [4, "full"]})
    # full batches only: the last round's loss is the loss on all the training rows
    points = sweep.expand_grid(doc, {LR: [0.01, 0.1], BS: ["full"]})
    assert len(points) == 2
    doc["dataset"]["validation"] = 0.1
    assert len(sweep.expand_grid(doc, {LR: [0.01, 0.1], BS: [4, "full"]})) == 4


def test_point_job_ids_are_deterministic_valid_job_ids():
    assert sweep.point_job_id("lr-sweep", 0) == "lr-sweep-p000"
    assert sweep.point_job_id("lr-sweep", 42) == "lr-sweep-p042"
    longest = "s" * 55
    job_id = sweep.point_job_id(longest, 999)
    assert re.match(JOB_ID_PATTERN, job_id) and len(job_id) == 60
    JobKeys(job_id)  # the store accepts it


@pytest.mark.parametrize("sweep_id", ["", "-x", "a b", "a/b", "a..b", "s" * 56, "é"])
def test_bad_sweep_ids_are_refused(sweep_id):
    with pytest.raises(SweepError, match="invalid sweep id"):
        sweep.point_job_id(sweep_id, 0)


@pytest.mark.parametrize("index", [-1, 1000, 1.0, True])
def test_bad_point_indices_are_refused(index):
    with pytest.raises(SweepError):
        sweep.point_job_id("s", index)


def test_sweep_input_shape():
    points = sweep.expand_grid(base_spec(), {LR: [0.1, 0.01], BS: [32]})
    doc = sweep.sweep_input("lr", points, max_concurrency=3)
    assert set(doc) == {"sweep_id", "points", "max_concurrency"}
    assert doc["sweep_id"] == "lr" and doc["max_concurrency"] == 3
    assert [p["index"] for p in doc["points"]] == [0, 1]
    assert [p["job_id"] for p in doc["points"]] == ["lr-p000", "lr-p001"]
    assert doc["points"][1]["params"] == {LR: 0.01, BS: 32}
    assert doc["points"][1]["spec"] == points[1]["spec"]
    json.dumps(doc, allow_nan=False)


@pytest.mark.parametrize("max_concurrency", [0, 41, 2.5, True, "4"])
def test_sweep_input_refuses_bad_concurrency(max_concurrency):
    points = sweep.expand_grid(base_spec(), {LR: [0.1]})
    with pytest.raises(SweepError, match="max_concurrency"):
        sweep.sweep_input("s", points, max_concurrency=max_concurrency)


def test_sweep_input_refuses_invalid_or_no_points():
    with pytest.raises(SweepError, match="no points"):
        sweep.sweep_input("s", [], 2)
    bad = {"params": {}, "spec": {**base_spec(), "training": {"workers": 0}}}
    with pytest.raises(SpecError, match=r"point 0: .*training\.workers"):
        sweep.sweep_input("s", [bad], 2)


def test_sweep_input_over_200_kib_is_refused_with_a_clear_message():
    # ~600 points of a ~400-byte spec: well over 200 KiB
    points = sweep.expand_grid(
        base_spec(),
        {LR: [round(0.001 * (i + 1), 4) for i in range(30)], "training.seed": list(range(20))},
    )
    with pytest.raises(SweepError) as err:
        sweep.sweep_input("big", points, 10)
    msg = str(err.value)
    assert "KiB" in msg and "200 KiB limit" in msg and "600 points" in msg
    assert "split the grid" in msg
    # a part of it fits
    fits = int(re.search(r"about (\d+) points", msg).group(1))
    doc = sweep.sweep_input("big", points[: fits - 1], 10)
    assert len(json.dumps(doc, separators=(",", ":")).encode()) <= sweep.MAX_INPUT_BYTES


# ---- select_best ----------------------------------------------------------------------
def history_csv(val: list[float | None], train: list[float] | None = None) -> bytes:
    train = train or [v or 1.0 for v in val]
    lines = ["round,train_loss,validation_loss,seconds"]
    for i, (t, v) in enumerate(zip(train, val, strict=True), start=1):
        lines.append(f"{i},{t!r},{'' if v is None else repr(v)},0.0100")
    return ("\n".join(lines) + "\n").encode()


def succeeded(store: Store, job_id: str, val: float | None, train: float, curve: list) -> None:
    keys = JobKeys(job_id)
    store.put_json(
        keys.status,
        {
            "job_id": job_id,
            "state": "SUCCEEDED",
            "round": len(curve),
            "model_round": len(curve),
            "metrics": {"train_loss": train, "validation_loss": val, "validation": {}},
            "updated_at": 1.0,
        },
    )
    store.put_bytes(keys.history, history_csv(curve))


def failed(store: Store, job_id: str, error: str, records: list[tuple[float, float]]) -> None:
    keys = JobKeys(job_id)
    store.put_json(
        keys.status,
        {"job_id": job_id, "state": "FAILED", "error": error, "message": f"{error}: details"},
    )
    for i, (t, v) in enumerate(records, start=1):
        store.put_json(
            keys.metrics(i),
            {"round": i, "train_loss": t, "validation_loss": v, "finished_at": float(i)},
        )


def iteration(index: int, params: dict, failed_: bool = False, error: str | None = None) -> dict:
    job_id = sweep.point_job_id("sw", index)
    return {"index": index, "job_id": job_id, "params": params, "failed": failed_, "error": error}


@pytest.fixture
def store() -> Store:
    return Store(MemoryS3(), BUCKET)


def mixed_sweep(store: Store) -> list[dict]:
    """0 ok (0.5), 1 diverged, 2 ok (0.2, tie with 4), 3 failed (DataError), 4 ok (0.2)."""
    succeeded(store, "sw-p000", 0.5, 0.6, [2.0, 1.0, 0.5])
    failed(store, "sw-p001", "ModelDiverged", [(10.0, 20.0), (1e6, 1e9)])
    succeeded(store, "sw-p002", 0.2, 0.3, [1.5, 0.2])
    failed(store, "sw-p003", "DataError", [])
    succeeded(store, "sw-p004", 0.2, 0.1, [0.9, 0.2])
    return [
        iteration(4, {LR: 0.01, BS: "full"}),
        iteration(0, {LR: 0.1, BS: 32}),
        iteration(1, {LR: 50.0, BS: 32}, True, "States.TaskFailed"),
        iteration(2, {LR: 0.01, BS: 32}),
        iteration(3, {LR: 0.1, BS: "full"}, True, "States.TaskFailed"),
    ]


def test_select_best_ranks_marks_diverged_and_keeps_failures(store):
    result = sweep.select_best(store, "sw", mixed_sweep(store))
    assert store.get_json("sweeps/sw/result.json") == result
    assert result["sweep_id"] == "sw" and result["ranked_by"] == "validation_loss"
    by_index = {r["index"]: r for r in result["results"]}
    assert [r["index"] for r in result["results"]] == [0, 1, 2, 3, 4]
    assert [by_index[i]["status"] for i in range(5)] == [
        "SUCCEEDED",
        "DIVERGED",
        "SUCCEEDED",
        "FAILED",
        "SUCCEEDED",
    ]
    assert result["counts"] == {"SUCCEEDED": 3, "FAILED": 1, "DIVERGED": 1}
    # tie at 0.2 between points 2 and 4: the lower index wins
    assert result["best"] == {
        "index": 2,
        "job_id": "sw-p002",
        "params": {LR: 0.01, BS: 32},
        "validation_loss": 0.2,
        "train_loss": 0.3,
    }
    ok = by_index[0]
    assert (ok["rounds"], ok["train_loss"], ok["validation_loss"]) == (3, 0.6, 0.5)
    assert ok["curve"] == [[1, 2.0], [2, 1.0], [3, 0.5]] and ok["error"] is None
    div = by_index[1]
    assert div["error"] == "ModelDiverged" and div["message"] == "ModelDiverged: details"
    assert div["rounds"] == 2 and div["validation_loss"] == 1e9
    assert div["curve"] == [[1, 20.0], [2, 1e9]]  # from the metric records
    bad = by_index[3]
    assert bad["error"] == "DataError" and bad["curve"] == [] and bad["rounds"] is None


def test_select_best_with_every_point_failed_writes_best_null(store):
    failed(store, "sw-p000", "ModelDiverged", [(1.0, 2.0)])
    failed(store, "sw-p001", "DataError", [])
    points = [iteration(0, {LR: 50.0}, True, "States.TaskFailed"), iteration(1, {LR: 60.0})]
    result = sweep.select_best(store, "sw", points)
    assert result["best"] is None
    assert store.get_json("sweeps/sw/result.json")["best"] is None
    assert [r["status"] for r in result["results"]] == ["DIVERGED", "FAILED"]


def test_select_best_without_validation_ranks_by_train_loss(store):
    succeeded(store, "sw-p000", None, 0.4, [None, None])
    succeeded(store, "sw-p001", None, 0.3, [None, None])
    result = sweep.select_best(store, "sw", [iteration(0, {}), iteration(1, {})])
    assert result["ranked_by"] == "train_loss"
    assert result["best"]["index"] == 1 and result["best"]["validation_loss"] is None
    assert result["results"][0]["curve"] == [[1, 1.0], [2, 1.0]]  # the train loss


def test_a_point_that_never_ran_or_ran_over_an_old_job_is_failed(store):
    succeeded(store, "sw-p001", 0.1, 0.1, [0.1])  # an older job with the same id
    points = [
        iteration(0, {}, True, "StepFunctions.ExecutionAlreadyExistsException"),
        iteration(1, {}, True, "StepFunctions.ExecutionAlreadyExistsException"),
    ]
    result = sweep.select_best(store, "sw", points)
    assert [r["status"] for r in result["results"]] == ["FAILED", "FAILED"]
    assert {r["error"] for r in result["results"]} == {
        "StepFunctions.ExecutionAlreadyExistsException"
    }
    assert "earlier run" in result["results"][1]["message"]
    assert result["best"] is None


def test_curves_are_subsampled_to_200_points_keeping_both_ends(store):
    curve = [1.0 / (i + 1) for i in range(1000)]
    succeeded(store, "sw-p000", curve[-1], 0.1, curve)
    result = sweep.select_best(store, "sw", [iteration(0, {})])
    got = result["results"][0]["curve"]
    assert len(got) <= 200
    assert got[0] == [1, 1.0] and got[-1] == [1000, curve[-1]]
    rounds = [r for r, _ in got]
    assert rounds == sorted(set(rounds))


def test_select_best_step_returns_a_small_summary(store):
    events: list[tuple] = []
    out = sweep.select_best_step(
        store,
        {"sweep_id": "sw", "points": mixed_sweep(store)},
        lambda *a: events.append(a),
    )
    assert out == {
        "sweep_id": "sw",
        "result": "sweeps/sw/result.json",
        "best": sweep.select_best(store, "sw", mixed_sweep(store))["best"],
        "ranked_by": "validation_loss",
        "counts": {"SUCCEEDED": 3, "FAILED": 1, "DIVERGED": 1},
    }
    assert ("DivergedPoints", 1, "Count") in events
    assert len(json.dumps(out)) < 1000


# ---- following a continued job ----------------------------------------------------------
def test_point_status_of_a_running_job_estimates_the_wait(store):
    keys = JobKeys("sw-p000")
    store.put_json(keys.meta, {"prepared_at": 1000.0})
    store.put_json(
        keys.status, {"state": "RUNNING", "round": 100, "rounds": 400, "updated_at": 1050.0}
    )
    out = sweep.point_status(store, "sw-p000", now=1051.0)
    # 50 s for 100 rounds, 300 rounds to go -> 150 s
    assert out == {"job_id": "sw-p000", "state": "RUNNING", "error": None, "wait_seconds": 150}
    store.put_json(
        keys.status, {"state": "RUNNING", "round": 1, "rounds": 100000, "updated_at": 1050.0}
    )
    assert sweep.point_status(store, "sw-p000", now=1051.0)["wait_seconds"] == 900
    store.put_json(keys.status, {"state": "RUNNING", "round": 0, "rounds": 10})
    assert sweep.point_status(store, "sw-p000", now=1051.0)["wait_seconds"] == 2


def test_point_status_of_finished_missing_and_stalled_jobs(store):
    succeeded(store, "sw-p000", 0.1, 0.1, [0.1])
    failed(store, "sw-p001", "ModelDiverged", [])
    store.put_json(JobKeys("sw-p002").status, {"state": "RUNNING", "updated_at": 0.0})
    via_step = sweep.select_best_step(store, {"action": "point_status", "job_id": "sw-p000"})
    assert via_step["state"] == "SUCCEEDED"
    assert sweep.point_status(store, "sw-p001")["error"] == "ModelDiverged"
    assert sweep.point_status(store, "sw-p002", now=7200.0)["error"] == "Stalled"
    assert sweep.point_status(store, "sw-p003")["error"] == "StatusMissing"
    with pytest.raises(SweepError, match="unknown action"):
        sweep.select_best_step(store, {"action": "nope"})


# ---- reports ------------------------------------------------------------------------
def test_table_lists_every_point_and_marks_the_best(store):
    result = sweep.select_best(store, "sw", mixed_sweep(store))
    text = sweep_report.table(result)
    lines = text.splitlines()
    assert LR in lines[0] and BS in lines[0] and "validation_loss" in lines[0]
    rows = lines[2:7]
    assert len(rows) == 5
    assert [row.split()[0] for row in rows].count("*") == 1
    best_row = next(row for row in rows if row.startswith("*"))
    assert best_row.split()[1] == "2" and "SUCCEEDED" in best_row
    assert "DIVERGED" in text and "ModelDiverged" in text and "DataError" in text
    assert "full" in text and "50" in text
    assert "best by validation_loss" in lines[-1]


def test_pngs_are_pngs(store):
    result = sweep.select_best(store, "sw", mixed_sweep(store))
    curves = sweep_report.curves_png(result)
    heat = sweep_report.heatmap_png(result)
    assert curves.startswith(PNG_MAGIC) and len(curves) > 1000
    assert heat.startswith(PNG_MAGIC) and len(heat) > 1000
    # no success at all, and a parameter that was not swept, still draw
    failed(store, "sw-p000", "ModelDiverged", [])
    empty = sweep.select_best(store, "sw", [iteration(0, {LR: 50.0}, True, "x")])
    assert sweep_report.curves_png(empty).startswith(PNG_MAGIC)
    assert sweep_report.heatmap_png(empty).startswith(PNG_MAGIC)
    assert "no point succeeded" in sweep_report.table(empty)


def test_summary_json(store):
    result = sweep.select_best(store, "sw", mixed_sweep(store))
    summary = sweep_report.summary_json(result)
    assert summary["best"] == {"lr": 0.01, "batch_size": 32, "validation_loss": 0.2}
    assert [r["index"] for r in summary["results"]] == [0, 1, 2, 3, 4]
    assert summary["results"][1]["status"] == "DIVERGED"
    assert "curve" not in summary["results"][0]
    json.dumps(summary, allow_nan=False)
    assert sweep_report.summary_json({**result, "best": None})["best"] is None


def test_select_best_handler_imports():
    import importlib.util

    path = ROOT / "functions" / "select_best" / "app.py"
    spec = importlib.util.spec_from_file_location("select_best_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.lambda_handler)


def test_sweep_asl_is_jsonpath_and_keeps_iterations_small():
    text = (ROOT / "statemachine" / "sweep.asl.json").read_text()
    asl = json.loads(text)
    assert "JSONata" not in text and '"Assign"' not in text
    assert set(re.findall(r"\$\{(\w+)\}", text)) == {
        "TrainStateMachineArn",
        "SelectBestFunctionArn",
    }
    points = asl["States"]["Points"]
    assert points["MaxConcurrencyPath"] == "$.max_concurrency"
    assert points["ResultPath"] == "$.points"  # the small results replace the specs
    inner = points["ItemProcessor"]["States"]
    train = inner["TrainPoint"]
    assert train["Resource"] == "arn:aws:states:::states:startExecution.sync:2"
    assert train["Parameters"]["Name.$"] == "$.job_id"
    assert train["Catch"][0]["ErrorEquals"] == ["States.ALL"]
    for name in ("PointSucceeded", "PointFailed", "PointFailedLater"):
        assert set(inner[name]["Parameters"]) <= {
            "index.$",
            "job_id.$",
            "params.$",
            "failed",
            "error",
            "error.$",
        }
    retry = asl["States"]["SelectBest"]["Retry"][0]
    assert (
        retry["JitterStrategy"] == "FULL"
        and "Lambda.TooManyRequestsException" in (retry["ErrorEquals"])
    )


def test_result_keeps_the_grid_order_of_params_through_json(store):
    points = [iteration(0, {BS: 32, LR: 0.1}), iteration(1, {BS: 32, LR: 0.2})]
    sweep.select_best(store, "sw", points)
    stored = store.get_json("sweeps/sw/result.json")  # written with sorted keys
    assert list(stored["results"][0]["params"]) == [LR, BS]
    assert stored["param_names"] == [BS, LR]
    header = sweep_report.table(stored).splitlines()[0]
    assert header.index(BS) < header.index(LR)
