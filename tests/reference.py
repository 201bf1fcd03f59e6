"""A plain-loop reference trainer over the core functions, for comparing with the steps
and with the state machine: same spec + same data must give the same parameters."""

from __future__ import annotations

import numpy as np
from lambdagrad.data import Standardizer, load_dataset, shard_bounds, train_validation_split
from lambdagrad.models import l1_prox, l2_penalty
from lambdagrad.spec import JobSpec
from lambdagrad.training import (
    advance_progress,
    batch_indices,
    combine_gradients,
    final_round,
    infer_task,
    initial_params,
    initial_progress,
    model_for,
    optimizer_for,
    reduce_round,
    schedule_for,
    shard_arrays,
    total_rounds,
    transfer_gradient,
    worker_gradient,
)


def reference_train(spec: JobSpec, data: bytes, source: str) -> tuple[np.ndarray, list[float]]:
    """The final model's parameters and the per-round training losses."""
    fmt, label, task = spec.dataset.format, spec.dataset.label, spec.model.task
    if task == "auto":
        task = infer_task(data, source=source, fmt=fmt, label=label)
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"task": task})})
    ds = load_dataset(data, source=source, fmt=fmt, label=label, task=task)
    seed, workers = spec.training.seed, spec.training.workers
    train_idx, val_idx = train_validation_split(len(ds.y), spec.dataset.validation, seed)
    X, y = ds.X[train_idx], ds.y[train_idx]
    scaler = (
        Standardizer.fit_rows(ds.X, train_idx)
        if spec.dataset.standardize
        else Standardizer.identity(X.shape[1])
    )
    X, X_val, y_val = scaler.transform(X), scaler.transform(ds.X[val_idx]), ds.y[val_idx]
    shards = [
        tuple(shard_arrays(spec, X[lo:hi], y[lo:hi]).values())
        for lo, hi in shard_bounds(len(y), workers)
    ]
    n_classes = 1 if task == "regression" else len(ds.classes)
    model = model_for(spec, X.shape[1], n_classes)
    total = total_rounds(spec, len(y))
    optimizer, schedule = optimizer_for(spec, model, total), schedule_for(spec, total)
    params = initial_params(model, seed)
    state = optimizer.init(params)
    checkpoints, losses = [params], []
    progress = initial_progress(0.0)
    for t in range(total):
        if spec.training.steps_per_round > 1:
            params, state, loss = local_sgd_round(
                spec, model, optimizer, schedule, params, state, shards, t
            )
        else:
            parts = []
            for k, (Xk, yk) in enumerate(shards):
                idx = batch_indices(len(yk), spec.training.batch_size, workers, seed, t, k)
                grad_sum, loss_sum, count = worker_gradient(model, params, Xk[idx], yk[idx])
                parts.append((transfer_gradient(spec, grad_sum), loss_sum, count))
            grad, loss, _ = combine_gradients(*map(list, zip(*parts, strict=True)))
            params, state = reduce_round(model, optimizer, params, state, grad, spec, schedule)
        checkpoints.append(params)
        losses.append(loss)
        val_loss = float(model.loss(params, X_val, y_val)) if len(y_val) else None
        progress, stop = advance_progress(progress, spec, t + 1, loss, val_loss, 0.0)
        if stop:
            break
    return checkpoints[final_round(spec, progress, len(losses))], losses


def local_sgd_round(spec, model, optimizer, schedule, params, state, shards, t):
    """One round of local SGD spelled out as model averaging (``steps_per_round`` K > 1).

    Every worker copies the round's parameters and takes K plain SGD steps (data loss +
    L2, learning rate ``schedule(t)``) on the batches of sub-rounds ``t*K .. t*K+K-1``; the
    new parameters are the row-weighted average of the workers' copies (plain sgd), or the
    optimizer's step on the pseudo-gradient ``(params - average) / lr``.
    """
    K, tr = spec.training.steps_per_round, spec.training
    lr = schedule(t)
    finals, rows, loss_total = [], [], 0.0
    for k, (Xk, yk) in enumerate(shards):
        theta, n_k = params.copy(), 0
        for j in range(K):
            idx = batch_indices(len(yk), tr.batch_size, tr.workers, tr.seed, t * K + j, k)
            if len(idx) == 0:
                continue
            loss, grad = model.loss_and_grad(theta, Xk[idx], yk[idx])
            grad = grad + l2_penalty(model, theta, spec.model.l2)[1]
            theta = theta - lr * grad
            loss_total += loss * len(idx)
            n_k += len(idx)
        finals.append(theta)
        rows.append(n_k)
    average = sum(n * theta for n, theta in zip(rows, finals, strict=True)) / sum(rows)
    if spec.optimizer.name == "sgd" and spec.optimizer.clip_norm is None:
        _, state = optimizer.update(np.zeros_like(params), state, params)  # count the step
        new = average
        if spec.model.l1 > 0:
            new = l1_prox(model, new, K * lr * spec.model.l1)
    else:
        new, state = reduce_round(
            model, optimizer, params, state, (params - average) / lr, spec, schedule
        )
    return new, state, loss_total / sum(rows)
