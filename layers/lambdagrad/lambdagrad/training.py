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
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from lambdagrad.models import Model, l2_penalty
from lambdagrad.optim import GradientTransformation, make_optimizer
from lambdagrad.spec import JobSpec

__all__ = [
    "EVENTS_PER_ROUND_FIXED",
    "EVENTS_PER_ROUND_PER_WORKER",
    "HISTORY_EVENT_BUDGET",
    "batch_indices",
    "combine_gradients",
    "global_batch",
    "initial_params",
    "local_batch_sizes",
    "optimizer_for",
    "reduce_round",
    "segment_rounds_for",
    "total_rounds",
    "worker_gradient",
]

# Step Functions history events, measured on the embedded engine
# (tests/integration/test_training.py::test_history_events_per_round keeps these honest).
EVENTS_PER_ROUND_FIXED = 12
EVENTS_PER_ROUND_PER_WORKER = 7
# AWS fails a Standard execution at 25,000 events; keep every segment well below it,
# leaving room for retries (each retry adds events).
HISTORY_EVENT_BUDGET = 15_000


def global_batch(spec: JobSpec, n_train: int) -> int:
    """The number of rows one round consumes across all workers."""
    bs = spec.training.batch_size
    return n_train if bs == "full" else int(bs)


def total_rounds(spec: JobSpec, n_train: int) -> int:
    """Rounds to run: ``training.rounds``, else epochs × rows / global batch (rounded up)."""
    if spec.training.rounds is not None:
        return spec.training.rounds
    epochs = spec.training.epochs if spec.training.epochs is not None else spec.default_epochs
    return max(1, math.ceil(epochs * n_train / global_batch(spec, n_train)))


def segment_rounds_for(spec: JobSpec) -> int:
    """Rounds per execution before continue-as-new, so history stays under the budget."""
    if spec.training.segment_rounds is not None:
        return spec.training.segment_rounds
    per_round = EVENTS_PER_ROUND_FIXED + EVENTS_PER_ROUND_PER_WORKER * spec.training.workers
    return max(1, HISTORY_EVENT_BUDGET // per_round)


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


def combine_gradients(
    grad_sums: list[np.ndarray], loss_sums: list[float], counts: list[int]
) -> tuple[np.ndarray, float, int]:
    """Mean gradient and loss over all workers' rows; sums in shard order (determinism)."""
    total = int(sum(counts))
    if total == 0:
        raise ValueError("no rows in this round's batch")
    grad = np.zeros_like(grad_sums[0])
    for g in grad_sums:
        grad += g
    loss = 0.0
    for s in loss_sums:
        loss += s
    return grad / total, loss / total, total


def optimizer_for(spec: JobSpec) -> GradientTransformation:
    """The optimizer a spec asks for, with its resolved learning rate."""
    opt = spec.optimizer
    hyper: dict[str, float] = {}
    if opt.name == "momentum":
        hyper = {"beta": opt.momentum}
    elif opt.name == "adam":
        hyper = {"b1": opt.beta1, "b2": opt.beta2, "eps": opt.eps}
    return make_optimizer(opt.name, opt.lr, **hyper)


def reduce_round(
    model: Model,
    optimizer: GradientTransformation,
    params: np.ndarray,
    opt_state: dict[str, np.ndarray],
    mean_grad: np.ndarray,
    l2: float,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Add the L2 term once and apply one optimizer step."""
    if l2 > 0.0:
        _, reg_grad = l2_penalty(model, params, l2)
        mean_grad = mean_grad + reg_grad
    updates, new_state = optimizer.update(mean_grad, opt_state, params)
    return params + updates, new_state
