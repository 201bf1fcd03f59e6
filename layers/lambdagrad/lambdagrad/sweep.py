"""Hyper-parameter sweeps: a grid of job specs, trained in parallel, ranked by loss.

A sweep is one execution of ``statemachine/sweep.asl.json``: a Map over the grid points,
each point one child execution of the training state machine (``startExecution.sync:2``,
named by :func:`point_job_id`, so a point is an ordinary job with ``jobs/<job_id>/``), then
:func:`select_best_step` reads every point's ``status.json`` and ``history.csv`` and writes
``sweeps/<sweep_id>/result.json``.

The training machine hands a long job to a fresh execution of itself (continue-as-new);
``.sync:2`` waits only for the first one, so the sweep then follows the job through its
``status.json`` (``select_best_step`` with ``action: point_status``), waiting about as long
as the job still needs between looks.

No boto3 here: everything goes through a :class:`~lambdagrad.store.Store`.

Example
-------
>>> base = {"dataset": {"uri": "s3://my-bucket/houses.csv", "label": "price"}}
>>> points = expand_grid(base, {"optimizer.learning_rate": [0.1, 0.01],
...                             "training.batch_size": [32, "full"]})
>>> [p["params"]["training.batch_size"] for p in points]
[32, 'full', 32, 'full']
>>> point_job_id("lr-bs", 3)
'lr-bs-p003'
>>> doc = sweep_input("lr-bs", points, max_concurrency=4)
>>> doc["points"][1]["job_id"], doc["max_concurrency"]
('lr-bs-p001', 4)
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, get_args

from pydantic import BaseModel

from lambdagrad.spec import JOB_ID_PATTERN, JobSpec, SpecError, parse_spec
from lambdagrad.store import JobKeys, Store, StoreError

__all__ = [
    "MAX_CONCURRENCY",
    "MAX_INPUT_BYTES",
    "MAX_POINTS",
    "SweepError",
    "expand_grid",
    "point_job_id",
    "point_status",
    "result_key",
    "select_best",
    "select_best_step",
    "sweep_input",
    "validate_sweep_id",
]

#: ``<sweep_id>-p<index:03d>`` must be a job id (60 characters at most).
SWEEP_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,54}$"
#: Points per sweep: indices 0..999 keep job ids at ``-pNNN``.
MAX_POINTS = 1000
#: An inline Map runs at most 40 iterations at once.
MAX_CONCURRENCY = 40
#: The execution input limit we keep to (Step Functions refuses state data over 256 KiB).
MAX_INPUT_BYTES = 200 * 1024
#: A curve in result.json has at most this many points.
MAX_CURVE_POINTS = 200
#: A RUNNING job whose status.json has not changed for this long is reported as stalled.
STALE_SECONDS = 3600.0
#: Bounds of the wait between two looks at a continued job (seconds).
MIN_POLL_SECONDS = 2
MAX_POLL_SECONDS = 900

_SWEEP_ID = re.compile(SWEEP_ID_PATTERN)
_JOB_ID = re.compile(JOB_ID_PATTERN)
STATUSES = ("SUCCEEDED", "FAILED", "DIVERGED")


class SweepError(ValueError):
    """A sweep cannot be built or evaluated; the message says what to change."""


# ---- building a sweep ----------------------------------------------------------------
def validate_sweep_id(sweep_id: str) -> str:
    """Return ``sweep_id`` if its point job ids are valid job ids, else raise SweepError."""
    if not isinstance(sweep_id, str) or not _SWEEP_ID.match(sweep_id):
        raise SweepError(
            f"invalid sweep id {sweep_id!r}: 1-55 characters, letters, digits, '-' and '_', "
            "starting with a letter or digit (point job ids append '-pNNN')"
        )
    return sweep_id


def point_job_id(sweep_id: str, index: int) -> str:
    """The job id (and child execution name) of point ``index``: ``<sweep_id>-p<index:03d>``."""
    validate_sweep_id(sweep_id)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_POINTS:
        raise SweepError(f"point index {index!r} must be an integer in 0..{MAX_POINTS - 1}")
    job_id = f"{sweep_id}-p{index:03d}"
    assert _JOB_ID.match(job_id), job_id  # guaranteed by the two checks above
    return job_id


def result_key(sweep_id: str) -> str:
    """Where :func:`select_best` writes the sweep's result."""
    return f"sweeps/{validate_sweep_id(sweep_id)}/result.json"


def _model_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_class(arg)
        if found is not None:
            return found
    return None


def _check_grid_key(key: Any) -> list[str]:
    """The parts of a dotted spec path, checked against the JobSpec fields."""
    if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
        raise SweepError(f"grid key {key!r}: expected a dotted spec path like 'optimizer.name'")
    parts = key.split(".")
    if parts == ["job_id"]:
        raise SweepError("grid key 'job_id': point job ids are set by the sweep")
    model: type[BaseModel] | None = JobSpec
    for depth, part in enumerate(parts):
        if model is None:
            leaf = ".".join(parts[:depth])
            raise SweepError(f"grid key {key!r}: {leaf!r} is a value, it has no field {part!r}")
        fields = model.model_fields
        if part not in fields:
            where = ".".join(parts[:depth]) or "the spec"
            raise SweepError(
                f"grid key {key!r}: {where} has no field {part!r} "
                f"(fields: {', '.join(sorted(fields))})"
            )
        model = _model_class(fields[part].annotation)
    if model is not None:
        raise SweepError(
            f"grid key {key!r} names a group; sweep one of its fields "
            f"({', '.join(f'{key}.{f}' for f in sorted(model.model_fields))})"
        )
    return parts


def _set_path(doc: dict[str, Any], parts: list[str], value: Any) -> None:
    node = doc
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise SweepError(f"base spec: {where} must be an object, got {child!r}")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def describe_point(index: int, params: Mapping[str, Any]) -> str:
    """How messages name a grid point: ``grid point 2 (training.batch_size=5000)``."""
    values = ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items()) or "the base spec"
    return f"grid point {index} ({values})"


def expand_grid(base_spec: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]) -> list[dict]:
    """Every combination of the grid's values applied to ``base_spec``, validated.

    ``grid`` maps dotted spec paths (``"optimizer.learning_rate"``, ``"training.batch_size"``,
    ``"model.hidden"``, any JobSpec field) to the values to try. The points are the
    Cartesian product in the grid's key order, the last key varying fastest. Each point is
    ``{"params": {path: value}, "spec": {...}}``, the spec validated by
    :func:`~lambdagrad.spec.parse_spec` (its ``job_id`` dropped: the sweep names points).

    Raises SweepError for a bad grid (unknown field, empty or repeated values, too many
    points) and SpecError naming every invalid point and its field.
    """
    if not isinstance(grid, Mapping):
        raise SweepError(f"grid must map spec paths to lists of values, got {type(grid).__name__}")
    paths: dict[str, list[str]] = {}
    axes: list[list[Any]] = []
    for key, values in grid.items():
        paths[key] = _check_grid_key(key)
        if isinstance(values, str | bytes | Mapping) or not isinstance(values, Sequence):
            raise SweepError(f"grid key {key!r}: expected a list of values, got {values!r}")
        if not values:
            raise SweepError(f"grid key {key!r}: no values to try")
        seen: set[str] = set()
        for v in values:
            text = json.dumps(v, sort_keys=True)
            if text in seen:
                raise SweepError(f"grid key {key!r}: value {text} is listed twice")
            seen.add(text)
        axes.append(list(values))
    total = math.prod(len(a) for a in axes)
    if total > MAX_POINTS:
        raise SweepError(f"the grid has {total} points; a sweep runs at most {MAX_POINTS}")

    base = copy.deepcopy(dict(base_spec))
    base.pop("job_id", None)
    points: list[dict] = []
    errors: list[tuple[int, dict[str, Any], str]] = []
    unranked: list[tuple[int, dict[str, Any]]] = []
    for index, combo in enumerate(itertools.product(*axes)):
        params = dict(zip(paths, combo, strict=True))
        doc = copy.deepcopy(base)
        for key, value in params.items():
            _set_path(doc, paths[key], value)
        try:
            spec = parse_spec(doc)
        except SpecError as exc:
            errors.append((index, params, str(exc)))
            continue
        if spec.dataset.validation == 0 and not spec.training.full_batch:
            unranked.append((index, params))
        spec_doc = json.loads(spec.model_dump_json(exclude_unset=True))
        spec_doc.pop("job_id", None)
        points.append({"params": params, "spec": spec_doc})
    if errors:
        if len(errors) == total > 1 and len({msg for _, _, msg in errors}) == 1:
            raise SpecError(f"all {total} grid points are invalid (the base spec?): {errors[0][2]}")
        shown = "; ".join(f"{describe_point(i, p)}: {msg}" for i, p, msg in errors[:10])
        more = f"; and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise SpecError(f"{len(errors)} of {total} grid points are invalid: {shown}{more}")
    if unranked:
        index, params = unranked[0]
        raise SweepError(
            f"{describe_point(index, params)} has no validation split and trains on "
            "mini-batches: without held-out data a sweep ranks points by their last round's "
            "training loss, which for a mini-batch is the loss of its few rows, not a fair "
            "comparison; set dataset.validation (--validation 0.1), or sweep full batches only"
        )
    return points


def sweep_input(
    sweep_id: str, points: Sequence[Mapping[str, Any]], max_concurrency: int = 10
) -> dict[str, Any]:
    """The execution input of the sweep state machine.

    ``{"sweep_id", "points": [{"index", "job_id", "params", "spec"}], "max_concurrency"}``;
    ``points`` as :func:`expand_grid` returns them. Refuses (SweepError) an input over
    :data:`MAX_INPUT_BYTES`: Step Functions limits an execution's input, and every state's
    data, to 256 KiB.
    """
    validate_sweep_id(sweep_id)
    if (
        isinstance(max_concurrency, bool)
        or not isinstance(max_concurrency, int)
        or not 1 <= max_concurrency <= MAX_CONCURRENCY
    ):
        raise SweepError(
            f"max_concurrency {max_concurrency!r} must be an integer in 1..{MAX_CONCURRENCY} "
            "(each point also runs its own workers: mind the account's Lambda concurrency)"
        )
    if not points:
        raise SweepError(f"sweep {sweep_id}: no points")
    if len(points) > MAX_POINTS:
        raise SweepError(f"sweep {sweep_id}: {len(points)} points; at most {MAX_POINTS}")
    items = []
    for index, point in enumerate(points):
        if not isinstance(point, Mapping) or not isinstance(point.get("spec"), Mapping):
            raise SweepError(f"point {index}: expected {{'params': {{...}}, 'spec': {{...}}}}")
        spec = dict(point["spec"])
        spec.pop("job_id", None)
        try:
            parse_spec(spec)
        except SpecError as exc:
            raise SpecError(f"point {index}: {exc}") from None
        items.append(
            {
                "index": index,
                "job_id": point_job_id(sweep_id, index),
                "params": dict(point.get("params") or {}),
                "spec": spec,
            }
        )
    doc = {"sweep_id": sweep_id, "points": items, "max_concurrency": max_concurrency}
    size = len(json.dumps(doc, separators=(",", ":"), allow_nan=False).encode())
    if size > MAX_INPUT_BYTES:
        per_point = size / len(items)
        fits = max(1, int(MAX_INPUT_BYTES // per_point))
        raise SweepError(
            f"sweep {sweep_id}: the execution input would be {size / 1024:.1f} KiB for "
            f"{len(items)} points, over the {MAX_INPUT_BYTES // 1024} KiB limit (Step Functions "
            f"refuses state data over 256 KiB); about {fits} points of this size fit: split the "
            "grid into several sweeps or shrink the base spec"
        )
    return doc


# ---- following a point ---------------------------------------------------------------
def point_status(
    store: Store, job_id: str, now: float | None = None, stale_seconds: float = STALE_SECONDS
) -> dict[str, Any]:
    """Where a point's job is, from its status.json, for the sweep's follow loop.

    ``{"job_id", "state": "RUNNING"|"SUCCEEDED"|"FAILED", "error", "wait_seconds"}``:
    ``wait_seconds`` is the estimated time the job still needs (from its rounds so far),
    clamped to [MIN_POLL_SECONDS, MAX_POLL_SECONDS]. A RUNNING job whose status has not
    changed for ``stale_seconds`` (stopped or timed out without recording it) is FAILED
    with error ``Stalled``.
    """
    now = time.time() if now is None else now
    keys = JobKeys(job_id)
    answer: dict[str, Any] = {
        "job_id": job_id,
        "state": "RUNNING",
        "error": None,
        "wait_seconds": MIN_POLL_SECONDS,
    }
    try:
        status = store.get_json(keys.status)
    except StoreError:
        return {**answer, "state": "FAILED", "error": "StatusMissing"}
    state = status.get("state")
    if state == "SUCCEEDED":
        return {**answer, "state": "SUCCEEDED"}
    if state == "FAILED":
        return {**answer, "state": "FAILED", "error": status.get("error") or "Unknown"}
    updated = _number(status.get("updated_at"))
    if updated is not None and now - updated > stale_seconds:
        return {**answer, "state": "FAILED", "error": "Stalled"}
    done, total = _number(status.get("round")), _number(status.get("rounds"))
    wait = float(MIN_POLL_SECONDS)
    try:
        prepared = _number(store.get_json(keys.meta).get("prepared_at"))
    except StoreError:
        prepared = None
    if done and total and prepared is not None and updated is not None and total > done:
        wait = (total - done) * max(0.0, updated - prepared) / done
    answer["wait_seconds"] = int(min(MAX_POLL_SECONDS, max(MIN_POLL_SECONDS, math.ceil(wait))))
    return answer


# ---- selecting the best point --------------------------------------------------------
def _number(value: Any) -> float | None:
    """A finite float, or None (result.json is strict JSON: no NaN or infinity)."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _subsample(items: list[Any], limit: int = MAX_CURVE_POINTS) -> list[Any]:
    """At most ``limit`` items, evenly spread, always with the first and the last."""
    if len(items) <= limit:
        return list(items)
    picks = sorted({round(i * (len(items) - 1) / (limit - 1)) for i in range(limit)})
    return [items[i] for i in picks]


def _history_rows(store: Store, keys: JobKeys) -> list[tuple[int, float | None, float | None]]:
    """``(round, train_loss, validation_loss)`` from history.csv, else from the metric records
    (a failed job has no history.csv; at most MAX_CURVE_POINTS records are read)."""
    try:
        text = store.get_bytes(keys.history).decode()
    except StoreError:
        text = None
    if text is not None:
        return [
            (int(r["round"]), _number(r.get("train_loss")), _number(r.get("validation_loss")))
            for r in csv.DictReader(io.StringIO(text))
        ]
    records = store.get_json_many(_subsample(store.list_keys(keys.metrics_prefix)), max_workers=8)
    return [
        (int(r["round"]), _number(r.get("train_loss")), _number(r.get("validation_loss")))
        for r in records
    ]


def _error_name(error: Any) -> str | None:
    if isinstance(error, Mapping):
        error = error.get("Error")
    return str(error) if error else None


def _evaluate_point(store: Store, point: Mapping[str, Any]) -> dict[str, Any]:
    job_id = point["job_id"]
    keys = JobKeys(job_id)
    run_failed = bool(point.get("failed"))
    run_error = _error_name(point.get("error"))
    try:
        status = store.get_json(keys.status)
    except StoreError:
        status = {}
    state = status.get("state")
    entry: dict[str, Any] = {
        "index": int(point["index"]),
        "job_id": job_id,
        "params": dict(point.get("params") or {}),
        "status": "FAILED",
        "error": None,
        "message": None,
        "rounds": None,
        "train_loss": None,
        "validation_loss": None,
    }
    rows = _history_rows(store, keys)
    if state == "SUCCEEDED" and not run_failed:
        metrics = status.get("metrics") or {}
        entry.update(
            status="SUCCEEDED",
            rounds=status.get("round"),
            train_loss=_number(metrics.get("train_loss")),
            validation_loss=_number(metrics.get("validation_loss")),
        )
    else:
        if state == "FAILED":
            error = status.get("error") or run_error or "Unknown"
            entry.update(error=error, message=status.get("message"))
            if error == "ModelDiverged":
                entry["status"] = "DIVERGED"
        elif state == "SUCCEEDED":  # the point's execution failed, yet an older job succeeded
            entry.update(
                error=run_error or "Unknown",
                message=f"the point's execution failed ({run_error}) but jobs/{job_id}/ holds "
                "a finished job: probably an earlier run with the same job id",
            )
        else:
            entry.update(
                error=run_error or ("StatusMissing" if state is None else "NotFinished"),
                message=(
                    f"jobs/{job_id}/status.json is missing"
                    if state is None
                    else f"the job is still {state}"
                ),
            )
        if rows:  # the last round that completed
            last_round, last_train, last_val = rows[-1]
            entry.update(rounds=last_round, train_loss=last_train, validation_loss=last_val)
        else:
            entry["rounds"] = status.get("round")
    entry["_rows"] = rows
    return entry


def _ranked_by(results: list[dict[str, Any]]) -> str:
    succeeded = [r for r in results if r["status"] == "SUCCEEDED"]
    if succeeded:
        ok = all(r["validation_loss"] is not None for r in succeeded)
    else:
        ok = any(r["validation_loss"] is not None for r in results)
    return "validation_loss" if ok else "train_loss"


def select_best(
    store: Store, sweep_id: str, points_results: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Rank the sweep's points and write ``sweeps/<sweep_id>/result.json``; return the result.

    ``points_results`` are the Map's iteration results, ``{"index", "job_id", "params",
    "failed", "error"}``. Each point's state comes from its ``jobs/<job_id>/status.json``:
    SUCCEEDED, DIVERGED (the job failed with ``ModelDiverged``) or FAILED (any other error,
    kept with its name and message). The best point is the succeeded one with the lowest
    validation loss (training loss when the points have no validation split), ties going
    to the lower index; ``best`` is null when no point succeeded. The result also lists
    ``param_names`` in the grid's order (result.json is written with sorted keys).
    """
    validate_sweep_id(sweep_id)
    points = sorted(points_results, key=lambda p: int(p["index"]))
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(points)))) as pool:
        results = list(pool.map(lambda p: _evaluate_point(store, p), points))

    ranked_by = _ranked_by(results)
    column = 2 if ranked_by == "validation_loss" else 1
    for r in results:
        rows = r.pop("_rows")
        curve = [[row[0], row[column]] for row in rows if row[column] is not None]
        r["curve"] = _subsample(curve)

    candidates = [r for r in results if r["status"] == "SUCCEEDED" and r[ranked_by] is not None]
    best = None
    if candidates:
        top = min(candidates, key=lambda r: (r[ranked_by], r["index"]))
        best = {k: top[k] for k in ("index", "job_id", "params", "validation_loss", "train_loss")}
    counts = {s: sum(1 for r in results if r["status"] == s) for s in STATUSES}
    param_names = list(dict.fromkeys(k for p in points for k in p.get("params") or {}))
    result = {
        "sweep_id": sweep_id,
        "param_names": param_names,
        "results": results,
        "best": best,
        "ranked_by": ranked_by,
        "counts": counts,
        "created_at": time.time(),
    }
    store.put_json(result_key(sweep_id), result)
    return result


def select_best_step(store: Store, event: dict[str, Any], emit: Any = None) -> dict[str, Any]:
    """The SelectBest Lambda's step (``(store, event, emit) -> dict``).

    ``{"sweep_id", "points": [iteration results]}`` -> select the best point, write
    result.json and return a small summary ``{"sweep_id", "result", "best", "ranked_by",
    "counts"}`` (never the whole result). ``{"action": "point_status", "job_id"}`` -> the
    answer of :func:`point_status`, for the sweep's loop that follows a continued job.
    """
    action = event.get("action", "select_best")
    if action == "point_status":
        return point_status(store, event["job_id"])
    if action != "select_best":
        raise SweepError(f"unknown action {action!r}")
    result = select_best(store, event["sweep_id"], event.get("points") or [])
    if emit is not None:
        emit("SweepPoints", len(result["results"]), "Count")
        emit("DivergedPoints", result["counts"]["DIVERGED"], "Count")
        emit("FailedPoints", result["counts"]["FAILED"], "Count")
    return {
        "sweep_id": result["sweep_id"],
        "result": result_key(result["sweep_id"]),
        "best": result["best"],
        "ranked_by": result["ranked_by"],
        "counts": result["counts"],
    }
