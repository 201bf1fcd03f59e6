"""Read new data for a trained model: features in the model's order, labels in its classes.

Training data defines the features; data scored later must supply the same ones. CSV
columns are matched by name (extra columns, such as an id or the label, are ignored), so
a file with its columns in another order still predicts correctly. Arrays are matched by
position and must have the model's width.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lambdagrad.artifact import TrainedModel
from lambdagrad.data import DataError, Dataset, load_dataset, parse_int, resolve_format

__all__ = ["read_features", "read_labelled"]


def _is_csv(source: str, fmt: str | None) -> bool:
    return resolve_format(source, fmt) == "csv"


def _model_columns(trained: TrainedModel, source: str, fmt: str | None) -> list[str] | None:
    """The columns to read from a CSV, by name and in the model's order (load_dataset picks
    them and names any missing); None for arrays, which are matched by position."""
    return trained.feature_names if _is_csv(source, fmt) else None


def _of_model_width(
    ds: Dataset, trained: TrainedModel, source: str, labelled: bool = False
) -> np.ndarray:
    """An array's features, which must be as many as the model's (``labelled``: an .npy's,
    counted after its label column was taken out, which the message says)."""
    width = len(trained.feature_names)
    if ds.X.shape[1] != width:
        besides = " besides the label column" if labelled else ""
        raise DataError(
            f"{source}: {ds.X.shape[1]} feature columns{besides}, the model needs {width}"
        )
    return ds.X


def read_features(
    data: bytes, *, source: str, fmt: str | None, trained: TrainedModel
) -> np.ndarray:
    """The model's features from a file that may or may not also carry the label.

    CSV: the model's columns by name, nothing else read. ``.npy``: the model's width, or one
    more when the training label column is still in it (dropped) and its position is known.
    ``.npz``: the ``X`` array.
    """
    label = trained.label
    columns = _model_columns(trained, source, fmt)
    ds = load_dataset(data, source=source, fmt=fmt, label=None, task="features", features=columns)
    if columns is not None:
        return ds.X
    width = len(trained.feature_names)
    if ds.X.shape[1] == width + 1 and resolve_format(source, fmt) == "npy":
        column = _label_column(label, source, width, _trained_on_npz(trained))
        ds.X = np.delete(ds.X, column, axis=1)
    return _of_model_width(ds, trained, source)


def _trained_on_npz(trained: TrainedModel) -> bool:
    """Whether the training data was an .npz, whose labels are an array of their own."""
    dataset = (trained.info.get("spec") or {}).get("dataset") or {}
    try:
        return resolve_format(str(dataset.get("uri", "")), dataset.get("format")) == "npz"
    except DataError:  # a spec that trained was readable: not one of an .npz
        return False


def _label_column(label: str | None, source: str, width: int, npz: bool) -> int:
    """Where the training label sits in an array of the model's features plus it: its index
    (``.npy`` training), or last (the default, for CSV too); a CSV label named by the user
    could have been any column, and an .npz had none, so guessing would score the wrong
    features."""
    if npz:
        raise DataError(
            f"{source}: {width + 1} columns, one more than the model's {width} features, and "
            f"the model was trained on an .npz (its labels an array of their own), so no column "
            f"is known to be a label: pass the {width} feature columns only"
        )
    if label is None or label.lstrip("-").isdigit():
        return -1 if label is None else int(label)
    raise DataError(
        f"{source}: {width + 1} columns, one more than the model's {width} features, and the "
        f"label {label!r} was a named CSV column, so which one to drop is not known: pass the "
        f"{width} feature columns only, or a CSV with a header"
    )


def read_labelled(
    data: bytes, *, source: str, fmt: str | None, label: str | None, trained: TrainedModel
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels; classifier labels become the model's class indices."""
    task = trained.model.task
    columns = _model_columns(trained, source, fmt)
    if columns is not None and label in columns:
        raise DataError(
            f"{source}: the label {label!r} is one of the model's features; the label is the "
            "column the model predicts"
            + (f" ({trained.label!r} in training)" if trained.label else "")
        )
    ds = load_dataset(
        data, source=source, fmt=fmt, label=label, task=task, min_classes=1, features=columns
    )
    npy = resolve_format(source, fmt) == "npy"  # an .npz's labels are its array y
    X = ds.X if columns is not None else _of_model_width(ds, trained, source, labelled=npy)
    if task != "classification":
        return X, ds.y
    # matched as text: a file holding only the classes "1" and "2" reads them as integers,
    # where the model's classes may be the strings "1", "2", "3+"; a model's integer classes
    # are matched by value ("1.00" or "01" in this file is class 1)
    classes = trained.classes or []
    numeric = bool(classes) and all(isinstance(c, int) for c in classes)

    def key(label: Any) -> Any:
        value = parse_int(str(label)) if numeric else None
        return str(label) if value is None else value

    index = {key(cls): k for k, cls in enumerate(classes)}
    unknown = [c for c in ds.classes or [] if key(c) not in index]
    if unknown:
        raise DataError(
            f"{source}: label(s) {', '.join(map(repr, unknown[:5]))} were not seen in training "
            f"(classes: {', '.join(map(repr, classes))})"
        )
    remap = np.array([index[key(c)] for c in ds.classes], dtype=np.int64)
    return X, remap[ds.y]
