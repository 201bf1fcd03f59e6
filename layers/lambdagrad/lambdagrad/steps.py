"""The training steps over a store: prepare, worker, reduce, finalize, record_failure.

Each step takes a :class:`~lambdagrad.store.Store` and the small JSON event its state
passes, does its I/O through the store and its arithmetic through
:mod:`lambdagrad.training`, and returns small JSON. The Lambda handlers are these
functions plus Powertools; the state machine decides the order.

Every write goes to a key determined by (job, round, shard), so a retried step rewrites
identical bytes. The reducer checks before it trusts: if checkpoint ``t+1`` is committed
(params, optimizer state and metrics record all present, the arrays sound) it does not apply
the optimizer again; a partial or damaged one is recomputed from checkpoint ``t``
(:func:`committed_record`, :func:`sound_checkpoint`).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from lambdagrad import __version__
from lambdagrad.artifact import TrainedModel
from lambdagrad.cost import actual_cost_of_job, handler_seconds, write_cost
from lambdagrad.data import (
    DataError,
    Dataset,
    Standardizer,
    shard_bounds,
    train_validation_split,
)
from lambdagrad.evaluation import classification_metrics, regression_metrics
from lambdagrad.models import Model
from lambdagrad.registry import promote
from lambdagrad.shard_cache import cached_shard, default_cache
from lambdagrad.spec import MAX_SPEC_BYTES, JobSpec, SpecError, parse_spec
from lambdagrad.step_events import (
    EventError,
    event_int,
    event_number,
    event_object,
    event_optional_object,
    event_str,
)
from lambdagrad.store import JobKeys, MissingObjectError, Store, StoreError, parse_s3_uri
from lambdagrad.training import (
    advance_progress,
    combine_gradients,
    final_round,
    global_batch,
    initial_params,
    initial_progress,
    model_for,
    model_for_data,
    optimizer_for,
    read_training_data,
    reduce_round,
    scaled_rows,
    schedule_for,
    segment_rounds_for,
    segment_time_up,
    shard_arrays,
    total_rounds,
    transfer_gradient,
    worker_update,
)
from lambdagrad.transfer import receive_gradients, send_gradient
from lambdagrad.uploads import Upload, unsafe_upload_key, upload_from_event

__all__ = [
    "ContinuationError",
    "EventError",
    "JobExistsError",
    "JobFinishedByAnotherExecution",
    "MetricSink",
    "ModelDiverged",
    "committed_record",
    "finalize",
    "last_complete_round",
    "prepare",
    "record_failure",
    "reduce",
    "sound_checkpoint",
    "worker",
]


class JobFinishedByAnotherExecution(RuntimeError):
    """The job has its model: an execution that did not write it (a finished job's input
    replayed, Finalize invoked by hand) must not train it on, rewrite it or re-register it."""


class ModelDiverged(RuntimeError):
    """The loss or the parameters stopped being finite."""


class JobExistsError(RuntimeError):
    """A job with this id was already prepared by another execution."""


class ContinuationError(ValueError):
    """An execution input that carries a round, as a continuation of a job does, but not
    the rest of the job state a continuation loops on (started by hand, not by the machine)."""


#: What a continuation input carries besides ``round`` (the state machine's StartSegments).
_CONTINUATION_FIELDS = ("job_id", "shards", "segment_end", "progress")


class MetricSink(Protocol):
    """Where steps report numbers (Powertools Metrics in Lambda, nothing in tests)."""

    def __call__(self, name: str, value: float, unit: str) -> None: ...


def _no_metrics(name: str, value: float, unit: str) -> None:
    return None


# ---- per-process cache of immutable objects (warm Lambdas reuse them) ---------------
_CACHE: OrderedDict[tuple[Any, str, str, str], Any] = OrderedDict()
_CACHE_SIZE = 256
_CACHE_LOCK = threading.Lock()
_STATUS_WRITTEN: dict[str, float] = {}
STATUS_INTERVAL_SECONDS = 1.0


def clear_cache() -> None:
    """Forget cached objects: for a process that outlives a bucket (tests re-create
    buckets of the same name with other contents)."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _STATUS_WRITTEN.clear()
    default_cache().clear()


def _remember(store: Store, key: str, loader: str, value: Any) -> None:
    with _CACHE_LOCK:
        _CACHE[(store.client, store.bucket, key, loader)] = value
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)


def _cached(store: Store, key: str, loader: str) -> Any:
    """Objects that never change once written (spec, meta, shards, checkpoints), by key.

    Every key names one immutable object (a retried step rewrites identical bytes), so a
    cached copy is never stale.
    """
    cache_key = (store.client, store.bucket, key, loader)
    with _CACHE_LOCK:
        if cache_key in _CACHE:
            _CACHE.move_to_end(cache_key)
            return _CACHE[cache_key]
    value = getattr(store, loader)(key)
    _remember(store, key, loader, value)
    return value


def _job(store: Store, job_id: str) -> tuple[JobKeys, JobSpec, dict[str, Any]]:
    keys = JobKeys(job_id)
    spec = parse_spec(_cached(store, keys.spec, "get_json"), stored=True)
    meta = _cached(store, keys.meta, "get_json")
    return keys, spec, meta


def _model(meta: dict[str, Any], spec: JobSpec) -> Model:
    return model_for(spec, meta["n_features"], meta["n_classes"])


def _now() -> float:
    return time.time()


def _status(store: Store, keys: JobKeys) -> dict[str, Any]:
    """The job's status record, or {} when there is none (or it is not a JSON object)."""
    try:
        status = store.get_json(keys.status)
    except StoreError:
        return {}
    return status if isinstance(status, dict) else {}


def _update_status(
    store: Store, keys: JobKeys, read: dict[str, Any] | None = None, /, **fields: Any
) -> None:
    """The job's status with ``fields`` changed; ``read``: the record as the caller just read
    it (not read again)."""
    status = {**(_status(store, keys) if read is None else read)} or {"job_id": keys.job_id}
    status.update(fields, updated_at=_now())
    store.put_json(keys.status, status)


# ---- prepare ------------------------------------------------------------------------


def _refuse_incomplete_continuation(payload: dict[str, Any]) -> None:
    """A continuation the state machine did not take as one (it checks the fields are
    there): say which of its fields are missing or unusable, before anything is written."""
    if "round" not in payload:
        return
    problems = [f"{name}: missing" for name in _CONTINUATION_FIELDS if name not in payload]
    shards = payload.get("shards")
    if "shards" in payload and not (isinstance(shards, list) and shards):
        problems.append(f"shards: expected a non-empty list of shard numbers, got {shards!r:.40}")
    raise ContinuationError(
        "the execution input has 'round', so it continues a job, but "
        + "; ".join(problems or ["the state machine did not take it as one"])
        + ' (a new job\'s input is {"job_id": ..., "spec": {...}}; '
        "lambdagrad resume continues a stopped one)"
    )


def job_id_of(payload: dict[str, Any]) -> str | None:
    """The job an execution input is about: derived from an upload, or given."""
    upload = upload_from_event(payload)
    if upload is not None:
        return upload.job_id
    spec = payload.get("spec")
    given = payload.get("job_id"), spec.get("job_id") if isinstance(spec, dict) else None
    for where, job_id in zip(("job_id", "spec.job_id"), given, strict=True):
        if job_id is not None and not isinstance(job_id, str):
            raise SpecError(f"{where}: expected a string, got {job_id!r:.40}")
    return given[0] or given[1]  # the input's over its spec's (a sweep names its points)


def _refuse_replaced(upload: Upload, etag: str) -> None:
    """The job of an upload trains that upload: if the key holds another one now (uploaded
    again since), that one's own event starts its own job, and this one must not take it."""
    wanted = upload.etag.strip('"')
    if wanted and etag and etag != wanted:
        raise SpecError(
            f"{upload.key}: replaced since the upload that started this job (ETag {wanted}, "
            f"now {etag}); the newer upload starts a job of its own"
        )


def _spec_from_input(store: Store, payload: dict[str, Any], job_id: str) -> JobSpec:
    upload = upload_from_event(payload)
    if upload is not None:
        if upload.bucket != store.bucket:
            raise SpecError(f"s3://{upload.bucket}/{upload.key} is not in this stack's bucket")
        problem = unsafe_upload_key(upload.key)
        if problem:
            raise SpecError(f"{upload.key!r}: {problem}")
        size, etag = store.size_and_etag(upload.key)  # before reading: it can be any size
        _refuse_replaced(upload, etag)
        if size <= MAX_SPEC_BYTES:
            text, etag = store.get_bytes_and_etag(upload.key)
            size = len(text)
            _refuse_replaced(upload, etag)
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"{upload.key}: {size} bytes; a job spec is at most {MAX_SPEC_BYTES}")
        text = text.removeprefix(codecs.BOM_UTF8)  # as --config reads a file: utf-8-sig
        try:
            spec = parse_spec(text)
        except SpecError as exc:
            raise SpecError(f"{upload.key}: {exc}") from None
    elif "spec" in payload:
        spec = parse_spec(payload["spec"])
    else:
        raise SpecError("the execution input has no 'spec' and is not an S3 upload event")
    return spec.model_copy(update={"job_id": job_id})


def _claim(store: Store, keys: JobKeys, execution: str | None, started: str | None = None) -> None:
    """Take the job id with a conditional write; a second execution for it stops here.

    The claim names the execution by ARN and start time: a retried Prepare of the same
    execution passes, while a later execution that happens to have the same ARN (an
    embedded engine restarted on a run directory, or a name reused after 90 days) does not.
    """
    claim = {"execution": execution, "execution_started": started, "claimed_at": _now()}
    if store.put_json_if_absent(keys.claim, claim):
        return
    taken = store.get_json(keys.claim)
    owner = taken.get("execution")
    if owner != execution or taken.get("execution_started") != started:
        raise JobExistsError(
            f"job {keys.job_id!r} already exists (started by {owner}); "
            "nothing was changed - choose another job id"
        )


def check_dataset_uri(uri: str, bucket: str) -> tuple[str, str]:
    """The dataset's bucket and key if a job of the stack whose bucket is ``bucket`` may
    train on it, else SpecError: Prepare's rule, which the CLI applies before it starts."""
    dataset_bucket, key = parse_s3_uri(uri)
    if dataset_bucket != bucket:  # the functions' roles read their own bucket only
        raise SpecError(
            f"dataset.uri: {uri} is not in this stack's bucket {bucket}: "
            "copy it there (under datasets/), or give the CLI the local file (it uploads it)"
        )
    if key.startswith(("jobs/", "models/")):  # another job's shards, checkpoints, model
        raise SpecError(
            f"dataset.uri: {uri} is a job's or the registry's own file, not a "
            "dataset: a job trains on data under datasets/ (or anywhere else in the bucket)"
        )
    return dataset_bucket, key


def _read_dataset(store: Store, spec: JobSpec) -> tuple[JobSpec, Dataset]:
    """The dataset, and the spec with an mlp's ``auto`` task decided from the labels."""
    bucket, key = check_dataset_uri(spec.dataset.uri, store.bucket)
    try:
        data = store.get_bytes(key, bucket=bucket)
    except MissingObjectError as exc:
        raise MissingObjectError(f"dataset.uri: {exc}") from None
    return read_training_data(data, source=key.rsplit("/", 1)[-1], spec=spec)


def check_sizes(spec: JobSpec, n_train: int) -> None:
    """The batch, the workers and the warm-up fit the training rows (the CLI checks a local
    file early)."""
    bs = spec.training.batch_size
    if bs != "full" and int(bs) > n_train:
        raise SpecError(
            f"training.batch_size: {bs} is larger than the {n_train} training rows "
            "(use a smaller batch or 'full')"
        )
    if spec.training.workers > n_train:
        raise SpecError(
            f"training.workers: {spec.training.workers} workers for {n_train} training rows; "
            "every worker needs at least one row"
        )
    warmup, rounds = spec.optimizer.warmup, total_rounds(spec, n_train)
    if warmup > rounds:
        raise SpecError(
            f"optimizer.warmup: {warmup} rounds of warm-up in a job of {rounds} rounds: the "
            f"learning rate would never reach {spec.optimizer.lr:g}; warm up over at most "
            f"{rounds} rounds"
        )


def split_and_scaler(
    spec: JobSpec, data: Dataset, source: str, *, sized: Mapping[str, JobSpec] | None = None
) -> tuple[np.ndarray, np.ndarray, Standardizer]:
    """The training and validation rows and the standardizer of a job: what Prepare refuses
    before it writes anything (a batch larger than the training rows, features too large to
    scale), and what the CLI checks a local file with before anything starts.

    ``sized``: the specs whose batch and workers must fit the training rows, by the name an
    error gives them (a sweep's points, which share ``spec``'s split); default ``spec``."""
    train_idx, val_idx = train_validation_split(
        len(data.y), spec.dataset.validation, spec.training.seed
    )
    for name, each in (sized or {"": spec}).items():
        try:
            check_sizes(each, len(train_idx))
        except SpecError as exc:
            raise SpecError(f"{name}: {exc}" if name else str(exc)) from None
    _check_fits_dtype(spec, data, source)
    if not spec.dataset.standardize:
        return train_idx, val_idx, Standardizer.identity(data.X.shape[1])
    scaler = Standardizer.fit_rows(data.X, train_idx, names=data.feature_names, source=source)
    return train_idx, val_idx, scaler


def _check_fits_dtype(spec: JobSpec, data: Dataset, source: str, chunk: int = 16_384) -> None:
    """float32 shards hold values up to 3.4e38: a larger one became inf, and the first
    round failed as if the learning rate were too large. Standardized features are small;
    unscaled ones and regression targets are checked, chunk by chunk, and named."""
    if spec.training.dtype != "float32":
        return
    top = float(np.finfo(np.float32).max)
    if data.classes is None and data.y.dtype != np.float32 and data.y.size:
        largest = float(np.abs(data.y).max())
        if largest > top:
            raise DataError(
                f"{source}: label values up to {largest:g} overflow float32 (training.dtype); "
                "rescale the label or train in float64"
            )
    if spec.dataset.standardize or data.X.dtype == np.float32:
        return
    for lo in range(0, len(data.X), chunk):
        over = np.flatnonzero(np.abs(data.X[lo : lo + chunk]).max(axis=0) > top)
        if over.size:
            j = int(over[0])
            largest = float(np.abs(data.X[:, j]).max())
            raise DataError(
                f"{source}: feature column {data.feature_names[j]!r}: values up to {largest:g} "
                "overflow float32 (training.dtype) unscaled; standardize the features or train "
                "in float64"
            )


def prepare(store: Store, event: dict[str, Any], emit: MetricSink = _no_metrics) -> dict:
    """Validate the spec, split and standardize the data, write shards and round 0."""
    started = time.perf_counter()
    payload = event.get("input", event)
    if not isinstance(payload, dict):
        raise SpecError(f"the execution input must be a JSON object, got {payload!r:.40}")
    _refuse_incomplete_continuation(payload)
    execution = event.get("execution")
    job_id = job_id_of(payload)
    if not job_id:
        raise SpecError("job_id: missing (in the execution input or the spec)")
    keys = JobKeys(job_id)
    _claim(store, keys, execution, event.get("execution_started"))
    spec = _spec_from_input(store, payload, job_id)
    _update_status(store, keys, state="PREPARING", execution=execution, prepared_by=execution)

    spec, data = _read_dataset(store, spec)
    train_idx, val_idx, scaler = split_and_scaler(spec, data, spec.dataset.uri.rsplit("/", 1)[-1])
    # Shard by shard from the dataset's rows: never a scaled copy of the whole training set.
    y_train = data.y[train_idx]
    X_val, y_val = scaler.transform(data.X[val_idx]), data.y[val_idx]

    workers = spec.training.workers
    bounds = shard_bounds(len(y_train), workers)
    for k, (lo, hi) in enumerate(bounds):
        X_shard = scaled_rows(spec, scaler, data.X, train_idx[lo:hi])
        store.put_arrays(keys.shard(k), shard_arrays(spec, X_shard, y_train[lo:hi]))
        del X_shard
    store.put_arrays(keys.validation, {"X": X_val, "y": y_val})

    model = model_for_data(spec, data)
    rounds = total_rounds(spec, len(y_train))
    params = initial_params(model, spec.training.seed)
    store.put_array(keys.params(0), params)
    store.put_arrays(keys.optimizer(0), optimizer_for(spec, model, rounds).init(params))

    segment = segment_rounds_for(spec)
    meta = {
        "n_train": len(y_train),
        "n_validation": len(y_val),
        "n_features": int(data.X.shape[1]),
        "n_classes": model.n_classes,
        "feature_names": data.feature_names,
        "label_name": data.label_name,
        "classes": data.classes,
        "standardizer": scaler.to_json(),
        "shard_sizes": [hi - lo for lo, hi in bounds],
        "global_batch": global_batch(spec, len(y_train)),
        "rounds": rounds,
        "segment_rounds": segment,
        "prepared_at": _now(),
        "prepared_by": execution,
        "version": __version__,
        "prepare_seconds": time.perf_counter() - started,
    }
    store.put_json(keys.spec, json.loads(spec.model_dump_json()))
    store.put_json(keys.meta, meta)
    _update_status(store, keys, state="RUNNING", round=0, rounds=rounds)
    emit("TrainingRows", len(y_train), "Count")
    return {
        "job_id": spec.job_id,
        "round": 0,
        "shards": list(range(workers)),
        "segment_end": min(segment, rounds),
        "progress": initial_progress(meta["prepared_at"]),
    }


# ---- worker -------------------------------------------------------------------------
def worker(store: Store, event: dict[str, Any], emit: MetricSink = _no_metrics) -> dict:
    """One shard's gradient sum for one round (inline or in S3), loss sum and row count."""
    started = time.perf_counter()
    event, where = event_object(event, "worker event"), "worker event"
    job_id, round_ = event_str(event, where, "job_id"), event_int(event, where, "round")
    shard = event_int(event, where, "shard")
    keys, spec, meta = _job(store, job_id)
    data = cached_shard(store, keys.shard(shard))  # memory, then /tmp, then S3
    X, y = data["X"], data["y"]
    params = _cached(store, keys.params(round_), "get_array")  # immutable once written
    with np.errstate(over="ignore", invalid="ignore"):  # not finite: ModelDiverged, below
        grad_sum, loss_sum, count = worker_update(
            _model(meta, spec), spec, params, X, y, round_, shard, int(meta["rounds"])
        )
    if not (math.isfinite(loss_sum) and np.all(np.isfinite(grad_sum))):
        raise ModelDiverged(
            f"round {round_}, shard {shard}: the loss or gradient is not finite; the last "
            f"finite parameters are round {round_}. {_advice(spec)}"
        )
    sent = send_gradient(
        store, keys, round_, shard, transfer_gradient(spec, grad_sum), spec.training.workers
    )
    emit("WorkerRows", count, "Count")
    seconds = time.perf_counter() - started  # the handler's share of the bill (cost.json)
    return {"shard": shard, "loss_sum": loss_sum, "count": count, "seconds": seconds, **sent}


# ---- reduce -------------------------------------------------------------------------
def _advice(spec: JobSpec) -> str:
    clip = spec.optimizer.clip_norm
    clipping = (
        f"a smaller optimizer.clip_norm (now {clip})"
        if clip
        else "gradient clipping (optimizer.clip_norm, --clip-norm)"
    )
    return f"Try a smaller learning rate (now {spec.optimizer.lr}), {clipping}, or a larger batch."


def committed_record(store: Store, keys: JobKeys, round_: int) -> dict[str, Any] | None:
    """The metrics record of round ``round_`` if that checkpoint is complete, else ``None``.

    The reducer writes params, then optimizer state, then the metrics record: the record is
    the commit mark. A checkpoint counts only when all three exist and the record is the
    round's own; anything less (a crash between the writes) is an uncommitted attempt
    that nobody has read -- the next round's workers start only after the reducer
    returned -- so it is recomputed from checkpoint ``round_ - 1`` and overwritten.
    """
    if not store.exists(keys.metrics(round_)):  # the common case: one request
        return None
    if not (store.exists(keys.params(round_)) and store.exists(keys.optimizer(round_))):
        return None
    try:
        record = store.get_json(keys.metrics(round_))
    except (StoreError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("round") != round_:
        return None
    if not isinstance(record.get("train_loss"), (int, float)):
        return None
    return record


def sound_checkpoint(
    store: Store, keys: JobKeys, round_: int, n_params: int
) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """Checkpoint ``round_``'s params and optimizer state, if both load, the params are the
    model's size and finite and the state is the round's own (its ``step``); else ``None``.

    A committed record says the writes happened, not that the bytes are still good: a
    resume skips a damaged checkpoint, and the reducer that meets one recomputes it.
    """
    try:
        params = store.get_array(keys.params(round_))
        state = store.get_arrays(keys.optimizer(round_))
        own_step = int(state["step"]) == round_
    except (StoreError, KeyError, TypeError, ValueError, OSError, EOFError, zipfile.BadZipFile):
        return None
    if not own_step or params.shape != (n_params,) or not np.all(np.isfinite(params)):
        return None
    return params, state


def last_complete_round(store: Store, keys: JobKeys) -> int | None:
    """The newest committed checkpoint of a job (0 once prepared), ``None`` before that."""
    rounds = sorted(
        (int(k.rsplit("/", 1)[-1].split(".")[0]) for k in store.list_keys(keys.metrics_prefix)),
        reverse=True,
    )
    for round_ in rounds:
        if committed_record(store, keys, round_) is not None:
            return round_
    if store.exists(keys.params(0)) and store.exists(keys.optimizer(0)):
        return 0
    return None


def _validation_loss(
    store: Store, keys: JobKeys, model: Model, params: np.ndarray, spec: JobSpec, round_: int
) -> float | None:
    val = _cached(store, keys.validation, "get_arrays")
    if len(val["y"]) == 0:
        return None
    with np.errstate(over="ignore", invalid="ignore"):  # not finite: ModelDiverged, below
        loss = float(model.loss(params, val["X"], val["y"]))
    if not math.isfinite(loss):
        raise ModelDiverged(
            f"round {round_}: the validation loss is {loss}; the last finite parameters are "
            f"round {round_ - 1}. {_advice(spec)}"
        )
    return loss


def _event_progress(event: dict[str, Any], where: str) -> dict[str, Any] | None:
    """The progress the state machine carries (:func:`~lambdagrad.training.initial_progress`'s
    keys), or None."""
    progress = event_optional_object(event, where, "progress")
    missing = sorted(set(initial_progress(0.0)) - set(progress or {}))
    if progress is not None and missing:
        raise EventError(f"{where}: progress: missing {', '.join(missing)}")
    return progress


def _event_results(event: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The workers' results, in shard order, each with its shard, row count and loss sum."""
    results = event.get("results")
    if not isinstance(results, list) or not results:
        raise EventError(f"{where}: results: expected the workers' results, got {results!r:.60}")
    for i, result in enumerate(results):
        at = f"{where}: results[{i}]"
        event_int(event_object(result, at), at, "shard")
        event_int(result, at, "count")
        event_number(result, at, "loss_sum")
    if not sum(r["count"] for r in results):
        raise EventError(f"{where}: results: no rows in this round's batch (every count is 0)")
    return sorted(results, key=lambda r: r["shard"])


def _finished_status(keys: JobKeys, doc: dict[str, Any]) -> dict[str, Any]:
    """What a finished job's status says, from its model.json: Finalize writes it, and puts
    it back when a replay's rounds have overwritten it."""
    return {
        "state": "SUCCEEDED",
        "round": doc.get("rounds"),
        "model_round": doc.get("model_round"),
        "stopped": doc.get("stopped"),
        "model": keys.model_json,
        "metrics": doc.get("metrics"),
        "registered_as": (doc.get("spec") or {}).get("output", {}).get("model_name"),
    }


def _refuse_finished(
    store: Store, keys: JobKeys, execution: Any, *, by_anyone: bool = False
) -> None:
    """A job whose model exists is finished: only the execution that wrote it may write it
    again (Finalize retried; ``by_anyone``: not even that one), as any other would rewrite a
    good model or re-register it."""
    try:
        doc = store.get_json(keys.model_json)
    except MissingObjectError:
        return
    written_by = doc.get("execution")
    if by_anyone or written_by != execution:
        status = _status(store, keys)
        if status.get("state") != "SUCCEEDED":  # a replay's rounds rewrote it
            _update_status(store, keys, status, **_finished_status(keys, doc), execution=written_by)
        raise JobFinishedByAnotherExecution(
            f"job {keys.job_id!r} already finished: its model is s3://{store.bucket}/"
            f"{keys.model_json} (written by {written_by or 'another execution'}); "
            "start a new job to train again"
        )


def reduce(store: Store, event: dict[str, Any], emit: MetricSink = _no_metrics) -> dict:
    """Aggregate the round's gradients in shard order and take one optimizer step."""
    started = time.perf_counter()
    event, where = event_object(event, "reduce event"), "reduce event"
    job_id, round_ = event_str(event, where, "job_id"), event_int(event, where, "round")
    results = _event_results(event, where)
    segment_end = event_int(event, where, "segment_end", minimum=1)
    previous = _event_progress(event, where)
    try:  # read now: nothing may fail after the checkpoint is written
        segment_time_up(event.get("segment_started"), event.get("segment_seconds"), _now())
    except (TypeError, ValueError) as exc:
        raise EventError(f"{where}: segment_started / segment_seconds: {exc}") from None
    keys, spec, meta = _job(store, job_id)
    model = _model(meta, spec)
    total = int(meta["rounds"])
    if round_ >= total:
        raise EventError(f"{where}: round: {round_} is not before the job's last round ({total})")
    shards = [r["shard"] for r in results]
    if shards != list(range(spec.training.workers)):
        raise StoreError(
            f"round {round_}: expected results of shards "
            f"0..{spec.training.workers - 1}, got {shards}"
        )

    next_round = round_ + 1
    committed = committed_record(store, keys, next_round)
    checkpoint = (
        None if committed is None else sound_checkpoint(store, keys, next_round, model.n_params)
    )
    replayed = committed is not None and checkpoint is not None
    if replayed:
        # A retried reducer (or a resume): round t+1 is complete; never apply the optimizer
        # twice. Or a finished job's input replayed, which stops here (no execution of a
        # job runs its reducer after Finalize).
        _refuse_finished(store, keys, event.get("execution"), by_anyone=True)
        record = committed
        _remember(store, keys.params(next_round), "get_array", checkpoint[0])
        _remember(store, keys.optimizer(next_round), "get_arrays", checkpoint[1])
    else:
        # Check, don't trust: params t+1 without its record is an interrupted attempt, and
        # a damaged one (a resume started before it) is no checkpoint; recompute it from
        # checkpoint t (the same bytes: every input is deterministic).
        # the checkpoint this process wrote last round, if it was this process
        params = _cached(store, keys.params(round_), "get_array")
        state = _cached(store, keys.optimizer(round_), "get_arrays")
        grads = receive_gradients(store, keys, round_, results, model.n_params)
        mean_grad, train_loss, _ = combine_gradients(
            grads, [float(r["loss_sum"]) for r in results], [r["count"] for r in results]
        )
        if not (math.isfinite(train_loss) and np.all(np.isfinite(mean_grad))):
            raise ModelDiverged(
                f"round {round_}: training loss {train_loss} or its gradient is not finite; "
                f"the last finite parameters are round {round_}. {_advice(spec)}"
            )
        new_params, new_state = reduce_round(
            model,
            optimizer_for(spec, model, total),
            params,
            state,
            mean_grad,
            spec,
            schedule_for(spec, total),
        )
        if not np.all(np.isfinite(new_params)):
            raise ModelDiverged(
                f"round {round_}: the update made the parameters non-finite; the last finite "
                f"parameters are round {round_}. {_advice(spec)}"
            )
        # judged before anything is written: a diverged round leaves no trace in the bucket
        validation_loss = _validation_loss(store, keys, model, new_params, spec, next_round)
        store.put_array(keys.params(next_round), new_params)
        store.put_arrays(keys.optimizer(next_round), new_state)
        _remember(store, keys.params(next_round), "get_array", new_params)
        _remember(store, keys.optimizer(next_round), "get_arrays", new_state)
        record = {
            "round": next_round,
            "train_loss": train_loss,
            "validation_loss": validation_loss,
            "finished_at": _now(),
            "lambda_seconds": handler_seconds(results, time.perf_counter() - started),
            # which segment ran it: cost.json counts the segments that ran, time-cut ones too
            "segment_started": event.get("segment_started"),
        }
        store.put_json(keys.metrics(next_round), record)  # last: commits round t+1

    if previous is None:
        previous = initial_progress(float(meta["prepared_at"]))
    progress, stop_reason = advance_progress(
        previous,
        spec,
        next_round,
        record["train_loss"],
        record["validation_loss"],
        record["finished_at"],
    )
    if next_round >= total:
        stop_reason = stop_reason or "rounds"
    if stop_reason:
        step = "finalize"
    elif next_round >= segment_end or segment_time_up(
        event.get("segment_started"), event.get("segment_seconds"), _now()
    ):
        step = "continue"  # end the segment: by rounds, or by time (Express runs <= 5 min)
        segment_end = min(next_round + int(meta["segment_rounds"]), total)
    else:
        step = "round"
    # Progress, at most once a second per job (and at every hand-over): a round can take
    # tens of milliseconds, and nobody polls faster. Written whole, not read-modified. A
    # replayed round (a segment run again after a cut) does not move the status back.
    now = _now()
    due = step != "round" or now - _STATUS_WRITTEN.get(job_id, 0.0) >= STATUS_INTERVAL_SECONDS
    if due and not (replayed and step == "round"):
        _STATUS_WRITTEN[job_id] = now
        store.put_json(
            keys.status,
            {
                "job_id": job_id,
                "state": "RUNNING",
                "round": next_round,
                "rounds": total,
                "train_loss": record["train_loss"],
                "validation_loss": record["validation_loss"],
                "execution": event.get("execution"),
                "prepared_by": meta.get("prepared_by"),
                "updated_at": _now(),
            },
        )
    emit("RoundSeconds", record["finished_at"] - float(previous["finished_at"]), "Seconds")
    emit("TrainLoss", record["train_loss"], "None")
    if record["validation_loss"] is not None:
        emit("ValidationLoss", record["validation_loss"], "None")
    return {
        "job_id": job_id,
        "round": next_round,
        "shards": shards,
        "segment_end": segment_end,
        "next": step,
        "progress": {**progress, "stop": stop_reason},
    }


# ---- finalize -----------------------------------------------------------------------
def _history(store: Store, keys: JobKeys, meta: dict[str, Any]) -> tuple[list[dict], bytes]:
    records = store.get_json_many(store.list_keys(keys.metrics_prefix))
    previous = float(meta["prepared_at"])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["round", "train_loss", "validation_loss", "seconds"])
    for rec in records:
        # a segment's first round counts from the segment's start when that is later: a
        # resumed job's first round is not the hours it sat stopped
        started = _epoch_or_none(rec.get("segment_started"))
        seconds = max(0.0, rec["finished_at"] - max(previous, started or previous))
        previous = rec["finished_at"]
        val = "" if rec["validation_loss"] is None else repr(rec["validation_loss"])
        writer.writerow([rec["round"], repr(rec["train_loss"]), val, f"{seconds:.4f}"])
    return records, buf.getvalue().encode()


def _epoch_or_none(iso: Any) -> float | None:
    """``2026-11-28T05:02:50.88+00:00`` (``$$.Execution.StartTime``) as epoch seconds."""
    if not isinstance(iso, str):
        return None
    try:
        when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


def _final_metrics(store: Store, keys: JobKeys, trained: TrainedModel, meta: dict) -> dict:
    """Metrics of the final model on the validation split (features already standardized)."""
    val = _cached(store, keys.validation, "get_arrays")
    if len(val["y"]) == 0:
        return {}
    model, params = trained.model, trained.params
    if model.task == "classification":
        return classification_metrics(val["y"], model.predict_proba(params, val["X"]))
    return regression_metrics(val["y"], model.predict(params, val["X"]))


def finalize(store: Store, event: dict[str, Any], emit: MetricSink = _no_metrics) -> dict:
    """Write model.npz, model.json and history.csv; mark the job succeeded."""
    started = time.perf_counter()
    event, where = event_object(event, "finalize event"), "finalize event"
    job_id, round_ = event_str(event, where, "job_id"), event_int(event, where, "round")
    progress = _event_progress(event, where) or {}
    keys, spec, meta = _job(store, job_id)
    _refuse_finished(store, keys, event.get("execution"))
    records, history_csv = _history(store, keys, meta)
    last = records[-1].get("round") if records else 0
    if round_ != last:
        raise EventError(f"{where}: round: {round_} is not the job's last round ({last})")
    model_round = final_round(spec, progress, round_)
    params = store.get_array(keys.params(model_round))
    chosen = records[model_round - 1] if 0 < model_round <= len(records) else {}
    trained = TrainedModel(
        model=_model(meta, spec),
        params=params,
        standardizer=Standardizer.from_json(meta["standardizer"]),
        feature_names=meta["feature_names"],
        classes=meta["classes"],
    )
    validation = _final_metrics(store, keys, trained, meta)
    trained.info = {
        "job_id": job_id,
        "model": {
            "type": spec.model.type,
            "hidden": spec.model.hidden,
            "activation": spec.model.activation,
        },
        "rounds": round_,
        "model_round": model_round,
        "stopped": progress.get("stop") or "rounds",
        "trained_at": _now(),
        "metrics": {
            "train_loss": chosen.get("train_loss"),
            "validation_loss": chosen.get("validation_loss"),
            "validation": validation,
        },
        "data": {k: meta[k] for k in ("n_train", "n_validation", "global_batch")},
        # the label column's name in the CSV trained on, also when the spec left it to default
        "label_name": meta.get("label_name"),
        "execution": event.get("execution"),  # who may write it again (a retry of it)
        "spec": json.loads(spec.model_dump_json()),
        # what the spec's nulls stood for: the optimizer's and the schedule's defaults
        "optimizer_in_force": {
            "learning_rate": spec.optimizer.lr,
            "decay_rate": spec.optimizer.decay,
        },
        "lambdagrad_version": __version__,
    }
    npz_bytes, doc = trained.to_documents()
    store.put_bytes(keys.history, history_csv, "text/csv")
    store.put_bytes(keys.model_npz, npz_bytes)
    store.put_json(keys.model_json, doc)  # last: its presence marks a complete model
    cost = actual_cost_of_job(
        spec, meta, records, round_, time.perf_counter() - started, n_params=len(params)
    )
    write_cost(store, job_id, cost)
    if spec.output.model_name:
        # the newest successful job of a name is the one served
        promote(store, spec.output.model_name, job_id)
    _update_status(store, keys, **_finished_status(keys, doc))
    return {"job_id": job_id, "state": "SUCCEEDED", "rounds": round_, "model": keys.model_json}


# ---- failure ------------------------------------------------------------------------
def _error_message(error: dict[str, Any]) -> str:
    cause = error.get("Cause", "")
    try:
        parsed = json.loads(cause)
    except (TypeError, ValueError):
        return str(cause)
    return str(parsed.get("errorMessage", cause)) if isinstance(parsed, dict) else str(cause)


#: Errors of an execution whose job id is another execution's (or nobody's): not recorded.
_NOT_THIS_EXECUTIONS_JOB = {JobExistsError.__name__, ContinuationError.__name__}


def record_failure(store: Store, event: dict[str, Any], emit: MetricSink = _no_metrics) -> dict:
    """Write why the job failed into status.json; checkpoints stay for inspection or resume."""
    state = event.get("state") if isinstance(event.get("state"), dict) else {}
    error = state.get("error") if isinstance(state.get("error"), dict) else {}
    try:  # whatever the failed input was, the failure is recorded
        job_id = state.get("job_id") or job_id_of(state)
    except SpecError:
        job_id = None
    name, message = str(error.get("Error") or "Unknown"), _error_message(error)
    unrecorded = {"status": "FAILED", "error": name, "message": message, "recorded": False}
    if not isinstance(job_id, str) or not job_id or name in _NOT_THIS_EXECUTIONS_JOB:
        # no job to speak of, or another execution's job: leave its files alone
        return unrecorded
    try:
        keys = JobKeys(job_id)
    except StoreError:  # an invalid id (the failure was refusing it): no job to record it in
        return unrecorded
    status = _status(store, keys)
    if status.get("state") == "SUCCEEDED":
        # a finished job (Finalize writes SUCCEEDED last): a replayed input of it failed, and
        # its status stays the one of its model
        return unrecorded
    if not status and name == EventError.__name__:
        # a step's event made by hand for a job that never started (a job's steps run only
        # after Prepare wrote its status): no job to record it in
        return unrecorded
    complete = last_complete_round(store, keys)
    checkpoint = None
    if complete is not None:
        checkpoint = {
            "round": complete,
            "params": keys.params(complete),
            "optimizer": keys.optimizer(complete),
        }
    _update_status(
        store,
        keys,
        status,
        state="FAILED",
        error=name,
        message=message,
        execution=event.get("execution"),
        round=complete,
        checkpoint=checkpoint,
    )
    emit("FailedJobs", 1, "Count")
    return {"status": "FAILED", "error": name, "message": message, "recorded": True}
