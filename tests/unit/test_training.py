"""Round arithmetic: batch splitting, sampling without replacement, lengths, segments."""

import io
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from lambdagrad.data import DataError
from lambdagrad.spec import parse_spec
from lambdagrad.training import (
    EVENTS_PER_ROUND_FIXED,
    EVENTS_PER_ROUND_PER_WORKER,
    EVENTS_PER_SEGMENT,
    HISTORY_EVENT_BUDGET,
    SEGMENTS_PER_EXECUTION,
    batch_indices,
    combine_gradients,
    local_batch_sizes,
    read_training_data,
    segment_rounds_for,
    segment_time_up,
    shard_arrays,
    total_rounds,
    transfer_gradient,
)

URI = "s3://bucket-name/d.csv"


@pytest.mark.parametrize(("batch", "workers"), [(64, 4), (10, 4), (1, 4), (3, 8), (100, 1)])
def test_local_batches_sum_to_global(batch, workers):
    for r in range(10):
        sizes = local_batch_sizes(batch, workers, r)
        assert sum(sizes) == batch
        assert max(sizes) - min(sizes) <= 1


def test_remainder_rotates_so_sgd_visits_every_shard():
    assert [local_batch_sizes(1, 4, r) for r in range(4)] == [
        [1, 0, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 1],
    ]


def test_each_epoch_visits_every_row_once():
    n, batch, workers = 40, 8, 2  # 20 rows per shard, 4 per worker per round: 5 rounds/epoch
    for shard in range(workers):
        seen = np.concatenate(
            [batch_indices(n // workers, batch, workers, 3, r, shard) for r in range(5)]
        )
        assert sorted(seen.tolist()) == list(range(20))
        again = np.concatenate(
            [batch_indices(n // workers, batch, workers, 3, r, shard) for r in range(5, 10)]
        )
        assert sorted(again.tolist()) == list(range(20))
        assert seen.tolist() != again.tolist()  # reshuffled each epoch


def test_batches_deterministic_and_seeded():
    a = batch_indices(100, 16, 4, 0, 7, 2)
    assert np.array_equal(a, batch_indices(100, 16, 4, 0, 7, 2))
    assert not np.array_equal(a, batch_indices(100, 16, 4, 1, 7, 2))


def test_batch_wraps_across_epochs_and_uneven_remainders():
    # 3 rows in the shard, local batch 2: positions run over epoch boundaries
    rows = [batch_indices(3, 4, 2, 0, r, 0) for r in range(6)]
    flat = np.concatenate(rows)
    for e in range(4):
        assert sorted(flat[3 * e : 3 * e + 3].tolist()) == [0, 1, 2]


def test_full_batch_is_every_row():
    assert batch_indices(5, "full", 3, 0, 9, 1).tolist() == [0, 1, 2, 3, 4]


def test_total_rounds():
    spec = parse_spec({"dataset": {"uri": URI}, "training": {"batch_size": 64, "epochs": 2}})
    assert total_rounds(spec, 1000) == 32  # ceil(2000 / 64)
    spec = parse_spec({"dataset": {"uri": URI}, "training": {"batch_size": "full"}})
    assert total_rounds(spec, 1000) == 100
    spec = parse_spec({"dataset": {"uri": URI}, "training": {"rounds": 7}})
    assert total_rounds(spec, 1000) == 7


@pytest.mark.parametrize("workers", [1, 4, 40, 1000])
def test_segment_keeps_history_well_under_limit(workers):
    spec = parse_spec({"dataset": {"uri": URI}, "training": {"workers": workers}})
    seg = segment_rounds_for(spec)
    events = seg * (EVENTS_PER_ROUND_FIXED + EVENTS_PER_ROUND_PER_WORKER * workers)
    assert seg >= 1 and events <= 20_000 - 100


def test_training_execution_runs_its_segments_well_under_limit():
    """The Standard execution's own history: a fixed number of events per segment."""
    template = (Path(__file__).resolve().parents[2] / "template.yaml").read_text()
    default = re.search(r"SegmentsPerExecution:\n(?:\s+\w+: .*\n)*?\s+Default: (\d+)", template)
    most = re.search(r"SegmentsPerExecution:\n(?:\s+\w+: .*\n)*?\s+MaxValue: (\d+)", template)
    assert int(default.group(1)) == SEGMENTS_PER_EXECUTION
    assert SEGMENTS_PER_EXECUTION * EVENTS_PER_SEGMENT <= HISTORY_EVENT_BUDGET
    assert int(most.group(1)) * EVENTS_PER_SEGMENT <= 20_000


def test_segment_time_up():
    start = "2026-11-26T23:00:00.250000+00:00"
    t0 = datetime(2026, 11, 26, 23, 0, 0, 250000, tzinfo=UTC).timestamp()
    assert not segment_time_up(start, "120", t0 + 119.9)
    assert segment_time_up(start, "120", t0 + 120.1)
    assert segment_time_up("2026-11-26T23:00:00.250Z", 120, t0 + 121)  # AWS's form
    assert not segment_time_up(None, "120", t0 + 1e6)  # not in a segment: rounds only
    assert not segment_time_up(start, None, t0 + 1e6)


def test_combine_is_weighted_mean():
    g, loss, n = combine_gradients([np.array([2.0]), np.array([6.0])], [4.0, 2.0], [2, 4])
    assert n == 6 and g.tolist() == [8.0 / 6] and loss == 1.0


def _spec(**training):
    return parse_spec({"dataset": {"uri": URI}, "training": training})


def test_early_stopping_waits_patience_rounds_and_remembers_the_best():
    from lambdagrad.training import advance_progress, final_round, initial_progress

    spec = _spec(patience=2, min_delta=0.01)
    progress, stops = initial_progress(0.0), []
    for r, val in enumerate([5.0, 4.0, 3.995, 4.5], start=1):
        progress, stop = advance_progress(progress, spec, r, 1.0 / r, val, float(r))
        stops.append(stop)
    # 3.995 is not better than 4.0 by min_delta: two rounds without a gain stop the job
    assert stops == [None, None, None, "early_stopping"]
    assert progress["best_round"] == 2 and progress["best_loss"] == 4.0
    assert final_round(spec, {"best_round": 2}, 4) == 2
    assert final_round(_spec(), {"best_round": 2}, 4) == 4  # no patience: the last round


def test_tolerance_stops_on_small_relative_change():
    from lambdagrad.training import advance_progress, initial_progress

    spec = _spec(tolerance=0.01)
    p, stop = advance_progress(initial_progress(0.0), spec, 1, 10.0, None, 1.0)
    assert stop is None
    p, stop = advance_progress(p, spec, 2, 9.0, None, 2.0)
    assert stop is None
    _, stop = advance_progress(p, spec, 3, 8.95, None, 3.0)
    assert stop == "tolerance"


def test_patience_needs_a_validation_split():
    with pytest.raises(Exception, match=r"training\.patience needs a validation split"):
        parse_spec({"dataset": {"uri": URI, "validation": 0}, "training": {"patience": 3}})


def test_float32_shards_and_gradients_combine_in_float64():
    doc = {"dataset": {"uri": URI, "label": "y"}, "training": {"dtype": "float32"}}
    spec = parse_spec(doc)
    shard = shard_arrays(spec, np.ones((3, 2)), np.arange(3))
    assert shard["X"].dtype == np.float32 and shard["y"].dtype == np.int64  # class indices
    assert shard_arrays(spec, np.ones((3, 2)), np.ones(3))["y"].dtype == np.float32
    sent = transfer_gradient(spec, np.array([1.0 + 1e-12, 3.0]))
    assert sent.dtype == np.float32 and sent.nbytes == 8
    grad, _, _ = combine_gradients([sent, sent.copy()], [1.0, 1.0], [1, 1])
    assert grad.dtype == np.float64
    assert parse_spec({**doc, "training": {}}).training.dtype == "float64"


def test_prepare_refuses_a_label_an_npz_would_ignore():
    # what Prepare reads for a job however it was started (the spec itself accepts it)
    buf = io.BytesIO()
    X = np.arange(12.0).reshape(6, 2)
    np.savez(buf, X=X, y=X.sum(axis=1))
    spec = parse_spec({"dataset": {"uri": "s3://bucket/in/d.npz", "label": "price"}})
    with pytest.raises(DataError, match=r"^d\.npz: dataset\.label 'price' does not apply"):
        read_training_data(buf.getvalue(), source="d.npz", spec=spec)
    spec = parse_spec({"dataset": {"uri": "s3://bucket/in/d.npz"}})
    assert read_training_data(buf.getvalue(), source="d.npz", spec=spec)[1].X.shape == (6, 2)


def _csv(labels) -> bytes:
    rows = "".join(f"{i},{i % 7},{label}\n" for i, label in enumerate(labels))
    return ("a,b,y\n" + rows).encode()


@pytest.mark.parametrize(
    ("model", "fix"),
    [
        ({"type": "softmax"}, "--model linear"),
        ({"type": "mlp", "task": "classification"}, "--task regression"),
    ],
)
def test_a_classifier_refuses_a_continuous_label(model, fix):
    """200 distinct fractional numbers were 200 classes (accuracy 0, no word)."""
    labels = [f"{0.37 * i - 20:.6f}" for i in range(200)]
    spec = parse_spec({"dataset": {"uri": URI, "label": "y"}, "model": model})
    with pytest.raises(
        DataError,
        match=rf"d\.csv: label 'y' holds 200 distinct numbers, some "
        rf"with fractions .*a continuous target, not classes; .*{fix}",
    ):
        read_training_data(_csv(labels), source="d.csv", spec=spec)


def test_a_classifier_keeps_few_fractional_or_many_whole_classes():
    spec = parse_spec({"dataset": {"uri": URI, "label": "y"}, "model": {"type": "softmax"}})
    stars = [f"{(i % 10) / 2 + 0.5}" for i in range(200)]  # 0.5 .. 5.0: ten classes
    assert len(read_training_data(_csv(stars), source="d.csv", spec=spec)[1].classes) == 10
    codes = [str(i % 40) for i in range(200)]  # forty whole-number classes
    assert len(read_training_data(_csv(codes), source="d.csv", spec=spec)[1].classes) == 40
