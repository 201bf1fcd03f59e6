"""S3 keys and an array/JSON store over one bucket.

Keys are deterministic functions of (job, round, shard), so a retried step overwrites
its own object with identical bytes and every step is idempotent. Arrays travel as
``.npy``/``.npz`` and are always read with ``allow_pickle=False``.

The store takes any object with the boto3 S3 client's methods; this module never imports
boto3, so the training steps can be tested against an in-memory fake.

Example
-------
>>> keys = JobKeys("job-1")
>>> keys.params(3), keys.grad(3, 0)
('jobs/job-1/params/3.npy', 'jobs/job-1/grads/3/0.npy')
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import numpy as np

__all__ = [
    "SCRATCH_TAGGING",
    "JobKeys",
    "MemoryS3",
    "MissingObjectError",
    "Store",
    "StoreError",
    "parse_s3_uri",
]

#: Object tag (``key=value``, the S3 ``Tagging`` header form) of per-round scratch objects.
#: The bucket's lifecycle rule in template.yaml expires objects under ``jobs/`` with this tag:
#: a lifecycle filter matches key prefixes, not ``jobs/*/grads/``, so the tag marks them.
SCRATCH_TAGGING = "lambdagrad-lifecycle=scratch"

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,59}$")


class StoreError(RuntimeError):
    """An object is missing or unreadable; the message names the key."""


class MissingObjectError(StoreError):
    """The object (or its bucket) does not exist, as opposed to one that is damaged."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into (bucket, key), refusing absolute or ``..`` keys."""
    match = re.match(r"^s3://([^/]+)/(.+)$", uri)
    if not match:
        raise StoreError(f"not an s3://bucket/key URI: {uri!r}")
    bucket, key = match.groups()
    if key.startswith("/") or ".." in key.split("/"):
        raise StoreError(f"unsafe S3 key {key!r}: must be relative with no '..'")
    return bucket, key


@dataclass(frozen=True)
class JobKeys:
    """The S3 layout of one job (DESIGN.md §4)."""

    job_id: str

    def __post_init__(self) -> None:
        if not _JOB_ID.match(self.job_id) or self.job_id == "incoming":
            raise StoreError(f"invalid job id {self.job_id!r}")

    @property
    def prefix(self) -> str:
        return f"jobs/{self.job_id}/"

    @property
    def claim(self) -> str:
        return self.prefix + "claim.json"

    @property
    def spec(self) -> str:
        return self.prefix + "spec.json"

    @property
    def status(self) -> str:
        return self.prefix + "status.json"

    @property
    def meta(self) -> str:
        return self.prefix + "meta.json"

    @property
    def validation(self) -> str:
        return self.prefix + "validation.npz"

    def shard(self, k: int) -> str:
        return f"{self.prefix}shards/{k}.npz"

    def params(self, round_: int) -> str:
        return f"{self.prefix}params/{round_}.npy"

    def optimizer(self, round_: int) -> str:
        return f"{self.prefix}optimizer/{round_}.npz"

    def grad(self, round_: int, k: int) -> str:
        return f"{self.prefix}grads/{round_}/{k}.npy"

    def metrics(self, round_: int) -> str:
        return f"{self.prefix}metrics/{round_:08d}.json"

    @property
    def metrics_prefix(self) -> str:
        return self.prefix + "metrics/"

    @property
    def model_npz(self) -> str:
        return self.prefix + "model/model.npz"

    @property
    def model_json(self) -> str:
        return self.prefix + "model/model.json"

    @property
    def history(self) -> str:
        return self.prefix + "model/history.csv"


def is_claim_key(key: str) -> bool:
    """Whether ``key`` is a job's claim (``jobs/<job_id>/claim.json``): what makes an id taken."""
    parts = key.split("/")
    return len(parts) == 3 and parts[0] == "jobs" and parts[2] == "claim.json"


class S3Client(Protocol):
    """The slice of the boto3 S3 client the store uses."""

    def put_object(self, **kwargs: Any) -> Any: ...
    def get_object(self, **kwargs: Any) -> Any: ...
    def head_object(self, **kwargs: Any) -> Any: ...
    def list_objects_v2(self, **kwargs: Any) -> Any: ...


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _is_missing(exc: Exception) -> bool:
    return _error_code(exc) in {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}


@contextmanager
def _reading(bucket: str, key: str) -> Iterator[None]:
    """A failed read as the StoreError it is, naming the object; other errors as they are."""
    try:
        yield
    except Exception as exc:
        if _is_missing(exc):
            raise MissingObjectError(f"s3://{bucket}/{key} does not exist") from None
        if _error_code(exc) in {"AccessDenied", "403", "Forbidden"}:
            raise StoreError(
                f"s3://{bucket}/{key}: access denied (this role may not read it)"
            ) from None
        raise


class Store:
    """Read and write arrays and JSON documents in one bucket."""

    #: The tagging of per-round scratch objects (``put_array(..., tagging=...)``).
    SCRATCH_TAGGING = SCRATCH_TAGGING

    def __init__(self, client: S3Client, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    # bytes ---------------------------------------------------------------
    def put_bytes(
        self,
        key: str,
        body: bytes,
        content_type: str = "application/octet-stream",
        tagging: str | None = None,
    ) -> None:
        """Write an object; ``tagging`` (``k=v&k2=v2``) sets its tags in the same request."""
        extra = {"Tagging": tagging} if tagging else {}
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, **extra
        )

    def get_bytes(self, key: str, bucket: str | None = None) -> bytes:
        return self.get_bytes_and_etag(key, bucket)[0]

    def get_bytes_and_etag(self, key: str, bucket: str | None = None) -> tuple[bytes, str]:
        """The object's bytes and the ETag of those bytes (no quotes): which version was read."""
        with _reading(bucket or self.bucket, key):
            got = self.client.get_object(Bucket=bucket or self.bucket, Key=key)
            return got["Body"].read(), str(got.get("ETag", "")).strip('"')

    def size_and_etag(self, key: str) -> tuple[int, str]:
        """The object's size in bytes and its ETag (no quotes): a HEAD, nothing downloaded."""
        with _reading(self.bucket, key):
            head = self.client.head_object(Bucket=self.bucket, Key=key)
            return int(head["ContentLength"]), str(head.get("ETag", "")).strip('"')

    def download(self, key: str, out: BinaryIO, chunk: int = 1 << 20) -> int:
        """Stream an object into a binary file in chunks (never whole in memory); bytes."""
        with _reading(self.bucket, key):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        total = 0
        while block := body.read(chunk):
            out.write(block)
            total += len(block)
        return total

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def list_keys(self, prefix: str) -> list[str]:
        """All keys under a prefix, sorted."""
        keys: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.client.list_objects_v2(**kwargs)
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return sorted(keys)
            token = page["NextContinuationToken"]

    # JSON ----------------------------------------------------------------
    def put_json(self, key: str, doc: Any) -> None:
        body = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False).encode()
        self.put_bytes(key, body, "application/json")

    def put_json_if_absent(self, key: str, doc: Any) -> bool:
        """Create a JSON object only if the key is free (S3 conditional write); False if taken."""
        body = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False).encode()
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                return False
            raise
        return True

    def get_json(self, key: str) -> Any:
        body = self.get_bytes(key)
        try:
            return json.loads(body)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError: a damaged record
            raise StoreError(f"s3://{self.bucket}/{key} is not valid JSON ({exc})") from None

    def get_json_many(self, keys: list[str], max_workers: int = 16) -> list[Any]:
        """Several JSON documents, fetched concurrently, in the order of ``keys``."""
        if len(keys) <= 1:
            return [self.get_json(k) for k in keys]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(max_workers, len(keys))) as pool:
            return list(pool.map(self.get_json, keys))

    # arrays --------------------------------------------------------------
    def put_array(self, key: str, array: np.ndarray, tagging: str | None = None) -> None:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        self.put_bytes(key, buf.getvalue(), tagging=tagging)

    def get_array(self, key: str) -> np.ndarray:
        body = self.get_bytes(key)
        with self._readable(key):
            return np.load(io.BytesIO(body), allow_pickle=False)

    @contextmanager
    def _readable(self, key: str) -> Iterator[None]:
        """A damaged array or archive (a cut-off checkpoint, junk) is a StoreError naming
        its key, never numpy's own words — which, for bytes it cannot place, suggest
        loading them with allow_pickle."""
        try:
            yield
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            why = (  # an .npy of objects; other bytes numpy calls "pickled" are just junk
                "holds Python objects; refusing to unpickle"
                if str(exc).startswith("Object arrays cannot be loaded")
                else f"is not a readable .npy / .npz ({type(exc).__name__})"
            )
            raise StoreError(f"s3://{self.bucket}/{key} {why}") from None

    def put_arrays(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        self.put_bytes(key, buf.getvalue())

    def get_arrays(self, key: str) -> dict[str, np.ndarray]:
        body = self.get_bytes(key)
        with self._readable(key), np.load(io.BytesIO(body), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}


def _md5_etag(body: bytes) -> str:
    """S3's ETag of an object uploaded in one part: its MD5, quoted."""
    return '"' + hashlib.md5(body).hexdigest() + '"'


class MemoryS3:
    """A dict-backed stand-in for the boto3 S3 client, for unit tests and reference runs."""

    class _Missing(Exception):
        def __init__(self) -> None:
            super().__init__("NoSuchKey")
            self.response = {"Error": {"Code": "NoSuchKey"}}

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    class _Taken(Exception):
        def __init__(self) -> None:
            super().__init__("PreconditionFailed")
            self.response = {"Error": {"Code": "PreconditionFailed"}}

    def put_object(self, Bucket: str, Key: str, Body: bytes, **kw: Any) -> dict:
        if kw.get("IfNoneMatch") == "*" and (Bucket, Key) in self.objects:
            raise self._Taken()
        self.objects[(Bucket, Key)] = bytes(Body)
        return {"ETag": _md5_etag(self.objects[(Bucket, Key)])}

    def get_object(self, Bucket: str, Key: str, **_: Any) -> dict:
        if (Bucket, Key) not in self.objects:
            raise self._Missing()
        body = self.objects[(Bucket, Key)]
        return {"Body": io.BytesIO(body), "ETag": _md5_etag(body)}

    def head_object(self, Bucket: str, Key: str, **_: Any) -> dict:
        if (Bucket, Key) not in self.objects:
            raise self._Missing()
        body = self.objects[(Bucket, Key)]
        return {"ContentLength": len(body), "ETag": _md5_etag(body)}

    def list_objects_v2(self, Bucket: str, Prefix: str = "", **_: Any) -> dict:
        keys = sorted(k for b, k in self.objects if b == Bucket and k.startswith(Prefix))
        return {"Contents": [{"Key": k} for k in keys], "IsTruncated": False}
