"""Load and validate datasets; split, standardize and shard them.

Every problem a user can fix in the file is a :class:`DataError` whose message names the
source and, where known, the line (1-based, the header being line 1) and the column, so
a bad cell in a million-row CSV is found from the message alone. Arrays are always read
with ``allow_pickle=False``: a dataset is data, never code.

Examples
--------
>>> ds = load_dataset(b"sqft,price\\n50,1.5\\n80,2.0\\n", source="data.csv", fmt=None,
...                   label="price", task="regression")
>>> ds.X.shape, ds.y.tolist(), ds.feature_names
((2, 1), [1.5, 2.0], ['sqft'])
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO

import numpy as np

from lambdagrad.native import aligned_empty

__all__ = [
    "FORMATS",
    "SPLIT_TAG",
    "DataError",
    "Dataset",
    "Standardizer",
    "labels_from_indices",
    "load_dataset",
    "load_npy_aligned",
    "resolve_format",
    "shard_bounds",
    "train_validation_split",
]

FORMATS = ("csv", "npy", "npz")
TASKS = ("regression", "classification", "features")
# Keys the split's SeedSequence apart from the (seed, round, shard) streams of training.
# Large on purpose: SeedSequence([s]) and SeedSequence([s, 0]) give the same stream.
SPLIT_TAG = 0x53504C54  # "SPLT"
_CHUNK_ROWS = 65_536  # CSV rows converted to float64 at a time (bounds string memory)
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


class DataError(ValueError):
    """A dataset that cannot be used as given; the message says where and why."""


@dataclass
class Dataset:
    """Features, labels and the names needed to interpret them later.

    ``y`` is float64 for regression and int64 indices into ``classes`` for
    classification; ``classes`` holds the original labels (all ``int`` or all ``str``).
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    classes: list | None = None
    #: the label column's name in a CSV's header (None for arrays)
    label_name: str | None = None

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])


def load_dataset(
    data: bytes,
    *,
    source: str,
    fmt: str | None,
    label: str | None,
    task: str,
    max_features: int = 10_000,
    min_classes: int = 2,
    features: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> Dataset:
    """Parse and validate a dataset held in memory.

    Parameters
    ----------
    data : bytes
        Raw file content.
    source : str
        File name or URI, used in error messages and, if ``fmt`` is None, for the format.
    fmt : {"csv", "npy", "npz"} or None
        None infers the format from the extension of ``source``.
    label : str or None
        csv: name of the label column. npy: column index as a string (``"-1"`` is the
        last column). npz: ignored, labels are the array ``y``. None means the last
        column for csv and npy.
    task : {"regression", "classification", "features"}
        "features" reads every column (csv, npy) or just ``X`` (npz) as features and
        returns an empty ``y``: what ``predict`` needs for unlabelled data. A CSV column
        named ``label`` is skipped if present.
    max_features : int
        More feature columns than this is an error (a guard against a wrong file).
    min_classes : int
        Fewest classes a classification label may have: 2 for training, 1 to score a
        trained model on data that happens to hold a single class.
    features : list of str or None
        csv only: the feature columns to read, by name and in this order (a trained model's);
        every other column but the label is ignored, unparsed (an id, a note). None: every
        column but the label.
    exclude : list of str
        csv only: columns that are not features (an id, a note), left unparsed; each must
        exist and not be the label.
    """
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    fmt = resolve_format(source, fmt)
    if task == "features" and fmt != "csv":
        X = _np_features(data, source, fmt)
        check_feature_count(X.shape[1], source, max_features)
        return Dataset(_numeric_features(X, source), np.zeros(0), _x_names(X.shape[1]), None)
    if exclude and fmt != "csv":
        raise DataError(
            f"{source}: dataset.exclude names CSV columns; a .{fmt} has none (leave it out)"
        )
    if fmt == "csv":
        feature_names, X, y_raw, label_name = _read_csv(
            data, source, label, task, max_features, features, exclude
        )
        if task == "features":
            return Dataset(X, np.zeros(0), feature_names, None)
    elif fmt == "npy":
        feature_names, X, y_raw, label_name = _read_npy(data, source, label)
    else:
        feature_names, X, y_raw, label_name = _read_npz(data, source)
    check_feature_count(len(feature_names), source, max_features)
    if fmt != "csv":
        X = _numeric_features(X, source)
    header_label = label_name if fmt == "csv" else None
    if task == "regression":
        return Dataset(X, _regression_labels(y_raw, source), feature_names, None, header_label)
    classes, y = _encode_classes(y_raw, source, label_name)
    if len(classes) < min_classes:
        raise DataError(f"{source}: label column {label_name!r} has only one class: {classes[0]!r}")
    return Dataset(X, y, feature_names, classes, header_label)


def labels_from_indices(indices: Sequence[int] | np.ndarray, classes: Sequence) -> list:
    """Map class indices back to the original labels.

    Examples
    --------
    >>> labels_from_indices([1, 0, 1], ["cat", "dog"])
    ['dog', 'cat', 'dog']
    """
    return [classes[int(i)] for i in np.asarray(indices).ravel()]


# --------------------------------------------------------------------------- format


def resolve_format(source: str, fmt: str | None) -> str:
    """The format a file is read as: ``fmt`` if given, else its extension (DataError for
    neither a known one)."""
    if fmt is None:
        fmt = PurePosixPath(source.rstrip("/")).suffix.lstrip(".").lower()
        if fmt not in FORMATS:
            raise DataError(
                f"cannot tell the format of {source!r} from its extension; "
                f"name it .csv, .npy or .npz, or give the format (--format, or dataset.format "
                f"in a spec: {', '.join(FORMATS)})"
            )
        return fmt
    if fmt.lower() not in FORMATS:
        raise DataError(f"{source}: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt.lower()


def check_label_applies(source: str, fmt: str | None, label: str | None, what: str) -> None:
    """An .npz's labels are its array ``y``: a label named otherwise (``what``: the spec
    field or flag it came from) would be ignored without a word, so it is refused."""
    if label not in (None, "y") and resolve_format(source, fmt) == "npz":
        raise DataError(
            f"{source}: {what} {label!r} does not apply to an .npz, whose labels are its "
            "array 'y'; leave it out"
        )


def check_feature_count(d: int, source: str, max_features: int) -> None:
    """Refuse a dataset with no feature column, or more than ``dataset.max_features``."""
    if d == 0:
        raise DataError(f"{source}: no feature columns (only the label)")
    if d > max_features:
        raise DataError(
            f"{source}: {d} feature columns; the limit is {max_features} "
            "(raise dataset.max_features if the file is right)"
        )


# --------------------------------------------------------------------------- csv


def _columns_found(names: list[str]) -> str:
    """What the header had instead, so a wrong separator or a missing header shows itself."""
    shown = ", ".join(repr(n[:40]) for n in names[:8]) + (", ..." if len(names) > 8 else "")
    text = f"; its header has {shown}"
    if len(names) == 1:
        seps = [
            name for sep, name in (("\t", "tabs"), (";", "';'"), ("|", "'|'")) if sep in names[0]
        ]
        if seps:
            text += f" (separated by {seps[0]}? lambdagrad reads comma-separated CSV)"
    return text


def _label_beside(names: list[str], wanted: Sequence[str], source: str) -> int:
    """The label column of a file read for a model that knows its feature columns but not
    its label's name: the one column that is not a feature (not "the last one": a file may
    hold an id column after it, or the label first)."""
    # a nameless column is a pandas index, never the label
    others = [i for i, name in enumerate(names) if name and name not in wanted]
    if len(others) == 1:
        return others[0]
    if not others:
        raise DataError(f"{source}: no label column: every column is one of the model's features")
    listed = ", ".join(map(repr, dict.fromkeys(names[i] for i in others)))
    raise DataError(
        f"{source}: which column is the label? Besides the model's features it has {listed} "
        "(name the label column: --label)"
    )


def _read_csv(
    data: bytes,
    source: str,
    label: str | None,
    task: str,
    max_features: int,
    wanted: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> tuple[list[str], np.ndarray, list[str] | np.ndarray, str]:
    """Features as float64, labels as float64 (regression) or stripped strings."""
    try:
        text = data.decode("utf-8-sig")  # strips a UTF-8 BOM if present
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{source} line {line}: not valid UTF-8 ({exc.reason})") from None
    if re.match(r'\s*(\{|\[\s*[\[{"])', text):
        raise DataError(
            f"{source} looks like JSON, not CSV (it starts with {text.lstrip()[0]!r}): give a "
            "CSV with a header row, an .npy or an .npz"
        )
    stream = io.StringIO(text, newline="")
    reader = csv.reader(stream, strict=True)
    rows = _nonblank_rows(reader, source)

    header = next(rows, None)
    if header is None:
        raise DataError(f"{source} is empty")
    plain = _plain_after(text, stream.tell())
    names = _check_header([c.strip() for c in header[1]], source, header[0], wanted)
    if task == "features":
        # every column is a feature, except the label column when the file still has it
        li = names.index(label) if label in names else len(names)
    elif label is None and wanted is not None:
        li = _label_beside(names, wanted, source)
    elif label is None:
        li = len(names) - 1
    elif label in names:
        li = names.index(label)
    else:
        raise DataError(
            f"{source}: no label column {label!r}; columns are {', '.join(map(repr, names))}"
        )
    feature_names = names[:li] + names[li + 1 :]
    picked: list[int] | None = None  # columns to convert, when not all but the label
    if wanted is not None:
        missing = [name for name in wanted if name not in feature_names]
        if missing:
            raise DataError(
                f"{source}: missing feature column(s) {', '.join(map(repr, missing))}"
                + _columns_found(names)
            )
        feature_names = list(wanted)
        picked = [names.index(name) for name in wanted]
    elif exclude:
        unknown = [name for name in exclude if name not in names]
        if unknown:
            raise DataError(
                f"{source}: dataset.exclude names no column {', '.join(map(repr, unknown))}"
                + _columns_found(names)
            )
        if li < len(names) and names[li] in exclude:
            raise DataError(f"{source}: dataset.exclude names the label {names[li]!r}")
        feature_names = [name for name in feature_names if name not in exclude]
        picked = [names.index(name) for name in feature_names]
    check_feature_count(len(feature_names), source, max_features)

    ncols, label_name = len(names), (names[li] if li < len(names) else "")
    regression = task == "regression"
    features_only = task == "features"

    def features_of(cells: list[list[str]], lines: list[int]) -> np.ndarray:
        try:
            return _to_float(cells, lines, feature_names, source, plain)
        except CellNotNumberError as exc:  # an id or a note among the columns trained on?
            if wanted is not None or features_only:
                raise
            raise DataError(
                f"{exc} (a column that is not a feature is left out with --exclude, "
                "dataset.exclude)"
            ) from None

    x_chunks: list[np.ndarray] = []
    y_chunks: list[np.ndarray] = []
    labels: list[str] = []  # all label cells (classification) or this chunk's (regression)
    cells: list[list[str]] = []
    lines: list[int] = []
    for line, row in rows:
        if len(row) != ncols:
            raise DataError(
                f"{source} line {line}: expected {ncols} fields as in the header, got {len(row)}"
            )
        y_cell = "" if features_only else row[li].strip()
        if not y_cell and not features_only:
            raise DataError(f"{source} line {line}, column {label_name!r}: empty cell")
        labels.append(y_cell)
        cells.append(row[:li] + row[li + 1 :] if picked is None else [row[j] for j in picked])
        lines.append(line)
        if len(cells) >= _CHUNK_ROWS:
            x_chunks.append(features_of(cells, lines))
            if regression:
                y_chunks.append(_regression_labels_of(labels, lines, label_name, source, plain))
                labels = []
            cells, lines = [], []
    if cells:
        x_chunks.append(features_of(cells, lines))
        if regression:
            y_chunks.append(_regression_labels_of(labels, lines, label_name, source, plain))
    if not x_chunks:
        raise DataError(f"{source} has a header but no data rows")
    X = np.concatenate(x_chunks) if len(x_chunks) > 1 else x_chunks[0]
    return feature_names, X, (np.concatenate(y_chunks) if regression else labels), label_name


def _nonblank_rows(reader, source: str) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line, row)`` for rows that are not blank; csv errors become DataError."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{source} line {reader.line_num}: {exc}") from None
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        yield reader.line_num, row


def _check_header(
    names: list[str], source: str, line: int, read: Sequence[str] | None = None
) -> list[str]:
    """Every column named, no name twice; with ``read`` (the columns a trained model reads),
    only those must be: a pandas index column (no name) or a repeated note is then fine."""
    for j, name in enumerate(names):
        if not name and read is None:
            raise DataError(f"{source} line {line}: column {j + 1} of the header has no name")
    seen: set[str] = set()
    dups = list(
        dict.fromkeys(
            n for n in names if (n in seen or seen.add(n)) and (read is None or n in read)
        )
    )
    if dups:
        listed = ", ".join(map(repr, dups))
        raise DataError(f"{source} line {line}: duplicate column names {listed}")
    return names


def _plain_after(text: str, start: int) -> bool:
    """Whether the rows (from ``start``, past the header) hold no underscore and no
    non-ASCII character: Python's float(), and so numpy, reads "1_000" and full-width
    digits, which a CSV number never holds. Plain rows (most files) need no cell-by-cell
    check; one C-speed scan of the text decides, without copying it when it is ASCII."""
    return text.find("_", start) == -1 and (text.isascii() or text[start:].isascii())


def _to_float(
    cells: list[list[str]], lines: list[int], names: list[str], source: str, plain: bool = True
) -> np.ndarray:
    """Rows of string cells as float64; on any problem, the first bad cell is named.

    ``plain``: see :func:`_plain_after`; otherwise a chunk whose cells hold an underscore or
    a non-ASCII character is checked cell by cell first (a number with a non-breaking space
    around it is fine, "1_000" is not)."""
    places = (
        (line, name, cell)
        for line, row in zip(lines, cells, strict=True)
        for name, cell in zip(names, row, strict=True)
    )
    odd = not plain and _odd_text("".join(map("".join, cells)))
    return _numbers(cells, places, odd, source, lines)


def _column_to_float(
    cells: list[str], lines: list[int], name: str, source: str, plain: bool = True
) -> np.ndarray:
    """One column of string cells to float64, with the same error reporting."""
    places = ((line, name, cell) for line, cell in zip(lines, cells, strict=True))
    odd = not plain and _odd_text("".join(cells))
    return _numbers(cells, places, odd, source, lines)


class CellNotNumberError(DataError):
    """A cell that is not a number where one was needed: the callers that know what the
    column is can say what to do about it."""


class LabelNotNumberError(CellNotNumberError):
    """A regression label cell that is not a number: perhaps the column holds classes, which
    the caller, knowing the model, can say what to do about."""


def _regression_labels_of(
    cells: list[str], lines: list[int], name: str, source: str, plain: bool
) -> np.ndarray:
    """A regression label column as numbers (:class:`LabelNotNumberError` for a cell that
    is not one)."""
    try:
        return _column_to_float(cells, lines, name, source, plain)
    except CellNotNumberError as exc:
        raise LabelNotNumberError(str(exc)) from None


def _numbers(
    cells: list, places: Iterator[tuple[int, str, str]], odd: bool, source: str, lines: list[int]
) -> np.ndarray:
    """numpy's reading of ``cells`` when every one is a finite number, else a DataError
    naming the first bad one (``places``: each cell with its line and column). ``odd``
    cells (an underscore or a non-ASCII character somewhere) are checked before numpy,
    which would read "1_000" as a number."""
    arr = None if odd else _try_float(cells)
    if arr is None:
        for line, name, cell in places:
            _check_cell(cell, source, line, name)
        arr = _try_float(cells)  # every cell passed the check
    if arr is None:
        raise DataError(f"{source} lines {lines[0]}-{lines[-1]}: cannot read as numbers")
    return arr


def _try_float(cells: list) -> np.ndarray | None:
    """float64 array if every cell parses to a finite number, else None."""
    try:
        arr = np.array(cells, dtype=np.float64)
    except ValueError:
        return None
    return arr if np.isfinite(arr).all() else None


def _odd_text(s: str) -> bool:
    """Whether ``s`` has what Python's float() reads but a CSV number never holds: an
    underscore ("1_000") or a non-ASCII character (full-width digits)."""
    return "_" in s or not s.isascii()


def _check_cell(cell: str, source: str, line: int, name: str) -> float:
    where = f"{source} line {line}, column {name!r}"
    s = cell.strip()
    if not s:
        raise DataError(f"{where}: empty cell")
    try:
        if _odd_text(s):  # stripped: spaces around a number, even non-ASCII ones, are fine
            raise ValueError(s)
        value = float(s)
    except ValueError:
        raise CellNotNumberError(f"{where}: {s!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {s!r} is not a finite number")
    return value


# --------------------------------------------------------------------------- npy / npz


def _np_load(data: bytes, source: str, fmt: str):
    magic = _NPY_MAGIC if fmt == "npy" else _ZIP_MAGIC
    if not data:
        raise DataError(f"{source} is empty")
    if not data.startswith(magic):
        raise DataError(f"{source} is not a .{fmt} file (bad magic bytes)")
    try:
        if fmt == "npy":
            return _npy_view(data)
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise _pickle_or_corrupt(exc, source, fmt) from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{source} is not a valid .{fmt} file: {exc}") from None


def _npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of the ``.npy`` file ``f`` is at the start of; ``f``
    is left at the first byte of the data. Object arrays (pickles) are refused."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    return shape, fortran, dtype


def load_npy_aligned(path: str | os.PathLike) -> np.ndarray:
    """``np.load(path, allow_pickle=False)`` of a C-order ``.npy`` file into a 64-byte
    aligned array (:func:`lambdagrad.native.aligned_empty`), as the C kernels read rows
    fastest; other layouts are loaded by ``np.load`` as they are."""
    with open(path, "rb") as f:
        shape, fortran, dtype = _npy_header(f)
        if fortran:
            return np.load(path, allow_pickle=False)
        arr = aligned_empty(shape, dtype)
        if f.readinto(memoryview(arr.reshape(-1).view(np.uint8))) != arr.nbytes:
            raise ValueError(f"{path}: the file ends before its {shape} {dtype} array")
    return arr


def _npy_view(data: bytes) -> np.ndarray:
    """The array of an ``.npy`` file as a read-only view of its bytes: no copy of a
    dataset that may be most of the machine's memory (``np.load`` would copy it)."""
    buf = io.BytesIO(data)
    shape, fortran, dtype = _npy_header(buf)
    count = math.prod(shape)
    arr = np.frombuffer(memoryview(data), dtype=dtype, count=count, offset=buf.tell())
    return arr.reshape(shape, order="F" if fortran else "C")


def _pickle_or_corrupt(exc: ValueError, source: str, fmt: str, what: str = "") -> DataError:
    msg = str(exc).lower()
    where = f"{source}{what}"
    if "pickle" in msg or "object" in msg:
        return DataError(f"{where} holds Python objects; refusing to unpickle")
    return DataError(f"{where} is not a valid .{fmt} file: {exc}")


def _read_npy(
    data: bytes, source: str, label: str | None
) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    arr = _np_load(data, source, "npy")
    if arr.ndim != 2:
        raise DataError(f"{source}: expected one 2-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{source}: expected a numeric array, got dtype {arr.dtype}")
    ncols = arr.shape[1]
    try:
        col = -1 if label is None else int(label)
    except ValueError:
        raise DataError(
            f"{source}: for .npy data the label is a column index, got {label!r}"
        ) from None
    if not -ncols <= col < ncols:
        raise DataError(f"{source}: label column {col} is out of range for {ncols} columns")
    col %= ncols
    X = arr[:, :col] if col == ncols - 1 else np.delete(arr, col, axis=1)  # last: a view
    return _x_names(X.shape[1]), X, arr[:, col], str(col)


def _read_npz(data: bytes, source: str) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    with _np_load(data, source, "npz") as npz:
        missing = [k for k in ("X", "y") if k not in npz.files]
        if missing:
            raise DataError(
                f"{source}: expected arrays named 'X' and 'y', found "
                f"{', '.join(map(repr, npz.files)) or 'none'}"
            )
        arrays = {}
        for key in ("X", "y"):
            try:
                arrays[key] = npz[key]
            except ValueError as exc:
                raise _pickle_or_corrupt(exc, source, "npz", f" array {key!r}") from None
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(f"{source}: cannot read array {key!r}: {exc}") from None
    X, y = arrays["X"], arrays["y"]
    if X.ndim != 2:
        raise DataError(f"{source}: X must be 2-D, got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{source}: X must be numeric, got dtype {X.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{source}: y must be 1-D, got shape {y.shape}")
    if len(y) != X.shape[0]:
        raise DataError(f"{source}: X has {X.shape[0]} rows but y has {len(y)}")
    return _x_names(X.shape[1]), X, y, "y"


def _np_features(data: bytes, source: str, fmt: str) -> np.ndarray:
    """The feature matrix alone: a .npy array, or the ``X`` array of an .npz."""
    if fmt == "npy":
        X = _np_load(data, source, "npy")
    else:
        with _np_load(data, source, "npz") as npz:
            if "X" not in npz.files:
                raise DataError(f"{source}: expected an array named 'X', found {npz.files}")
            try:
                X = npz["X"]
            except ValueError as exc:
                raise _pickle_or_corrupt(exc, source, "npz", " array 'X'") from None
    if X.ndim != 2:
        raise DataError(f"{source}: expected a 2-D feature array, got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{source}: features must be numeric, got dtype {X.dtype}")
    return X


def _x_names(d: int) -> list[str]:
    return [f"x{j}" for j in range(d)]


def _numeric_features(X: np.ndarray, source: str) -> np.ndarray:
    if X.shape[0] == 0:
        raise DataError(f"{source} has no rows")
    if X.dtype not in (np.float32, np.float64):  # float32 stays float32: half the memory
        X = X.astype(np.float64)
    for lo in range(0, X.shape[0], _CHUNK_ROWS):  # no n x d temporaries
        bad = ~np.isfinite(X[lo : lo + _CHUNK_ROWS])
        if bad.any():
            i, j = np.argwhere(bad)[0]
            i += lo
            raise DataError(
                f"{source}: X row {i}, column 'x{j}' (0-based) is {X[i, j]}, not finite"
            )
    return X


# --------------------------------------------------------------------------- labels


def _regression_labels(y_raw: np.ndarray, source: str) -> np.ndarray:
    if y_raw.dtype.kind not in "biuf":
        raise DataError(f"{source}: regression labels must be numeric, got dtype {y_raw.dtype}")
    y = y_raw.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise DataError(f"{source}: label at row {bad[0]} (0-based) is {y[bad[0]]}, not finite")
    return y


def _encode_classes(
    y_raw: list[str] | np.ndarray, source: str, label_name: str
) -> tuple[list, np.ndarray]:
    """Sorted classes (ints if every label is an integer, else strings) and indices."""
    if isinstance(y_raw, np.ndarray):
        kind = y_raw.dtype.kind
        if kind == "f" and not (np.isfinite(y_raw).all() and np.all(y_raw == np.round(y_raw))):
            raise DataError(
                f"{source}: class labels in {label_name!r} must be integers or strings, "
                "found non-integer numbers (is this a regression task?)"
            )
        # labels become int64 classes: refuse those that would wrap or merge on the way
        if kind == "u" and y_raw.size and y_raw.max() > np.iinfo(np.int64).max:
            raise DataError(
                f"{source}: class label {y_raw.max()} in {label_name!r} does not fit a 64-bit "
                "integer (store such labels as strings)"
            )
        if kind == "f" and y_raw.size and np.abs(y_raw).max() > 2.0**53:
            raise DataError(
                f"{source}: class label {np.abs(y_raw).max():g} in {label_name!r} is beyond "
                "2**53, where floats stop being exact integers (store labels as int64 or strings)"
            )
        if kind in "biuf":
            uniq, idx = np.unique(y_raw.astype(np.int64), return_inverse=True)
            return [int(c) for c in uniq], idx.astype(np.int64)
        if kind not in "US":
            raise DataError(f"{source}: class labels must be integers or strings, got {kind}")
        y_raw = [v.decode() if isinstance(v, bytes) else v for v in y_raw.tolist()]
    as_int = {s: parse_int(s) for s in set(y_raw)}
    # integers only when written as integers ("3", or "3.0" as a float column writes them):
    # "01" and "1" are two labels, and a prediction must spell a label as the data did
    if all(v is not None and s in (str(v), f"{v}.0") for s, v in as_int.items()):
        classes: list = sorted(set(as_int.values()))
        pos = {c: k for k, c in enumerate(classes)}
        lookup = {s: pos[v] for s, v in as_int.items()}
    else:
        classes = sorted(as_int)
        lookup = {s: k for k, s in enumerate(classes)}
    y = np.fromiter((lookup[s] for s in y_raw), dtype=np.int64, count=len(y_raw))
    return classes, y


def parse_int(s: str) -> int | None:
    """``"3"``, ``"-1"`` and ``"3.0"`` are integers; ``"3.5"``, ``"cat"`` and ``"1_0"``
    are not."""
    if _odd_text(s):
        return None
    try:
        return int(s)
    except ValueError:
        pass
    try:
        f = float(s)
    except ValueError:
        return None
    return int(f) if math.isfinite(f) and f == int(f) else None


# --------------------------------------------------------------------------- split etc.


def train_validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random, reproducible ``(train, validation)`` row indices.

    The permutation comes from ``SeedSequence([seed, SPLIT_TAG])``. The validation set has
    ``round(n * fraction)`` rows (at least one if ``fraction > 0`` and ``n > 1``). Both
    index arrays are in shuffled order, so contiguous shards of the training rows are
    random samples even when the file is sorted (e.g. by label).

    Examples
    --------
    >>> train, val = train_validation_split(10, 0.2, seed=0)
    >>> len(train), len(val), sorted([*train, *val]) == list(range(10))
    (8, 2, True)
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), got {fraction!r}")
    n_val = round(n * fraction)
    if fraction > 0 and n > 1:
        n_val = max(1, n_val)
    if n - n_val < 1:
        raise DataError(f"{n} rows leave no training data with validation fraction {fraction}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_TAG]))
    perm = rng.permutation(n).astype(np.int64)
    return perm[n_val:], perm[:n_val]


@dataclass
class Standardizer:
    """Per-column ``(X - mean) / scale``, fitted on training rows and saved with the model.

    Constant columns get ``scale = 1`` so they map to zero instead of dividing by zero.

    Examples
    --------
    >>> s = Standardizer.fit(np.array([[1.0, 5.0], [3.0, 5.0]]))
    >>> s.transform(np.array([[2.0, 5.0]]))
    array([[0., 0.]])
    """

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise DataError(f"cannot fit a standardizer on an array of shape {X.shape}")
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        constant = (X.max(axis=0) == X.min(axis=0)) | (std == 0)
        return cls(mean=mean, scale=np.where(constant, 1.0, std))

    @classmethod
    def fit_rows(
        cls,
        X: np.ndarray,
        rows: np.ndarray,
        chunk: int = 65_536,
        names: Sequence[str] | None = None,
        source: str = "",
    ) -> Standardizer:
        """:meth:`fit` on ``X[rows]`` without materialising it (nor a float64 copy): two
        passes over chunks of rows, mean then the mean squared deviation, in float64.
        Values whose sum or spread overflows float64 are an error naming the file (``source``)
        and the column (from ``names`` if given).

        >>> X = np.array([[1.0, 5.0], [9.0, 5.0], [3.0, 5.0]])
        >>> s = Standardizer.fit_rows(X, np.array([0, 2]))
        >>> s.mean.tolist(), s.scale.tolist()
        ([2.0, 5.0], [1.0, 1.0])
        """
        n = len(rows)
        if X.ndim != 2 or n == 0:
            raise DataError(f"cannot fit a standardizer on {n} rows of shape {X.shape}")
        parts = [rows[lo : lo + chunk] for lo in range(0, n, chunk)]
        total, hi, lo_ = np.zeros(X.shape[1]), np.full(X.shape[1], -np.inf), np.inf
        squares = np.zeros(X.shape[1])
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below
            for part in parts:
                block = X[part].astype(np.float64, copy=False)
                total += block.sum(axis=0)
                hi, lo_ = np.maximum(hi, block.max(axis=0)), np.minimum(lo_, block.min(axis=0))
            mean = total / n
            for part in parts:
                block = X[part] - mean
                block *= block
                squares += block.sum(axis=0)
        std = np.sqrt(squares / n)
        overflowed = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(std)))
        if overflowed.size:
            j = int(overflowed[0])
            column = repr(names[j]) if names is not None else f"{j} (0-based)"
            largest = max(abs(float(hi[j])), abs(float(lo_[j])))
            raise DataError(
                f"{source + ': ' if source else ''}feature column {column}: values up to "
                f"{largest:g} are too large to "
                "standardize (their sum or spread overflows float64); rescale the column"
            )
        constant = (hi == lo_) | (std == 0)
        return cls(mean=mean, scale=np.where(constant, 1.0, std))

    @classmethod
    def identity(cls, d: int) -> Standardizer:
        return cls(mean=np.zeros(d), scale=np.ones(d))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, dtype=np.float64) - self.mean) / self.scale

    def to_json(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> Standardizer:
        mean = np.asarray(d["mean"], dtype=np.float64)
        scale = np.asarray(d["scale"], dtype=np.float64)
        if mean.ndim != 1 or mean.shape != scale.shape or np.any(scale == 0):
            raise DataError("standardizer: mean and scale must be equal-length, scale nonzero")
        return cls(mean=mean, scale=scale)


def shard_bounds(n: int, k: int) -> list[tuple[int, int]]:
    """``k`` contiguous ``[start, stop)`` ranges covering ``0..n``, sizes differing by <= 1.

    The first ``n % k`` shards get one extra row; with ``k > n`` some shards are empty.

    Examples
    --------
    >>> shard_bounds(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    if k < 1 or n < 0:
        raise DataError(f"cannot cut {n} rows into {k} shards")
    base, extra = divmod(n, k)
    bounds, start = [], 0
    for i in range(k):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds
