"""The model artifact: damaged or inconsistent files are refused by name, predictions that
are not finite numbers are refused, and model.npz must be the one model.json was written with.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lambdagrad import artifact
from lambdagrad.artifact import ArtifactError, NonFiniteError, TrainedModel
from lambdagrad.cli import main
from lambdagrad.data import Standardizer
from lambdagrad.models import build_model

from tests.unit.test_registry import HOUSE_FEATURES, tiny_model

ROW = [1200.0, 3.0, 12.5, 4.2]
HUGE = [1e308] * 4  # finite, but standardized and summed it overflows
MISMATCH = "model.npz does not match model.json (written by different jobs or damaged)"


def npz_of(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def npy_of(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def classifier() -> TrainedModel:
    return tiny_model("softmax", classes=["cat", "dog", "fox"], seed=3)


def exploding(trained: TrainedModel) -> TrainedModel:
    """Unit weights, features doubled by the standardizer: a huge row overflows to inf
    (or inf - inf = nan) already while it is standardized."""
    trained.params = np.ones_like(trained.params)
    d = trained.model.n_features
    trained.standardizer = Standardizer(mean=np.zeros(d), scale=np.full(d, 0.5))
    return trained


def save(directory: Path, trained: TrainedModel) -> Path:
    trained.save(directory)
    return directory


def edit_json(directory: Path, change: Callable[[dict], Any]) -> None:
    """Apply ``change`` to the parsed model.json and write it back."""
    path = directory / "model.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def older(doc: dict) -> None:
    """A model.json from before the npz digest was recorded."""
    doc.pop("npz_sha256")


# ---- damaged or inconsistent files ----------------------------------------------------
def _set(*path_and_value: Any) -> Callable[[dict], None]:
    *path, value = path_and_value

    def change(doc: dict) -> None:
        older(doc)
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _delete(*path: str) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        older(doc)
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


NAN = float("nan")
JSON_CASES = [
    ("format-2", _set("format", 2), ["model.json", "'format'", "2"]),
    ("no-model", _delete("model"), ["model.json", "key 'model' is missing"]),
    ("model-not-object", _set("model", "linear"), ["model.json", "'model'", "JSON object"]),
    ("no-type", _delete("model", "type"), ["model.json", "'model.type' is missing"]),
    ("type-unknown", _set("model", "type", "forest"), ["model.json", "model.type", "'forest'"]),
    ("n-features-str", _set("model", "n_features", "two"), ["model.n_features", "'two'"]),
    ("n-features-zero", _set("model", "n_features", 0), ["model.json", "model.n_features", "0"]),
    ("n-features-bool", _set("model", "n_features", True), ["model.n_features", "True"]),
    ("n-classes-2", _set("model", "n_classes", 2), ["model.json", "'model'", "n_classes=1"]),
    ("task", _set("model", "task", "classification"), ["model.json", "model.task"]),
    ("no-std", _delete("standardizer"), ["model.json", "key 'standardizer' is missing"]),
    ("std-list", _set("standardizer", [0, 1]), ["model.json", "'standardizer'", "JSON object"]),
    ("no-scale", _delete("standardizer", "scale"), ["'standardizer.scale' is missing"]),
    ("mean-short", _set("standardizer", "mean", [0.0]), ["standardizer.mean", "1 values", "4"]),
    ("scale-long", _set("standardizer", "scale", [1] * 5), ["standardizer.scale", "5 values"]),
    ("scale-nan", _set("standardizer", "scale", [NAN, 1, 1, 1]), ["standardizer.scale", "finite"]),
    ("mean-inf", _set("standardizer", "mean", [0, 0, 1e999, 0]), ["standardizer.mean", "finite"]),
    ("scale-zero", _set("standardizer", "scale", [1, 0, 1, 1]), ["standardizer.scale", "> 0"]),
    ("scale-neg", _set("standardizer", "scale", [1, 1, -2, 1]), ["standardizer.scale", "> 0"]),
    ("mean-str", _set("standardizer", "mean", ["0", 0, 0, 0]), ["standardizer.mean", "'0'"]),
    ("mean-nested", _set("standardizer", "mean", [[0, 0, 0, 0]]), ["standardizer.mean"]),
    ("names-short", _set("feature_names", ["sqft"]), ["model.json", "feature_names", "1", "4"]),
    ("names-missing", _delete("feature_names"), ["model.json", "'feature_names' is missing"]),
    ("names-numbers", _set("feature_names", [1, 2, 3, 4]), ["feature_names", "text"]),
    ("names-twice", _set("feature_names", ["a", "b", "a", "c"]), ["feature_names", "'a'"]),
    ("classes-regression", _set("classes", ["x"]), ["model.json", "classes", "regression"]),
    ("spec-str", _set("spec", "x"), ["model.json", "'spec' must be an object", "'dataset'"]),
    ("spec-dataset-null", _set("spec", {"dataset": None}), ["model.json", "'spec' must be"]),
    (
        "spec-label-number",
        _set("spec", {"dataset": {"label": 5}}),
        ["model.json", "'spec.dataset.label' must be a column name or null, got 5"],
    ),
]

CLASSIFIER_CASES = [
    ("classes-short", _set("classes", ["cat", "dog"]), ["model.json", "classes", "2", "3"]),
    ("classes-twice", _set("classes", ["cat", "cat", "fox"]), ["'classes' names 'cat' more than"]),
    ("classes-twice-as-text", _set("classes", [1, "1", 2]), ["'classes' names '1' more than"]),
    ("classes-str", _set("classes", "cat,dog,fox"), ["model.json", "classes", "list"]),
]


def _npz_case(npz: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        edit_json(directory, older)
        path = directory / "model.npz"
        path.write_bytes(npz(path.read_bytes()))

    return damage


def _json_text(text: bytes) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        (directory / "model.json").write_bytes(text)

    return damage


def _truncated_json(directory: Path) -> None:
    """Six whole lines, then a key cut off in the seventh."""
    path = directory / "model.json"
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:6]) + b'  "mod')


FILE_CASES = [
    ("npz-empty", _npz_case(lambda b: b""), ["model.npz", "not a readable .npz"]),
    ("npz-truncated", _npz_case(lambda b: b[: len(b) // 2]), ["model.npz", "not a readable"]),
    ("npz-half-header", _npz_case(lambda b: b[:20]), ["model.npz", "not a readable .npz"]),
    ("npz-is-npy", _npz_case(lambda b: npy_of(np.ones(5))), ["model.npz", "not a readable"]),
    ("npz-no-params", _npz_case(lambda b: npz_of(w=np.ones(4))), ["model.npz", "'params'"]),
    (
        "npz-params-short",
        _npz_case(lambda b: npz_of(params=np.ones(3))),
        ["model.npz", "'params'", "(3,)", "(5,)"],
    ),
    (
        "npz-params-nan",
        _npz_case(lambda b: npz_of(params=np.array([1.0, np.nan, 1, 1, 1]))),
        ["model.npz", "'params'", "finite"],
    ),
    (
        "npz-params-text",
        _npz_case(lambda b: npz_of(params=np.array(["1"] * 5))),
        ["model.npz", "'params'", "numbers"],
    ),
    ("json-truncated", _truncated_json, ["model.json", "not valid JSON", "line 7"]),
    ("json-empty", _json_text(b""), ["model.json", "not valid JSON"]),
    ("json-list", _json_text(b"[]"), ["model.json", "a JSON object", "list"]),
    ("json-not-utf8", _json_text(b'{"a": "\xff"}'), ["model.json", "UTF-8"]),
]


def refused(directory: Path) -> ArtifactError:
    with pytest.raises(ArtifactError) as info:
        TrainedModel.load(directory)
    return info.value


@pytest.mark.parametrize(
    ("change", "needles"),
    [pytest.param(change, needles, id=case) for case, change, needles in JSON_CASES],
)
def test_an_inconsistent_model_json_is_refused_by_key(tmp_path, change, needles):
    directory = save(tmp_path / "m", tiny_model())
    edit_json(directory, change)
    message = str(refused(directory))
    assert str(directory / "model.json") in message
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize(
    ("change", "needles"),
    [pytest.param(change, needles, id=case) for case, change, needles in CLASSIFIER_CASES],
)
def test_classes_must_match_the_model(tmp_path, change, needles):
    directory = save(tmp_path / "m", classifier())
    edit_json(directory, change)
    message = str(refused(directory))
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize(
    ("damage", "needles"),
    [pytest.param(damage, needles, id=case) for case, damage, needles in FILE_CASES],
)
def test_a_damaged_file_is_refused_by_name(tmp_path, damage, needles):
    directory = save(tmp_path / "m", tiny_model())
    damage(directory)
    message = str(refused(directory))
    assert str(directory) in message
    for needle in needles:
        assert needle in message


def test_an_mlp_needs_its_hidden_layers_and_activation(tmp_path):
    model = build_model("mlp", 4, 1, hidden=[3], activation="tanh")
    trained = tiny_model()
    trained.model, trained.params = model, np.zeros(model.n_params)
    trained.info = {"model": {"type": "mlp", "hidden": [3], "activation": "tanh"}}
    directory = save(tmp_path / "m", trained)
    assert TrainedModel.load(directory).model.describe() == model.describe()
    edit_json(directory, _delete("model", "hidden"))
    assert "'model.hidden' is missing" in str(refused(directory))
    edit_json(directory, lambda doc: doc["model"].update(hidden=[0]))
    assert "'model'" in str(refused(directory))


def test_from_documents_names_the_files_without_a_directory():
    npz_bytes, doc = tiny_model().to_documents()
    with pytest.raises(ArtifactError, match=r"^model\.json: key 'standardizer' is missing"):
        TrainedModel.from_documents(
            npz_bytes, {k: v for k, v in doc.items() if k != "standardizer"}
        )
    with pytest.raises(ArtifactError, match=r"^model\.json must hold a JSON object, got list"):
        TrainedModel.from_documents(npz_bytes, [])  # type: ignore[arg-type]
    with pytest.raises(ArtifactError, match=r"^s3://b/m/model\.json is not valid JSON"):
        TrainedModel.from_bytes(npz_bytes, b'{"format": 1', source="s3://b/m")


def test_a_valid_model_round_trips(tmp_path):
    for trained in (tiny_model(), classifier()):
        directory = save(tmp_path / type(trained.model).__name__, trained)
        loaded = TrainedModel.load(directory)
        np.testing.assert_array_equal(loaded.params, trained.params)
        assert loaded.feature_names == HOUSE_FEATURES and loaded.classes == trained.classes
        X = np.array([ROW, [800, 1, 40, 12.0]])
        assert loaded.predict(X) == trained.predict(X)


def test_a_model_saved_without_info_loads(tmp_path):
    # model.json's "model" comes from the model itself when no spec was recorded
    for kind, classes, extra in [
        ("linear", None, {}),
        ("softmax", ["a", "b", "c"], {}),
        ("mlp", ["a", "b"], {"hidden": [5, 3], "activation": "tanh"}),
    ]:
        model = build_model(kind, len(HOUSE_FEATURES), len(classes or [0]), **extra)
        params = np.random.default_rng(0).normal(size=model.n_params)
        d = len(HOUSE_FEATURES)
        trained = TrainedModel(
            model, params, Standardizer(np.zeros(d), np.ones(d)), HOUSE_FEATURES, classes
        )
        loaded = TrainedModel.load(save(tmp_path / kind, trained))
        assert loaded.model.describe() == model.describe()
        assert loaded.predict(np.array([ROW])) == trained.predict(np.array([ROW]))


# ---- predictions must be finite numbers -----------------------------------------------
def test_a_non_finite_regression_prediction_names_the_data_row():
    trained = exploding(tiny_model())
    X = np.array([ROW, HUGE, HUGE])
    for call in (trained.predict, trained.predict_indices, lambda X: trained.evaluate(X, X[:, 0])):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no RuntimeWarning on the way to the error
            with pytest.raises(NonFiniteError, match=r"^data row 2: the prediction is not a "):
                call(X)


def test_a_non_finite_class_probability_names_the_data_row():
    trained = exploding(classifier())
    X = np.array([ROW, ROW, HUGE])
    y = np.zeros(3, dtype=np.int64)
    calls = (trained.predict, trained.predict_proba, lambda X: trained.evaluate(X, y))
    for call in calls:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(NonFiniteError, match=r"^data row 3: the prediction") as info:
                call(X)
        assert info.value.row == 2 and isinstance(info.value, ArtifactError)


def test_non_finite_features_are_refused_by_row_and_name():
    X = np.array([ROW, ROW, [1.0, 2.0, np.nan, 4.0]])
    with pytest.raises(NonFiniteError, match=r"^data row 3, feature 'age': nan is not a finite"):
        tiny_model().predict(X)


def test_classes_are_the_argmax_of_the_probabilities():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)) * 50
    for trained in (classifier(), tiny_model("logistic", classes=[0, 1], seed=4)):
        proba = trained.predict_proba(X)
        indices = trained.model.predict(trained.params, trained.standardizer.transform(X))
        np.testing.assert_array_equal(trained.predict_indices(X), indices)
        np.testing.assert_array_equal(trained.predict_indices(X), proba.argmax(axis=1))


# ---- model.npz belongs to model.json ----------------------------------------------------
def test_model_json_records_the_digest_of_model_npz(tmp_path):
    npz_bytes, doc = tiny_model().to_documents()
    assert doc["npz_sha256"] == hashlib.sha256(npz_bytes).hexdigest()
    directory = save(tmp_path / "m", tiny_model())
    recorded = json.loads((directory / "model.json").read_text())["npz_sha256"]
    assert recorded == hashlib.sha256((directory / "model.npz").read_bytes()).hexdigest()


def test_a_model_npz_from_another_model_is_refused(tmp_path):
    first = save(tmp_path / "first", tiny_model(seed=1))
    second = save(tmp_path / "second", tiny_model(seed=2))
    (first / "model.npz").write_bytes((second / "model.npz").read_bytes())
    message = str(refused(first))
    assert message == f"{first}: {MISMATCH}"


@pytest.mark.parametrize("digest_before", [True, False], ids=["new-model", "older-model"])
def test_an_interrupted_save_leaves_a_pair_that_is_refused(tmp_path, monkeypatch, digest_before):
    # model.json goes first, so the pair left holds the new model.json and its digest, even
    # when the model overwritten was written before model.json had one
    directory = save(tmp_path / "m", tiny_model(seed=1))
    if not digest_before:
        edit_json(directory, older)
    replace = os.replace

    def crash_after_model_json(src: Any, dst: Any) -> None:
        if Path(dst).name != "model.json":
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(artifact.os, "replace", crash_after_model_json)
    with pytest.raises(KeyboardInterrupt):
        tiny_model(seed=2).save(directory)
    monkeypatch.undo()
    assert MISMATCH in str(refused(directory))


def test_a_model_without_a_digest_still_loads(tmp_path):
    directory = save(tmp_path / "m", tiny_model())
    edit_json(directory, older)
    assert TrainedModel.load(directory).predict(np.array([ROW])) == tiny_model().predict(
        np.array([ROW])
    )


def test_a_malformed_digest_is_refused(tmp_path):
    directory = save(tmp_path / "m", tiny_model())
    edit_json(directory, lambda doc: doc.update(npz_sha256=12))
    assert "'npz_sha256'" in str(refused(directory))


def test_saving_a_loaded_model_records_the_new_digest(tmp_path):
    loaded = TrainedModel.load(save(tmp_path / "a", tiny_model()))
    loaded.params = loaded.params + 1.0
    again = TrainedModel.load(save(tmp_path / "b", loaded))
    np.testing.assert_array_equal(again.params, loaded.params)


# ---- the CLI: a named error and exit 1, not a traceback -------------------------------
@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_npz_case(lambda b: b""), "model.npz is not a readable .npz"),
        (_npz_case(lambda b: b[: len(b) // 2]), "model.npz is not a readable .npz"),
        (_json_text(b"[]"), "model.json must hold a JSON object"),
        (_truncated_json, "model.json is not valid JSON"),
        (lambda d: edit_json(d, _set("standardizer", "scale", [NAN, 1, 1, 1])), "finite"),
    ],
)
def test_the_cli_names_a_damaged_model(tmp_path, capsys, damage, needle):
    directory = save(tmp_path / "m", tiny_model())
    damage(directory)
    data = tmp_path / "data.csv"
    data.write_text("sqft,bedrooms,age,distance_km\n1200,3,12.5,4.2\n")
    assert main(["predict", str(directory), str(data)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err


def test_the_cli_refuses_a_non_finite_prediction(tmp_path, capsys):
    directory = save(tmp_path / "m", exploding(classifier()))
    data = tmp_path / "data.csv"
    data.write_text("sqft,bedrooms,age,distance_km,y\n1,2,3,4,cat\n1e308,1e308,1e308,1e308,dog\n")
    assert main(["predict", str(directory), str(data)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "error: data.csv: data row 2: the prediction is not a finite" in err
    assert main(["evaluate", str(directory), str(data), "--label", "y"]) == 1
    assert "error: data.csv: data row 2: the prediction is not a finite" in capsys.readouterr().err


def test_an_integer_too_large_for_a_float_is_named(tmp_path):
    directory = save(tmp_path / "m", tiny_model())

    def huge_mean(doc: dict) -> None:
        doc["standardizer"]["mean"][0] = 10**400

    edit_json(directory, huge_mean)
    assert "'standardizer.mean' holds a value that is not a finite number" in str(
        refused(directory)
    )
