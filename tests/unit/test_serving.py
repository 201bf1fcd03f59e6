"""Serving over an in-memory S3: request parsing, predictions, and the model cache."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import numpy as np
import pytest
from lambdagrad.data import Standardizer
from lambdagrad.registry import promote
from lambdagrad.serving import ModelCache, PredictError, parse_request, predict
from lambdagrad.store import JobKeys, MemoryS3, Store

from tests.unit.test_registry import BUCKET, tiny_model, write_model

ROW = [1200.0, 3.0, 12.5, 4.2]
OBJ = {"sqft": 1200, "bedrooms": 3, "age": 12.5, "distance_km": 4.2}


class CountingS3(MemoryS3):
    """MemoryS3 that counts get_object calls per key."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    def get_object(self, Bucket: str, Key: str, **kw: Any) -> dict:
        self.reads[Key] += 1
        return super().get_object(Bucket=Bucket, Key=Key, **kw)


@pytest.fixture
def s3() -> CountingS3:
    return CountingS3()


@pytest.fixture
def store(s3) -> Store:
    store = Store(s3, BUCKET)
    write_model(store, "job-1")
    promote(store, "houses", "job-1")
    return store


def body(*instances: Any, model: str = "houses") -> dict:
    return {"model": model, "instances": list(instances)}


def test_regression_round_trip(store):
    trained = tiny_model(job_id="job-1")
    rows = [ROW, [800, 1, 40, 12.0], [3000, 5, 2, 0.5]]
    out = predict(store, ModelCache(), body(*rows), max_rows=10)
    assert set(out) == {"predictions", "model"}
    assert out["predictions"] == pytest.approx(trained.predict(np.array(rows)), rel=1e-12)
    assert all(isinstance(v, float) for v in out["predictions"])
    assert out["model"] == {
        "name": "houses",
        "job_id": "job-1",
        "trained_at": 1795726401.0,
        "version": store.get_json("models/houses/current.json")["version"],
    }
    json.dumps(out, allow_nan=False)  # the response is plain JSON


def test_object_instances_equal_list_instances(store):
    cache = ModelCache()
    by_list = predict(store, cache, body(ROW), 10)["predictions"]
    shuffled = dict(reversed(list(OBJ.items())))  # key order does not matter
    by_object = predict(store, cache, body(shuffled), 10)["predictions"]
    mixed = predict(store, cache, body(OBJ, ROW), 10)["predictions"]
    assert by_list == by_object == mixed[:1] == mixed[1:]


def test_parse_request_returns_float_rows():
    trained = tiny_model()
    X = parse_request(body(ROW, OBJ, [1, 2, 3, 4]), trained, max_rows=3)
    assert X.dtype == np.float64 and X.shape == (3, 4)
    np.testing.assert_array_equal(X, [ROW, ROW, [1.0, 2.0, 3.0, 4.0]])


def test_classifier_returns_labels_classes_and_probabilities(s3):
    store = Store(s3, BUCKET)
    trained = write_model(
        store,
        "iris-1",
        tiny_model("softmax", classes=["setosa", "versicolor", "virginica"], seed=3),
    )
    promote(store, "iris", "iris-1")
    rows = [ROW, [0, 0, 0, 0], [-500, 2, 90, 30]]
    out = predict(store, ModelCache(), body(*rows, model="iris"), 10)
    assert out["classes"] == ["setosa", "versicolor", "virginica"]
    assert out["predictions"] == trained.predict(np.array(rows))
    proba = np.array(out["probabilities"])
    assert proba.shape == (3, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert [out["classes"][i] for i in proba.argmax(axis=1)] == out["predictions"]


def test_binary_classifier_with_numeric_labels_and_without_labels(s3):
    store = Store(s3, BUCKET)
    write_model(store, "bin-1", tiny_model("logistic", classes=[0, 1], seed=4))
    unlabeled = tiny_model("softmax", classes=[0, 1, 2], seed=5)
    unlabeled.classes = None
    write_model(store, "bin-2", unlabeled)
    promote(store, "labeled", "bin-1")
    promote(store, "unlabeled", "bin-2")
    out = predict(store, ModelCache(), body(ROW, ROW, model="labeled"), 10)
    assert out["classes"] == [0, 1] and out["predictions"][0] in (0, 1)
    assert len(out["probabilities"][0]) == 2
    out = predict(store, ModelCache(), body(ROW, model="unlabeled"), 10)
    assert out["classes"] == [0, 1, 2] and out["predictions"][0] in (0, 1, 2)


FOUR = "expected 4 features (sqft, bedrooms, age, distance_km)"


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"instances": [ROW]}, 'missing "model" field'),
        (None, "the request body must be a JSON object"),
        ([ROW], "the request body must be a JSON object"),
        ("houses", "the request body must be a JSON object"),
        ({"model": 7, "instances": [ROW]}, '"model": invalid model name 7'),
        ({"model": "../x", "instances": [ROW]}, '"model": invalid model name'),
        ({"model": "houses"}, 'missing "instances" field: a list of rows of 4 features'),
        ({"model": "houses", "instances": ROW[0]}, '"instances" must be a list of rows, got float'),
        (
            {"model": "houses", "instances": "1,2,3,4"},
            '"instances" must be a list of rows, got str',
        ),
        ({"model": "houses", "instances": {"sqft": 1}}, '"instances" must be a list of rows'),
        ({"model": "houses", "instances": None}, '"instances" must be a list of rows, got null'),
        (body(), '"instances" is empty'),
        (body(ROW, ROW, ROW, ROW), '"instances" has 4 rows: at most 3 rows per request'),
        (body(ROW, ROW[:3]), f"instances[1]: {FOUR}, got 3"),
        (body([*ROW, 1.0]), f"instances[0]: {FOUR}, got 5"),
        (body([]), f"instances[0]: {FOUR}, got 0"),
        (body(ROW, ROW, [*ROW[:2], "abc", 1]), "instances[2][2]: 'abc' is not a number"),
        (body([1200, "3", 1, 1]), "instances[0][1]: '3' is not a number (send JSON numbers)"),
        (body([1200, True, 1, 1]), "instances[0][1]: true is not a number (booleans"),
        (body([1200, 3, None, 1]), "instances[0][2]: null is not a number"),
        (body([1200, 3, [1], 1]), "instances[0][2]: [1] is not a number"),
        (body([1200, 3, {"a": 1}, 1]), "instances[0][2]: {'a': 1} is not a number"),
        (body([1200, 3, 1, float("nan")]), "instances[0][3]: nan is not a finite number"),
        (body([float("inf"), 3, 1, 1]), "instances[0][0]: inf is not a finite number"),
        (body([-float("inf"), 3, 1, 1]), "instances[0][0]: -inf is not a finite number"),
        (body([10**400, 3, 1, 1]), "instances[0][0]: 1000000000000000000000000000000000000... is"),
        (body(1200), "instances[0]: expected a list of 4 numbers or an object keyed by feature"),
        (body(ROW, "1,2,3,4"), "instances[1]: expected a list of 4 numbers or an object"),
        (body({k: v for k, v in OBJ.items() if k != "age"}), "instances[0]: missing features: age"),
        (body({}), "instances[0]: missing features: sqft, bedrooms, age, distance_km"),
        (
            body(OBJ, {**OBJ, "pool": 1, "garage": 2}),
            "instances[1]: unknown features: garage, pool (expected sqft, bedrooms, age",
        ),
        (body({**OBJ, "age": "old"}), "instances[0].age: 'old' is not a number"),
        (body({**OBJ, "sqft": False}), "instances[0].sqft: false is not a number"),
        (body({**OBJ, "sqft": float("nan")}), "instances[0].sqft: nan is not a finite number"),
    ],
)
def test_bad_requests_are_400_with_a_message(store, request_body, message):
    with pytest.raises(PredictError) as info:
        predict(store, ModelCache(), request_body, max_rows=3)
    assert info.value.status == 400
    assert message in str(info.value)


def test_json_parsed_nan_and_overflow_are_refused(store):
    # json.loads accepts NaN/Infinity literals, and 1e400 parses to inf.
    for text in ("[1, 2, NaN, 4]", "[1, 2, Infinity, 4]", "[1, 2, 1e400, 4]"):
        doc = json.loads(f'{{"model": "houses", "instances": [{text}]}}')
        with pytest.raises(PredictError, match=r"instances\[0\]\[2\]: .* is not a finite number"):
            predict(store, ModelCache(), doc, 10)


def test_a_non_finite_prediction_is_refused(s3):
    store = Store(s3, BUCKET)
    trained = tiny_model()
    trained.params = np.ones_like(trained.params)
    trained.standardizer = Standardizer.identity(4)
    write_model(store, "job-9", trained)
    promote(store, "big", "job-9")
    with pytest.raises(PredictError, match=r"instances\[1\]: the prediction is not a finite"):
        predict(store, ModelCache(), body(ROW, [1e308] * 4, model="big"), 10)


def test_unknown_model_is_404(store):
    with pytest.raises(PredictError, match="no model named 'nope'") as info:
        predict(store, ModelCache(), body(ROW, model="nope"), 10)
    assert info.value.status == 404


def test_an_unloadable_model_is_500(store, s3):
    del s3.objects[(BUCKET, JobKeys("job-1").model_npz)]
    with pytest.raises(PredictError, match="model 'houses' \\(job 'job-1'\\) could not") as info:
        predict(store, ModelCache(), body(ROW), 10)
    assert info.value.status == 500


def test_the_cache_reuses_the_model_and_rereads_only_the_pointer(store, s3):
    cache = ModelCache()
    keys = JobKeys("job-1")
    s3.reads.clear()
    first = predict(store, cache, body(ROW), 10)
    for _ in range(4):
        assert predict(store, cache, body(ROW), 10) == first
    assert s3.reads == {"models/houses/current.json": 5, keys.model_npz: 1, keys.model_json: 1}
    assert cache.loads == 1


def test_the_cache_reloads_after_promote(store, s3):
    cache = ModelCache()
    before = predict(store, cache, body(ROW), 10)
    write_model(store, "job-2", tiny_model(seed=7))
    promote(store, "houses", "job-2")
    s3.reads.clear()
    after = predict(store, cache, body(ROW), 10)
    assert after["model"]["job_id"] == "job-2"
    assert after["model"]["version"] != before["model"]["version"]
    assert after["predictions"] != before["predictions"]
    assert s3.reads[JobKeys("job-2").model_npz] == 1 and cache.loads == 2
    predict(store, cache, body(ROW), 10)
    assert cache.loads == 2
    promote(store, "houses", "job-1")  # back to the first job: a new version again
    assert predict(store, cache, body(ROW), 10)["predictions"] == before["predictions"]
    assert cache.loads == 3


def test_an_unregistered_name_is_forgotten(store, s3):
    cache = ModelCache()
    predict(store, cache, body(ROW), 10)
    del s3.objects[(BUCKET, "models/houses/current.json")]
    with pytest.raises(PredictError) as info:
        predict(store, cache, body(ROW), 10)
    assert info.value.status == 404


def test_the_cache_keeps_buckets_apart_and_is_bounded(s3):
    cache = ModelCache(max_models=2)
    stores = [Store(s3, f"bucket-{i}") for i in range(3)]
    for i, st in enumerate(stores):
        write_model(st, "job-1", tiny_model(seed=i))
        promote(st, "houses", "job-1")
    results = [predict(st, cache, body(ROW), 10)["predictions"] for st in stores]
    assert len({r[0] for r in results}) == 3 and cache.loads == 3
    predict(stores[2], cache, body(ROW), 10)
    assert cache.loads == 3
    predict(stores[0], cache, body(ROW), 10)  # dropped as least recently used
    assert cache.loads == 4


def test_the_cache_is_thread_safe(store):
    cache = ModelCache()
    results, errors = [], []
    barrier = threading.Barrier(16)

    def call() -> None:
        try:
            barrier.wait()
            results.append(predict(store, cache, body(ROW), 10)["predictions"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert cache.loads == 1 and len(results) == 16 and all(r == results[0] for r in results)


def test_a_non_finite_class_probability_is_refused(s3):
    store = Store(s3, BUCKET)
    trained = tiny_model("softmax", classes=["a", "b", "c"])
    trained.params = np.ones_like(trained.params)
    trained.standardizer = Standardizer.identity(4)
    write_model(store, "job-9", trained)
    promote(store, "big", "job-9")
    with pytest.raises(PredictError, match=r"^instances\[2\]: the prediction is not a finite"):
        predict(store, ModelCache(), body(ROW, ROW, [1e308] * 4, model="big"), 10)


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("key", "damage", "reason"),
    [
        ("model_npz", _half, "model.npz does not match model.json"),
        ("model_npz", lambda data: b"", "model.npz does not match model.json"),
        ("model_json", _half, "model/model.json is not valid JSON"),
        ("model_json", lambda data: b"[]", "model/model.json must hold a JSON object"),
        (
            "model_json",
            lambda data: data.replace(b'"n_features": 4', b'"n_features": "four"'),
            "'model.n_features' must be a positive integer, got 'four'",
        ),
    ],
)
def test_a_damaged_model_is_a_500_that_logs_why(store, s3, caplog, key, damage, reason):
    object_key = getattr(JobKeys("job-1"), key)
    store.put_bytes(object_key, damage(store.get_bytes(object_key)))
    with pytest.raises(PredictError, match="model 'houses' \\(job 'job-1'\\) could not") as info:
        predict(store, ModelCache(), body(ROW), 10)
    assert info.value.status == 500
    assert reason in str(info.value.__cause__)
    assert f"s3://{BUCKET}/jobs/job-1/model" in str(info.value.__cause__)
    assert reason in caplog.text


def test_a_model_npz_of_another_job_is_a_500(store):
    write_model(store, "job-2", tiny_model(seed=5))
    keys, other = JobKeys("job-1"), JobKeys("job-2")
    store.put_bytes(keys.model_npz, store.get_bytes(other.model_npz))
    with pytest.raises(PredictError) as info:
        predict(store, ModelCache(), body(ROW), 10)
    assert info.value.status == 500
    assert "model.npz does not match model.json" in str(info.value.__cause__)


def test_a_damaged_model_npz_without_a_digest_is_a_500(store):
    keys = JobKeys("job-1")
    doc = store.get_json(keys.model_json)
    doc.pop("npz_sha256", None)  # as written before the digest was recorded
    store.put_json(keys.model_json, doc)
    store.put_bytes(keys.model_npz, _half(store.get_bytes(keys.model_npz)))
    with pytest.raises(PredictError) as info:
        predict(store, ModelCache(), body(ROW), 10)
    assert info.value.status == 500
    assert "model/model.npz is not a readable .npz" in str(info.value.__cause__)
