"""The model artifact: ``model.npz`` (arrays only) + ``model.json`` (everything else).

``predict`` needs nothing but these two files: the model type and sizes rebuild the
model, the standardizer maps raw features, and the class list maps indices back to the
user's labels. ``model.npz`` is always loaded with ``allow_pickle=False``.

Example
-------
>>> trained = TrainedModel.load("runs/price")          # doctest: +SKIP
>>> trained.predict(np.array([[1200.0, 3.0, 12.0]]))   # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lambdagrad.data import Standardizer
from lambdagrad.evaluation import classification_metrics, regression_metrics
from lambdagrad.models import Model, build_model

__all__ = ["MODEL_FORMAT", "ArtifactError", "TrainedModel", "write_directory_atomically"]

MODEL_FORMAT = 1


class ArtifactError(ValueError):
    """A model artifact is missing, from an unknown format, or inconsistent."""


@dataclass
class TrainedModel:
    """A trained model with everything needed to predict from raw features."""

    model: Model
    params: np.ndarray
    standardizer: Standardizer
    feature_names: list[str]
    classes: list[Any] | None
    info: dict[str, Any] = field(default_factory=dict)

    # ---- serialisation ---------------------------------------------------
    def to_documents(self) -> tuple[bytes, dict[str, Any]]:
        """The bytes of model.npz and the dict of model.json."""
        buf = io.BytesIO()
        arrays = {"params": self.params}
        offset = 0
        for layer in self.model.layers():
            size = int(np.prod(layer["shape"]))
            arrays[layer["name"]] = self.params[offset : offset + size].reshape(layer["shape"])
            offset += size
        np.savez(buf, **arrays)
        doc = {
            **self.info,
            "format": MODEL_FORMAT,
            "model": {
                "type": type(self.model).__name__.lower(),
                **self.info.get("model", {}),
                "task": self.model.task,
                "n_features": self.model.n_features,
                "n_classes": self.model.n_classes,
                "layers": self.model.layers(),
            },
            "feature_names": list(self.feature_names),
            "classes": self.classes,
            "standardizer": self.standardizer.to_json(),
        }
        return buf.getvalue(), doc

    @classmethod
    def from_documents(cls, npz_bytes: bytes, doc: dict[str, Any]) -> TrainedModel:
        if doc.get("format") != MODEL_FORMAT:
            raise ArtifactError(f"model.json format {doc.get('format')!r} is not {MODEL_FORMAT}")
        spec = doc["model"]
        extra = {}
        if spec["type"] == "mlp":
            extra = {"hidden": spec["hidden"], "activation": spec["activation"]}
        model = build_model(spec["type"], int(spec["n_features"]), int(spec["n_classes"]), **extra)
        with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as npz:
            if "params" not in npz.files:
                raise ArtifactError("model.npz has no 'params' array")
            params = np.asarray(npz["params"], dtype=np.float64)
        if params.shape != (model.n_params,):
            raise ArtifactError(
                f"model.npz params has shape {params.shape}, model needs ({model.n_params},)"
            )
        return cls(
            model=model,
            params=params,
            standardizer=Standardizer.from_json(doc["standardizer"]),
            feature_names=list(doc["feature_names"]),
            classes=doc.get("classes"),
            info=doc,
        )

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
        return cls.from_documents(npz_path.read_bytes(), json.loads(json_path.read_text()))

    # ---- inference -------------------------------------------------------
    @property
    def is_classifier(self) -> bool:
        return self.model.task == "classification"

    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.model.n_features:
            raise ArtifactError(
                f"expected rows of {self.model.n_features} features "
                f"({', '.join(self.feature_names)}), got shape {X.shape}"
            )
        return self.standardizer.transform(X)

    def predict_indices(self, X: np.ndarray) -> np.ndarray:
        """Regression values, or class indices for classifiers."""
        return self.model.predict(self.params, self._check(X))

    def predict(self, X: np.ndarray) -> list[Any]:
        """Predictions in the user's terms: values, or the original class labels."""
        out = self.predict_indices(X)
        if self.is_classifier:
            return [self.classes[i] for i in out] if self.classes else out.tolist()
        return [float(v) for v in out]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if not self.is_classifier:
            raise ArtifactError("predict_proba needs a classifier")
        return self.model.predict_proba(self.params, self._check(X))

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Regression: mse, rmse, r2. Classification (y = class indices): accuracy, log_loss."""
        if self.is_classifier:
            return classification_metrics(y, self.predict_proba(X))
        return regression_metrics(y, self.predict_indices(X))


def write_directory_atomically(directory: Path, files: dict[str, bytes]) -> None:
    """Write files into ``directory`` via a sibling temp dir, replacing the named files only.

    Nothing is visible until every file is written, so a failure leaves the old model (or
    nothing) in place, never half a model.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        for name, body in files.items():
            (tmp / name).write_bytes(body)
        directory.mkdir(exist_ok=True)
        # model.json last: it is what marks a directory as holding a model.
        for name in sorted(files, key=lambda n: n == "model.json"):
            os.replace(tmp / name, directory / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
