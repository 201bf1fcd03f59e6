"""A plain-loop reference trainer over the core functions, for comparing with the steps
and with the state machine: same spec + same data must give the same parameters."""

from __future__ import annotations

import numpy as np
from lambdagrad.data import Standardizer, load_dataset, shard_bounds, train_validation_split
from lambdagrad.models import build_model
from lambdagrad.spec import JobSpec
from lambdagrad.training import (
    batch_indices,
    combine_gradients,
    initial_params,
    optimizer_for,
    reduce_round,
    total_rounds,
    worker_gradient,
)


def reference_train(spec: JobSpec, data: bytes, source: str) -> tuple[np.ndarray, list[float]]:
    """Final parameters and the per-round training losses."""
    ds = load_dataset(
        data, source=source, fmt=spec.dataset.format, label=spec.dataset.label, task=spec.model.task
    )
    seed, workers = spec.training.seed, spec.training.workers
    train_idx, _ = train_validation_split(len(ds.y), spec.dataset.validation, seed)
    X, y = ds.X[train_idx], ds.y[train_idx]
    scaler = Standardizer.fit(X) if spec.dataset.standardize else Standardizer.identity(X.shape[1])
    X = scaler.transform(X)
    shards = [(X[lo:hi], y[lo:hi]) for lo, hi in shard_bounds(len(y), workers)]
    n_classes = 1 if spec.model.task == "regression" else len(ds.classes)
    model = build_model(spec.model.type, X.shape[1], n_classes)
    optimizer = optimizer_for(spec)
    params = initial_params(model, seed)
    state = optimizer.init(params)
    losses: list[float] = []
    for t in range(total_rounds(spec, len(y))):
        parts = []
        for k, (Xk, yk) in enumerate(shards):
            idx = batch_indices(len(yk), spec.training.batch_size, workers, seed, t, k)
            parts.append(worker_gradient(model, params, Xk[idx], yk[idx]))
        grad, loss, _ = combine_gradients(*map(list, zip(*parts, strict=True)))
        params, state = reduce_round(model, optimizer, params, state, grad, spec.model.l2)
        losses.append(loss)
        tol = spec.training.tolerance
        if tol > 0 and t > 0 and abs(losses[-2] - loss) <= tol * max(abs(losses[-2]), 1e-12):
            break
    return params, losses
