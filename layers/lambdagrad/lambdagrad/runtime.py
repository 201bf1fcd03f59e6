"""What every Lambda handler shares: Powertools, and a store bound to the stack's bucket.

A handler is ``lambda_handler = powertools_handler("worker", steps.worker)``: the job id
becomes the logger's correlation id, numbers a step reports become CloudWatch metrics, and
the handler is traced with X-Ray. boto3 is imported here, never in the numerics.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from lambdagrad.store import Store

__all__ = ["powertools_handler", "store_from_env"]

Step = Callable[..., dict[str, Any]]

#: Set to ``in-process`` by the embedded engine (never in Lambda): handlers then reach moto's
#: S3 backend directly instead of through boto3 (lambdagrad.local.moto_fixes.InProcessS3Client).
LOCAL_S3_VARIABLE = "LAMBDAGRAD_LOCAL_S3"

# Steps that report no number (finalize, record_failure) are normal, not a mistake.
warnings.filterwarnings("ignore", message="No application metrics to publish")


@lru_cache(maxsize=8)
def _s3_client(region: str | None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 8, "mode": "adaptive"})
    return boto3.client("s3", region_name=region, config=config)


def store_from_env() -> Store:
    """The stack bucket named by the BUCKET variable (read per call: one process may host
    several stacks in the embedded engine)."""
    bucket = os.environ.get("BUCKET")
    if not bucket:
        raise RuntimeError("environment variable BUCKET is not set (the template sets it)")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if os.environ.get(LOCAL_S3_VARIABLE) == "in-process":
        # the embedded engine: moto's S3 without the HTTP round trip (same objects)
        from lambdagrad.local.moto_fixes import in_process_s3_client

        return Store(in_process_s3_client(region), bucket)
    return Store(_s3_client(region), bucket)


def powertools_handler(service: str, step: Step, correlation_id_path: str = "job_id") -> Callable:
    """Wrap a training step as a Lambda handler with Logger, Metrics and Tracer."""
    logger = Logger(service=f"lambdagrad-{service}")
    metrics = Metrics(service=f"lambdagrad-{service}")
    tracer = Tracer(service=f"lambdagrad-{service}")

    def emit(name: str, value: float, unit: str) -> None:
        # Powertools prints a full metric set even when disabled; the embedded engine
        # disables metrics, so do not collect them at all there.
        if _disabled("POWERTOOLS_METRICS_DISABLED"):
            return
        unit_ = getattr(MetricUnit, unit, MetricUnit.NoUnit)
        metrics.add_metric(name=name, unit=unit_, value=value)

    def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        result = step(store_from_env(), event, emit)
        logger.info("step finished", extra={"result": result})
        return result

    # Disabled tracing and metrics are still a cost per call when decorated (the X-Ray SDK
    # builds dummy segments, Metrics validates and prints an empty set): about half a
    # millisecond, as much as a small worker's step. Decide once, when the handler is built
    # (Lambda fixes a function's environment at deploy time; the embedded engine sets it
    # before importing the handler).
    if not _disabled("POWERTOOLS_METRICS_DISABLED"):
        lambda_handler = metrics.log_metrics(lambda_handler)
    if not _disabled("POWERTOOLS_TRACE_DISABLED"):
        lambda_handler = tracer.capture_lambda_handler(capture_response=False)(lambda_handler)
    return logger.inject_lambda_context(correlation_id_path=correlation_id_path, log_event=False)(
        lambda_handler
    )


def _disabled(variable: str) -> bool:
    return os.environ.get(variable, "").lower() in ("1", "true")
