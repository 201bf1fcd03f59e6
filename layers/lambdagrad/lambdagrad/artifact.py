"""The model artifact: ``model.npz`` (arrays only) + ``model.json`` (everything else).

``predict`` needs nothing but these two files: the model type and sizes rebuild the
model, the standardizer maps raw features, and the class list maps indices back to the
user's labels. ``model.npz`` is always loaded with ``allow_pickle=False``.

Loading checks that the two files agree with each other and with themselves (sizes,
feature names, classes, a finite standardizer) and refuses anything else with an
:class:`ArtifactError` naming the file and the key, so a damaged model fails at load time
instead of predicting wrongly. ``model.json`` records the SHA-256 of ``model.npz``: the
files are replaced one after the other, and a ``model.npz`` left beside another job's
``model.json`` is refused.

Example
-------
>>> trained = TrainedModel.load("runs/price")          # doctest: +SKIP
>>> trained.predict(np.array([[1200.0, 3.0, 12.0]]))   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lambdagrad.data import Standardizer
from lambdagrad.evaluation import classification_metrics, regression_metrics
from lambdagrad.models import MODEL_KINDS, Model, ModelError, build_model

__all__ = [
    "MODEL_FORMAT",
    "ArtifactError",
    "NonFiniteError",
    "TrainedModel",
    "write_directory_atomically",
]

MODEL_FORMAT = 1
NPZ_DIGEST_KEY = "npz_sha256"
# what reading a damaged .npz can raise: not a zip, cut short, bad CRC, pickled content
_NPZ_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


class ArtifactError(ValueError):
    """A model artifact that is missing, damaged, from an unknown format or inconsistent;
    or data the model cannot score (:class:`NonFiniteError`)."""


class NonFiniteError(ArtifactError):
    """A feature or a prediction that is not a finite number; ``row`` is 0-based."""

    def __init__(self, row: int, reason: str, feature: str | None = None) -> None:
        where = f"data row {row + 1}" + (f", feature {feature!r}" if feature else "")
        super().__init__(f"{where}: {reason}")
        self.row = row
        self.feature = feature
        self.reason = reason


@dataclass(frozen=True)
class _Place:
    """Where the pair was read from, for error messages: a directory, an S3 prefix, or
    nothing (then the bare file names)."""

    source: str = ""

    def file(self, name: str) -> str:
        return f"{self.source.rstrip('/')}/{name}" if self.source else name

    @property
    def json(self) -> str:
        return self.file("model.json")

    @property
    def npz(self) -> str:
        return self.file("model.npz")


def _key(doc: dict[str, Any], key: str, place: _Place, parent: str = "") -> Any:
    name = f"{parent}.{key}" if parent else key
    if key not in doc:
        raise ArtifactError(f"{place.json}: key {name!r} is missing")
    return doc[key]


def _object(value: Any, name: str, place: _Place) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ArtifactError(
            f"{place.json}: {name!r} must be a JSON object, got {type(value).__name__}"
        )
    return value


def _count(value: Any, name: str, place: _Place) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArtifactError(f"{place.json}: {name!r} must be a positive integer, got {value!r}")
    return value


def _vector(value: Any, name: str, length: int, place: _Place) -> np.ndarray:
    """A list of ``length`` finite JSON numbers as float64."""
    if not isinstance(value, list):
        raise ArtifactError(f"{place.json}: {name!r} must be a list of numbers")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ArtifactError(f"{place.json}: {name!r} holds {item!r}, not a number")
    if len(value) != length:
        raise ArtifactError(
            f"{place.json}: {name!r} has {len(value)} values, the model has {length} features"
        )
    try:
        floats = [float(item) for item in value]  # an integer past float64 overflows here
    except OverflowError:
        floats = [math.inf]
    if not all(math.isfinite(item) for item in floats):
        raise ArtifactError(f"{place.json}: {name!r} holds a value that is not a finite number")
    return np.asarray(floats, dtype=np.float64)


def _build(spec: dict[str, Any], place: _Place) -> Model:
    """The model ``spec`` (model.json's "model") describes, checked field by field."""
    kind = _key(spec, "type", place, "model")
    if kind not in MODEL_KINDS:
        raise ArtifactError(
            f"{place.json}: 'model.type' {kind!r} is not one of {', '.join(MODEL_KINDS)}"
        )
    n_features = _count(_key(spec, "n_features", place, "model"), "model.n_features", place)
    n_classes = _count(_key(spec, "n_classes", place, "model"), "model.n_classes", place)
    extra = {}
    if kind == "mlp":
        extra = {
            "hidden": _key(spec, "hidden", place, "model"),
            "activation": _key(spec, "activation", place, "model"),
        }
    try:
        model = build_model(kind, n_features, n_classes, **extra)
    except (ModelError, TypeError) as exc:
        raise ArtifactError(f"{place.json}: 'model': {exc}") from None
    if "task" in spec and spec["task"] != model.task:
        raise ArtifactError(
            f"{place.json}: 'model.task' is {spec['task']!r}, but a {kind} with "
            f"n_classes={n_classes} is {model.task}"
        )
    return model


def _feature_names(doc: dict[str, Any], model: Model, place: _Place) -> list[str]:
    names = _key(doc, "feature_names", place)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ArtifactError(f"{place.json}: 'feature_names' must be a list of text")
    if len(names) != model.n_features:
        raise ArtifactError(
            f"{place.json}: 'feature_names' has {len(names)} names, "
            f"'model.n_features' is {model.n_features}"
        )
    _each_once(names, "feature_names", place)
    return list(names)


def _each_once(names: list[str], key: str, place: _Place) -> None:
    """Columns are found by name and classes matched as text: a name twice is ambiguous."""
    twice = sorted(n for n, times in Counter(names).items() if times > 1)
    if twice:
        raise ArtifactError(
            f"{place.json}: '{key}' names {', '.join(map(repr, twice))} more than once"
        )


def _training_label(doc: dict[str, Any], place: _Place) -> str | None:
    """The label column named in training (``spec.dataset.label``), None for the default
    (the last column): what evaluate scores against and what predict drops from an array."""
    spec = doc.get("spec", {})
    dataset = spec.get("dataset", {}) if isinstance(spec, dict) else None
    if not isinstance(dataset, dict):
        raise ArtifactError(f"{place.json}: 'spec' must be an object holding a 'dataset' object")
    label = dataset.get("label")
    if label is not None and not isinstance(label, str):
        raise ArtifactError(
            f"{place.json}: 'spec.dataset.label' must be a column name or null, got {label!r}"
        )
    return label


def _classes(doc: dict[str, Any], model: Model, place: _Place) -> list[Any] | None:
    classes = doc.get("classes")
    if classes is None:
        return None
    if not isinstance(classes, list):
        raise ArtifactError(f"{place.json}: 'classes' must be a list of labels or null")
    if model.task != "classification":
        if classes:
            raise ArtifactError(f"{place.json}: 'classes' must be null for a regression model")
        return None
    if len(classes) != model.n_classes:
        raise ArtifactError(
            f"{place.json}: 'classes' has {len(classes)} labels, "
            f"'model.n_classes' is {model.n_classes}"
        )
    _each_once([str(c) for c in classes], "classes", place)
    return list(classes)


def _standardizer(doc: dict[str, Any], model: Model, place: _Place) -> Standardizer:
    spec = _object(_key(doc, "standardizer", place), "standardizer", place)
    d = model.n_features
    mean = _vector(_key(spec, "mean", place, "standardizer"), "standardizer.mean", d, place)
    scale = _vector(_key(spec, "scale", place, "standardizer"), "standardizer.scale", d, place)
    if np.any(scale <= 0):
        raise ArtifactError(f"{place.json}: 'standardizer.scale' must be > 0 for every feature")
    return Standardizer(mean=mean, scale=scale)


def _check_digest(npz_bytes: bytes, doc: dict[str, Any], place: _Place) -> None:
    """Refuse a model.npz other than the one model.json was written with (when it says)."""
    if NPZ_DIGEST_KEY not in doc:
        return  # written before the digest was recorded
    recorded = doc[NPZ_DIGEST_KEY]
    if not isinstance(recorded, str) or len(recorded) != 64:
        raise ArtifactError(
            f"{place.json}: {NPZ_DIGEST_KEY!r} must be a SHA-256 hex digest, got {recorded!r}"
        )
    if hashlib.sha256(npz_bytes).hexdigest() != recorded.lower():
        where = f"{place.source}: " if place.source else ""
        raise ArtifactError(
            f"{where}model.npz does not match model.json (written by different jobs or damaged)"
        )


def _params(npz_bytes: bytes, model: Model, place: _Place) -> np.ndarray:
    """The flat parameter vector of model.npz, checked against the model."""
    try:
        npz = np.load(io.BytesIO(npz_bytes), allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an archive")
        with npz:
            params = npz["params"] if "params" in npz.files else None
    except _NPZ_READ_ERRORS as exc:
        reason = str(exc) or type(exc).__name__
        raise ArtifactError(f"{place.npz} is not a readable .npz ({reason})") from None
    if params is None:
        raise ArtifactError(f"{place.npz} has no 'params' array")
    if params.dtype.kind not in "fiu":
        raise ArtifactError(f"{place.npz}: 'params' must hold numbers, got dtype {params.dtype}")
    if params.shape != (model.n_params,):
        raise ArtifactError(
            f"{place.npz}: 'params' has shape {params.shape}, "
            f"the model in {place.json} needs ({model.n_params},)"
        )
    params = params.astype(np.float64)
    if not np.isfinite(params).all():
        raise ArtifactError(f"{place.npz}: 'params' holds values that are not finite numbers")
    return params


@dataclass
class TrainedModel:
    """A trained model with everything needed to predict from raw features."""

    model: Model
    params: np.ndarray
    standardizer: Standardizer
    feature_names: list[str]
    classes: list[Any] | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str | None:
        """The label column named in training; None: the default (the last column)."""
        return _training_label(self.info, _Place())

    @property
    def csv_label(self) -> str | None:
        """The label column's name in the CSV trained on (recorded since 0.1: also when the
        spec left it to the default), or None: what evaluate looks for in a CSV."""
        name = self.info.get("label_name")
        return self.label or (name if isinstance(name, str) and name else None)

    # ---- serialisation ---------------------------------------------------
    def to_documents(self) -> tuple[bytes, dict[str, Any]]:
        """The bytes of model.npz and the dict of model.json (which records their digest)."""
        buf = io.BytesIO()
        arrays = {"params": self.params}
        offset = 0
        for layer in self.model.layers():
            size = int(np.prod(layer["shape"]))
            arrays[layer["name"]] = self.params[offset : offset + size].reshape(layer["shape"])
            offset += size
        np.savez(buf, **arrays)
        npz_bytes = buf.getvalue()
        rebuild = self.model.describe()  # kind, sizes, and an mlp's hidden and activation
        doc = {
            **self.info,
            "format": MODEL_FORMAT,
            "model": {
                "type": rebuild.pop("kind"),
                **rebuild,
                **self.info.get("model", {}),
                "task": self.model.task,
                "n_features": self.model.n_features,
                "n_classes": self.model.n_classes,
                "layers": self.model.layers(),
            },
            "feature_names": list(self.feature_names),
            "classes": self.classes,
            "standardizer": self.standardizer.to_json(),
            NPZ_DIGEST_KEY: hashlib.sha256(npz_bytes).hexdigest(),
        }
        return npz_bytes, doc

    @classmethod
    def from_documents(cls, npz_bytes: bytes, doc: Any, *, source: str = "") -> TrainedModel:
        """The model of a parsed model.json and the bytes of model.npz, or ArtifactError.

        ``source`` (a directory or S3 prefix) prefixes the file names in error messages.
        """
        place = _Place(source)
        if not isinstance(doc, dict):
            raise ArtifactError(f"{place.json} must hold a JSON object, got {type(doc).__name__}")
        if doc.get("format") != MODEL_FORMAT:
            raise ArtifactError(
                f"{place.json}: 'format' {doc.get('format')!r} is not {MODEL_FORMAT}"
            )
        model = _build(_object(_key(doc, "model", place), "model", place), place)
        feature_names = _feature_names(doc, model, place)
        standardizer = _standardizer(doc, model, place)
        classes = _classes(doc, model, place)
        _training_label(doc, place)
        _check_digest(npz_bytes, doc, place)
        return cls(
            model=model,
            params=_params(npz_bytes, model, place),
            standardizer=standardizer,
            feature_names=feature_names,
            classes=classes,
            info=doc,
        )

    @classmethod
    def from_bytes(cls, npz_bytes: bytes, json_bytes: bytes, *, source: str = "") -> TrainedModel:
        """:meth:`from_documents` from the raw bytes of both files."""
        place = _Place(source)
        try:
            doc = json.loads(json_bytes.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ArtifactError(f"{place.json} is not UTF-8 text ({exc.reason})") from None
        except json.JSONDecodeError as exc:
            raise ArtifactError(
                f"{place.json} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
            ) from None
        return cls.from_documents(npz_bytes, doc, source=source)

    def save(self, directory: str | Path, extra_files: dict[str, bytes] | None = None) -> None:
        """Write model.npz + model.json (+ extras) so the directory is whole or untouched."""
        npz_bytes, doc = self.to_documents()
        files = {"model.npz": npz_bytes, "model.json": json.dumps(doc, indent=2).encode()}
        files.update(extra_files or {})
        write_directory_atomically(Path(directory), files)

    @classmethod
    def load(cls, directory: str | Path) -> TrainedModel:
        directory = Path(directory)
        npz_path, json_path = directory / "model.npz", directory / "model.json"
        for path in (npz_path, json_path):
            if not path.is_file():
                raise ArtifactError(f"{path} not found: is {directory} a training output?")
        return cls.from_bytes(npz_path.read_bytes(), json_path.read_bytes(), source=str(directory))

    # ---- inference -------------------------------------------------------
    @property
    def is_classifier(self) -> bool:
        return self.model.task == "classification"

    @property
    def class_labels(self) -> list[Any]:
        """A classifier's classes in the order of its probabilities: the original labels,
        or the indices when it has none."""
        return list(self.classes or range(self.model.n_classes))

    def _features(self, X: np.ndarray) -> np.ndarray:
        """``X`` as float64 rows of the model's width, every value a finite number."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.model.n_features:
            raise ArtifactError(
                f"expected rows of {self.model.n_features} features "
                f"({', '.join(self.feature_names)}), got shape {X.shape}"
            )
        bad = ~np.isfinite(X)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise NonFiniteError(
                row, f"{X[row, col]} is not a finite number", feature=self.feature_names[col]
            )
        return X

    def _outputs(self, X: np.ndarray) -> np.ndarray:
        """Regression values ``(n,)`` or class probabilities ``(n, C)``, all finite.

        The one place every prediction passes through (CLI and Lambda alike): features far
        outside the training range can overflow to inf or nan, which is refused here by row
        rather than printed as a prediction or turned into a class.
        """
        X = self._features(X)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # checked below
            Z = self.standardizer.transform(X)
            if self.is_classifier:
                out = self.model.predict_proba(self.params, Z)
            else:
                out = self.model.predict(self.params, Z)
        finite = np.isfinite(out).reshape(len(out), -1).all(axis=1)
        if not finite.all():
            raise NonFiniteError(
                int(np.flatnonzero(~finite)[0]),
                "the prediction is not a finite number "
                "(are the features far outside the training range?)",
            )
        return out

    def predict_indices(self, X: np.ndarray) -> np.ndarray:
        """Regression values, or class indices (the most probable class) for classifiers."""
        out = self._outputs(X)
        return np.argmax(out, axis=1).astype(np.int64) if self.is_classifier else out

    def predict(self, X: np.ndarray) -> list[Any]:
        """Predictions in the user's terms: values, or the original class labels."""
        return self.predict_with_proba(X)[0]

    def predict_with_proba(self, X: np.ndarray) -> tuple[list[Any], np.ndarray | None]:
        """:meth:`predict`, and for a classifier the probabilities the classes were picked
        from (None for regression): both from one evaluation of the model."""
        out = self._outputs(X)
        if not self.is_classifier:
            return [float(v) for v in out], None
        picked = np.argmax(out, axis=1)
        return [self.classes[i] for i in picked] if self.classes else picked.tolist(), out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if not self.is_classifier:
            raise ArtifactError("predict_proba needs a classifier")
        return self._outputs(X)

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Regression: mse, rmse, r2. Classification (y = class indices): accuracy, log_loss."""
        if self.is_classifier:
            return classification_metrics(y, self.predict_proba(X))
        return regression_metrics(y, self.predict_indices(X))


def write_directory_atomically(directory: Path, files: dict[str, bytes]) -> None:
    """Write files into ``directory`` via a sibling temp dir, replacing the named files only.

    Nothing is visible until every file is written, so a failure while writing leaves the
    old model (or nothing) in place. The files are then renamed one by one, model.json
    first: an interruption between two renames leaves the new model.json beside the old
    model.npz (or none), a pair that loading refuses, because a new model.json records the
    digest of its model.npz — an old model.json may not, so it must not be the one left.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        for name, body in files.items():
            (tmp / name).write_bytes(body)
        directory.mkdir(exist_ok=True)
        # model.json first: see above
        for name in sorted(files, key=lambda n: n != "model.json"):
            os.replace(tmp / name, directory / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
