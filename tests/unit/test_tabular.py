"""Reading data for a trained model: which columns are read, and which labels match."""

from __future__ import annotations

import io

import numpy as np
import pytest
from lambdagrad.artifact import TrainedModel
from lambdagrad.data import DataError, Standardizer, load_dataset
from lambdagrad.models import build_model
from lambdagrad.tabular import read_features, read_labelled
from lambdagrad.training import infer_task


def _linear(label: str | None) -> TrainedModel:
    """y = a + 10 b: easy to tell which columns were scored."""
    model = build_model("linear", 2, 1)
    return TrainedModel(
        model=model,
        params=np.array([1.0, 10.0, 0.0]),
        standardizer=Standardizer.identity(2),
        feature_names=["a", "b"],
        classes=None,
        info={"spec": {"dataset": {"label": label}}},
    )


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_csv_reads_only_the_model_columns():
    # an id that is not a number and the label, in the middle, are not read at all
    data = b"id,b,price,a\nrow-1,2,n/a,1\nrow-2,3,,5\n"
    X = read_features(data, source="new.csv", fmt=None, trained=_linear("price"))
    np.testing.assert_array_equal(X, [[1, 2], [5, 3]])
    assert _linear("price").predict(X) == [21.0, 35.0]


def test_csv_names_the_missing_feature_columns_and_the_header_it_found():
    with pytest.raises(
        DataError, match=r"new.csv: missing feature column\(s\) 'a'; its header has 'b', 'id'$"
    ):
        read_features(b"b,id\n2,x\n", source="new.csv", fmt=None, trained=_linear(None))
    # separated by semicolons or tabs (a spreadsheet's export): one column, named as such
    for sep, said in ((";", "';'"), ("\t", "tabs")):
        data = f"a{sep}b\n1{sep}2\n".encode()
        with pytest.raises(DataError) as err:
            read_features(data, source="new.csv", fmt=None, trained=_linear(None))
        assert str(err.value) == (
            f"new.csv: missing feature column(s) 'a', 'b'; its header has {f'a{sep}b'!r} "
            f"(separated by {said}? lambdagrad reads comma-separated CSV)"
        )


def test_npy_with_the_label_column_drops_it_only_where_it_is_known():
    X = np.array([[7.0, 1.0, 2.0], [8.0, 5.0, 3.0]])  # label first, then a, b
    got = read_features(_npy(X), source="x.npy", fmt=None, trained=_linear("0"))
    np.testing.assert_array_equal(got, X[:, 1:])
    last = np.roll(X, -1, axis=1)  # a, b, label: the default label column is the last
    got = read_features(_npy(last), source="x.npy", fmt=None, trained=_linear(None))
    np.testing.assert_array_equal(got, X[:, 1:])
    # trained on a CSV whose label was named: its position is unknown, so no guess
    with pytest.raises(DataError, match=r"x.npy: 3 columns, one more .* label 'y' was a named"):
        read_features(_npy(X), source="x.npy", fmt=None, trained=_linear("y"))
    # trained on an .npz: its labels were an array of their own, no column to drop
    on_npz = _linear(None)
    on_npz.info["spec"]["dataset"]["uri"] = "s3://b/datasets/train.npz"
    with pytest.raises(DataError, match=r"x.npy: 3 columns, .* trained on an .npz"):
        read_features(_npy(last), source="x.npy", fmt=None, trained=on_npz)
    np.testing.assert_array_equal(
        read_features(_npy(X[:, 1:]), source="x.npy", fmt=None, trained=on_npz), X[:, 1:]
    )


def test_the_format_given_decides_as_the_extension_would():
    """``--format npy`` on a file named otherwise: its label column is dropped as an .npy's;
    a model trained on ``--format npz`` data has no label column to drop."""
    X = np.array([[1.0, 2.0, 7.0], [5.0, 3.0, 8.0]])  # a, b, label
    got = read_features(_npy(X), source="rows.bin", fmt="npy", trained=_linear(None))
    np.testing.assert_array_equal(got, X[:, :2])
    on_npz = _linear(None)
    on_npz.info["spec"]["dataset"] |= {"uri": "s3://b/datasets/train.bin", "format": "npz"}
    with pytest.raises(DataError, match=r"rows.bin: 3 columns, .* trained on an .npz"):
        read_features(_npy(X), source="rows.bin", fmt="npy", trained=on_npz)


def test_a_label_that_is_a_feature_is_named_as_one():
    with pytest.raises(DataError, match=r"new.csv: the label 'b' is one of the model's features"):
        read_labelled(
            b"a,b,price\n1,2,30\n", source="new.csv", fmt=None, label="b", trained=_linear("price")
        )


def test_csv_label_of_a_model_trained_without_a_label_name_is_the_one_other_column():
    # trained with the default label (the last column, name not recorded): in a new file
    # the label is the column that is not a feature, wherever it stands
    trained = _linear(None)
    for data in (b"a,b,price\n1,2,30\n", b"price,b,a\n30,2,1\n"):
        X, y = read_labelled(data, source="new.csv", fmt=None, label=None, trained=trained)
        np.testing.assert_array_equal(X, [[1, 2]])
        np.testing.assert_array_equal(y, [30.0])
    # an id column after it: not "the last column", which would score against the ids
    with pytest.raises(
        DataError, match=r"the label\? Besides the model's features it has 'price', 'id'"
    ):
        read_labelled(
            b"a,b,price,id\n1,2,30,1\n", source="new.csv", fmt=None, label=None, trained=trained
        )
    # a pandas index column (no name) is not a candidate
    X, y = read_labelled(
        b",a,b,price\n0,1,2,30\n", source="new.csv", fmt=None, label=None, trained=trained
    )
    np.testing.assert_array_equal(y, [30.0])
    with pytest.raises(DataError, match=r"new.csv: no label column: every column is one of"):
        read_labelled(b"b,a\n2,1\n", source="new.csv", fmt=None, label=None, trained=trained)
    X, y = read_labelled(  # a name given picks it among the others
        b"a,b,price,id\n1,2,30,1\n", source="new.csv", fmt=None, label="price", trained=trained
    )
    np.testing.assert_array_equal(y, [30.0])


def _classifier(feature: str, classes: list) -> TrainedModel:
    """A softmax model of one feature over ``classes`` (its weights do not matter here)."""
    model = build_model("softmax", 1, len(classes))
    return TrainedModel(
        model=model,
        params=np.zeros(model.n_params),
        standardizer=Standardizer.identity(1),
        feature_names=[feature],
        classes=classes,
    )


def test_labels_match_the_model_classes_as_text():
    # the model's classes are strings; a file holding only "1" and "2" reads them as ints
    trained = _classifier("rooms_area", ["1", "2", "3+"])
    data = b"rooms_area,rooms\n30,1\n50,2\n45,2\n"
    _, y = read_labelled(data, source="sub.csv", fmt=None, label="rooms", trained=trained)
    np.testing.assert_array_equal(y, [0, 1, 1])
    with pytest.raises(DataError, match=r"label\(s\) 4 were not seen in training"):
        read_labelled(b"rooms_area,rooms\n30,4\n", source="s.csv", fmt=None, label="rooms",
                      trained=trained)  # fmt: skip


def test_a_models_integer_classes_match_labels_by_value():
    # trained on 0/1 (an .npy, or a CSV of 0 and 1); scored on a CSV that writes 0.00 and 01
    trained = _classifier("a", [0, 1])
    data = b"a,y\n1,0.00\n2,01\n3,1.00\n"
    _, y = read_labelled(data, source="eval.csv", fmt=None, label="y", trained=trained)
    np.testing.assert_array_equal(y, [0, 1, 1])
    with pytest.raises(DataError, match=r"label\(s\) 2 were not seen in training"):
        read_labelled(b"a,y\n1,2.0\n1,0\n", source="e.csv", fmt=None, label="y", trained=trained)


@pytest.mark.parametrize(
    ("labels", "task"),
    [
        (["0.5", "1.25", "2"], "regression"),
        (["1", "2", "1"], "classification"),
        (["1", "2", "3+"], "classification"),
        (["cat", "dog", "cat"], "classification"),
    ],
)
def test_infer_task(labels, task):
    data = ("x,y\n" + "".join(f"{i},{v}\n" for i, v in enumerate(labels))).encode()
    assert infer_task(data, source="d.csv", fmt=None, label="y") == task


def test_infer_task_reports_a_bad_cell_in_a_numeric_label():
    # fractional numbers and one "NA": a regression label with a bad cell, not 4 classes
    data = b"x,price\n1,0.25\n2,0.5\n3,NA\n4,1.75\n"
    with pytest.raises(DataError, match=r"d.csv line 4, column 'price': 'NA'"):
        infer_task(data, source="d.csv", fmt=None, label="price")
    # whole numbers too, when there are more of them than an auto task takes for classes
    rows = [f"{i},{1000 * (i + 1)}" for i in range(25)]
    rows[3] = "3,NA"
    data = ("x,price\n" + "\n".join(rows) + "\n").encode()
    with pytest.raises(DataError, match=r"d.csv line 5, column 'price': 'NA'") as info:
        infer_task(data, source="d.csv", fmt=None, label="price")
    assert "(24 distinct whole numbers besides it" in str(info.value)
    assert "use model.task classification (--task classification)" in str(info.value)
    # and a few whole numbers with a word among them stay classes ("3+")
    data = b"x,rooms\n1,1\n2,2\n3,3+\n"
    assert infer_task(data, source="d.csv", fmt=None, label="rooms") == "classification"


@pytest.mark.parametrize(
    "labels",
    [np.array([1e20, -1e20, 5.0]), np.array([2**63 + 5, 1, 2], dtype=np.uint64)],
    ids=["float beyond 2**53", "uint64 beyond int64"],
)
def test_class_labels_that_would_wrap_are_refused(labels):
    # as int64 both would wrap: 1e20 and -1e20 to one class, 2**63 + 5 to a negative one
    data = _npy(np.column_stack([np.arange(3).astype(labels.dtype), labels]))
    with pytest.raises(DataError, match=r"x.npy: class label .* (beyond 2\*\*53|64-bit)"):
        load_dataset(data, source="x.npy", fmt=None, label=None, task="classification")


def test_csv_with_a_pandas_index_column_predicts():
    # pandas' to_csv writes its index as a first column with no name
    data = b",b,a,note,note\n0,2,1,x,y\n1,3,5,z,w\n"
    X = read_features(data, source="new.csv", fmt=None, trained=_linear(None))
    np.testing.assert_array_equal(X, [[1, 2], [5, 3]])
    with pytest.raises(DataError, match=r"new.csv line 1: duplicate column names 'a'"):
        read_features(b"a,b,a\n1,2,3\n", source="new.csv", fmt=None, trained=_linear(None))


def test_infer_task_reports_a_bad_feature_cell_as_such():
    data = b"x,species\n1,cat\noops,dog\n"
    with pytest.raises(DataError, match=r"d.csv line 3, column 'x': 'oops' is not a number"):
        infer_task(data, source="d.csv", fmt=None, label="species")


def test_infer_task_honours_max_features():
    data = b"a,b,c,y\n1,2,3,cat\n4,5,6,dog\n"
    assert infer_task(data, source="d.csv", fmt=None, label="y", max_features=3)
    with pytest.raises(DataError, match="the limit is 2"):
        infer_task(data, source="d.csv", fmt=None, label="y", max_features=2)


def test_an_array_of_the_wrong_width_to_evaluate_counts_its_label_apart():
    # 4 columns, the last the label: 3 features for a model of 2
    data = _npy(np.ones((2, 4)))
    with pytest.raises(DataError, match=r"w.npy: 3 feature columns besides the label column, "):
        read_labelled(data, source="w.npy", fmt=None, label=None, trained=_linear(None))
