"""The bad-input catalogue, core half: every row is one way a user can get the input
wrong, the module that owns that input refuses it, and the message names the place
(file / line / column, spec field, S3 key, request position). docs/bad-input.md lists the
same rows; tests/integration/test_bad_input_engine.py covers the CLI exit codes and the
named execution errors.

Each row: ``(id, call, error type, needles)``; the call must raise exactly that error type
(or a subclass) and every needle must appear in its message.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lambdagrad import steps
from lambdagrad.data import DataError, load_dataset
from lambdagrad.registry import RegistryError, validate_name
from lambdagrad.serving import ModelCache, PredictError, parse_request, predict
from lambdagrad.spec import MAX_SPEC_BYTES, SpecError, parse_spec
from lambdagrad.store import JobKeys, MemoryS3, Store, StoreError, parse_s3_uri
from lambdagrad.tabular import read_features, read_labelled
from lambdagrad.training import infer_task
from lambdagrad.uploads import unsafe_upload_key

from tests.unit.test_registry import BUCKET, tiny_model

EVENTS = Path(__file__).resolve().parents[2] / "events"
HOUSES = (EVENTS / "data" / "houses.csv").read_bytes()
URI = f"s3://{BUCKET}/datasets/data.csv"


# ---- helpers ---------------------------------------------------------------------------
def csv(text: str | bytes, label: str | None = "y", task: str = "regression", **kw: Any):
    data = text.encode() if isinstance(text, str) else text
    return load_dataset(data, source="data.csv", fmt=None, label=label, task=task, **kw)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def npy(array: np.ndarray, label: str | None = None, task: str = "regression"):
    return load_dataset(npy_bytes(array), source="data.npy", fmt=None, label=label, task=task)


def npz(task: str = "regression", **arrays: np.ndarray):
    return load_dataset(npz_bytes(**arrays), source="data.npz", fmt=None, label=None, task=task)


class Tripwire:
    """Unpickling this creates ``path``: proof that a loader ran pickle on the data."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def object_npy(tmp: Path) -> bytes:
    """A real .npy of dtype object (a pickle inside), whose unpickling trips a wire."""
    array = np.empty((2, 2), dtype=object)
    array[:] = [[Tripwire(tmp / "unpickled"), 1.0], [2.0, 3.0]]
    return npy_bytes(array)


def spec(**groups: Any) -> dict:
    """A valid spec with groups merged in."""
    doc: dict[str, Any] = {"job_id": "j", "dataset": {"uri": URI, "label": "price"}}
    for group, fields in groups.items():
        doc[group] = {**doc.get(group, {}), **fields} if isinstance(fields, dict) else fields
    return doc


def memory_store(data: bytes = HOUSES, key: str = "datasets/data.csv") -> Store:
    store = Store(MemoryS3(), BUCKET)
    store.put_bytes(key, data)
    return store


def prepare(store: Store, doc: dict | None = None, event: dict | None = None) -> dict:
    return steps.prepare(store, {"input": event or {"job_id": "j", "spec": doc}, "execution": "e"})


def upload_event(key: str, etag: str = "abc") -> dict:
    return {
        "detail-type": "Object Created",
        "source": "aws.s3",
        "detail": {"bucket": {"name": BUCKET}, "object": {"key": key, "etag": etag}},
    }


def uploaded(store: Store, key: str) -> dict:
    """The event of the upload that put ``key``'s bytes there (its ETag is theirs)."""
    return upload_event(key, store.size_and_etag(key)[1])


def request(*instances: Any, model: str = "houses") -> dict:
    return {"model": model, "instances": list(instances)}


TRAINED = tiny_model()  # features sqft, bedrooms, age, distance_km
ROW = [1200.0, 3.0, 12.5, 4.2]
# as trained on a CSV whose label column was named: its position in other files is unknown
TRAINED_ON_CSV = replace(TRAINED, info={**TRAINED.info, "spec": {"dataset": {"label": "price"}}})


def parse(body: dict, max_rows: int = 10) -> np.ndarray:
    return parse_request(body, TRAINED, max_rows)


# ---- the catalogue ---------------------------------------------------------------------
Row = tuple[str, Callable[[], Any], type[Exception], list[str]]

# fmt: off

DATASET: list[Row] = [
    ("csv-that-is-json", lambda: csv('[\n  {"a": 1, "y": 2}\n]\n'), DataError,
     ["data.csv looks like JSON, not CSV (it starts with '[')"]),
    ("csv-that-is-a-json-object", lambda: csv('{"a": [1, 2], "y": [3, 4]}'), DataError,
     ["data.csv looks like JSON, not CSV (it starts with '{')"]),
    ("csv-ragged-short", lambda: csv("a,b,y\n1,2,3\n4,5\n"), DataError,
     ["data.csv line 3", "expected 3 fields", "got 2"]),
    ("csv-ragged-long", lambda: csv("a,y\n1,2\n3,4,5\n"), DataError,
     ["data.csv line 3", "expected 2 fields", "got 3"]),
    ("csv-quoted-comma-in-number", lambda: csv('a,b,y\n1,"2,5",3\n'), DataError,
     ["data.csv line 2, column 'b'", "'2,5' is not a number"]),
    ("csv-unterminated-quote", lambda: csv('a,y\n1,2\n3,"4\n'), DataError,
     ["data.csv line 3", "unexpected end of data"]),
    ("csv-text-after-quote", lambda: csv('a,y\n1,"2"x\n'), DataError,
     ["data.csv line 2", "',' expected after '\"'"]),
    ("csv-empty-file", lambda: csv(""), DataError, ["data.csv is empty"]),
    ("csv-blank-lines-only", lambda: csv("\n\r\n  \n"), DataError, ["data.csv is empty"]),
    ("csv-header-only", lambda: csv("a,b,y\n"), DataError,
     ["data.csv has a header but no data rows"]),
    ("csv-header-only-bom-crlf", lambda: csv(b"\xef\xbb\xbfa,y\r\n\r\n"), DataError,
     ["data.csv has a header but no data rows"]),
    ("csv-not-utf8", lambda: csv(b"a,y\n1,2\n3,\xff\n"), DataError,
     ["data.csv line 3", "not valid UTF-8"]),
    ("csv-unnamed-column", lambda: csv("a,,y\n1,2,3\n"), DataError,
     ["data.csv line 1", "column 2 of the header has no name"]),
    ("csv-duplicate-columns", lambda: csv("a,a,y\n1,2,3\n"), DataError,
     ["data.csv line 1", "duplicate column names 'a'"]),
    ("csv-non-numeric", lambda: csv("a,b,y\n1,2,3\n4,abc,6\n"), DataError,
     ["data.csv line 3, column 'b'", "'abc' is not a number"]),
    ("csv-nan", lambda: csv("a,y\n1,2\nnan,4\n"), DataError,
     ["data.csv line 3, column 'a'", "'nan' is not a finite number"]),
    ("csv-infinite-label", lambda: csv("a,y\n1,2\n3,-inf\n"), DataError,
     ["data.csv line 3, column 'y'", "'-inf' is not a finite number"]),
    ("csv-overflow-to-inf", lambda: csv("a,y\n1,2\n1e999,4\n"), DataError,
     ["data.csv line 3, column 'a'", "not a finite number"]),
    ("csv-empty-cell", lambda: csv("a,b,y\n1,,3\n"), DataError,
     ["data.csv line 2, column 'b'", "empty cell"]),
    ("csv-empty-label", lambda: csv("a,y\n1,2\n3,\n"), DataError,
     ["data.csv line 3, column 'y'", "empty cell"]),
    ("csv-error-line-counts-blank-lines", lambda: csv("a,y\r\n1,2\r\n\r\n\r\n3,x\r\n"),
     DataError, ["data.csv line 5, column 'y'", "'x' is not a number"]),
    ("label-column-missing", lambda: csv("a,b\n1,2\n", label="price"), DataError,
     ["data.csv", "no label column 'price'", "columns are 'a', 'b'"]),
    ("label-one-class", lambda: csv("a,y\n1,cat\n2,cat\n", task="classification"), DataError,
     ["data.csv", "label column 'y' has only one class: 'cat'"]),
    ("label-fractional-classes-npz",
     lambda: npz("classification", X=np.ones((2, 1)), y=np.array([0.5, 1.0])), DataError,
     ["data.npz", "class labels in 'y' must be integers or strings"]),
    ("only-the-label-column", lambda: csv("y\n1\n2\n"), DataError,
     ["data.csv", "no feature columns"]),
    ("too-many-features", lambda: csv("a,b,c,y\n1,2,3,4\n", max_features=2), DataError,
     ["data.csv", "3 feature columns", "limit is 2", "dataset.max_features"]),
    ("too-many-features-npy", lambda: load_dataset(
        npy_bytes(np.ones((2, 6))), source="data.npy", fmt=None, label=None,
        task="regression", max_features=3), DataError,
     ["data.npy", "5 feature columns", "limit is 3"]),
    ("unknown-extension", lambda: load_dataset(
        b"a,y\n1,2\n", source="data.txt", fmt=None, label="y", task="regression"), DataError,
     ["'data.txt'", "name it .csv, .npy or .npz, or give the format (--format, or "
      "dataset.format in a spec: csv, npy, npz)"]),
    ("npy-bad-magic", lambda: load_dataset(
        b"a,y\n1,2\n", source="data.npy", fmt=None, label=None, task="regression"), DataError,
     ["data.npy is not a .npy file"]),
    ("npy-truncated", lambda: load_dataset(
        npy_bytes(np.ones((4, 3)))[:-10], source="data.npy", fmt=None, label=None,
        task="regression"), DataError, ["data.npy is not a valid .npy file"]),
    ("npy-1d", lambda: npy(np.ones(5)), DataError,
     ["data.npy", "expected one 2-D array, got shape (5,)"]),
    ("npy-strings", lambda: npy(np.array([["a", "b"], ["c", "d"]])), DataError,
     ["data.npy", "expected a numeric array"]),
    ("npy-nan", lambda: npy(np.array([[1.0, 2.0], [np.nan, 3.0]])), DataError,
     ["data.npy", "row 1, column 'x0'", "not finite"]),
    ("npy-label-index-not-int", lambda: npy(np.ones((2, 3)), label="price"), DataError,
     ["data.npy", "label is a column index, got 'price'"]),
    ("npy-label-index-out-of-range", lambda: npy(np.ones((2, 3)), label="7"), DataError,
     ["data.npy", "label column 7 is out of range for 3 columns"]),
    ("npz-wrong-array-names", lambda: npz(features=np.ones((2, 2)), target=np.ones(2)),
     DataError, ["data.npz", "expected arrays named 'X' and 'y'", "'features', 'target'"]),
    ("npz-X-not-2d", lambda: npz(X=np.ones((2, 2, 2)), y=np.ones(2)), DataError,
     ["data.npz", "X must be 2-D, got shape (2, 2, 2)"]),
    ("npz-y-not-1d", lambda: npz(X=np.ones((2, 2)), y=np.ones((2, 2))), DataError,
     ["data.npz", "y must be 1-D, got shape (2, 2)"]),
    ("npz-row-mismatch", lambda: npz(X=np.ones((3, 2)), y=np.ones(2)), DataError,
     ["data.npz", "X has 3 rows but y has 2"]),
    ("npz-object-y", lambda: npz(X=np.ones((2, 2)), y=np.array(["a", None], dtype=object)),
     DataError, ["data.npz array 'y'", "holds Python objects; refusing to unpickle"]),
    ("npz-features-missing-X", lambda: npz("features", x=np.ones((2, 2))), DataError,
     ["data.npz", "expected an array named 'X'"]),
    ("label-beyond-int64-npy",
     lambda: npy(np.array([[1, 2**63 + 5], [2, 1]], dtype=np.uint64), task="classification"),
     DataError, ["data.npy: class label 9223372036854775813", "does not fit a 64-bit integer"]),
    ("label-beyond-2-53-npy",
     lambda: npy(np.array([[1.0, 1e20], [2.0, -1e20]]), task="classification"), DataError,
     ["data.npy: class label 1e+20", "beyond 2**53"]),
    ("auto-task-bad-cell-in-numeric-label",
     lambda: infer_task(b"a,y\n1,0.25\n2,NA\n3,0.5\n", source="data.csv", fmt=None, label="y"),
     DataError, ["data.csv line 3, column 'y': 'NA' is not a number"]),
]

SPEC: list[Row] = [
    ("spec-unknown-field", lambda: parse_spec(spec(dataset={"colour": "red"})), SpecError,
     ["dataset.colour: unknown field"]),
    ("spec-unknown-top-level-field", lambda: parse_spec(spec(epochs=3)), SpecError,
     ["epochs: unknown field"]),
    ("spec-negative-learning-rate",
     lambda: parse_spec(spec(optimizer={"learning_rate": -0.1})), SpecError,
     ["optimizer.learning_rate", "greater than 0"]),
    ("spec-nan-learning-rate",  # JSON's NaN, or --lr nan: not "less than or equal to 1000"
     lambda: parse_spec(spec(optimizer={"learning_rate": float("nan")})), SpecError,
     ["optimizer.learning_rate: Input should be a finite number"]),
    ("spec-zero-workers", lambda: parse_spec(spec(training={"workers": 0})), SpecError,
     ["training.workers", "greater than or equal to 1"]),
    ("spec-too-many-workers", lambda: parse_spec(spec(training={"workers": 1001})), SpecError,
     ["training.workers", "less than or equal to 1000"]),
    ("spec-zero-batch", lambda: parse_spec(spec(training={"batch_size": 0})), SpecError,
     ["training.batch_size: Input should be greater than or equal to 1 or Input should be"]),
    ("spec-validation-fraction", lambda: parse_spec(spec(dataset={"validation": 1.0})),
     SpecError, ["dataset.validation"]),
    ("spec-zero-max-features", lambda: parse_spec(spec(dataset={"max_features": 0})),
     SpecError, ["dataset.max_features"]),
    ("spec-epochs-and-rounds",
     lambda: parse_spec(spec(training={"epochs": 2, "rounds": 3})), SpecError,
     ["training", "give epochs or rounds, not both"]),
    ("spec-not-an-object", lambda: parse_spec("[1, 2]"), SpecError, ["spec: Input should be"]),
    ("spec-invalid-json", lambda: parse_spec('{"dataset": '), SpecError,
     ["Invalid JSON", "line 1 column 12"]),
    ("spec-oversized-text",
     lambda: parse_spec(json.dumps(spec(dataset={"label": "x" * MAX_SPEC_BYTES}))), SpecError,
     ["spec is", f"the limit is {MAX_SPEC_BYTES} (64 KiB)"]),
    ("spec-oversized-object",
     lambda: parse_spec(spec(model={"type": "mlp", "hidden": [1] * 40_000})), SpecError,
     ["spec is", f"the limit is {MAX_SPEC_BYTES}"]),
    ("spec-boolean-for-number", lambda: parse_spec(spec(training={"batch_size": True})),
     SpecError, ["training.batch_size: expected a number, got true"]),
    ("spec-momentum-for-sgd", lambda: parse_spec(spec(optimizer={"momentum": 0.5})),
     SpecError, ["optimizer: momentum 0.5 is read by the momentum / nesterov optimizer only, "
                 "not sgd (it would be ignored)"]),
    ("spec-eps-for-adagrad",
     lambda: parse_spec(spec(optimizer={"name": "adagrad", "eps": 1e-3})), SpecError,
     ["optimizer: eps 0.001 is read by the adam / adamw / rmsprop optimizer only"]),
    ("spec-final-lr-without-cosine",
     lambda: parse_spec(spec(optimizer={"schedule": "step", "final_lr": 0.1})), SpecError,
     ["optimizer: final_lr 0.1 is read by the cosine schedule only, not step"]),
    ("spec-decay-rate-for-constant", lambda: parse_spec(spec(optimizer={"decay_rate": 0.9})),
     SpecError, ["decay_rate 0.9 is read by the step / exponential / inverse_time schedule"]),
    ("spec-activation-for-linear", lambda: parse_spec(spec(model={"activation": "tanh"})),
     SpecError, ["model: an activation is for model type mlp, not linear"]),
]

KEYS: list[Row] = [
    ("uri-dotdot-key", lambda: parse_spec(spec(dataset={"uri": f"s3://{BUCKET}/a/../../x.csv"})),
     SpecError, ["dataset.uri", "must be relative and contain no '..'"]),
    ("uri-absolute-key", lambda: parse_spec(spec(dataset={"uri": f"s3://{BUCKET}//etc/x.csv"})),
     SpecError, ["dataset.uri", "'/etc/x.csv' must be relative"]),
    ("uri-not-s3", lambda: parse_spec(spec(dataset={"uri": "/home/me/data.csv"})), SpecError,
     ["dataset.uri", "must look like s3://bucket/key"]),
    ("uri-bad-bucket", lambda: parse_spec(spec(dataset={"uri": "s3://b/houses.csv"})),
     SpecError, ["dataset.uri: 'b' in 's3://b/houses.csv' is not an S3 bucket name"]),
    ("store-uri-dotdot", lambda: parse_s3_uri(f"s3://{BUCKET}/../secrets.csv"), StoreError,
     ["unsafe S3 key '../secrets.csv'"]),
    ("job-id-dotdot-spec", lambda: parse_spec(spec(job_id="../other-job")), SpecError,
     ["job_id: '../other-job' does not match"]),
    ("job-id-dotdot-keys", lambda: JobKeys("../other-job"), StoreError,
     ["invalid job id '../other-job'"]),
    ("job-id-slash-keys", lambda: JobKeys("a/b"), StoreError, ["invalid job id 'a/b'"]),
    ("model-name-dotdot-spec", lambda: parse_spec(spec(output={"model_name": "../m"})),
     SpecError, ["output.model_name: '../m' does not match"]),
    ("model-name-slash-registry", lambda: validate_name("teams/../houses"), RegistryError,
     ["invalid model name 'teams/../houses'"]),
    ("upload-key-dotdot", lambda: prepare(memory_store(), event=upload_event(
        "jobs/incoming/../../datasets/data.json")), SpecError,
     ["'jobs/incoming/../../datasets/data.json'", "no '..' segments"]),
    ("upload-key-outside-incoming", lambda: prepare(memory_store(), event=upload_event(
        "datasets/job.json")), SpecError,
     ["'datasets/job.json'", "must be under jobs/incoming/"]),
]


def _oversized_upload() -> None:
    store = memory_store()
    key = "jobs/incoming/huge.json"
    store.put_bytes(key, json.dumps(spec(dataset={"label": "y" * MAX_SPEC_BYTES})).encode())
    prepare(store, event=uploaded(store, key))


def _invalid_upload() -> None:
    store = memory_store()
    key = "jobs/incoming/typo.json"
    store.put_bytes(key, json.dumps(spec(training={"wokers": 2})).encode())
    prepare(store, event=uploaded(store, key))


def _replaced_upload(again: bytes | None = None) -> None:
    store = memory_store()
    key = "jobs/incoming/houses.json"
    store.put_bytes(key, json.dumps(spec(training={"workers": 2})).encode())
    first = uploaded(store, key)  # uploaded again, corrected, before its job read it
    store.put_bytes(key, again or json.dumps(spec(training={"workers": 3})).encode())
    prepare(store, event=first)


PREPARE: list[Row] = [
    ("prepare-batch-larger-than-data",
     lambda: prepare(memory_store(), spec(training={"batch_size": 5000})), SpecError,
     ["training.batch_size: 5000 is larger than the 1800 training rows"]),
    ("prepare-more-workers-than-rows",
     lambda: prepare(memory_store(b"a,price\n1,2\n3,4\n5,6\n"),
                     spec(training={"workers": 4, "batch_size": "full"})), SpecError,
     ["training.workers: 4 workers for 2 training rows"]),
    ("prepare-features-over-spec-limit",
     lambda: prepare(memory_store(), spec(dataset={"max_features": 3})), DataError,
     ["data.csv: 4 feature columns", "limit is 3", "dataset.max_features"]),
    ("prepare-dataset-missing", lambda: prepare(
        memory_store(), spec(dataset={"uri": f"s3://{BUCKET}/datasets/nope.csv"})), StoreError,
     [f"dataset.uri: s3://{BUCKET}/datasets/nope.csv"]),
    ("upload-oversized-spec", _oversized_upload, SpecError,
     ["jobs/incoming/huge.json", "a job spec is at most 65536"]),
    ("upload-invalid-spec", _invalid_upload, SpecError,
     ["jobs/incoming/typo.json", "training.wokers: unknown field"]),
    ("upload-replaced-before-read", _replaced_upload, SpecError,
     ["jobs/incoming/houses.json: replaced since the upload that started this job",
      "the newer upload starts a job of its own"]),
    ("upload-replaced-by-an-oversized-file", lambda: _replaced_upload(b" " * (MAX_SPEC_BYTES + 1)),
     SpecError, ["jobs/incoming/houses.json: replaced since the upload that started this job"]),
    ("prepare-dataset-other-bucket", lambda: prepare(
        memory_store(), spec(dataset={"uri": "s3://someone-elses-bucket/datasets/data.csv"})),
     SpecError, ["dataset.uri: s3://someone-elses-bucket/datasets/data.csv is not in this "
                 f"stack's bucket {BUCKET}"]),
    # anyone who may upload a job file could train on (and partly read) another job's data
    ("prepare-dataset-another-jobs-shard", lambda: prepare(
        memory_store(), spec(dataset={"uri": f"s3://{BUCKET}/jobs/other/shards/0.npz"})),
     SpecError, [f"dataset.uri: s3://{BUCKET}/jobs/other/shards/0.npz is a job's or the "
                 "registry's own file, not a dataset"]),
    ("prepare-dataset-a-registered-model", lambda: prepare(
        memory_store(), spec(dataset={"uri": f"s3://{BUCKET}/models/houses/current.json"})),
     SpecError, ["models/houses/current.json is a job's or the registry's own file"]),
    ("prepare-job-id-a-number", lambda: prepare(memory_store(), event={"job_id": 123,
                                                                        "spec": spec()}),
     SpecError, ["job_id: expected a string, got 123"]),
    ("prepare-spec-job-id-a-number",
     lambda: prepare(memory_store(), event={"spec": spec(job_id=7)}), SpecError,
     ["spec.job_id: expected a string, got 7"]),
    ("prepare-input-not-an-object", lambda: prepare(memory_store(), event=[1, 2]), SpecError,
     ["the execution input must be a JSON object, got [1, 2]"]),
    ("prepare-standardize-overflow",
     lambda: prepare(memory_store(b"a,b,price\n1,1e308,1\n2,1.5e308,2\n3,1e308,3\n"),
                     spec(training={"workers": 1, "batch_size": "full"},
                          dataset={"validation": 0})), DataError,
     ["feature column 'b': values up to 1.5e+308 are too large to standardize"]),
]

SCORED: list[Row] = [
    ("scored-csv-missing-feature",
     lambda: read_features(b"sqft,bedrooms,id\n1,2,x\n", source="new.csv", fmt=None,
                           trained=TRAINED), DataError,
     ["new.csv: missing feature column(s) 'age', 'distance_km'"]),
    ("scored-npy-extra-column-named-label",
     lambda: read_features(npy_bytes(np.ones((2, 5))), source="new.npy", fmt=None,
                           trained=TRAINED_ON_CSV), DataError,
     ["new.npy: 5 columns, one more than the model's 4 features", "label 'price'"]),
    ("scored-csv-label-unknown-two-others",  # trained with the default label: no name
     lambda: read_labelled(b"sqft,bedrooms,age,distance_km,price,id\n1,2,3,4,5,6\n",
                           source="new.csv", fmt=None, label=None, trained=TRAINED), DataError,
     ["new.csv: which column is the label? Besides the model's features it has 'price', 'id'",
      "--label"]),
    ("scored-csv-label-unknown-none-other",
     lambda: read_labelled(b"sqft,bedrooms,age,distance_km\n1,2,3,4\n", source="new.csv",
                           fmt=None, label=None, trained=TRAINED), DataError,
     ["new.csv: no label column: every column is one of the model's features"]),
]

PREDICT: list[Row] = [
    ("predict-unknown-field", lambda: parse({**request(ROW), "version": "deadbeef"}),
     PredictError, ["unknown field 'version': a request has \"model\" and \"instances\" only"]),
    ("predict-wrong-feature-count", lambda: parse(request(ROW, ROW[:3])), PredictError,
     ["instances[1]", "expected 4 features (sqft, bedrooms, age, distance_km), got 3"]),
    ("predict-string-value", lambda: parse(request([1200, "3", 12.5, 4.2])), PredictError,
     ["instances[0][1]", "'3' is not a number"]),
    ("predict-nan", lambda: parse(json.loads('{"model": "houses", "instances": '
                                             '[[1200, 3, NaN, 4.2]]}')), PredictError,
     ["instances[0][2]", "nan is not a finite number"]),
    ("predict-overflow", lambda: parse(json.loads('{"model": "houses", "instances": '
                                                  '[[1e999, 3, 1, 4.2]]}')), PredictError,
     ["instances[0][0]", "not a finite number"]),
    ("predict-boolean", lambda: parse(request([True, 3, 12.5, 4.2])), PredictError,
     ["instances[0][0]", "booleans are not numbers"]),
    ("predict-null", lambda: parse(request([1200, None, 12.5, 4.2])), PredictError,
     ["instances[0][1]", "null is not a number"]),
    ("predict-too-many-rows", lambda: parse(request(*[ROW] * 11), max_rows=10), PredictError,
     ['"instances" has 11 rows', "at most 10 rows per request"]),
    ("predict-no-rows", lambda: parse(request()), PredictError, ['"instances" is empty']),
    ("predict-instances-not-a-list",
     lambda: parse({"model": "houses", "instances": "1,2,3,4"}), PredictError,
     ['"instances" must be a list of rows, got str']),
    ("predict-unknown-feature-key",
     lambda: parse(request({"sqft": 1, "bedrooms": 2, "age": 3, "distance_km": 4, "pool": 1})),
     PredictError, ["instances[0]", "unknown features: pool"]),
    ("predict-missing-feature-key", lambda: parse(request({"sqft": 1, "bedrooms": 2})),
     PredictError, ["instances[0]", "missing features: age, distance_km"]),
    ("predict-model-name-dotdot", lambda: predict(
        Store(MemoryS3(), BUCKET), ModelCache(), request(ROW, model="../houses"), 10),
     PredictError, ['"model"', "invalid model name '../houses'"]),
    ("predict-unknown-model", lambda: predict(
        Store(MemoryS3(), BUCKET), ModelCache(), request(ROW, model="nobody"), 10),
     PredictError, ["nobody"]),
]

CATALOGUE = DATASET + SPEC + KEYS + PREPARE + SCORED + PREDICT
# fmt: on


@pytest.mark.parametrize(
    ("call", "error", "needles"), [row[1:] for row in CATALOGUE], ids=[r[0] for r in CATALOGUE]
)
def test_bad_input_is_refused_and_named(call, error, needles):
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    missing = [n for n in needles if n not in message]
    assert not missing, f"{message!r} lacks {missing}"


def test_catalogue_ids_are_unique():
    ids = [row[0] for row in CATALOGUE]
    assert len(ids) == len(set(ids))


def test_predict_errors_are_http_400_except_an_unknown_model():
    for name, call, _, _ in PREDICT:
        with pytest.raises(PredictError) as raised:
            call()
        assert raised.value.status == (404 if name == "predict-unknown-model" else 400), name


# ---- objects inside arrays: refused, never unpickled -----------------------------------
def test_object_npy_is_refused_without_unpickling(tmp_path):
    data = object_npy(tmp_path)
    with pytest.raises(DataError, match=r"data\.npy holds Python objects; refusing to unpickle"):
        load_dataset(data, source="data.npy", fmt=None, label=None, task="regression")
    with pytest.raises(DataError, match="holds Python objects"):
        load_dataset(data, source="data.npy", fmt=None, label=None, task="features")
    assert not (tmp_path / "unpickled").exists()
    # the wire is live: anything that did unpickle this file would have tripped it
    np.load(io.BytesIO(data), allow_pickle=True)
    assert (tmp_path / "unpickled").exists()


def test_object_npy_through_prepare_writes_no_model(tmp_path):
    store = memory_store(object_npy(tmp_path), key="datasets/data.npy")
    doc = spec(dataset={"uri": f"s3://{BUCKET}/datasets/data.npy", "label": None})
    with pytest.raises(DataError, match="holds Python objects"):
        prepare(store, doc)
    assert not (tmp_path / "unpickled").exists()
    assert_nothing_trained(store, "j")


def test_pickle_payload_is_not_a_npy(tmp_path):
    """A bare pickle renamed .npy: refused on its magic bytes, the unpickler never sees it."""
    data = pickle.dumps(Tripwire(tmp_path / "unpickled"))
    with pytest.raises(DataError, match=r"data\.npy is not a \.npy file"):
        load_dataset(data, source="data.npy", fmt=None, label=None, task="regression")
    assert not (tmp_path / "unpickled").exists()


# ---- no partial model ------------------------------------------------------------------
def assert_nothing_trained(store: Store, job_id: str) -> None:
    """A refused prepare leaves no shards, parameters, spec or model for the job."""
    written = store.list_keys(JobKeys(job_id).prefix)
    allowed = {JobKeys(job_id).claim, JobKeys(job_id).status}
    assert set(written) <= allowed, written


@pytest.mark.parametrize(
    "groups",
    [
        {"training": {"batch_size": 5000}},
        {"dataset": {"max_features": 3}},
        {"dataset": {"label": "cost"}},
    ],
    ids=["batch-larger-than-data", "features-over-limit", "label-missing"],
)
def test_refused_prepare_writes_no_shards_params_or_model(groups):
    store = memory_store()
    with pytest.raises((SpecError, DataError)):
        prepare(store, spec(**groups))
    assert_nothing_trained(store, "j")


# ---- what looks odd but is valid CSV, and is read correctly ----------------------------
# fmt: off
VALID_CSV = [
    ("bom", b"\xef\xbb\xbfa,y\n1,2\n3,4\n", ["a"], [[1.0], [3.0]], [2.0, 4.0]),
    ("crlf", b"a,y\r\n1,2\r\n3,4\r\n", ["a"], [[1.0], [3.0]], [2.0, 4.0]),
    ("bom-and-crlf", b"\xef\xbb\xbfa,y\r\n1,2\r\n3,4", ["a"], [[1.0], [3.0]], [2.0, 4.0]),
    ("blank-lines", b"\na,y\n\n1,2\n   \n\n3,4\n\n\n", ["a"], [[1.0], [3.0]], [2.0, 4.0]),
    ("no-final-newline", b"a,y\n1,2\n3,4", ["a"], [[1.0], [3.0]], [2.0, 4.0]),
    ("spaces-around-cells", b" a , y \n 1 , 2 \n3,4\n", ["a"], [[1.0], [3.0]], [2.0, 4.0]),
    ("quoted-numbers", b'a,y\n"1","2"\n3,4\n', ["a"], [[1.0], [3.0]], [2.0, 4.0]),
    ("quoted-comma-in-header", b'"size, m2",y\n1,2\n3,4\n', ["size, m2"], [[1.0], [3.0]],
     [2.0, 4.0]),
    ("quoted-newline-in-header", b'"size\nm2",y\n1,2\n3,4\n', ["size\nm2"], [[1.0], [3.0]],
     [2.0, 4.0]),
]
# fmt: on


@pytest.mark.parametrize(
    ("data", "names", "X", "y"), [c[1:] for c in VALID_CSV], ids=[c[0] for c in VALID_CSV]
)
def test_valid_csv_variants_read_correctly(data, names, X, y):
    ds = csv(data)
    assert ds.feature_names == names
    assert ds.X.tolist() == X and ds.y.tolist() == y


def test_quoted_commas_in_class_labels_are_one_label():
    ds = csv(
        'a,city\n1,"New York, NY"\n2,"Boston, MA"\n3,"New York, NY"\n',
        label="city",
        task="classification",
    )
    assert ds.classes == ["Boston, MA", "New York, NY"]
    assert ds.y.tolist() == [1, 0, 1]


def test_error_lines_stay_physical_with_quoted_newlines():
    """A quoted newline spans two physical lines; the next row's line number counts both."""
    with pytest.raises(DataError, match=r"data\.csv line 4, column 'a'"):
        csv('a,"y\nz"\n1,2\nx,3\n', label="y\nz")


def test_upload_keys_under_incoming_are_accepted():
    assert unsafe_upload_key("jobs/incoming/houses.json") is None
    assert unsafe_upload_key("jobs/incoming/team-a/houses.v2.json") is None
    assert unsafe_upload_key("/jobs/incoming/x.json") is not None


class CountingS3(MemoryS3):
    """Records the keys read whole (GET), not those only asked about (HEAD)."""

    def __init__(self) -> None:
        super().__init__()
        self.read: list[str] = []

    def get_object(self, Bucket: str, Key: str, **kw: Any) -> dict:
        self.read.append(Key)
        return super().get_object(Bucket, Key, **kw)


def test_an_oversized_upload_is_refused_without_being_read():
    store = Store(CountingS3(), BUCKET)
    key = "jobs/incoming/huge.json"
    store.put_bytes(key, b" " * (64 << 20))  # 64 MiB of spaces: it would parse as nothing
    with pytest.raises(SpecError, match=f"{key}: {64 << 20} bytes; a job spec is at most"):
        prepare(store, event=uploaded(store, key))
    assert key not in store.client.read


def test_an_uploaded_job_file_with_a_byte_order_mark_trains_as_config_does():
    store = memory_store()
    key = "jobs/incoming/bom.json"
    doc = spec(training={"workers": 2, "rounds": 2})
    store.put_bytes(key, b"\xef\xbb\xbf" + json.dumps(doc).encode())
    assert prepare(store, event=uploaded(store, key))["round"] == 0


class DeniedS3(MemoryS3):
    def get_object(self, Bucket: str, Key: str, **kw: Any) -> dict:
        error = Exception("Access Denied")  # as botocore's ClientError carries it
        error.response = {"Error": {"Code": "AccessDenied"}}  # type: ignore[attr-defined]
        raise error


def test_access_denied_names_the_object():
    store = Store(DeniedS3(), BUCKET)
    with pytest.raises(StoreError, match=rf"^s3://{BUCKET}/datasets/x.csv: access denied"):
        store.get_bytes("datasets/x.csv")


@pytest.mark.parametrize(
    ("event", "recorded"),
    [
        ({"state": "oops"}, False),
        ({"state": {"job_id": 123, "error": {"Error": "X", "Cause": "{}"}}}, False),
        ({"state": {"job_id": "../x", "error": {"Error": "X", "Cause": "{}"}}}, False),
        ({"state": {"spec": {"job_id": 7}, "error": "boom"}}, False),
        # a continuation forged for a job that never started: its worker's EventError
        ({"state": {"job_id": "j", "error": {"Error": "EventError", "Cause": "{}"}}}, False),
        (
            {"state": {"job_id": "j", "error": {"Error": None, "Cause": '{"errorMessage": 5}'}}},
            True,
        ),
    ],
)
def test_record_failure_records_whatever_failed_without_failing_itself(event, recorded):
    store = memory_store()
    out = steps.record_failure(store, event)
    assert out["status"] == "FAILED" and isinstance(out["message"], str)
    assert out["recorded"] is recorded
    if recorded:  # under the job id it has
        status = store.get_json(JobKeys("j").status)
        assert (status["error"], status["message"]) == ("Unknown", "5")
