"""Checkpoints that outlive the process: the embedded engine's bucket, mirrored to disk.

moto keeps S3 in memory, so a killed ``lambdagrad train`` would lose every checkpoint. A
:class:`BucketMirror` writes each object the moment moto stores it to
``<directory>/<bucket logical id>/<key>`` (per-round scratch -- ``jobs/*/grads/`` -- and
upload triggers under ``jobs/incoming/`` excepted), and loads such a directory back into a
fresh engine's bucket. Every file is written to a temporary name and renamed, so a file in
the mirror is always a whole object; a kill can only lose the newest writes, which
:mod:`lambdagrad.resume` treats as an incomplete round.

The write-through hook wraps ``moto.s3.models.S3Backend.put_object`` (moto 5.2.5, guarded by
``tests/unit/test_moto_fixes.py``): every S3 write -- from the CLI or a handler on any
thread -- reaches it. Writes of mirrored keys are serialised with the mirror's file write,
so the file of a key rewritten twice ends with the second body, as S3 does.

A mirror also holds an exclusive lock on ``<directory>/.lock`` while its engine runs
(``fcntl.flock``; released by the OS when the process dies), so a directory is never
written by two processes: a second ``train`` or ``resume`` on it is refused.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lambdagrad.client import StackError
from lambdagrad.store import MemoryS3

__all__ = ["BucketMirror", "StateLockedError", "install_put_hook", "is_held", "mirrored"]

#: Keys never mirrored: per-round gradient scratch, and specs whose upload starts a job.
SKIPPED = re.compile(r"^jobs/(incoming/|[^/]+/grads/)")

_MIRRORS: list[BucketMirror] = []
_WRITE_LOCK = threading.Lock()
_INSTALL_LOCK = threading.Lock()


class StateLockedError(StackError):
    """Another process is running a job on this state directory."""


def mirrored(key: str) -> bool:
    """Whether an object of this key belongs in the mirror."""
    return not SKIPPED.match(key)


def install_put_hook() -> None:
    """Wrap moto's ``S3Backend.put_object`` to tell the registered mirrors (idempotent)."""
    from moto.s3.models import S3Backend

    with _INSTALL_LOCK:
        if hasattr(S3Backend.put_object, "stock"):
            return
        stock = S3Backend.put_object

        def put_object(self: Any, bucket_name: str, key_name: str, value: Any, *a, **kw) -> Any:
            mirrors = [m for m in tuple(_MIRRORS) if m.accepts(bucket_name, key_name)]
            if not mirrors:
                return stock(self, bucket_name, key_name, value, *a, **kw)
            with _WRITE_LOCK:
                new_key = stock(self, bucket_name, key_name, value, *a, **kw)
                for mirror in mirrors:
                    mirror.write(bucket_name, key_name, bytes(value))
            return new_key

        put_object.stock = stock  # type: ignore[attr-defined]
        put_object.__doc__ = stock.__doc__
        S3Backend.put_object = put_object  # type: ignore[method-assign]


class BucketMirror:
    """Mirror some buckets of the embedded engine to ``directory``, one folder per bucket.

    Parameters
    ----------
    directory
        The state directory (``<run dir>/state`` for the CLI).

    Example
    -------
    >>> mirror = BucketMirror(Path("runs/job-1/state"))       # doctest: +SKIP
    >>> mirror.lock()                                          # doctest: +SKIP
    >>> mirror.attach({"lambdagrad-local-databucket-x": "DataBucket"}, s3)  # doctest: +SKIP
    >>> mirror.close()                                         # doctest: +SKIP
    """

    def __init__(self, directory: str | Path, restore: Callable[[str], bool] | None = None) -> None:
        self.directory = Path(directory).resolve()
        #: which mirrored keys go back into the buckets on attach (default: all of them)
        self.restore_key = restore
        self.buckets: dict[str, str] = {}
        self._lock_file: Any = None

    # ---- lock --------------------------------------------------------------------
    def lock(self) -> None:
        """Take the directory for this process, or raise :class:`StateLockedError`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / ".lock"
        handle = open(path, "a+")  # noqa: SIM115 - held open for the engine's lifetime
        try:
            import fcntl
        except ImportError:  # no flock on this platform: run unguarded
            self._lock_file = handle
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise StateLockedError(
                f"{self.directory} is in use by another lambdagrad process (pid {holder}): "
                "its job is still running there"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    # ---- attach / detach ---------------------------------------------------------
    def attach(self, buckets: dict[str, str], s3: Any) -> int:
        """Load the mirror into ``buckets`` (bucket name -> folder) through ``s3`` (a boto3
        client), then mirror every later write to them. Returns the number of objects loaded."""
        install_put_hook()
        loaded = self.restore(buckets, s3)
        self.buckets = dict(buckets)
        with _WRITE_LOCK:
            _MIRRORS.append(self)
        return loaded

    def close(self) -> None:
        """Stop mirroring and release the directory."""
        with _WRITE_LOCK:
            if self in _MIRRORS:
                _MIRRORS.remove(self)
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    # ---- files -------------------------------------------------------------------
    def accepts(self, bucket: str, key: str) -> bool:
        return bucket in self.buckets and mirrored(key)

    def path_of(self, bucket: str, key: str) -> Path:
        parts = key.split("/")
        if key.startswith("/") or ".." in parts or "" in parts[:-1] or not parts[-1]:
            raise StackError(f"S3 key {key!r} cannot be mirrored to a file")
        return self.directory / self.buckets[bucket] / key

    def write(self, bucket: str, key: str, body: bytes) -> None:
        """Write one object's file atomically (temporary name, then rename)."""
        path = self.path_of(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(body)
        os.replace(tmp, path)

    def files(self, folder: str) -> Iterator[tuple[str, Path]]:
        """(key, path) of every whole object mirrored in ``folder``."""
        root = self.directory / folder
        if not root.is_dir():
            return
        for path in sorted(root.rglob("*")):
            if _whole_file(path):
                key = path.relative_to(root).as_posix()
                if mirrored(key):
                    yield key, path

    def restore(self, buckets: dict[str, str], s3: Any) -> int:
        """Put every mirrored object back into its bucket (a fresh engine's)."""
        jobs = [
            (bucket, key, path)
            for bucket, folder in buckets.items()
            for key, path in self.files(folder)
            if self.restore_key is None or self.restore_key(key)
        ]

        def put(job: tuple[str, str, Path]) -> None:
            bucket, key, path = job
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(put, jobs))
        return len(jobs)


def _whole_file(path: Path) -> bool:
    """A mirrored object's file, not one being written (:meth:`BucketMirror.write`)."""
    return path.is_file() and not (path.name.startswith(".") and path.name.endswith(".tmp"))


class MirrorS3:
    """A read-only S3 client over one bucket's mirror folder (``state/DataBucket``): enough
    for a :class:`~lambdagrad.store.Store` to read a stopped local job with the steps' own
    rules (``steps.last_complete_round``) without starting an engine."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _file(self, key: str) -> Path:
        path = self.folder / key
        if ".." in key.split("/") or not path.is_file():
            raise MemoryS3._Missing()
        return path

    def get_object(self, Bucket: str, Key: str, **_: Any) -> dict:
        return {"Body": io.BytesIO(self._file(Key).read_bytes()), "ETag": ""}

    def head_object(self, Bucket: str, Key: str, **_: Any) -> dict:
        return {"ContentLength": self._file(Key).stat().st_size, "ETag": ""}

    def list_objects_v2(self, Bucket: str, Prefix: str = "", **_: Any) -> dict:
        root = self.folder / Prefix.rsplit("/", 1)[0] if "/" in Prefix else self.folder
        paths = root.rglob("*") if root.is_dir() else []
        keys = sorted(p.relative_to(self.folder).as_posix() for p in paths if _whole_file(p))
        listed = [{"Key": k} for k in keys if k.startswith(Prefix)]
        return {"Contents": listed, "IsTruncated": False}


@contextlib.contextmanager
def mirroring(directory: str | Path, buckets: dict[str, str], s3: Any) -> Iterator[BucketMirror]:
    """Lock, load and mirror ``directory`` for the duration of a ``with`` block."""
    mirror = BucketMirror(directory)
    mirror.lock()
    try:
        mirror.attach(buckets, s3)
        yield mirror
    finally:
        mirror.close()


def is_held(directory: Path) -> bool | None:
    """Whether a process holds ``directory``'s lock, i.e. its engine is running a job there;
    None where that cannot be told (no lock file, or no ``flock`` on this platform)."""
    path = Path(directory) / ".lock"
    if not path.is_file():
        return None
    try:
        import fcntl
    except ImportError:
        return None
    with open(path) as handle:  # read only: a run directory may be
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False
