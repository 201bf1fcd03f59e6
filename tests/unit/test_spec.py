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
        # [true, true] was two layers of width 1; [] silently became the default [64]
        (
            {"dataset": {"uri": URI}, "model": {"type": "mlp", "hidden": [True, True]}},
            "model.hidden: expected layer sizes (whole numbers), got [true, true]",
        ),
        (
            {"dataset": {"uri": URI}, "model": {"type": "mlp", "hidden": []}},
            "hidden: [] gives an mlp no hidden layer",
        ),
        # a cosine schedule that would raise the rate to final_lr
        (
            {
                "dataset": {"uri": URI},
                "optimizer": {"schedule": "cosine", "learning_rate": 0.1, "final_lr": 0.5},
            },
            "final_lr 0.5 is above the learning rate 0.1",
        ),
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


def test_defaults_in_force_follow_the_optimizer_and_schedule_of_the_spec():
    """exponential halves the rate after 69 rounds by default, not every round. The spec
    keeps None for a default, so a saved spec reused with another optimizer or schedule
    takes that one's default (model.json records the values used beside it)."""
    uri = {"uri": "s3://bkt/d.csv"}
    for schedule, rate in (("step", 0.5), ("exponential", 0.99), ("inverse_time", 0.01)):
        spec = parse_spec({"dataset": uri, "optimizer": {"schedule": schedule}})
        assert (spec.optimizer.decay_rate, spec.optimizer.decay) == (None, rate)
        reused = json.loads(spec.model_dump_json())
        reused["optimizer"] |= {"schedule": "constant", "name": "adam"}
        assert parse_spec(reused).optimizer.lr == 0.01  # adam's, not sgd's
    given = {"schedule": "exponential", "decay_rate": 0.5}
    assert parse_spec({"dataset": uri, "optimizer": given}).optimizer.decay == 0.5
    for name, lr in (("sgd", 0.1), ("momentum", 0.05), ("adamw", 0.01), ("rmsprop", 0.01)):
        spec = parse_spec({"dataset": uri, "optimizer": {"name": name}})
        assert spec.optimizer.lr == lr and parse_spec(spec.model_dump_json()) == spec


def test_a_stored_spec_with_ignored_hyper_parameters_still_reads_back():
    """A job's spec written by an earlier version, which took --momentum with sgd or
    --activation for a linear model and ignored them: its steps and resume read it as it
    is; only a new job is refused."""
    doc = {
        "dataset": {"uri": "s3://bkt/d.csv"},
        "model": {"type": "linear", "activation": "tanh"},
        "optimizer": {"name": "sgd", "momentum": 0.5, "decay_rate": 0.5, "final_lr": 0.1},
    }
    spec = parse_spec(doc, stored=True)
    assert spec.optimizer.momentum == 0.5 and spec.model.activation == "tanh"
    with pytest.raises(SpecError, match="an activation is for model type mlp"):
        parse_spec(doc)
    with pytest.raises(SpecError, match=r"momentum 0\.5 is read by the momentum / nesterov"):
        parse_spec({**doc, "model": {"type": "linear"}})


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


def test_a_key_given_twice_is_one_message():
    with pytest.raises(SpecError) as err:
        parse_spec(f'{{"dataset": {{"uri": "{URI}"}}, "colour": 1, "colour": 2}}')
    assert str(err.value) == "invalid job spec: colour: unknown field"


def test_an_mlp_left_without_hidden_layers_gets_the_default_and_cosine_may_end_lower():
    mlp = parse_spec({"dataset": {"uri": URI}, "model": {"type": "mlp"}})
    assert mlp.model.hidden == [64]
    cosine = {"schedule": "cosine", "learning_rate": 0.1, "final_lr": 0.01}
    assert parse_spec({"dataset": {"uri": URI}, "optimizer": cosine}).optimizer.final_lr == 0.01
