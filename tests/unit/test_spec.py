"""The job spec: defaults, unknown fields, ranges, and error messages naming the field."""

import json
from pathlib import Path

import numpy as np
import pytest
from lambdagrad.spec import SpecError, parse_spec

EVENTS = Path(__file__).resolve().parents[2] / "events"
URI = "s3://bucket-name/datasets/d.csv"


def test_defaults_train_without_tuning():
    spec = parse_spec({"dataset": {"uri": URI, "label": "y"}})
    assert spec.model.type == "linear"
    assert spec.optimizer.name == "sgd" and spec.optimizer.lr == 0.1
    assert spec.training.batch_size == 64 and spec.training.workers == 4
    assert spec.dataset.validation == 0.1 and spec.model.l2 == 0.0


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"dataset": {"uri": URI, "colour": 1}}, "dataset.colour: unknown field"),
        ({"dataset": {"uri": URI}, "extra": 1}, "extra: unknown field"),
        (
            {"dataset": {"uri": URI}, "optimizer": {"learning_rate": -0.1}},
            "optimizer.learning_rate",
        ),
        ({"dataset": {"uri": URI}, "training": {"workers": 0}}, "training.workers"),
        ({"dataset": {"uri": URI}, "training": {"batch_size": 0}}, "training.batch_size"),
        ({"dataset": {"uri": URI}, "training": {"batch_size": "half"}}, "training.batch_size"),
        ({"dataset": {"uri": URI, "validation": 1.5}}, "dataset.validation"),
        ({"dataset": {"uri": URI}, "model": {"l2": -1}}, "model.l2"),
        ({"dataset": {"uri": URI}, "model": {"type": "forest"}}, "model.type"),
        ({"dataset": {"uri": "/etc/passwd"}}, "dataset.uri"),
        ({"dataset": {"uri": "s3://bucket-name/../secret"}}, "dataset.uri"),
        ({"dataset": {"uri": URI}, "training": {"epochs": 2, "rounds": 3}}, "epochs or rounds"),
        ({"dataset": {"uri": URI}, "job_id": "../x"}, "job_id"),
        ({}, "dataset: Field required"),
    ],
)
def test_bad_specs_name_the_field(doc, field):
    with pytest.raises(SpecError) as err:
        parse_spec(doc)
    assert field in str(err.value)


def test_json_text_and_full_batch():
    spec = parse_spec(json.dumps({"dataset": {"uri": URI}, "training": {"batch_size": "full"}}))
    assert spec.training.full_batch and spec.default_epochs == 100.0


@pytest.mark.parametrize("path", sorted((EVENTS / "jobs").glob("*.json")), ids=lambda p: p.name)
def test_example_job_specs_are_valid(path):
    parse_spec(path.read_text())


@pytest.mark.parametrize(("group", "field"), [("training", "batch_size"), ("training", "seed")])
def test_booleans_are_not_numbers(group, field):
    # pydantic alone reads true as 1: "batch_size": true would quietly be SGD
    doc = {"dataset": {"uri": "s3://bucket/data.csv"}, group: {field: True}}
    with pytest.raises(SpecError, match=rf"{group}\.{field}: expected a number, got true"):
        parse_spec(doc)


def test_a_label_for_an_npz_is_still_a_valid_spec():
    # refused where the data is read (training.read_training_data), so a spec stored with
    # a job before that check still parses for its workers, reducer and resume
    doc = {"dataset": {"uri": "s3://bucket/d.npz", "label": "price"}}
    assert parse_spec(doc).dataset.label == "price"


def test_label_is_stripped_and_an_index_may_be_a_number():
    def label(value):
        return parse_spec({"dataset": {"uri": "s3://bucket/d.npy", "label": value}}).dataset.label

    assert label(" price ") == "price"  # header names are read stripped too
    assert label(0) == "0" and label(-1) == "-1"  # an .npy column index
    with pytest.raises(SpecError, match=r"dataset.label: .*must name a column"):
        label("  ")
    with pytest.raises(SpecError, match=r"dataset.label"):
        label(True)


def test_decay_rate_and_learning_rate_in_force_are_kept_in_the_saved_spec():
    """exponential halves the rate after 69 rounds by default, not every round; the values
    used are what the saved spec (model.json) records, and it reads back the same."""
    for schedule, rate in (("step", 0.5), ("exponential", 0.99), ("inverse_time", 0.01)):
        spec = parse_spec(
            {"dataset": {"uri": "s3://bkt/d.csv"}, "optimizer": {"schedule": schedule}}
        )
        assert spec.optimizer.decay_rate == rate
        assert parse_spec(spec.model_dump_json()) == spec
    given = {"schedule": "exponential", "decay_rate": 0.5}
    spec = parse_spec({"dataset": {"uri": "s3://bkt/d.csv"}, "optimizer": given})
    assert spec.optimizer.decay_rate == 0.5
    # a saved spec of any optimizer reads back: the fields it does not read hold defaults,
    # and the learning rate it records is the one in force
    for name, lr in (("sgd", 0.1), ("momentum", 0.05), ("adamw", 0.01), ("rmsprop", 0.01)):
        spec = parse_spec({"dataset": {"uri": "s3://bkt/d.csv"}, "optimizer": {"name": name}})
        assert json.loads(spec.model_dump_json())["optimizer"]["learning_rate"] == lr
        assert parse_spec(spec.model_dump_json()) == spec


def test_rmsprop_reads_its_eps():
    """``--eps`` reaches rmsprop (it was read by adam and adamw only, silently)."""
    from lambdagrad.models import build_model
    from lambdagrad.training import optimizer_for

    model = build_model("linear", 3, 1)
    params, grad = np.zeros(model.n_params), np.full(model.n_params, 1e-3)
    steps = []
    for eps in (1e-8, 1e-2):
        doc = {"dataset": {"uri": "s3://bkt/d.csv"}, "optimizer": {"name": "rmsprop", "eps": eps}}
        optimizer = optimizer_for(parse_spec(doc), model, total=10)
        updates, _ = optimizer.update(grad, optimizer.init(params), params)
        steps.append(updates)
    assert not np.allclose(steps[0], steps[1])
