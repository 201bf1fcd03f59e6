"""How a worker's gradient reaches the reducer: inline in its result, or through S3.

A worker's result travels in the Map state's output, and Step Functions caps every state's
input and output at 256 KiB. Writing each gradient to S3 costs a PUT per worker and a GET
per shard in the reducer every round -- for a small model, far more time than the numbers
themselves. So a small gradient rides inline, as base64 of its raw bytes (lossless: the
reducer decodes exactly the array the worker computed, float64 or float32), and a large one
goes to ``grads/<round>/<k>.npy`` as before. An inline gradient is one JSON string,
``"<f8:" + base64`` (``<f4`` for float32), to keep the framing per worker small.

The rule (:func:`gradient_inline`), the same for every worker of a job, so a round never
mixes: inline when ``n_params * itemsize * workers <= INLINE_BUDGET_BYTES`` (32 KiB of raw
bytes for all workers together). Base64 and framing make that at most 43 KiB + 10 bytes
per worker of text in the Map's output, whatever the number of workers; with the other
fields the largest state at the spec's 1,000 workers stays under 192 KiB of the 256 KiB
(tests/unit/test_payload_sizes.py). At 1,000 workers a float64 model inlines up to 4
parameters; at 32 workers up to 128; at 8 workers up to 512; at one worker up to 4,096.

Example
-------
>>> import numpy as np
>>> text = encode_gradient(np.array([0.5, -1.0]))
>>> text, decode_gradient(text, 2).tolist()
('<f8:AAAAAAAA4D8AAAAAAADwvw==', [0.5, -1.0])
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from lambdagrad.store import JobKeys, Store, StoreError

__all__ = [
    "INLINE_BUDGET_BYTES",
    "InlineGradientError",
    "decode_gradient",
    "encode_gradient",
    "gradient_inline",
    "receive_gradients",
    "send_gradient",
]

#: Raw gradient bytes of all workers together that may travel inline in one round.
INLINE_BUDGET_BYTES = 32 * 1024

#: Element types a gradient may travel as (little-endian floats).
_DTYPES = ("<f8", "<f4")


class InlineGradientError(ValueError):
    """An inline gradient in a worker's result is malformed."""


def gradient_inline(n_params: int, itemsize: int, workers: int) -> bool:
    """Whether this job's gradients travel inline (see the module docstring for the rule)."""
    return n_params * itemsize * workers <= INLINE_BUDGET_BYTES


def encode_gradient(grad: np.ndarray) -> str:
    """``"<dtype>:<base64>"``: the exact bytes of a flat float vector, for a JSON result."""
    arr = np.ascontiguousarray(grad)
    dtype = arr.dtype.newbyteorder("<").str
    if arr.ndim != 1 or dtype not in _DTYPES:
        raise InlineGradientError(f"a gradient is a flat float vector, got {arr.dtype} {arr.shape}")
    return dtype + ":" + base64.b64encode(arr.astype(dtype, copy=False)).decode()


def decode_gradient(doc: Any, n_params: int) -> np.ndarray:
    """The array :func:`encode_gradient` encoded, checked against the model's size."""
    kind, _, text = doc.partition(":") if isinstance(doc, str) else ("", "", "")
    if kind not in _DTYPES:
        raise InlineGradientError(f"expected '<f8:...' or '<f4:...', got {doc!r:.40}")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise InlineGradientError(f"gradient is not valid base64: {exc}") from None
    dtype = np.dtype(kind)
    if len(raw) != n_params * dtype.itemsize:
        raise InlineGradientError(
            f"gradient has {len(raw)} bytes; {n_params} parameters of {kind} "
            f"need {n_params * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype)


def send_gradient(
    store: Store, keys: JobKeys, round_: int, shard: int, grad: np.ndarray, workers: int
) -> dict[str, Any]:
    """The fields a worker adds to its result: ``{"grad": ...}`` inline, or ``{}`` after
    writing ``grads/<round>/<shard>.npy`` (a retried worker rewrites identical bytes)."""
    if gradient_inline(grad.size, grad.itemsize, workers):
        return {"grad": encode_gradient(grad)}
    store.put_array(keys.grad(round_, shard), grad, tagging=Store.SCRATCH_TAGGING)
    return {}


def receive_gradients(
    store: Store, keys: JobKeys, round_: int, results: list[dict[str, Any]], n_params: int
) -> list[np.ndarray]:
    """Every worker's gradient sum, in the order of ``results``: inline or from S3."""
    grads = []
    for r in results:
        if "grad" not in r:
            grads.append(store.get_array(keys.grad(round_, int(r["shard"]))))
            continue
        try:
            grads.append(decode_gradient(r["grad"], n_params))
        except InlineGradientError as exc:
            raise StoreError(f"round {round_}, shard {r['shard']}: {exc}") from None
    return grads
