"""Resuming a job: the continuation input of the training state machine, rebuilt from S3.

A job's state between rounds lives in S3, not in Step Functions: the checkpoint of round
``r`` is ``params/<r>.npy`` + ``optimizer/<r>.npz`` + ``metrics/<r>.json`` (the metrics
record is written last, so its presence marks the round complete). Everything else the
state machine carries from round to round is a pure function of those objects:

- ``progress`` (early stopping, tolerance) is :func:`~lambdagrad.training.advance_progress`
  folded over the metrics records ``1..r`` -- exactly what the reducers computed;
- ``segment_end`` is ``r`` plus the job's segment length, capped at its rounds;
- ``shards`` is ``0..workers-1``.

So a new execution started with :func:`continuation_input` continues the job as the
killed, failed or stopped one would have, and ends with bit-identical parameters.
:func:`continuation_input` is the one place that knows the state machine's continuation
contract (``{job_id, round, shards, segment_end, progress}``, the input of a
continue-as-new execution). This module never imports boto3: it takes a
:class:`~lambdagrad.store.Store`.

Example
-------
>>> from lambdagrad.store import MemoryS3, Store
>>> try:
...     continuation_input(Store(MemoryS3(), "b"), "job-1")
... except NoCheckpointError as exc:
...     print(str(exc)[:29])
job 'job-1' has no checkpoint
"""

from __future__ import annotations

import re
import time
from typing import Any

from lambdagrad.spec import parse_spec
from lambdagrad.steps import committed_record, sound_checkpoint
from lambdagrad.store import JobKeys, MissingObjectError, Store
from lambdagrad.training import advance_progress, initial_progress, model_for

__all__ = [
    "JobFinishedError",
    "NoCheckpointError",
    "ResumeError",
    "claim_resume",
    "continuation_input",
    "mark_resuming",
    "resumable_round",
]


class ResumeError(RuntimeError):
    """A job cannot be resumed; the message says why and what to do instead."""


class JobFinishedError(ResumeError):
    """The job already has its model: there is nothing to resume."""


class NoCheckpointError(ResumeError):
    """The job never got past Prepare (or does not exist): there is no round to start from."""


_METRICS = re.compile(r"/metrics/(\d+)\.json$")


def _round_complete(store: Store, keys: JobKeys, r: int, n_params: int) -> bool:
    """Round ``r`` is committed (:func:`~lambdagrad.steps.committed_record`, past round 0)
    and its params and optimizer state are sound (:func:`~lambdagrad.steps.sound_checkpoint`)."""
    if r > 0 and committed_record(store, keys, r) is None:
        return False
    return sound_checkpoint(store, keys, r, n_params) is not None


def resumable_round(store: Store, job_id: str) -> tuple[int, list[dict[str, Any]]]:
    """The newest round to resume from, and the metrics records ``1..r``.

    Stricter than :func:`~lambdagrad.steps.last_complete_round`, which is enough to name the
    checkpoint in a failure: the records ``1..r`` must all be there (progress is replayed
    from them) and the arrays must load with the model's size and the round's step.

    Raises :class:`NoCheckpointError` if Prepare never finished (no ``meta.json``).
    """
    keys = JobKeys(job_id)
    try:
        spec = parse_spec(store.get_json(keys.spec), stored=True)
        meta = store.get_json(keys.meta)
    except MissingObjectError:  # a damaged one is named as such (StoreError)
        raise NoCheckpointError(
            f"job {job_id!r} has no checkpoint in s3://{store.bucket}/{keys.prefix} "
            "(it does not exist, or failed before Prepare finished): start it again as a new job"
        ) from None
    n_params = model_for(spec, meta["n_features"], meta["n_classes"]).n_params
    # Records 1..r must all exist: the reducer writes them in order, one per round.
    rounds = sorted(
        int(m.group(1))
        for key in store.list_keys(keys.metrics_prefix)
        if (m := _METRICS.search(key))
    )
    contiguous = 0
    for expected, r in enumerate(rounds, start=1):
        if r != expected:
            break
        contiguous = r
    records = store.get_json_many([keys.metrics(r) for r in range(1, contiguous + 1)])
    for r in range(contiguous, -1, -1):
        if r > 0 and int(records[r - 1].get("round", -1)) != r:
            continue
        if _round_complete(store, keys, r, n_params):
            return r, records[:r]
    raise NoCheckpointError(
        f"job {job_id!r}: no complete checkpoint (params, optimizer state and metrics of one "
        f"round) under s3://{store.bucket}/{keys.prefix}"
    )


def continuation_input(store: Store, job_id: str) -> dict[str, Any]:
    """The input of a train execution that continues ``job_id`` from its last checkpoint.

    The same shape a continue-as-new execution receives: ``{job_id, round, shards,
    segment_end, progress}``. Refuses a job whose model exists (:class:`JobFinishedError`)
    or that has no checkpoint (:class:`NoCheckpointError`).

    If the last checkpoint already meets a stopping rule (its round is the last, or early
    stopping / tolerance fired there) the job died between that reducer and Finalize: the
    input then starts one round earlier, whose reducer finds round ``r`` complete (it never
    applies the optimizer twice), stops, and finalizes.
    """
    keys = JobKeys(job_id)
    if store.exists(keys.model_json):
        raise JobFinishedError(
            f"job {job_id!r} already finished: its model is s3://{store.bucket}/{keys.model_json}"
        )
    r, records = resumable_round(store, job_id)
    spec = parse_spec(store.get_json(keys.spec), stored=True)
    meta = store.get_json(keys.meta)
    total, segment = int(meta["rounds"]), int(meta["segment_rounds"])

    def replay(upto: int) -> tuple[dict[str, Any], str | None]:
        progress, stop = initial_progress(float(meta["prepared_at"])), None
        for rec in records[:upto]:
            progress, stop = advance_progress(
                progress,
                spec,
                int(rec["round"]),
                rec["train_loss"],
                rec["validation_loss"],
                rec["finished_at"],
            )
        return progress, stop

    progress, stop = replay(r)
    if r > 0 and (stop or r >= total):
        r -= 1
        progress, stop = replay(r)
    return {
        "job_id": job_id,
        "round": r,
        "shards": list(range(spec.training.workers)),
        "segment_end": min(r + segment, total),
        "progress": {**progress, "stop": None},
    }


def claim_resume(store: Store, job_id: str, start: dict[str, Any]) -> str:
    """Record this resume with a conditional write; return its execution name
    ``<job_id>-resume-<n>`` (unique per job, since execution names must be).

    A second resume racing this one finds its number taken and is refused.
    """
    keys = JobKeys(job_id)
    n = len(store.list_keys(keys.prefix + "resumes/")) + 1
    claim = {"round": start["round"], "n": n, "claimed_at": time.time()}
    if not store.put_json_if_absent(f"{keys.prefix}resumes/{n}.json", claim):
        raise ResumeError(f"job {job_id!r} is being resumed by another process right now")
    return resume_execution_name(job_id, n)


def resume_execution_name(job_id: str, n: int) -> str:
    """The execution resume number ``n`` of a job starts (execution names are unique)."""
    return f"{job_id}-resume-{n}"


#: How long a resume's claim counts as "starting" while its execution does not exist yet.
RESUME_START_SECONDS = 120.0


def starting_resumes(store: Store, job_id: str, below: int) -> list[tuple[int, str]]:
    """Claims numbered below ``below`` made in the last :data:`RESUME_START_SECONDS`, with
    the execution names they will start: two resumes claim different numbers, so each looks
    at the lower ones, and the lowest goes ahead (a claim whose process died before starting
    its execution stops counting once it is old)."""
    keys = JobKeys(job_id)
    found = []
    for key in store.list_keys(keys.prefix + "resumes/"):
        try:
            claim = store.get_json(key)
            n, claimed_at = int(claim["n"]), float(claim.get("claimed_at", 0.0))
        except (MissingObjectError, KeyError, TypeError, ValueError):
            continue
        recent = time.time() - claimed_at < RESUME_START_SECONDS
        if n < below and recent and not claim.get("withdrawn"):
            found.append((n, resume_execution_name(job_id, n)))
    return sorted(found)


def withdraw_resume(store: Store, job_id: str, n: int) -> None:
    """Mark claim ``n`` as one that started nothing, so that it holds no later resume back."""
    key = f"{JobKeys(job_id).prefix}resumes/{n}.json"
    store.put_json(key, {**store.get_json(key), "withdrawn": True})


def mark_resuming(store: Store, job_id: str, start: dict[str, Any]) -> None:
    """Replace the job's status (a stopped or failed execution left its own, naming that
    execution) before the new execution starts, so that following the job watches the new one."""
    keys = JobKeys(job_id)
    meta = store.get_json(keys.meta)
    store.put_json(
        keys.status,
        {
            "job_id": job_id,
            "state": "RUNNING",
            "round": start["round"],
            "rounds": meta["rounds"],
            "resumed_from": start["round"],
            "prepared_by": meta.get("prepared_by"),
            "updated_at": time.time(),
        },
    )
