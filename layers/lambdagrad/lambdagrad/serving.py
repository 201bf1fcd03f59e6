"""Predictions for a registered model: request parsing, a model cache, and ``predict``.

Pure given a :class:`~lambdagrad.store.Store`; the Lambda handler
(``functions/predict/app.py``) is this module plus Powertools.

Request (the JSON body)::

    {"model": "houses", "instances": [[1200, 3, 12.5, 4.2], ...]}
    {"model": "houses", "instances": [{"sqft": 1200, "bedrooms": 3, "age": 12.5,
                                       "distance_km": 4.2}, ...]}

Response::

    {"predictions": [301234.5, ...],
     "model": {"name": "houses", "job_id": "houses-demo", "trained_at": 1795726401.0,
               "version": "9f2c4e1a7b3d5c60"}}

Classifiers return the original class labels as ``predictions`` and add ``classes`` and
``probabilities`` (one list per row, in the order of ``classes``).

Every problem with a request is a :class:`PredictError` whose ``status`` is the HTTP status
(400 bad request, 404 unknown model) and whose message says what is wrong and where, e.g.
``instances[3][1]: 'abc' is not a number``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from lambdagrad.artifact import ArtifactError, NonFiniteError, TrainedModel
from lambdagrad.registry import RegistryError, load_registered, lookup, validate_name
from lambdagrad.store import Store, StoreError

__all__ = ["CachedModel", "ModelCache", "PredictError", "parse_request", "predict"]

_log = logging.getLogger(__name__)


class PredictError(ValueError):
    """A request that cannot be served; ``status`` is the HTTP status code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# ---- request parsing ------------------------------------------------------------------
def _show(value: Any, limit: int = 40) -> str:
    """A short JSON-ish rendering of a value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise PredictError(f"{where}: {_show(value)} is not a number (booleans are not numbers)")
    if isinstance(value, str):
        raise PredictError(f"{where}: {_show(value)} is not a number (send JSON numbers)")
    if not isinstance(value, (int, float)):
        raise PredictError(f"{where}: {_show(value)} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise PredictError(f"{where}: {_show(value)} is too large for a float") from None
    if not math.isfinite(number):
        raise PredictError(f"{where}: {_show(value)} is not a finite number")
    return number


def _model_name(body: Any) -> str:
    if not isinstance(body, dict):
        got = "nothing" if body is None else type(body).__name__
        raise PredictError(
            f'the request body must be a JSON object {{"model": ..., "instances": [...]}}, '
            f"got {got}"
        )
    unknown = sorted(set(body) - {"model", "instances"})
    if unknown:
        raise PredictError(
            f'unknown field {_show(unknown[0])}: a request has "model" and "instances" '
            "only (it is served by the model's current version)"
        )
    if "model" not in body:
        raise PredictError('missing "model" field: the name of a registered model')
    try:
        return validate_name(body["model"])
    except RegistryError as exc:
        raise PredictError(f'"model": {exc}') from None


def parse_request(body: dict, trained: TrainedModel, max_rows: int) -> np.ndarray:
    """The ``(n, n_features)`` float64 rows of a request, or PredictError (400).

    Each instance is a list of the features in the model's order or an object keyed by
    feature name (every feature required, no others). Numbers must be finite JSON numbers.
    """
    _model_name(body)
    names = list(trained.feature_names)
    n_features = len(names)
    expected = ", ".join(names)
    if "instances" not in body:
        raise PredictError(
            f'missing "instances" field: a list of rows of {n_features} features ({expected})'
        )
    instances = body["instances"]
    if not isinstance(instances, list):
        raise PredictError(
            f'"instances" must be a list of rows, got {type(instances).__name__}'
            if instances is not None
            else '"instances" must be a list of rows, got null'
        )
    if not instances:
        raise PredictError('"instances" is empty: send at least one row')
    if len(instances) > max_rows:
        raise PredictError(
            f'"instances" has {len(instances)} rows: at most {max_rows} rows per request'
        )
    X = np.empty((len(instances), n_features), dtype=np.float64)
    for i, row in enumerate(instances):
        where = f"instances[{i}]"
        if isinstance(row, list):
            if len(row) != n_features:
                raise PredictError(
                    f"{where}: expected {n_features} features ({expected}), got {len(row)}"
                )
            for j, value in enumerate(row):
                X[i, j] = _number(value, f"{where}[{j}]")
        elif isinstance(row, dict):
            missing = [n for n in names if n not in row]
            if missing:
                raise PredictError(f"{where}: missing features: {', '.join(missing)}")
            extra = sorted(str(k) for k in row if k not in names)
            if extra:
                raise PredictError(
                    f"{where}: unknown features: {', '.join(extra)} (expected {expected})"
                )
            for j, name in enumerate(names):
                X[i, j] = _number(row[name], f"{where}.{name}")
        else:
            raise PredictError(
                f"{where}: expected a list of {n_features} numbers or an object keyed by "
                f"feature name ({expected}), got {_show(row)}"
            )
    return X


# ---- model cache ----------------------------------------------------------------------
@dataclass(frozen=True)
class CachedModel:
    """A loaded model and the registry pointer it was loaded from."""

    name: str
    pointer: dict[str, Any]
    trained: TrainedModel

    @property
    def version(self) -> str:
        return self.pointer["version"]


class ModelCache:
    """Loaded models by (bucket, name), reloaded when the registry pointer's version changes.

    Every :meth:`get` re-reads the small ``current.json``; ``model.json`` and ``model.npz``
    are read only when the version differs from the cached one. Thread-safe: one lock per
    model name, so a slow load does not hold up hits on other models. At most
    ``max_models`` models are kept (least recently used dropped first).
    """

    def __init__(self, max_models: int = 8) -> None:
        self.max_models = max_models
        self.loads = 0  # how many times a model was (re)loaded, for metrics and tests
        self._models: OrderedDict[tuple[str, str], CachedModel] = OrderedDict()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def _entry_lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def _cached(self, key: tuple[str, str], version: str) -> CachedModel | None:
        with self._lock:
            entry = self._models.get(key)
            if entry is not None and entry.version == version:
                self._models.move_to_end(key)
                return entry
            return None

    def _forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._models.pop(key, None)

    def get(self, store: Store, name: str) -> CachedModel:
        """The current model for ``name``: PredictError 404 if it is not registered."""
        key = (store.bucket, name)
        try:
            pointer = lookup(store, name)
        except RegistryError as exc:
            self._forget(key)
            raise PredictError(str(exc), status=404) from None
        entry = self._cached(key, pointer["version"])
        if entry is not None:
            return entry
        with self._entry_lock(key):
            entry = self._cached(key, pointer["version"])  # loaded while we waited?
            if entry is not None:
                return entry
            entry = CachedModel(name=name, pointer=pointer, trained=self._load(store, pointer))
            with self._lock:
                self.loads += 1
                self._models[key] = entry
                self._models.move_to_end(key)
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            return entry

    @staticmethod
    def _load(store: Store, pointer: dict[str, Any]) -> TrainedModel:
        """The pointer's model; a damaged or mismatched pair is logged and a 500."""
        try:
            return load_registered(store, pointer)
        except (StoreError, ArtifactError, KeyError) as exc:
            _log.exception("cannot load model %s (job %s)", pointer["name"], pointer["job_id"])
            raise PredictError(
                f"model {pointer['name']!r} (job {pointer['job_id']!r}) could not be loaded",
                status=500,
            ) from exc

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


# ---- predict --------------------------------------------------------------------------
def predict(store: Store, cache: ModelCache, body: Any, max_rows: int) -> dict[str, Any]:
    """Predictions for one request body (see the module docstring for the shapes)."""
    entry = cache.get(store, _model_name(body))
    trained = entry.trained
    X = parse_request(body, trained, max_rows)
    try:  # the model refuses predictions that are not finite numbers
        predictions, proba = trained.predict_with_proba(X)
    except NonFiniteError as exc:
        raise PredictError(f"instances[{exc.row}]: {exc.reason}") from None
    result: dict[str, Any] = {
        "predictions": predictions,
        "model": {
            "name": entry.name,
            "job_id": entry.pointer["job_id"],
            "trained_at": trained.info.get("trained_at"),
            "version": entry.version,
        },
    }
    if proba is not None:
        result["classes"] = trained.class_labels
        result["probabilities"] = proba.tolist()
    return result
