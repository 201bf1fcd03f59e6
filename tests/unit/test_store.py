"""Store keys and round trips (in-memory S3 and moto S3)."""

import boto3
import numpy as np
import pytest
from lambdagrad.store import JobKeys, MemoryS3, Store, StoreError, parse_s3_uri
from moto import mock_aws


def test_keys_are_deterministic():
    keys = JobKeys("job-1")
    assert keys.params(3) == "jobs/job-1/params/3.npy"
    assert keys.optimizer(3) == "jobs/job-1/optimizer/3.npz"
    assert keys.grad(3, 2) == "jobs/job-1/grads/3/2.npy"
    assert keys.shard(1) == "jobs/job-1/shards/1.npz"
    assert keys.model_npz == "jobs/job-1/model/model.npz"
    assert keys.metrics(12) < keys.metrics(100)  # lexicographic = numeric order


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "x" * 61, "-lead"])
def test_bad_job_ids_refused(bad):
    with pytest.raises(StoreError):
        JobKeys(bad)


@pytest.mark.parametrize("uri", ["s3://b/../k", "s3://b//abs", "http://b/k", "s3://b"])
def test_unsafe_uris_refused(uri):
    with pytest.raises(StoreError):
        parse_s3_uri(uri)


def _roundtrip(store: Store):
    a = np.arange(6.0).reshape(2, 3)
    store.put_array("x.npy", a)
    np.testing.assert_array_equal(store.get_array("x.npy"), a)
    store.put_arrays("x.npz", {"X": a, "y": np.array([1, 2])})
    got = store.get_arrays("x.npz")
    assert set(got) == {"X", "y"}
    store.put_json("d.json", {"a": 1})
    assert store.get_json("d.json") == {"a": 1}
    assert store.exists("d.json") and not store.exists("nope")
    assert store.list_keys("x.") == ["x.npy", "x.npz"]
    with pytest.raises(StoreError, match="nope does not exist"):
        store.get_bytes("nope")


def test_memory_store_roundtrip():
    _roundtrip(Store(MemoryS3(), "bucket"))


@mock_aws
def test_s3_store_roundtrip():
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="bucket")
    _roundtrip(Store(s3, "bucket"))
    # a dataset URI naming a bucket that does not exist: the same StoreError, not a ClientError
    with pytest.raises(StoreError, match=r"s3://no-such-bucket/datasets/a.csv does not exist"):
        Store(s3, "bucket").get_bytes("datasets/a.csv", bucket="no-such-bucket")


def test_pickled_arrays_are_refused():
    store = Store(MemoryS3(), "bucket")
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    store.put_bytes("evil.npy", buf.getvalue())
    with pytest.raises(StoreError, match=r"s3://bucket/evil.npy holds Python objects; refusing"):
        store.get_array("evil.npy")


@pytest.mark.parametrize("body", [b"junk", b"\x93NUMPY\x01\x00", b"PK\x03\x04cut"])
def test_a_damaged_array_names_its_key_and_never_suggests_unpickling(body):
    # a cut-off checkpoint: numpy's own message for bytes it cannot place says to load
    # them with allow_pickle=True
    store = Store(MemoryS3(), "bucket")
    store.put_bytes("jobs/j/params/3.npy", body)
    for read in (store.get_array, store.get_arrays):
        with pytest.raises(StoreError, match=r"^s3://bucket/jobs/j/params/3.npy ") as info:
            read("jobs/j/params/3.npy")
        assert "allow_pickle" not in str(info.value)


def test_a_damaged_json_record_names_its_key():
    store = Store(MemoryS3(), "bucket")
    store.put_bytes("jobs/j/status.json", b"{bad")
    with pytest.raises(StoreError, match=r"^s3://bucket/jobs/j/status.json is not valid JSON"):
        store.get_json("jobs/j/status.json")
