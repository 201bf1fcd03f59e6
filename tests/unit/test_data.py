"""Data loading: error messages that point at the cell; formats; split, scaling, shards."""

import io
import itertools
import json
import re

import numpy as np
import pytest
from lambdagrad.data import (
    DataError,
    Standardizer,
    check_label_applies,
    labels_from_indices,
    load_dataset,
    shard_bounds,
    train_validation_split,
)


def _csv(text, label="y", task="regression", source="data.csv", **kw):
    data = text.encode() if isinstance(text, str) else text
    return load_dataset(data, source=source, fmt=None, label=label, task=task, **kw)


def _npy(arr, label=None, task="regression", allow_pickle=False):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return load_dataset(buf.getvalue(), source="d.npy", fmt=None, label=label, task=task)


def _npz(task="regression", **arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return load_dataset(buf.getvalue(), source="d.npz", fmt=None, label=None, task=task)


# --------------------------------------------------------------------------- csv ok


def test_csv_basic_regression():
    ds = _csv("a,y,b\n1,10,2\n3,30,4\n")
    np.testing.assert_array_equal(ds.X, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(ds.y, [10.0, 30.0])
    assert ds.X.dtype == np.float64 and ds.y.dtype == np.float64
    assert ds.feature_names == ["a", "b"] and ds.classes is None


def test_csv_bom_crlf_blank_lines_and_quotes():
    text = '\ufeff"a","note, with comma",y\r\n\r\n1," 2 ",3\r\n   \r\n"4",5,6\r\n\r\n'
    ds = _csv(text.encode("utf-8"))
    assert ds.feature_names == ["a", "note, with comma"]
    np.testing.assert_array_equal(ds.X, [[1.0, 2.0], [4.0, 5.0]])
    np.testing.assert_array_equal(ds.y, [3.0, 6.0])


def test_csv_label_defaults_to_last_column():
    ds = _csv("a,b,target\n1,2,3\n4,5,6\n", label=None)
    assert ds.feature_names == ["a", "b"]
    np.testing.assert_array_equal(ds.y, [3.0, 6.0])


def test_csv_line_numbers_count_blank_lines_as_an_editor_does():
    with pytest.raises(DataError, match=r"data\.csv line 5, column 'a'"):
        _csv("a,y\n1,2\n\n3,4\nx,5\n")


# --------------------------------------------------------------------------- csv errors


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", r"data\.csv is empty"),
        ("\n\n  \n", r"data\.csv is empty"),
        ("a,y\n", r"data\.csv has a header but no data rows"),
        ("a,y\n\r\n\n", r"data\.csv has a header but no data rows"),
        ("a,y\n1,2\n3,4,5\n", r"data\.csv line 3: expected 2 fields as in the header, got 3"),
        ("a,y\n1,2\n3\n", r"data\.csv line 3: expected 2 fields .* got 1"),
        ("sqft,y\n1,2\n3,4\n5,6\n7,8\n9,1\nabc,2\n", r"data\.csv line 7, column 'sqft': 'abc'"),
        ("a,b,y\n1,2,3\n4,,6\n", r"data\.csv line 3, column 'b': empty cell"),
        ("a,b,y\n1,nan,3\n", r"data\.csv line 2, column 'b': 'nan' is not a finite number"),
        ("a,b,y\n1,2,3\n1,-inf,3\n", r"data\.csv line 3, column 'b': '-inf' is not a finite"),
        ("a,y\n1,2\n3,\n", r"data\.csv line 3, column 'y': empty cell"),
        ("a,y\n1,2\n3,oops\n", r"data\.csv line 3, column 'y': 'oops' is not a number"),
        ("a,y\n1,inf\n", r"data\.csv line 2, column 'y': 'inf' is not a finite number"),
        ("a,a,y\n1,2,3\n", r"data\.csv line 1: duplicate column names 'a'"),
        ("a,,y\n1,2,3\n", r"data\.csv line 1: column 2 of the header has no name"),
        ("y\n1\n2\n", r"data\.csv: no feature columns"),
        ('a,y\n1,"2\n', r"data\.csv line 2: .*end of data"),
        # Python's float() reads these; a CSV number does not hold them
        ("a,y\n1,2\n1_000,3\n", r"data\.csv line 3, column 'a': '1_000' is not a number"),
        ("a,y\n1,2\n3,4_5\n", r"data\.csv line 3, column 'y': '4_5' is not a number"),
        ("a,y\n\uff11\uff12,2\n", r"data\.csv line 2, column 'a': '\uff11\uff12' is not a number"),
    ],
)
def test_csv_errors_point_at_the_problem(text, pattern):
    with pytest.raises(DataError, match=pattern):
        _csv(text)


def test_csv_error_in_a_later_chunk_has_exact_line(monkeypatch):
    monkeypatch.setattr("lambdagrad.data._CHUNK_ROWS", 3)
    rows = "".join(f"{i},{i}\n" for i in range(10))
    ds = _csv("a,y\n" + rows)
    np.testing.assert_array_equal(ds.y, np.arange(10.0))
    with pytest.raises(DataError, match=r"data\.csv line 10, column 'y': 'x'"):
        _csv("a,y\n" + rows.replace("8,8", "8,x"))


def test_missing_label_lists_columns():
    with pytest.raises(DataError, match=r"data\.csv: no label column 'price'.*'sqft', 'y'"):
        _csv("sqft,y\n1,2\n", label="price")


def test_too_many_features():
    with pytest.raises(DataError, match=r"data\.csv: 3 feature columns; the limit is 2"):
        _csv("a,b,c,y\n1,2,3,4\n", max_features=2)


def test_invalid_utf8_names_line():
    with pytest.raises(DataError, match=r"data\.csv line 3: not valid UTF-8"):
        _csv(b"a,y\n1,2\n\xff,3\n")


def test_format_inference_and_errors():
    with pytest.raises(DataError, match=r"cannot tell the format of 'data\.txt'"):
        load_dataset(b"a,y\n1,2\n", source="data.txt", fmt=None, label="y", task="regression")
    ds = load_dataset(b"a,y\n1,2\n", source="data.txt", fmt="csv", label="y", task="regression")
    assert ds.X.shape == (1, 1)
    with pytest.raises(DataError, match="unknown format 'xls'"):
        load_dataset(b"", source="d.csv", fmt="xls", label="y", task="regression")
    with pytest.raises(DataError, match="unknown task"):
        load_dataset(b"a,y\n1,2\n", source="d.csv", fmt=None, label="y", task="ranking")


# --------------------------------------------------------------------------- classification


def test_string_classes_sorted_and_mapped_back():
    ds = _csv("a,y\n1,dog\n2,cat\n3, bird \n4,dog\n", task="classification")
    assert ds.classes == ["bird", "cat", "dog"]
    assert ds.y.dtype == np.int64
    assert ds.y.tolist() == [2, 1, 0, 2]
    assert labels_from_indices(ds.y, ds.classes) == ["dog", "cat", "bird", "dog"]


def test_labels_that_are_not_written_as_integers_keep_their_spelling():
    ds = _csv("a,y\n1,01\n2,02\n3,10\n", task="classification")
    assert ds.classes == ["01", "02", "10"]  # not 1, 2, 10: a prediction says "01"
    ds = _csv("a,y\n1,1\n2,01\n3,1.0\n", task="classification")
    assert ds.classes == ["01", "1", "1.0"]  # three spellings, never merged into one class
    ds = _csv("a,y\n1,1.0\n2,2.0\n3,1.0\n", task="classification")
    assert ds.classes == [1, 2] and ds.y.tolist() == [0, 1, 0]  # a float column's integers


def test_int_classes_sorted_numerically():
    ds = _csv("a,y\n1,10\n2,9\n3,-1\n4,10\n5,2.0\n", task="classification")
    assert ds.classes == [-1, 2, 9, 10]
    assert all(type(c) is int for c in ds.classes)
    assert ds.y.tolist() == [3, 2, 0, 3, 1]
    assert labels_from_indices(np.array([0, 3]), ds.classes) == [-1, 10]
    json.dumps(ds.classes)


def test_plain_numbers_still_read_when_the_text_has_an_underscore_or_non_ascii():
    ds = _csv("size_m2,y\n1,2\n3.5,4\n", label="y")  # the underscore is in the header only
    np.testing.assert_array_equal(ds.X, [[1.0], [3.5]])
    ds = _csv("f,name\n1,caf\u00e9\n2,x_1\n", label="name", task="classification")
    assert ds.classes == ["caf\u00e9", "x_1"]
    # spaces around a number are stripped, non-breaking ones too (spreadsheet exports)
    ds = _csv("a,y\n1\u00a0,2\u00a0\n\u20093,4\n")
    np.testing.assert_array_equal(ds.X, [[1.0], [3.0]])
    np.testing.assert_array_equal(ds.y, [2.0, 4.0])


def test_an_odd_number_is_found_among_text_labels_with_underscores(monkeypatch):
    monkeypatch.setattr("lambdagrad.data._CHUNK_ROWS", 2)
    text = "f,name\n1,x_1\n2,x_2\n3,x_1\n4_0,x_2\n"
    with pytest.raises(DataError, match=r"line 5, column 'f': '4_0' is not a number"):
        _csv(text, label="name", task="classification")


def test_labels_with_underscores_are_text_not_numbers():
    ds = _csv("a,y\n1,1_0\n2,10\n", task="classification")
    assert ds.classes == ["10", "1_0"]  # int("1_0") would have made both class 10


def test_mixed_labels_are_strings():
    ds = _csv("a,y\n1,10\n2,9\n3,x\n", task="classification")
    assert ds.classes == ["10", "9", "x"]


def test_single_class_is_an_error():
    with pytest.raises(DataError, match=r"data\.csv: label column 'y' has only one class: 'a'"):
        _csv("f,y\n1,a\n2,a\n", task="classification")


def test_classification_labels_need_not_be_numbers_but_features_must():
    with pytest.raises(DataError, match=r"data\.csv line 3, column 'f': 'x' is not a number"):
        _csv("f,y\n1,a\nx,b\n", task="classification")


# --------------------------------------------------------------------------- npy / npz


def test_npy_label_is_column_index():
    arr = np.array([[1.0, 0.0, 5.0], [2.0, 1.0, 6.0]])
    ds = _npy(arr)
    np.testing.assert_array_equal(ds.X, arr[:, :2])
    np.testing.assert_array_equal(ds.y, [5.0, 6.0])
    assert ds.feature_names == ["x0", "x1"]
    ds = _npy(arr, label="1", task="classification")
    np.testing.assert_array_equal(ds.X, arr[:, [0, 2]])
    assert ds.classes == [0, 1] and ds.y.tolist() == [0, 1]


def test_npy_int_array_becomes_float64():
    ds = _npy(np.array([[1, 2], [3, 4]], dtype=np.int32))
    assert ds.X.dtype == np.float64 and ds.y.dtype == np.float64


def test_npy_object_array_is_refused():
    arr = np.array([[1, "a"], [2, "b"]], dtype=object)
    with pytest.raises(DataError, match=r"d\.npy holds Python objects; refusing to unpickle"):
        _npy(arr, allow_pickle=True)


@pytest.mark.parametrize(
    ("arr", "label", "pattern"),
    [
        (np.zeros(3), None, r"d\.npy: expected one 2-D array"),
        (np.zeros((2, 3)), "price", r"d\.npy: for \.npy data the label is a column index"),
        (np.zeros((2, 3)), "3", r"d\.npy: label column 3 is out of range"),
        (np.zeros((2, 1)), None, r"d\.npy: no feature columns"),
        (np.zeros((0, 3)), None, r"d\.npy has no rows"),
        (np.array([[1.0, np.nan, 1.0]]), None, r"d\.npy: X row 0, column 'x1'"),
        (np.array([["a", "b"]]), None, r"d\.npy: expected a numeric array"),
    ],
)
def test_npy_errors(arr, label, pattern):
    with pytest.raises(DataError, match=pattern):
        _npy(arr, label=label)


def test_npy_bad_bytes():
    with pytest.raises(DataError, match=r"d\.npy is not a \.npy file"):
        load_dataset(b"a,y\n1,2\n", source="d.npy", fmt=None, label=None, task="regression")
    good = io.BytesIO()
    np.save(good, np.zeros((4, 3)))
    with pytest.raises(DataError, match=r"d\.npy is not a valid \.npy file"):
        load_dataset(good.getvalue()[:-7], source="d.npy", fmt=None, label=None, task="regression")


def test_npz_ok_and_string_classes():
    X = np.arange(6.0).reshape(3, 2)
    ds = _npz(X=X, y=np.array([1.5, 2.5, 3.5]))
    np.testing.assert_array_equal(ds.X, X)
    assert ds.feature_names == ["x0", "x1"]
    ds = _npz(task="classification", X=X, y=np.array(["b", "a", "b"]))
    assert ds.classes == ["a", "b"] and ds.y.tolist() == [1, 0, 1]
    ds = _npz(task="classification", X=X, y=np.array([[3], [7], [3]]))
    assert ds.classes == [3, 7] and ds.y.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    ("arrays", "task", "pattern"),
    [
        ({"features": np.zeros((2, 2)), "y": np.zeros(2)}, "regression", r"found 'features', 'y'"),
        ({"X": np.zeros(2), "y": np.zeros(2)}, "regression", r"d\.npz: X must be 2-D"),
        ({"X": np.zeros((2, 2)), "y": np.zeros(3)}, "regression", r"X has 2 rows but y has 3"),
        ({"X": np.zeros((2, 2)), "y": np.zeros((2, 2))}, "regression", r"y must be 1-D"),
        ({"X": np.zeros((2, 2)), "y": np.array([1, np.inf])}, "regression", r"row 1"),
        ({"X": np.zeros((2, 2)), "y": np.array(["a", "b"])}, "regression", r"must be numeric"),
        ({"X": np.zeros((2, 2)), "y": np.array([0.5, 1])}, "classification", r"non-integer"),
        ({"X": np.zeros((2, 2)), "y": np.array([4, 4])}, "classification", r"only one class: 4"),
    ],
)
def test_npz_errors(arrays, task, pattern):
    with pytest.raises(DataError, match=pattern):
        _npz(task=task, **arrays)


def test_npz_object_array_is_refused():
    buf = io.BytesIO()
    np.savez(buf, X=np.array([[1, None]], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match=r"d\.npz array 'X' holds Python objects; refusing"):
        load_dataset(buf.getvalue(), source="d.npz", fmt=None, label=None, task="regression")


def test_npz_not_a_zip():
    with pytest.raises(DataError, match=r"d\.npz is not a \.npz file"):
        load_dataset(b"\x93NUMPY", source="d.npz", fmt=None, label=None, task="regression")


# --------------------------------------------------------------------------- split, scale, shard


def test_split_sizes_and_determinism():
    train, val = train_validation_split(100, 0.2, seed=7)
    assert len(train) == 80 and len(val) == 20
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    train2, val2 = train_validation_split(100, 0.2, seed=7)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(val, val2)
    train3, _ = train_validation_split(100, 0.2, seed=8)
    assert not np.array_equal(train, train3)
    assert train.dtype == np.int64


def test_split_edge_cases():
    train, val = train_validation_split(10, 0.0, seed=0)
    assert len(val) == 0 and sorted(train.tolist()) == list(range(10))
    assert [len(a) for a in train_validation_split(5, 0.01, seed=0)] == [4, 1]
    assert [len(a) for a in train_validation_split(1, 0.5, seed=0)] == [1, 0]
    with pytest.raises(DataError, match="no training data"):
        train_validation_split(2, 0.9, seed=0)
    with pytest.raises(DataError, match="fraction"):
        train_validation_split(10, 1.0, seed=0)


def test_standardizer_constant_column_and_json_roundtrip():
    X = np.array([[1.0, 0.1, -2.0], [3.0, 0.1, 2.0], [5.0, 0.1, 0.0]])
    s = Standardizer.fit(X)
    assert s.scale[1] == 1.0
    Z = s.transform(X)
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Z.std(axis=0), [1.0, 0.0, 1.0], atol=1e-12)
    s2 = Standardizer.from_json(json.loads(json.dumps(s.to_json())))
    np.testing.assert_array_equal(s2.transform(X), Z)
    ident = Standardizer.identity(3)
    np.testing.assert_array_equal(ident.transform(X), X)


@pytest.mark.parametrize(("n", "k"), [(10, 3), (3, 5), (0, 2), (7, 1), (100, 7)])
def test_shard_bounds_cover_contiguously(n, k):
    bounds = shard_bounds(n, k)
    assert len(bounds) == k
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [stop - start for start, stop in bounds]
    assert sizes == [n // k + (1 if i < n % k else 0) for i in range(k)]


def test_shard_bounds_rejects_zero_shards():
    with pytest.raises(DataError):
        shard_bounds(10, 0)


def test_standardizer_names_a_column_too_large_to_standardize():
    # finite values whose sum overflows float64: a named error, not inf in model.json
    X = np.array([[1.0, 1e308], [2.0, 1.5e308], [3.0, 1e308]])
    with pytest.raises(DataError, match=r"feature column 'b': values up to 1\.5e\+308 are too"):
        Standardizer.fit_rows(X, np.arange(3), names=["a", "b"])
    with pytest.raises(DataError, match=r"feature column 1 \(0-based\)"):
        Standardizer.fit_rows(X, np.arange(3))


@pytest.mark.parametrize(
    ("source", "fmt", "label"),
    [
        ("d.npz", None, "price"),
        ("D.NPZ", None, "-1"),
        ("d.bin", "npz", "0"),
        ("d/x.npz/", None, "a"),
    ],
)
def test_a_label_an_npz_would_ignore_is_refused(source, fmt, label):
    with pytest.raises(DataError, match=rf"^{re.escape(source)}: --label '{label}' does not apply"):
        check_label_applies(source, fmt, label, "--label")


@pytest.mark.parametrize(
    ("source", "fmt", "label"),
    [("d.npz", None, None), ("d.npz", None, "y"), ("d.npz", "csv", "price"), ("d.npy", None, "-1")],
)
def test_labels_that_apply_pass(source, fmt, label):
    check_label_applies(source, fmt, label, "dataset.label")


def test_excluded_columns_are_not_read():
    """An id or a note column: not a number (train refused the file) or, when numeric, a
    feature by accident."""
    text = "id,a,note,b,y\nh1,1,hello,2,3\nh2,4,,5,6\n"
    ds = _csv(text, exclude=["id", "note"])
    assert ds.feature_names == ["a", "b"] and ds.X.tolist() == [[1.0, 2.0], [4.0, 5.0]]
    assert ds.y.tolist() == [3.0, 6.0]
    with pytest.raises(
        DataError,
        match=r"data\.csv: dataset\.exclude names no column 'ID'; "
        r"its header has 'id', 'a', 'note', 'b', 'y'",
    ):
        _csv(text, exclude=["ID", "note"])
    with pytest.raises(DataError, match=r"dataset\.exclude names the label 'y'"):
        _csv(text, exclude=["id", "note", "y"])
    with pytest.raises(DataError, match=r"no feature columns"):
        _csv("id,y\nh1,3\n", exclude=["id"])
    buf = io.BytesIO()
    np.save(buf, np.ones((3, 3)))
    with pytest.raises(
        DataError,
        match=r"d\.npy: dataset\.exclude names CSV columns; a \.npy "
        r"has none",
    ):
        load_dataset(
            buf.getvalue(), source="d.npy", fmt=None, label=None, task="regression", exclude=["id"]
        )
