"""The arithmetic of one training round, free of I/O.

Workers and the reducer (``lambdagrad.steps``) wrap these functions with S3 reads and
writes; tests run the same functions in a plain loop as the reference. Keeping the round
here, in one place, is what makes "same spec + same data -> same parameters" checkable.

Batch semantics: ``batch_size`` is the *global* batch of one round. Each of the K workers
takes ``batch_size // K`` rows of its shard, and the ``batch_size % K`` leftover rows go
to shards chosen round-robin by round number. A worker walks its shard in a fresh
permutation each local epoch (sampling without replacement), drawn from
``SeedSequence([seed, shard, epoch])``, so any round can be recomputed from scratch.
``batch_size="full"`` uses every row of every shard each round (batch gradient descent).

Local SGD (``training.steps_per_round`` K > 1): local step ``j`` of round ``t`` uses the
batch of *sub-round* ``t * K + j`` -- exactly the batch that round ``t * K + j`` of a K=1
job would use -- so a round consumes K global batches and the data order is the same as
K=1's. A worker returns the row-weighted sum of its K local gradients; divided by all
workers' rows that is ``(theta_t - theta_avg) / lr_t``, the pseudo-gradient the reducer's
optimizer steps with (:func:`local_sgd`, :func:`reduce_round`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import numpy as np

from lambdagrad.data import (
    DataError,
    Dataset,
    LabelNotNumberError,
    check_label_applies,
    load_dataset,
)
from lambdagrad.models import Model, ModelError, build_model, l1_prox, l2_penalty
from lambdagrad.optim import (
    GradientTransformation,
    Schedule,
    apply_updates,
    make_optimizer,
    make_schedule,
)
from lambdagrad.spec import JobSpec

__all__ = [
    "EVENTS_PER_ROUND_FIXED",
    "EVENTS_PER_ROUND_PER_WORKER",
    "EVENTS_PER_SEGMENT",
    "HISTORY_EVENT_BUDGET",
    "SEGMENTS_PER_EXECUTION",
    "advance_progress",
    "batch_indices",
    "combine_gradients",
    "final_round",
    "global_batch",
    "infer_task",
    "initial_params",
    "initial_progress",
    "local_batch_sizes",
    "local_sgd",
    "model_for",
    "optimizer_for",
    "read_training_data",
    "reduce_round",
    "scaled_rows",
    "schedule_for",
    "segment_rounds_for",
    "segment_time_up",
    "shard_arrays",
    "total_rounds",
    "transfer_gradient",
    "worker_gradient",
    "worker_update",
]

# Step Functions history events, measured on the embedded engine
# (tests/integration/test_training.py::test_history_events_per_round keeps these honest):
# a round in a segment (Express child), and a segment in the training execution (Standard).
EVENTS_PER_ROUND_FIXED = 12
EVENTS_PER_ROUND_PER_WORKER = 7
EVENTS_PER_SEGMENT = 12
# AWS fails a Standard execution at 25,000 events; keep every execution well below it,
# leaving room for retries (each retry adds events). Segments get the same budget.
HISTORY_EVENT_BUDGET = 15_000
# Segments one training execution runs before it continues as new: the template's
# SegmentsPerExecution default (its MaxValue keeps the execution under the budget too).
SEGMENTS_PER_EXECUTION = 1000


def global_batch(spec: JobSpec, n_train: int) -> int:
    """The number of rows one round consumes across all workers."""
    bs = spec.training.batch_size
    return n_train if bs == "full" else int(bs)


def total_rounds(spec: JobSpec, n_train: int) -> int:
    """Rounds to run: ``training.rounds``, else epochs × rows / (global batch × K), rounded up."""
    if spec.training.rounds is not None:
        return spec.training.rounds
    epochs = spec.training.epochs if spec.training.epochs is not None else spec.default_epochs
    per_round = global_batch(spec, n_train) * spec.training.steps_per_round
    return max(1, math.ceil(epochs * n_train / per_round))


def segment_rounds_for(spec: JobSpec) -> int:
    """Most rounds one segment (an Express execution of the segment state machine) runs.

    Express keeps no 25,000-event history, but a segment's events are what its CloudWatch
    log (and the embedded engine's memory) hold, so they get the same budget; the reducer
    also ends a segment on time (:func:`segment_time_up`), whichever comes first.
    """
    if spec.training.segment_rounds is not None:
        return spec.training.segment_rounds
    per_round = EVENTS_PER_ROUND_FIXED + EVENTS_PER_ROUND_PER_WORKER * spec.training.workers
    return max(1, HISTORY_EVENT_BUDGET // per_round)


def segment_time_up(started: str | None, limit_seconds: str | float | None, now: float) -> bool:
    """Whether a segment that started at ``started`` (ISO 8601, ``$$.Execution.StartTime``)
    has run longer than ``limit_seconds`` at ``now`` (epoch seconds).

    Express executions stop at 5 minutes; ending a segment after the round that passes the
    limit keeps every segment well inside that. Where a segment ends does not change the
    result: the parameters are in S3 between rounds and every round is deterministic.
    Without a start or a limit (a caller that does not run segments) the answer is no.
    """
    if not started or limit_seconds in (None, ""):
        return False
    start = datetime.fromisoformat(str(started).replace("Z", "+00:00"))
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return now - start.timestamp() > float(limit_seconds)


def local_batch_sizes(batch_size: int, workers: int, round_: int) -> list[int]:
    """Split a global batch over workers; the remainder rotates with the round."""
    base, extra = divmod(batch_size, workers)
    return [base + (1 if (k - round_) % workers < extra else 0) for k in range(workers)]


def _rows_taken_before(batch_size: int, workers: int, round_: int, shard: int) -> int:
    """How many rows shard ``shard`` consumed in rounds 0..round_-1 (closed form)."""
    base, extra = divmod(batch_size, workers)
    cycles, partial = divmod(round_, workers)
    extras = cycles * extra + sum(1 for r in range(partial) if (shard - r) % workers < extra)
    return base * round_ + extras


@lru_cache(maxsize=64)
def _epoch_permutation(seed: int, shard: int, epoch: int, n_rows: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed, shard, epoch]))
    perm = rng.permutation(n_rows)
    perm.flags.writeable = False
    return perm


def batch_indices(
    n_rows: int, batch_size: int | str, workers: int, seed: int, round_: int, shard: int
) -> np.ndarray:
    """Row indices of this shard's batch in this round (deterministic, no I/O)."""
    if batch_size == "full":
        return np.arange(n_rows)
    size = local_batch_sizes(int(batch_size), workers, round_)[shard]
    if size == 0 or n_rows == 0:
        return np.zeros(0, dtype=np.int64)
    start = _rows_taken_before(int(batch_size), workers, round_, shard)
    positions = np.arange(start, start + size)
    epochs, offsets = np.divmod(positions, n_rows)
    out = np.empty(size, dtype=np.int64)
    for epoch in np.unique(epochs):
        mask = epochs == epoch
        out[mask] = _epoch_permutation(seed, shard, int(epoch), n_rows)[offsets[mask]]
    return out


def model_for(spec: JobSpec, n_features: int, n_classes: int) -> Model:
    """The model a spec describes, for data of this width and number of classes."""
    if spec.model.type == "mlp":
        return build_model(
            "mlp",
            n_features,
            n_classes,
            hidden=spec.model.hidden,
            activation=spec.model.activation,
        )
    return build_model(spec.model.type, n_features, n_classes)


def model_for_data(spec: JobSpec, data: Dataset) -> Model:
    """The model a spec describes for a dataset it read (:func:`read_training_data`): a
    ``ModelError`` when the labels do not fit it (logistic regression on three classes)."""
    n_classes = 1 if spec.model.task == "regression" else len(data.classes or [])
    try:
        return model_for(spec, data.X.shape[1], n_classes)
    except ModelError as exc:
        if not data.classes:
            raise
        # the classes show what made the count: a stray "NA" among 0 / 1 labels
        shown = ", ".join(map(repr, data.classes[:10])) + (", ..." if n_classes > 10 else "")
        raise ModelError(f"{exc} (the label's classes: {shown})") from None


MAX_AUTO_CLASSES = 20


def infer_task(
    data: bytes,
    *,
    source: str,
    fmt: str | None,
    label: str | None,
    max_features: int = 10_000,
    exclude: Sequence[str] = (),
) -> str:
    """Regression or classification for an mlp with ``task: auto``, from the labels.

    Labels that are not numbers, or whole numbers with at most 20 distinct values, make a
    classification; any other numbers a regression. Fractional numbers, or more than 20
    distinct whole ones, among cells that are not numbers are a regression label with bad
    cells ("NA" in a column of prices): the error names the first.
    """
    try:
        ds = load_dataset(
            data,
            source=source,
            fmt=fmt,
            label=label,
            task="regression",
            max_features=max_features,
            exclude=exclude,
        )
    except DataError as not_numeric:
        # read as classes, a DataError is the file's own (a bad feature cell, a ragged row)
        labels = load_dataset(
            data,
            source=source,
            fmt=fmt,
            label=label,
            task="classification",
            min_classes=1,
            max_features=max_features,
            exclude=exclude,
        )
        numbers = [c for c in labels.classes or [] if _is_number(c)]
        if any(_is_fraction(c) for c in numbers):
            raise not_numeric from None
        if len(numbers) > MAX_AUTO_CLASSES:  # prices with an "NA", or codes with an "HQ"
            raise DataError(
                f"{not_numeric} ({len(numbers)} distinct whole numbers besides it read as a "
                "regression label; if the column holds classes, use model.task "
                "classification (--task classification))"
            ) from None
        return "classification"
    y = ds.y
    whole = bool(np.all(y == np.round(y)))
    return "classification" if whole and len(np.unique(y)) <= MAX_AUTO_CLASSES else "regression"


def read_training_data(data: bytes, *, source: str, spec: JobSpec) -> tuple[JobSpec, Dataset]:
    """The dataset ``spec`` asks for, and the spec with an mlp's ``auto`` task decided from
    the labels: what Prepare reads, and what the CLI checks a local file with beforehand."""
    task = spec.model.task
    ds = spec.dataset
    check_label_applies(source, ds.format, ds.label, "dataset.label")
    if task == "auto":
        task = infer_task(
            data,
            source=source,
            fmt=ds.format,
            label=ds.label,
            max_features=ds.max_features,
            exclude=ds.exclude,
        )
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"task": task})})
    try:
        dataset = load_dataset(
            data,
            source=source,
            fmt=ds.format,
            label=ds.label,
            task=task,
            max_features=ds.max_features,
            exclude=ds.exclude,
        )
    except LabelNotNumberError as exc:
        fix = (
            "model.task classification (--task classification)"
            if spec.model.type == "mlp"
            else "model type logistic, softmax or mlp (--model)"
        )
        raise DataError(f"{exc}; if the column holds classes, use {fix}") from None
    if dataset.classes is not None:
        label = dataset.label_name or ds.label or "the last column"
        _refuse_continuous_classes(dataset.classes, source, label, spec)
    return spec, dataset


def _refuse_continuous_classes(classes: list, source: str, label: str, spec: Any) -> None:
    """Numbers with fractions, more than ``task: auto`` would take for classes, are a
    regression target: a classifier would learn one class per value (a float column of
    prices as 2,000 classes) and report accuracy 0, without a word."""
    if len(classes) <= MAX_AUTO_CLASSES or not all(_is_number(c) for c in classes):
        return
    fraction = next((c for c in classes if _is_fraction(c)), None)
    if fraction is None:
        return
    fix = "--task regression" if spec.model.type == "mlp" else "--model linear (or an mlp)"
    raise DataError(
        f"{source}: label {label!r} holds {len(classes)} distinct numbers, "
        f"some with fractions (e.g. {fraction!r}): a continuous target, not classes; for a "
        f"regression use {fix}"
    )


def _is_number(label: object) -> bool:
    """Whether a class label reads as a finite number ("3", "0.25")."""
    try:
        return math.isfinite(float(str(label)))
    except ValueError:
        return False


def _is_fraction(label: object) -> bool:
    """Whether a class label reads as a number with a fractional part ("0.25")."""
    return _is_number(label) and not float(str(label)).is_integer()


INIT_TAG = 0x1A17  # keys the initialisation stream apart from split and sampling


def initial_params(model: Model, seed: int) -> np.ndarray:
    """Round-0 parameters, drawn from ``SeedSequence([seed, INIT_TAG])``."""
    return model.init(np.random.default_rng(np.random.SeedSequence([seed, INIT_TAG])))


def worker_gradient(
    model: Model, params: np.ndarray, X: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, float, int]:
    """Sum (not mean) of the data-loss gradient and loss over a batch, and its row count."""
    count = int(X.shape[0])
    if count == 0:
        return np.zeros_like(params), 0.0, 0
    loss, grad = model.loss_and_grad(params, X, y)
    return grad * count, float(loss) * count, count


def local_sgd(
    model: Model,
    params: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    batches: list[np.ndarray],
    lr: float,
    l2: float,
) -> tuple[np.ndarray, float, int]:
    """K plain SGD steps from ``params``, one per batch; the row-weighted gradient sum.

    Each step moves by ``lr`` times the mean gradient of data loss + L2 over its batch (an
    empty batch moves nothing). Returns ``(count * sum_j g_j, sum_j loss_j * n_j, count)``,
    ``count`` the rows of all K batches and ``loss_j`` each batch's loss *before* its step:
    the same triple as :func:`worker_gradient`, so :func:`combine_gradients` gives the
    pseudo-gradient ``sum_k count_k * sum_j g_kj / sum_k count_k``, and
    ``theta_t - lr * pseudo`` is the row-weighted average of the workers' final parameters.
    """
    theta = params
    moved = np.zeros_like(params)
    loss_sum, count = 0.0, 0
    for idx in batches:
        n = len(idx)
        if n == 0:
            continue
        loss, grad = model.loss_and_grad(theta, X[idx], y[idx])
        if l2 > 0.0:
            grad = grad + l2_penalty(model, theta, l2)[1]
        theta = theta - lr * grad
        moved += grad
        loss_sum += float(loss) * n
        count += n
    return moved * count, loss_sum, count


def worker_update(
    model: Model,
    spec: JobSpec,
    params: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    round_: int,
    shard: int,
    total: int,
) -> tuple[np.ndarray, float, int]:
    """What one worker sends for one round: its batch's gradient sum (K=1) or :func:`local_sgd`."""
    t = spec.training
    if t.steps_per_round == 1:
        idx = batch_indices(len(y), t.batch_size, t.workers, t.seed, round_, shard)
        return worker_gradient(model, params, X[idx], y[idx])
    k = t.steps_per_round
    batches = [
        batch_indices(len(y), t.batch_size, t.workers, t.seed, round_ * k + j, shard)
        for j in range(k)
    ]
    lr = schedule_for(spec, total)(round_)
    return local_sgd(model, params, X, y, batches, lr, spec.model.l2)


def shard_arrays(spec: JobSpec, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """A shard as stored: features (and regression targets) in ``training.dtype``.

    Class indices stay int64. float32 halves the bytes a worker reads and keeps in memory,
    and its kernel computes in float32 (twice the rows per byte of memory bandwidth).
    """
    dtype = np.dtype(spec.training.dtype)
    if y.dtype.kind == "f":
        y = y.astype(dtype, copy=False)
    return {"X": X.astype(dtype, copy=False), "y": y}


def scaled_rows(
    spec: JobSpec, scaler: Any, X: np.ndarray, rows: np.ndarray, chunk: int = 16_384
) -> np.ndarray:
    """``scaler.transform(X[rows])`` in ``training.dtype``, built chunk by chunk: the same
    bits as transforming in float64 and casting, without float64 copies of a whole shard."""
    out = np.empty((len(rows), X.shape[1]), dtype=spec.training.dtype)
    for lo in range(0, len(rows), chunk):
        out[lo : lo + chunk] = scaler.transform(X[rows[lo : lo + chunk]])
    return out


def transfer_gradient(spec: JobSpec, grad_sum: np.ndarray) -> np.ndarray:
    """A worker's gradient sum as sent to the reducer: ``training.dtype`` (float32 halves
    the bytes); the reducer adds them up in float64 (:func:`combine_gradients`)."""
    return grad_sum.astype(spec.training.dtype, copy=False)


def combine_gradients(
    grad_sums: list[np.ndarray], loss_sums: list[float], counts: list[int]
) -> tuple[np.ndarray, float, int]:
    """Mean gradient and loss over all workers' rows; sums in shard order (determinism)."""
    total = int(sum(counts))
    if total == 0:
        raise ValueError("no rows in this round's batch")
    grad = np.zeros(np.shape(grad_sums[0]), dtype=np.float64)  # float64 even for float32 parts
    for g in grad_sums:
        grad += g
    loss = 0.0
    for s in loss_sums:
        loss += s
    return grad / total, loss / total, total


def schedule_for(spec: JobSpec, total: int) -> Schedule:
    """The learning-rate schedule of a spec, a pure function of the round number."""
    opt = spec.optimizer
    params: dict[str, float] = {}
    if opt.schedule == "step":
        params = {"step_size": opt.decay_steps, "gamma": opt.decay}
    elif opt.schedule == "exponential":
        params = {"gamma": opt.decay}
    elif opt.schedule == "inverse_time":
        params = {"decay": opt.decay}
    elif opt.schedule == "cosine":
        params = {"final_lr": opt.final_lr}
    return make_schedule(
        opt.schedule, opt.lr, warmup=opt.warmup, total_steps=max(1, total - opt.warmup), **params
    )


def optimizer_for(spec: JobSpec, model: Model, total: int) -> GradientTransformation:
    """The optimizer a spec asks for: its schedule, hyper-parameters and clipping."""
    opt = spec.optimizer
    hyper: dict[str, Any] = {}
    if opt.name in ("momentum", "nesterov"):
        hyper = {"beta": opt.momentum}
    elif opt.name in ("adam", "adamw"):
        hyper = {"b1": opt.beta1, "b2": opt.beta2, "eps": opt.eps}
        if opt.name == "adamw":
            hyper.update(weight_decay=opt.weight_decay, mask=model.weight_mask)
    elif opt.name == "rmsprop":
        hyper = {"eps": opt.eps}
    return make_optimizer(opt.name, schedule_for(spec, total), clip_norm=opt.clip_norm, **hyper)


def reduce_round(
    model: Model,
    optimizer: GradientTransformation,
    params: np.ndarray,
    opt_state: dict[str, np.ndarray],
    mean_grad: np.ndarray,
    spec: JobSpec,
    schedule: Schedule,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One optimizer step: L2 added to the gradient once, then L1 as a proximal step.

    The proximal step soft-thresholds the weights by ``lr_t * l1`` (ISTA), ``lr_t`` being
    the learning rate of this step; it gives exact zeros where plain subgradients would
    oscillate around them. Under local SGD (K > 1) ``mean_grad`` is the pseudo-gradient of
    :func:`local_sgd`, which already holds L2, and the threshold is ``K * lr_t * l1``, one
    for each local step.
    """
    local_steps = spec.training.steps_per_round
    if spec.model.l2 > 0.0 and local_steps == 1:
        _, reg_grad = l2_penalty(model, params, spec.model.l2)
        mean_grad = mean_grad + reg_grad
    lr = schedule(int(opt_state["step"]))
    updates, new_state = optimizer.update(mean_grad, opt_state, params)
    new_params = apply_updates(params, updates)
    if spec.model.l1 > 0.0:
        threshold = lr * spec.model.l1 if local_steps == 1 else local_steps * lr * spec.model.l1
        new_params = l1_prox(model, new_params, threshold)
    return new_params, new_state


def initial_progress(started_at: float) -> dict[str, Any]:
    """What the reducer carries from round to round (in the state, not in S3)."""
    return {
        "finished_at": started_at,
        "train_loss": None,
        "best_round": None,
        "best_loss": None,
        "since_best": 0,
    }


def advance_progress(
    progress: dict[str, Any],
    spec: JobSpec,
    round_: int,
    train_loss: float,
    validation_loss: float | None,
    finished_at: float,
) -> tuple[dict[str, Any], str | None]:
    """Fold one finished round into the progress; say why to stop, if it is time.

    ``round_`` is the number of the parameters just written. Early stopping watches the
    validation loss (``patience`` rounds without a gain of ``min_delta``); ``tolerance``
    watches the relative change of the training loss between rounds.
    """
    t = spec.training
    stop = None
    previous = progress.get("train_loss")
    relative_change = (
        abs(previous - train_loss) / max(abs(previous), 1e-12) if previous is not None else None
    )
    if t.tolerance > 0 and relative_change is not None and relative_change <= t.tolerance:
        stop = "tolerance"
    best_round, best_loss, since = (
        progress.get("best_round"),
        progress.get("best_loss"),
        int(progress.get("since_best", 0)),
    )
    if validation_loss is not None:
        if best_loss is None or validation_loss < best_loss - t.min_delta:
            best_round, best_loss, since = round_, validation_loss, 0
        else:
            since += 1
    if t.patience is not None and since >= t.patience:
        stop = "early_stopping"
    return {
        "finished_at": finished_at,
        "train_loss": train_loss,
        "best_round": best_round,
        "best_loss": best_loss,
        "since_best": since,
    }, stop


def final_round(spec: JobSpec, progress: dict[str, Any], last_round: int) -> int:
    """Which checkpoint becomes the model: the best validation round under early stopping."""
    if spec.training.patience is not None and progress.get("best_round") is not None:
        return int(progress["best_round"])
    return last_round
