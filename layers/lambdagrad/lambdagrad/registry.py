"""A model registry in the stack bucket: a name points at one finished job's model.

``models/<name>/current.json`` is the pointer::

    {"name": "houses", "job_id": "houses-demo",
     "model_key": "jobs/houses-demo/model/model.json",
     "npz_key": "jobs/houses-demo/model/model.npz",
     "registered_at": 1795726401.25, "version": "9f2c4e1a7b3d5c60"}

``version`` is a digest of the name, job, time and previous version, so it changes every
time the pointer is written (even when a name is promoted back to a job it pointed at
before). A server caches a loaded model and compares versions to know when to reload.

Only complete models can be registered: ``finalize`` writes ``model.json`` last, so its
presence marks a whole model. This module works on a :class:`~lambdagrad.store.Store` and
never imports boto3.

Example
-------
>>> from lambdagrad.store import MemoryS3, Store
>>> store = Store(MemoryS3(), "bucket")
>>> register(store, "houses", "houses-demo")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

from lambdagrad.artifact import TrainedModel
from lambdagrad.store import JobKeys, MissingObjectError, Store, StoreError

__all__ = [
    "MODELS_PREFIX",
    "RegistryError",
    "list_models",
    "load_registered",
    "lookup",
    "pointer_key",
    "promote",
    "register",
    "validate_name",
]

MODELS_PREFIX = "models/"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RegistryError(ValueError):
    """A bad model name, an unknown model, or a job without a complete model."""


def validate_name(name: Any) -> str:
    """``name`` if it is a valid model name, else RegistryError."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(
            f"invalid model name {name!r}: 1-64 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit"
        )
    return name


def pointer_key(name: str) -> str:
    """The key of a model's pointer document."""
    return f"{MODELS_PREFIX}{validate_name(name)}/current.json"


def _job_keys(job_id: Any) -> JobKeys:
    try:
        return JobKeys(job_id)
    except (StoreError, TypeError):
        raise RegistryError(f"invalid job id {job_id!r}") from None


def _complete_model(store: Store, job_id: str) -> JobKeys:
    keys = _job_keys(job_id)
    if not store.exists(keys.model_json):
        raise RegistryError(
            f"job {job_id!r} has no complete model ({keys.model_json} does not exist): "
            "has it finished training?"
        )
    return keys


def _read_pointer(store: Store, name: str, *, repairing: bool = False) -> Any:
    """The pointer document, None when the name is not registered. One that is not JSON is
    named as damaged (promote, ``repairing`` it, takes it for none)."""
    key = pointer_key(name)
    try:
        return store.get_json(key)
    except MissingObjectError:
        return None
    except StoreError as exc:
        if repairing:
            return None
        raise RegistryError(f"{exc}; {_repair_hint(name)}") from None


def _repair_hint(name: str) -> str:
    return f"point the name at a job again with: lambdagrad models promote {name} JOB_ID"


def _write_pointer(
    store: Store, name: str, job_id: str, previous: dict[str, Any] | None, now: float | None
) -> dict[str, Any]:
    keys = _complete_model(store, job_id)
    registered_at = time.time() if now is None else float(now)
    prev_version = previous.get("version", "") if isinstance(previous, dict) else ""
    digest = hashlib.sha256(
        f"{name}\n{job_id}\n{registered_at!r}\n{prev_version}".encode()
    ).hexdigest()
    pointer = {
        "name": name,
        "job_id": job_id,
        "model_key": keys.model_json,
        "npz_key": keys.model_npz,
        "registered_at": registered_at,
        "version": digest[:16],
    }
    store.put_json(pointer_key(name), pointer)
    return pointer


def register(store: Store, name: str, job_id: str, *, now: float | None = None) -> dict[str, Any]:
    """Register a new model name for a finished job; returns the pointer.

    Registering the job a name already points at is a no-op that returns the existing
    pointer (safe to retry); a name that points at another job is refused: use
    :func:`promote` to move it.
    """
    validate_name(name)
    _complete_model(store, job_id)
    previous = _read_pointer(store, name)
    if previous is not None:
        previous = _checked(store, name, previous)
        if previous.get("job_id") == job_id:
            return previous
        raise RegistryError(
            f"model {name!r} is already registered (job {previous.get('job_id')!r}): "
            f"promote it to move it to job {job_id!r}"
        )
    return _write_pointer(store, name, job_id, None, now)


def promote(store: Store, name: str, job_id: str, *, now: float | None = None) -> dict[str, Any]:
    """Point ``name`` (existing or new) at a finished job; returns the new pointer.

    Always writes a new pointer with a new version, so servers reload the model.
    """
    validate_name(name)
    _complete_model(store, job_id)
    return _write_pointer(store, name, job_id, _read_pointer(store, name, repairing=True), now)


def lookup(store: Store, name: str) -> dict[str, Any]:
    """The pointer of a registered model; RegistryError "no model named X" if absent."""
    pointer = _read_pointer(store, validate_name(name))
    if pointer is None:
        raise RegistryError(f"no model named {name!r}")
    return _checked(store, name, pointer)


def _checked(store: Store, name: str, pointer: Any) -> dict[str, Any]:
    """A pointer as promote writes it, or RegistryError naming the damaged document."""
    keys = ("job_id", "model_key", "npz_key", "version")
    if not isinstance(pointer, dict) or not all(isinstance(pointer.get(k), str) for k in keys):
        raise RegistryError(
            f"s3://{store.bucket}/{pointer_key(name)} is damaged: it needs the strings "
            f"{', '.join(keys)}; {_repair_hint(name)}"
        )
    return pointer


def load_registered(store: Store, pointer: dict[str, Any]) -> TrainedModel:
    """The model a pointer (:func:`lookup`) serves, read from the bucket; a damaged or
    mismatched pair is an ArtifactError naming its S3 prefix."""
    model_key = pointer["model_key"]
    return TrainedModel.from_bytes(
        store.get_bytes(pointer["npz_key"]),
        store.get_bytes(model_key),
        source=f"s3://{store.bucket}/{model_key.rpartition('/')[0]}",
    )


def list_models(store: Store) -> list[dict[str, Any]]:
    """Every registered model, sorted by name, with the metrics of its model.json.

    Each entry is the pointer plus ``metrics``, ``model_type``, ``task`` and
    ``trained_at`` from the job's model.json (None when that document cannot be read).
    """
    names = sorted(
        key[len(MODELS_PREFIX) : -len("/current.json")]
        for key in store.list_keys(MODELS_PREFIX)
        if key.endswith("/current.json") and key.count("/") == 2
    )
    names = [n for n in names if _NAME.match(n)]
    try:
        pointers = store.get_json_many([pointer_key(n) for n in names])
    except StoreError:  # one is not JSON: read them one by one, to name it
        pointers = [_read_pointer(store, n) for n in names]
    out = []
    for name, pointer in zip(names, pointers, strict=True):
        pointer = _checked(store, name, pointer)
        try:
            doc = store.get_json(pointer["model_key"])
        except StoreError:
            doc = {}
        spec = doc.get("model") or {}
        out.append(
            {
                **pointer,
                "name": name,  # the key's: a pointer edited by hand may have lost its own
                "metrics": doc.get("metrics"),
                "model_type": spec.get("type"),
                "task": spec.get("task"),
                "trained_at": doc.get("trained_at"),
            }
        )
    return out
