"""Deep models and the optimizer toolbox through the real state machine (embedded engine)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from lambdagrad.artifact import TrainedModel
from lambdagrad.spec import parse_spec
from lambdagrad.store import JobKeys

from tests.conftest import job_doc
from tests.integration.test_training import reference_params, run_job


def trained(stack, job_id: str) -> TrainedModel:
    files = stack.model_files(job_id)
    return TrainedModel.from_documents(files["model.npz"], json.loads(files["model.json"]))


def xor_csv(path) -> np.ndarray:
    rng = np.random.default_rng(3)
    centers = np.array([[1, 1], [-1, -1], [1, -1], [-1, 1]])
    X = np.concatenate([c + 0.25 * rng.normal(size=(100, 2)) for c in centers])
    labels = ["same"] * 200 + ["diff"] * 200
    path.write_text(
        "x1,x2,label\n"
        + "\n".join(f"{a:.6f},{b:.6f},{t}" for (a, b), t in zip(X, labels, strict=True))
    )
    return X


def _xor_job(job_id: str, model: dict) -> dict:
    return {
        "job_id": job_id,
        "dataset": {"uri": "s3://placeholder-bucket/xor.csv", "label": "label", "validation": 0.0},
        "model": model,
        "optimizer": {"name": "adam", "learning_rate": 0.05},
        "training": {"batch_size": "full", "workers": 2, "rounds": 100},
    }


def test_mlp_learns_xor_that_no_linear_model_can(stack, tmp_path):
    path = tmp_path / "xor.csv"
    X = xor_csv(path)
    truth = ["same"] * 200 + ["diff"] * 200
    accuracy = {}
    for name, model in {
        "mlp": {"type": "mlp", "hidden": [8], "activation": "tanh"},
        "logistic": {"type": "logistic"},
    }.items():
        doc = _xor_job(f"xor-{name}", model)
        _, params = run_job(stack, doc, path)
        np.testing.assert_allclose(params, reference_params(doc, path), rtol=0, atol=1e-10)
        predictions = trained(stack, doc["job_id"]).predict(X)
        accuracy[name] = np.mean([p == t for p, t in zip(predictions, truth, strict=True)])
    assert accuracy["mlp"] >= 0.99
    assert accuracy["logistic"] < 0.8


def test_mlp_classifier_on_digits_reaches_95_percent_test_accuracy(stack, tmp_path):
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    X, y = datasets.load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = model_selection.train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y
    )
    path = tmp_path / "digits.npz"
    np.savez(path, X=X_train, y=y_train)
    doc = {
        "job_id": "digits-mlp",
        "dataset": {"uri": "s3://placeholder-bucket/digits.npz", "validation": 0.1},
        "model": {"type": "mlp", "hidden": [64], "activation": "relu"},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "training": {"batch_size": 128, "workers": 4, "epochs": 10},
    }
    status, _ = run_job(stack, doc, path)
    model = trained(stack, "digits-mlp")
    assert model.info["spec"]["model"]["task"] == "classification"  # auto from int labels
    accuracy = np.mean(np.array(model.predict(X_test)) == y_test)
    print(f"digits: MLP test accuracy {accuracy:.4f} after {status['round']} rounds")
    assert accuracy >= 0.95


OPTIMIZERS = {
    "sgd": {"learning_rate": 0.5},
    "momentum": {"learning_rate": 0.1},
    "nesterov": {"learning_rate": 0.1},
    "adam": {"learning_rate": 0.05},
    "adamw": {"learning_rate": 0.05, "weight_decay": 0.01},
    "adagrad": {"learning_rate": 0.5},
    "rmsprop": {"learning_rate": 0.02},
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_reduces_logistic_loss(stack, tmp_path, name):
    rng = np.random.default_rng(11)
    X = rng.normal(size=(300, 4))
    y = (X @ np.array([1.5, -2.0, 0.5, 0.0]) + 0.3 * rng.normal(size=300) > 0).astype(int)
    path = tmp_path / "fixed.csv"
    path.write_text(
        "a,b,c,d,y\n"
        + "\n".join(",".join(map(str, [*row, t])) for row, t in zip(X, y, strict=True))
    )
    doc = {
        "job_id": f"opt-{name}",
        "dataset": {"uri": "s3://placeholder-bucket/fixed.csv", "label": "y", "validation": 0.2},
        "model": {"type": "logistic"},
        "optimizer": {
            "name": name,
            **OPTIMIZERS[name],
            "schedule": "exponential",
            "decay_rate": 0.99,
            "warmup": 2,
        },
        "training": {"batch_size": "full", "workers": 3, "rounds": 25},
    }
    run_job(stack, doc, path)
    history = list(
        csv.DictReader(io.StringIO(stack.model_files(doc["job_id"])["history.csv"].decode()))
    )
    # full batch: each round's train loss is the exact training loss at that round's start
    first = float(history[0]["train_loss"])
    last = float(history[-1]["train_loss"])
    assert last < 0.8 * first, (name, first, last)
    np.testing.assert_allclose(
        stack.store.get_array(JobKeys(doc["job_id"]).params(25)),
        reference_params(doc, path),
        rtol=0,
        atol=1e-10,
    )


def test_early_stopping_restores_the_best_round(stack):
    doc = job_doc(
        "iris-softmax.json",
        job_id="early-stop",
        optimizer={"name": "nesterov", "learning_rate": 0.5},
        training={
            "batch_size": "full",
            "workers": 2,
            "rounds": 400,
            "patience": 3,
            "min_delta": 1e-4,
        },
    )
    status, last_params = run_job(stack, doc, "iris.csv")
    model = trained(stack, "early-stop")
    assert model.info["stopped"] == "early_stopping"
    best = model.info["model_round"]
    assert best < status["round"] < 400
    np.testing.assert_array_equal(
        model.params, stack.store.get_array(JobKeys("early-stop").params(best))
    )
    assert not np.array_equal(model.params, last_params)
    np.testing.assert_array_equal(model.params, reference_params(doc, "iris.csv"))
    assert parse_spec(model.info["spec"]).training.patience == 3
