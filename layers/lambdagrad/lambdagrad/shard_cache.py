"""A worker's shard, kept between rounds: memory, then Lambda's /tmp, then S3.

A shard key (``jobs/<job>/shards/<k>.npz``) names one immutable object: prepare writes it
once and a retry rewrites identical bytes. A warm Lambda (or the embedded engine's one
process) can therefore keep it for every later round of the same job and fetch only the
parameters. Three tiers:

1. memory: decoded arrays in an LRU bounded by bytes (``LAMBDAGRAD_SHARD_MEMORY_MB``,
   default half the Lambda's memory, or 2 GiB outside Lambda);
2. /tmp: one ``.npy`` file per array in a directory private to this process, bounded by
   ``LAMBDAGRAD_SHARD_TMP_MB`` (default 400, under Lambda's 512 MB default ephemeral
   storage). A shard evicted from memory comes back from here, and a shard larger than
   the memory budget is memory-mapped from here instead of being held in RAM;
3. S3: streamed to /tmp in chunks and unpacked member by member, so loading a shard
   holds the arrays once, never the object's bytes and a decoded copy side by side.

The directory is per process because a bucket can be re-created with other contents
under the same keys (tests do that); /tmp lives exactly as long as the warm Lambda
process anyway.

Examples
--------
>>> from lambdagrad.store import MemoryS3, Store
>>> store = Store(MemoryS3(), "b")
>>> store.put_arrays("jobs/j/shards/0.npz", {"X": np.ones((2, 3)), "y": np.zeros(2)})
>>> cache = ShardCache(memory_bytes=1 << 20, tmp_bytes=1 << 20)
>>> cache.get(store, "jobs/j/shards/0.npz")["X"].shape
(2, 3)
>>> cache.get(store, "jobs/j/shards/0.npz") is cache.get(store, "jobs/j/shards/0.npz")
True
>>> cache.clear()
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lambdagrad.data import load_npy_aligned
from lambdagrad.store import Store, StoreError

__all__ = ["ShardCache", "cached_shard", "default_cache"]

_CHUNK = 1 << 20


def _megabytes(name: str, default: float) -> int:
    value = os.environ.get(name)
    return int(float(value) * 2**20) if value else int(default * 2**20)


def _default_memory_bytes() -> int:
    lambda_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    # On Lambda leave half the memory to the batch, the parameters and the gradient.
    return _megabytes("LAMBDAGRAD_SHARD_MEMORY_MB", int(lambda_mb) / 2 if lambda_mb else 2048)


def _nbytes(arrays: dict[str, np.ndarray]) -> int:
    """Bytes of RAM the arrays hold (a memory map of /tmp counts as none)."""
    return sum(0 if isinstance(a, np.memmap) else a.nbytes for a in arrays.values())


class ShardCache:
    """Immutable ``.npz`` objects by (client, bucket, key): memory LRU, /tmp, then S3."""

    def __init__(self, memory_bytes: int, tmp_bytes: int, tmp_root: str | None = None) -> None:
        self.memory_bytes = memory_bytes
        self.tmp_bytes = tmp_bytes
        self._tmp_root = tmp_root
        self._dir: Path | None = None
        self._memory: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()
        self._files: OrderedDict[tuple, tuple[Path, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}

    # -- public ---------------------------------------------------------------------
    def get(self, store: Store, key: str) -> dict[str, np.ndarray]:
        """The arrays of ``key``: from memory, else /tmp, else S3 (then kept in both)."""
        ident = (store.client, store.bucket, key)
        with self._lock:
            if ident in self._memory:
                self._memory.move_to_end(ident)
                return self._memory[ident]
            loading = self._loading.setdefault(ident, threading.Lock())
        with loading:  # one download per shard, even if two threads ask at once
            with self._lock:
                if ident in self._memory:
                    return self._memory[ident]
            arrays = self._from_tmp(ident)
            if arrays is None:
                arrays = self._from_s3(store, key, ident)
            self._keep(ident, arrays)
            return arrays

    def clear(self) -> None:
        """Forget everything and delete this process's /tmp directory."""
        with self._lock:
            self._memory.clear()
            self._files.clear()
            self._loading.clear()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    @property
    def memory_used(self) -> int:
        with self._lock:
            return sum(_nbytes(a) for a in self._memory.values())

    @property
    def tmp_used(self) -> int:
        with self._lock:
            return sum(size for _, size in self._files.values())

    # -- tiers ----------------------------------------------------------------------
    def _keep(self, ident: tuple, arrays: dict[str, np.ndarray]) -> None:
        size = _nbytes(arrays)
        mapped = any(isinstance(a, np.memmap) for a in arrays.values())
        with self._lock:
            if mapped or size > self.memory_bytes:
                return  # too big for memory: served from /tmp (mapped) or decoded once
            self._memory[ident] = arrays
            while sum(_nbytes(a) for a in self._memory.values()) > self.memory_bytes:
                self._memory.popitem(last=False)

    def _from_tmp(self, ident: tuple) -> dict[str, np.ndarray] | None:
        with self._lock:
            entry = self._files.get(ident)
            if entry is None:
                return None
            self._files.move_to_end(ident)
        return self._load_dir(entry[0], entry[1])

    def _load_dir(self, folder: Path, size: int) -> dict[str, np.ndarray]:
        # A shard too big for the memory budget stays on /tmp, memory-mapped read-only (.npy
        # data starts 64-byte aligned in the file); the others are read into memory on a
        # cache-line boundary, as the C kernels read them fastest.
        if size > self.memory_bytes:
            return _read_npy_files(folder, partial(np.load, mmap_mode="r", allow_pickle=False))
        return _read_npy_files(folder, load_npy_aligned)

    def _from_s3(self, store: Store, key: str, ident: tuple) -> dict[str, np.ndarray]:
        if self.tmp_bytes <= 0:
            return store.get_arrays(key)
        root = self._directory()
        folder = (
            root
            / hashlib.sha256(f"{id(store.client)}/{store.bucket}/{key}".encode()).hexdigest()[:24]
        )
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        archive = folder / "object.npz"
        with archive.open("wb") as out:
            store.download(key, out)
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    name = Path(member).name
                    if not name.endswith(".npy") or name != member:
                        raise StoreError(f"s3://{store.bucket}/{key}: unexpected member {member!r}")
                    with zf.open(member) as src, (folder / name).open("wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
        except zipfile.BadZipFile:
            shutil.rmtree(folder, ignore_errors=True)
            raise StoreError(f"s3://{store.bucket}/{key} is not an .npz archive") from None
        archive.unlink()
        size = sum(p.stat().st_size for p in folder.glob("*.npy"))
        if size > self.tmp_bytes:  # too big to keep on /tmp: serve it, then drop the files
            arrays = _read_npy_files(folder, load_npy_aligned)
            shutil.rmtree(folder, ignore_errors=True)
            return arrays
        with self._lock:
            self._files[ident] = (folder, size)
            while sum(s for _, s in self._files.values()) > self.tmp_bytes:
                _, (old, _) = self._files.popitem(last=False)
                shutil.rmtree(old, ignore_errors=True)
        return self._load_dir(folder, size)

    def _directory(self) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="lambdagrad-shards-", dir=self._tmp_root))
                atexit.register(shutil.rmtree, self._dir, True)
            return self._dir


def _read_npy_files(folder: Path, load: Callable[[Path], np.ndarray]) -> dict[str, np.ndarray]:
    """A shard's arrays from the ``.npy`` files it was unpacked into, by name."""
    return {p.stem: load(p) for p in sorted(folder.glob("*.npy"))}


_DEFAULT: ShardCache | None = None
_DEFAULT_LOCK = threading.Lock()


def default_cache() -> ShardCache:
    """This process's cache, sized from the environment on first use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = ShardCache(
                _default_memory_bytes(), _megabytes("LAMBDAGRAD_SHARD_TMP_MB", 400)
            )
        return _DEFAULT


def cached_shard(store: Store, key: str) -> dict[str, Any]:
    """A worker's shard from this process's cache (the one call the worker makes)."""
    return default_cache().get(store, key)
