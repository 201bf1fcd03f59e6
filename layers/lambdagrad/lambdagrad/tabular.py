"""Read new data for a trained model: features in the model's order, labels in its classes.

Training data defines the features; data scored later must supply the same ones. CSV
columns are matched by name (extra columns, such as an id or the label, are ignored), so
a file with its columns in another order still predicts correctly. Arrays are matched by
position and must have the model's width.
"""

from __future__ import annotations

import numpy as np

from lambdagrad.artifact import TrainedModel
from lambdagrad.data import DataError, Dataset, load_dataset

__all__ = ["read_features", "read_labelled"]


def _is_csv(source: str, fmt: str | None) -> bool:
    return (fmt or source.rsplit(".", 1)[-1]).lower() == "csv"


def _in_model_order(ds: Dataset, trained: TrainedModel, source: str, by_name: bool) -> np.ndarray:
    wanted = trained.feature_names
    if not by_name:
        if ds.X.shape[1] != len(wanted):
            raise DataError(
                f"{source}: {ds.X.shape[1]} feature columns, the model needs {len(wanted)}"
            )
        return ds.X
    missing = [name for name in wanted if name not in ds.feature_names]
    if missing:
        raise DataError(f"{source}: missing feature column(s) {', '.join(map(repr, missing))}")
    position = {name: j for j, name in enumerate(ds.feature_names)}
    return ds.X[:, [position[name] for name in wanted]]


def read_features(
    data: bytes, *, source: str, fmt: str | None, trained: TrainedModel
) -> np.ndarray:
    """The model's features from a file that may or may not also carry the label.

    CSV: columns by name. ``.npy``: the model's width, or one more when the training label
    column index is still in it (dropped). ``.npz``: the ``X`` array.
    """
    label = (trained.info.get("spec") or {}).get("dataset", {}).get("label")
    by_name = _is_csv(source, fmt)
    ds = load_dataset(
        data, source=source, fmt=fmt, label=label if by_name else None, task="features"
    )
    width = len(trained.feature_names)
    if not by_name and ds.X.shape[1] == width + 1 and source.lower().endswith(".npy"):
        column = int(label) if label is not None and label.lstrip("-").isdigit() else -1
        ds.X = np.delete(ds.X, column, axis=1)
    return _in_model_order(ds, trained, source, by_name)


def read_labelled(
    data: bytes, *, source: str, fmt: str | None, label: str | None, trained: TrainedModel
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels; classifier labels become the model's class indices."""
    task = trained.model.task
    ds = load_dataset(data, source=source, fmt=fmt, label=label, task=task, min_classes=1)
    X = _in_model_order(ds, trained, source, _is_csv(source, fmt))
    if task != "classification":
        return X, ds.y
    index = {cls: k for k, cls in enumerate(trained.classes or [])}
    unknown = [c for c in ds.classes or [] if c not in index]
    if unknown:
        raise DataError(
            f"{source}: label(s) {', '.join(map(repr, unknown[:5]))} were not seen in training "
            f"(classes: {', '.join(map(repr, trained.classes or []))})"
        )
    remap = np.array([index[c] for c in ds.classes], dtype=np.int64)
    return X, remap[ds.y]
