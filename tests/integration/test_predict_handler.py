"""The real functions/predict/app.py handler (Powertools and all) on moto S3, driven by the
function-URL sample events in events/."""

from __future__ import annotations

import base64
import csv
import importlib.util
import io
import json

import numpy as np
import pytest
from lambdagrad.artifact import TrainedModel
from lambdagrad.data import Standardizer
from lambdagrad.models import build_model
from lambdagrad.registry import promote, register
from lambdagrad.store import JobKeys, Store

from tests.conftest import EVENTS, ROOT
from tests.integration.test_handlers import BUCKET, context, event


def load_app(monkeypatch, max_rows: int | None = None):
    """A fresh import of the handler module (so its model cache starts empty)."""
    if max_rows is not None:
        monkeypatch.setenv("PREDICT_MAX_ROWS", str(max_rows))
    path = ROOT / "functions" / "predict" / "app.py"
    spec = importlib.util.spec_from_file_location("sample_predict", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def houses_model(job_id: str, shift: float = 0.0) -> TrainedModel:
    """A least-squares fit of events/data/houses.csv, saved as finalize saves a model."""
    rows = list(csv.reader(io.StringIO((EVENTS / "data" / "houses.csv").read_text())))
    header, data = rows[0], np.array(rows[1:], dtype=np.float64)
    X, y = data[:, :-1], data[:, -1]
    standardizer = Standardizer.fit(X)
    Z = standardizer.transform(X)
    coef, *_ = np.linalg.lstsq(np.column_stack([Z, np.ones(len(Z))]), y, rcond=None)
    coef[-1] += shift
    return TrainedModel(
        model=build_model("linear", X.shape[1], 1),
        params=coef,
        standardizer=standardizer,
        feature_names=header[:-1],
        classes=None,
        info={"job_id": job_id, "model": {"type": "linear"}, "trained_at": 1795726401.0},
    )


def publish(client, job_id: str, shift: float = 0.0) -> None:
    npz_bytes, doc = houses_model(job_id, shift).to_documents()
    keys = JobKeys(job_id)
    client.put_object(Bucket=BUCKET, Key=keys.model_npz, Body=npz_bytes)
    client.put_object(Bucket=BUCKET, Key=keys.model_json, Body=json.dumps(doc).encode())


@pytest.fixture
def s3(lambda_s3, monkeypatch):
    monkeypatch.delenv("PREDICT_MAX_ROWS", raising=False)
    publish(lambda_s3, "houses-demo")
    register(Store(lambda_s3, BUCKET), "houses", "houses-demo")
    return lambda_s3


def call(app, evt: dict) -> tuple[int, dict, dict]:
    response = app.lambda_handler(evt, context("predict"))
    return response["statusCode"], response["headers"], json.loads(response["body"])


def with_body(evt: dict, body: str | dict, *, base64_encoded: bool = False) -> dict:
    text = body if isinstance(body, str) else json.dumps(body)
    if base64_encoded:
        text = base64.b64encode(text.encode()).decode()
    return {**evt, "body": text, "isBase64Encoded": base64_encoded}


def test_sample_event_round_trip(s3, monkeypatch, capsys):
    app = load_app(monkeypatch)
    evt = event("predict")
    sent = json.loads(evt["body"])
    status, headers, body = call(app, evt)
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    assert len(body["predictions"]) == len(sent["instances"]) == 3
    assert body["model"]["name"] == "houses" and body["model"]["job_id"] == "houses-demo"
    assert body["model"]["trained_at"] == 1795726401.0 and "probabilities" not in body
    # The first two rows are the first two houses of houses.csv: a fair fit is close.
    assert body["predictions"][0] == pytest.approx(308400, rel=0.15)
    assert body["predictions"][1] == pytest.approx(323100, rel=0.15)
    assert body["predictions"][0] != body["predictions"][1]

    logs = capsys.readouterr().out
    assert '"correlation_id":"2f1c7b0e-5d1a-4a3e-9f62-8d3c0b7a1e01"' in logs.replace(" ", "")
    assert '"rows":3' in logs.replace(" ", "")


def test_bad_request_event_is_400_with_the_message(s3, monkeypatch):
    app = load_app(monkeypatch)
    status, headers, body = call(app, event("predict_bad_request"))
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert body == {"error": "instances[1][1]: 'three' is not a number (send JSON numbers)"}


def test_unknown_model_is_404(s3, monkeypatch):
    app = load_app(monkeypatch)
    sent = json.loads(event("predict")["body"])
    status, _, body = call(app, with_body(event("predict"), {**sent, "model": "nope"}))
    assert (status, body) == (404, {"error": "no model named 'nope'"})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"model": "houses", "instances": [[1, 2, 3, 4]', "the request body is not valid JSON"),
        ("", "the request body must be a JSON object"),
        ("[1, 2, 3]", "the request body must be a JSON object"),
        ('{"instances": [[1, 2, 3, 4]]}', 'missing "model" field'),
        (
            '{"model": "houses", "instances": ' + "[" * 5000 + "]" * 5000 + "}",
            "the request body is not valid JSON: nested too deeply",
        ),
    ],
)
def test_malformed_bodies_are_400(s3, monkeypatch, raw, message):
    app = load_app(monkeypatch)
    status, _, body = call(app, with_body(event("predict"), raw))
    assert status == 400 and body["error"].startswith(message)


def test_base64_body_and_predict_path(s3, monkeypatch):
    app = load_app(monkeypatch)
    evt = event("predict")
    plain = call(app, evt)[2]
    encoded = with_body(evt, evt["body"], base64_encoded=True)
    encoded["rawPath"] = "/predict"
    encoded["requestContext"] = {
        **evt["requestContext"],
        "http": {**evt["requestContext"]["http"], "path": "/predict"},
    }
    status, _, body = call(app, encoded)
    assert status == 200 and body == plain


def test_other_routes_are_404_json(s3, monkeypatch):
    app = load_app(monkeypatch)
    evt = event("predict")
    get = {
        **evt,
        "body": None,
        "requestContext": {
            **evt["requestContext"],
            "http": {**evt["requestContext"]["http"], "method": "GET"},
        },
    }
    status, _, body = call(app, get)
    assert status == 404 and body["error"].startswith("no route GET /")


def test_max_rows_comes_from_the_environment(s3, monkeypatch):
    app = load_app(monkeypatch, max_rows=2)
    status, _, body = call(app, event("predict"))
    assert status == 400
    assert body["error"] == '"instances" has 3 rows: at most 2 rows per request'


def test_warm_invocations_reuse_the_model_and_reload_after_promote(s3, monkeypatch):
    app = load_app(monkeypatch)
    first = call(app, event("predict"))[2]
    assert call(app, event("predict"))[2] == first
    assert app.CACHE.loads == 1

    publish(s3, "houses-v2", shift=1000.0)
    promote(Store(s3, BUCKET), "houses", "houses-v2")
    status, _, second = call(app, event("predict"))
    assert status == 200 and app.CACHE.loads == 2
    assert second["model"]["job_id"] == "houses-v2"
    assert second["model"]["version"] != first["model"]["version"]
    assert second["predictions"] == pytest.approx([p + 1000.0 for p in first["predictions"]])
