"""Every state's input and output stays under Step Functions' 256 KiB at 1,000 workers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lambdagrad import steps
from lambdagrad.spec import MAX_WORKERS
from lambdagrad.training import initial_progress
from lambdagrad.transfer import INLINE_BUDGET_BYTES, encode_gradient, gradient_inline

from tests.conftest import EVENTS
from tests.unit.test_steps import store_with

LIMIT = 256 * 1024
ARN = "arn:aws:states:us-east-1:123456789012:execution:lambdagrad-train:" + "j" * 60


def size(doc) -> int:
    return len(json.dumps(doc).encode())


def test_round_payloads_at_the_most_workers():
    workers = MAX_WORKERS
    assert workers == 1000
    state = {  # what Prepare and Reduce return, and ContinueAsNew passes on
        "job_id": "j" * 60,
        "round": 9_999_999,
        "shards": list(range(workers)),
        "segment_end": 9_999_999,
        "next": "continue",
        "progress": {
            **initial_progress(1.8e9),
            "train_loss": -1.2345678901234567e300,
            "best_round": 9_999_999,
            "best_loss": 1.2345678901234567e-300,
            "since_best": 999_999,
            "stop": "early_stopping",
        },
    }
    # one worker's result, the widest numbers JSON can carry, with the largest gradient the
    # inline rule lets through at this many workers (float64; float32 packs the same bytes)
    n_inline = INLINE_BUDGET_BYTES // (8 * workers)
    assert gradient_inline(n_inline, 8, workers)
    assert not gradient_inline(n_inline + 1, 8, workers)
    grad = encode_gradient(np.full(n_inline, -1.2345678901234567e300))
    results = [
        {
            "shard": k,
            "loss_sum": -1.2345678901234567e300,
            "count": 10_000_000,
            "seconds": 899.1234567890123,  # measured handler time, for cost.json
            "grad": grad,
        }
        for k in range(workers)
    ]
    reduce_input = {**state, "results": results, "execution": ARN}
    map_state = {**state, "results": results}  # the Map's output before Reduce trims it
    for name, doc in {
        "state": state,
        "reduce input": reduce_input,
        "map output": map_state,
    }.items():
        assert size(doc) < 192 * 1024, (name, size(doc))  # far below LIMIT
    # a worker's own input and output are tiny
    assert size({"job_id": "j" * 60, "round": 9_999_999, "shard": 999}) < 200
    assert size(results[0]) < 200
    print(f"largest state at {workers} workers: {size(reduce_input) / 1024:.1f} KiB of 256")


@pytest.mark.parametrize("workers", [1, 8, 32, 1000])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inline_gradients_of_all_workers_stay_far_below_the_limit(workers, dtype):
    """The Map's output with every worker's largest inline gradient: under 192 KiB."""
    itemsize = np.dtype(dtype).itemsize
    n_inline = INLINE_BUDGET_BYTES // (itemsize * workers)
    assert gradient_inline(n_inline, itemsize, workers)
    assert not gradient_inline(n_inline + 1, itemsize, workers)
    grad = encode_gradient(np.full(n_inline, np.finfo(dtype).min, dtype=dtype))
    results = [
        {
            "shard": k,
            "loss_sum": -1.2345678901234567e300,
            "count": 10_000_000,
            "seconds": 899.1234567890123,
            "grad": grad,
        }
        for k in range(workers)
    ]
    assert workers * len(grad) <= INLINE_BUDGET_BYTES * 4 / 3 + 8 * workers  # base64, framing
    map_output = {"job_id": "j" * 60, "shards": list(range(workers)), "results": results}
    assert size(map_output) < 192 * 1024, size(map_output)


def test_worker_and_reducer_outputs_have_the_fields_the_size_test_assumes():
    store, _ = store_with("houses.csv")
    doc = json.loads((EVENTS / "jobs" / "houses-linear.json").read_text())
    prepared = steps.prepare(store, {"input": {"job_id": "sizes", "spec": doc}, "execution": "e"})
    assert set(prepared) == {"job_id", "round", "shards", "segment_end", "progress"}
    result = steps.worker(store, {"job_id": "sizes", "round": 0, "shard": 0})
    assert set(result) == {"shard", "loss_sum", "count", "seconds", "grad"}  # 5 params: inline
    results = [steps.worker(store, {"job_id": "sizes", "round": 0, "shard": k}) for k in range(4)]
    reduced = steps.reduce(store, {**prepared, "results": results})
    assert set(reduced) == {"job_id", "round", "shards", "segment_end", "next", "progress"}


def test_predict_requests_stay_under_lambdas_six_megabytes_however_wide_the_rows():
    from lambdagrad.cli import PREDICT_CHUNK_BYTES, _predict_chunk

    assert _predict_chunk(1000, [[1500.0, 3.0, 20.0, 2.5]]) == 1000  # the stack's limit
    for width in (100, 300, 3000, 100_000):
        row = [[-1.2345678901234567e-300] * width]  # the widest JSON a float64 takes
        rows = _predict_chunk(100_000, row)
        assert rows >= 1 and len(json.dumps(row * rows)) <= PREDICT_CHUNK_BYTES, width
    assert _predict_chunk(50, []) == 50
