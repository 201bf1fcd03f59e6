"""The model registry over an in-memory S3: pointers, versions, refusals, listing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from lambdagrad.artifact import TrainedModel
from lambdagrad.data import Standardizer
from lambdagrad.models import build_model
from lambdagrad.registry import (
    RegistryError,
    list_models,
    lookup,
    pointer_key,
    promote,
    register,
    validate_name,
)
from lambdagrad.store import JobKeys, MemoryS3, Store

BUCKET = "lambdagrad-example-bucket"
HOUSE_FEATURES = ["sqft", "bedrooms", "age", "distance_km"]


def tiny_model(
    kind: str = "linear",
    features: list[str] | None = None,
    classes: list[Any] | None = None,
    seed: int = 0,
    job_id: str = "job-1",
) -> TrainedModel:
    """A small model with random parameters, as finalize would save it."""
    features = list(features or HOUSE_FEATURES)
    d = len(features)
    n_classes = len(classes) if classes else 1
    model = build_model(kind, d, n_classes)
    rng = np.random.default_rng(seed)
    params = rng.normal(size=model.n_params)
    standardizer = Standardizer(mean=rng.normal(size=d) * 10, scale=rng.uniform(1, 5, size=d))
    return TrainedModel(
        model=model,
        params=params,
        standardizer=standardizer,
        feature_names=features,
        classes=classes,
        info={
            "job_id": job_id,
            "model": {"type": kind},
            "trained_at": 1795726401.0 + seed,
            "metrics": {"train_loss": 0.5 + seed, "validation_loss": 0.75, "validation": {}},
        },
    )


def write_model(store: Store, job_id: str, trained: TrainedModel | None = None) -> TrainedModel:
    """Write a model to jobs/<job_id>/model/ the way finalize does (model.json last)."""
    trained = trained or tiny_model(job_id=job_id)
    trained.info = {**trained.info, "job_id": job_id}
    npz_bytes, doc = trained.to_documents()
    keys = JobKeys(job_id)
    store.put_bytes(keys.model_npz, npz_bytes)
    store.put_json(keys.model_json, doc)
    return trained


@pytest.fixture
def store() -> Store:
    return Store(MemoryS3(), BUCKET)


def test_register_writes_the_pointer(store):
    write_model(store, "job-1")
    pointer = register(store, "houses", "job-1", now=1000.0)
    assert pointer == {
        "name": "houses",
        "job_id": "job-1",
        "model_key": "jobs/job-1/model/model.json",
        "npz_key": "jobs/job-1/model/model.npz",
        "registered_at": 1000.0,
        "version": pointer["version"],
    }
    assert isinstance(pointer["version"], str) and len(pointer["version"]) == 16
    assert store.get_json("models/houses/current.json") == pointer
    assert lookup(store, "houses") == pointer


def test_register_is_idempotent_for_the_same_job_and_refuses_another(store):
    write_model(store, "job-1")
    write_model(store, "job-2")
    first = register(store, "houses", "job-1", now=1000.0)
    assert register(store, "houses", "job-1", now=2000.0) == first
    with pytest.raises(RegistryError, match=r"already registered.*promote"):
        register(store, "houses", "job-2")
    assert lookup(store, "houses") == first


def test_promote_moves_the_pointer_and_changes_the_version(store):
    write_model(store, "job-1")
    write_model(store, "job-2")
    first = promote(store, "houses", "job-1", now=1000.0)  # promote creates a new name too
    second = promote(store, "houses", "job-2", now=1000.0)
    back = promote(store, "houses", "job-1", now=1000.0)  # same job and time as the first
    assert second["job_id"] == "job-2" and second["model_key"] == "jobs/job-2/model/model.json"
    assert len({first["version"], second["version"], back["version"]}) == 3
    assert lookup(store, "houses") == back


def test_a_job_without_a_complete_model_is_refused(store):
    keys = JobKeys("job-3")
    store.put_bytes(keys.model_npz, b"half a model")  # finalize writes model.json last
    for action in (register, promote):
        with pytest.raises(RegistryError, match="job 'job-3' has no complete model"):
            action(store, "houses", "job-3")
    with pytest.raises(RegistryError, match="job 'never-ran' has no complete model"):
        register(store, "houses", "never-ran")
    assert not store.exists(pointer_key("houses"))


@pytest.mark.parametrize("job_id", ["../x", "", "a/b", 7])
def test_invalid_job_ids_are_refused(store, job_id):
    with pytest.raises(RegistryError, match="invalid job id"):
        register(store, "houses", job_id)


@pytest.mark.parametrize(
    "name", ["", ".hidden", "-x", "a/b", "a b", "x" * 65, "naïve", None, 3, "../etc"]
)
def test_invalid_names_are_refused(store, name):
    write_model(store, "job-1")
    with pytest.raises(RegistryError, match="invalid model name"):
        promote(store, name, "job-1")
    with pytest.raises(RegistryError, match="invalid model name"):
        lookup(store, name)


@pytest.mark.parametrize("name", ["a", "Houses_v2.1-final", "0", "x" * 64])
def test_valid_names(name):
    assert validate_name(name) == name


def test_lookup_of_an_unknown_model(store):
    with pytest.raises(RegistryError, match="no model named 'nope'"):
        lookup(store, "nope")


def test_list_models_is_sorted_with_metrics(store):
    assert list_models(store) == []
    write_model(store, "job-1", tiny_model(seed=1))
    write_model(store, "job-2", tiny_model("softmax", classes=["a", "b", "c"], seed=2))
    promote(store, "zeta", "job-1", now=1.0)
    promote(store, "alpha", "job-2", now=2.0)
    store.put_json("models/stray.json", {})  # not a pointer: ignored
    models = list_models(store)
    assert [m["name"] for m in models] == ["alpha", "zeta"]
    alpha, zeta = models
    assert alpha["job_id"] == "job-2" and alpha["registered_at"] == 2.0
    assert alpha["metrics"]["train_loss"] == 2.5
    assert alpha["model_type"] == "softmax" and alpha["task"] == "classification"
    assert zeta["job_id"] == "job-1" and zeta["metrics"]["train_loss"] == 1.5
    assert (
        zeta["trained_at"] == 1795726402.0 and zeta["version"] == lookup(store, "zeta")["version"]
    )


@pytest.mark.parametrize("damaged", [{"name": "houses"}, ["houses"], {"model_key": 3}, "{no"])
def test_a_damaged_pointer_is_named_and_promote_repairs_it(store, damaged):
    write_model(store, "job-1")
    if isinstance(damaged, str):  # not JSON at all
        store.put_bytes(pointer_key("houses"), damaged.encode())
    else:
        store.put_json(pointer_key("houses"), damaged)
    message = r"models/houses/current.json.*(damaged|not valid JSON).*models promote houses"
    with pytest.raises(RegistryError, match=message):
        lookup(store, "houses")
    with pytest.raises(RegistryError, match=message):
        list_models(store)
    assert promote(store, "houses", "job-1")["job_id"] == "job-1"
    assert lookup(store, "houses")["job_id"] == "job-1"


def test_a_pointer_that_lost_its_name_is_listed_under_its_key(store):
    """models list printed part of its table, then died with KeyError: 'name'."""
    write_model(store, "job-1")
    pointer = promote(store, "houses", "job-1")
    store.put_json(pointer_key("houses"), {k: v for k, v in pointer.items() if k != "name"})
    (entry,) = list_models(store)
    assert entry["name"] == "houses" and entry["job_id"] == "job-1"
