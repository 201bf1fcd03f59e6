"""Predict: a Lambda Function URL that serves a registered model (lambdagrad.serving).

POST / (or /predict) with {"model": "<name>", "instances": [[...], ...]} returns
{"predictions": [...], "model": {...}}; a bad request is {"error": "..."} with 400, an
unknown model 404. The model cache lives at module level so warm invocations reuse it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import LambdaFunctionUrlResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from lambdagrad.runtime import store_from_env
from lambdagrad.serving import ModelCache, PredictError, predict

logger = Logger(service="lambdagrad-predict")
tracer = Tracer(service="lambdagrad-predict")
metrics = Metrics(service="lambdagrad-predict")
app = LambdaFunctionUrlResolver()

MAX_ROWS = int(os.environ.get("PREDICT_MAX_ROWS", "1000"))
CACHE = ModelCache()


def _error(status: int, message: str) -> Response:
    return Response(status, "application/json", json.dumps({"error": message}))


def _emit(name: str, value: float, unit: MetricUnit) -> None:
    # As in lambdagrad.runtime: the embedded engine disables metrics; collect none there.
    if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() not in ("1", "true"):
        metrics.add_metric(name=name, unit=unit, value=value)


@app.post("/")
@app.post("/predict")
def predict_route() -> dict[str, Any]:
    try:
        body = app.current_event.json_body
    except ValueError as exc:  # JSONDecodeError, bad base64 or UTF-8
        raise PredictError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # [[[[...]]]]: the decoder's depth, not a server fault
        raise PredictError("the request body is not valid JSON: nested too deeply") from None
    loads = CACHE.loads
    result = predict(store_from_env(), CACHE, body, MAX_ROWS)
    _emit("PredictedRows", len(result["predictions"]), MetricUnit.Count)
    _emit("ModelLoads", CACHE.loads - loads, MetricUnit.Count)
    logger.info("predicted", extra={"model": result["model"], "rows": len(result["predictions"])})
    return result


@app.exception_handler(PredictError)
def predict_error(exc: PredictError) -> Response:
    logger.info("request refused", extra={"status": exc.status, "error": str(exc)})
    return _error(exc.status, str(exc))


@app.not_found
def not_found(exc: Exception) -> Response:
    event = app.current_event
    return _error(404, f"no route {event.http_method} {event.path}: POST a JSON body to /")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.LAMBDA_FUNCTION_URL)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)
