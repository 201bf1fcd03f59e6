"""The worker's shard cache: memory LRU by bytes, then /tmp, then S3 (bytes counted)."""

from __future__ import annotations

import numpy as np
import pytest
from lambdagrad.shard_cache import ShardCache
from lambdagrad.store import MemoryS3, Store, StoreError


class CountingS3(MemoryS3):
    """MemoryS3 that counts the bytes handed out by get_object."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes_read = 0

    def get_object(self, Bucket, Key, **kw):
        self.bytes_read += len(self.objects.get((Bucket, Key), b""))
        return super().get_object(Bucket, Key, **kw)


@pytest.fixture
def store() -> Store:
    s = Store(CountingS3(), "bucket")
    rng = np.random.default_rng(0)
    for k in range(3):  # three shards of 8,000 + 800 bytes
        s.put_arrays(f"jobs/j/shards/{k}.npz", {"X": rng.random((100, 10)), "y": rng.random(100)})
    return s


def _arrays(store: Store, k: int) -> dict[str, np.ndarray]:
    return store.get_arrays(f"jobs/j/shards/{k}.npz")


def test_second_round_reads_nothing_from_s3(store, tmp_path):
    cache = ShardCache(memory_bytes=1 << 20, tmp_bytes=1 << 20, tmp_root=str(tmp_path))
    first = cache.get(store, "jobs/j/shards/0.npz")
    read = store.client.bytes_read
    assert read > 8800
    np.testing.assert_array_equal(first["X"], _arrays(store, 0)["X"])
    store.client.bytes_read = 0
    assert cache.get(store, "jobs/j/shards/0.npz") is first
    assert store.client.bytes_read == 0
    assert cache.memory_used == 8800 and cache.tmp_used >= 8800


def test_evicted_from_memory_comes_back_from_tmp_not_s3(store, tmp_path):
    cache = ShardCache(memory_bytes=2 * 8800, tmp_bytes=1 << 20, tmp_root=str(tmp_path))
    for k in range(3):
        cache.get(store, f"jobs/j/shards/{k}.npz")
    assert cache.memory_used == 2 * 8800  # shard 0 left memory (least recently used)
    store.client.bytes_read = 0
    again = cache.get(store, "jobs/j/shards/0.npz")
    assert store.client.bytes_read == 0
    np.testing.assert_array_equal(again["y"], _arrays(store, 0)["y"])


def test_shard_larger_than_memory_is_memory_mapped_from_tmp(store, tmp_path):
    cache = ShardCache(memory_bytes=1000, tmp_bytes=1 << 20, tmp_root=str(tmp_path))
    got = cache.get(store, "jobs/j/shards/1.npz")
    assert isinstance(got["X"], np.memmap) and not got["X"].flags.writeable
    assert cache.memory_used == 0
    expected = _arrays(store, 1)["X"]
    store.client.bytes_read = 0
    np.testing.assert_array_equal(cache.get(store, "jobs/j/shards/1.npz")["X"], expected)
    assert store.client.bytes_read == 0


def test_tmp_budget_evicts_oldest_files_and_too_big_still_loads(store, tmp_path):
    cache = ShardCache(memory_bytes=0, tmp_bytes=2 * 9000, tmp_root=str(tmp_path))
    for k in range(3):
        cache.get(store, f"jobs/j/shards/{k}.npz")
    assert cache.tmp_used <= 2 * 9000
    store.client.bytes_read = 0
    cache.get(store, "jobs/j/shards/0.npz")  # its files were evicted: S3 again
    assert store.client.bytes_read > 0
    tiny = ShardCache(memory_bytes=0, tmp_bytes=100, tmp_root=str(tmp_path))
    np.testing.assert_array_equal(
        tiny.get(store, "jobs/j/shards/2.npz")["X"], _arrays(store, 2)["X"]
    )
    assert tiny.tmp_used == 0


def test_buckets_are_kept_apart_and_clear_removes_files(store, tmp_path):
    other = Store(store.client, "other")
    other.put_arrays("jobs/j/shards/0.npz", {"X": np.zeros((2, 10)), "y": np.zeros(2)})
    cache = ShardCache(memory_bytes=1 << 20, tmp_bytes=1 << 20, tmp_root=str(tmp_path))
    assert cache.get(store, "jobs/j/shards/0.npz")["X"].shape == (100, 10)
    assert cache.get(other, "jobs/j/shards/0.npz")["X"].shape == (2, 10)
    assert any(tmp_path.iterdir())
    cache.clear()
    assert not any(tmp_path.iterdir()) and cache.memory_used == 0


def test_missing_or_corrupt_shard_is_a_named_store_error(store, tmp_path):
    cache = ShardCache(memory_bytes=1 << 20, tmp_bytes=1 << 20, tmp_root=str(tmp_path))
    with pytest.raises(StoreError, match=r"jobs/j/shards/9\.npz does not exist"):
        cache.get(store, "jobs/j/shards/9.npz")
    store.put_bytes("jobs/j/shards/8.npz", b"not a zip")
    with pytest.raises(StoreError, match=r"shards/8\.npz is not an \.npz archive"):
        cache.get(store, "jobs/j/shards/8.npz")


def test_shards_come_back_on_cache_line_boundaries(store, tmp_path):
    # The C kernels' vector loads never straddle two lines of a cached shard: read into
    # memory on a 64-byte boundary (numpy's own arrays are 16-byte aligned), or
    # memory-mapped (.npy data starts 64-byte aligned in its file).
    for memory in (1 << 20, 1000):  # in memory / memory-mapped from /tmp
        cache = ShardCache(memory_bytes=memory, tmp_bytes=1 << 20, tmp_root=str(tmp_path))
        got = cache.get(store, "jobs/j/shards/1.npz")
        for name, want in _arrays(store, 1).items():
            assert got[name].ctypes.data % 64 == 0
            np.testing.assert_array_equal(got[name], want)
