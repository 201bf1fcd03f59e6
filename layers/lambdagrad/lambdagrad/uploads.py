"""Jobs started by uploading a spec: the S3 event, and the job id derived from it.

EventBridge delivers at least once, so one upload may start two executions. Both derive
the same job id from the object's key and ETag, and the second finds the job claimed and
stops with ``JobExistsError`` without touching the first job's files.

Example
-------
>>> upload_job_id("jobs/incoming/houses.json", '"9b2cf535f27731c974343645a3985328"')
'houses-4037ca137e9b'
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["INCOMING_PREFIX", "Upload", "unsafe_upload_key", "upload_from_event", "upload_job_id"]

INCOMING_PREFIX = "jobs/incoming/"


@dataclass(frozen=True)
class Upload:
    """The object an ``Object Created`` event names."""

    bucket: str
    key: str
    etag: str

    @property
    def job_id(self) -> str:
        return upload_job_id(self.key, self.etag)


def upload_job_id(key: str, etag: str) -> str:
    """A job id from the file's name and a digest of (key, ETag): same object, same job."""
    stem = key.rsplit("/", 1)[-1].removesuffix(".json")
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_")[:32] or "job"
    digest = hashlib.sha256(f"{key}\n{etag.strip(chr(34))}".encode()).hexdigest()[:12]
    return f"{stem}-{digest}"


def unsafe_upload_key(key: str) -> str | None:
    """Why an uploaded job file's key cannot start a job, or None when it can.

    The rule only fires under ``jobs/incoming/``, but a key is any string: one with ``..``
    segments or a leading ``/`` would read as a path elsewhere, so it is refused by name.
    """
    if key.startswith("/") or ".." in key.split("/"):
        return "an uploaded job file's key must be relative with no '..' segments"
    if not key.startswith(INCOMING_PREFIX):
        return f"an uploaded job file must be under {INCOMING_PREFIX}"
    return None


def upload_from_event(event: Any) -> Upload | None:
    """The uploaded object of an EventBridge S3 ``Object Created`` event, else None."""
    if not isinstance(event, dict) or not isinstance(event.get("detail"), dict):
        return None
    detail = event["detail"]
    try:
        return Upload(
            bucket=str(detail["bucket"]["name"]),
            key=str(detail["object"]["key"]),
            # AWS spells it "etag"; moto's events say "eTag"
            etag=str(detail["object"].get("etag") or detail["object"].get("eTag") or ""),
        )
    except (KeyError, TypeError):
        return None
