"""The cost model's arithmetic against hand-computed bills, and ``lambdagrad estimate``."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from lambdagrad import steps
from lambdagrad.cli import main
from lambdagrad.cost import (
    DEFAULT_DURATIONS,
    DEFAULT_MEMORY_MB,
    DEFAULT_PREPARE_MEMORY_MB,
    DEFAULT_ROUND_FUNCTION_TIMEOUT,
    DEFAULT_SEGMENT_SECONDS,
    STATUS_INTERVAL_SECONDS,
    CostError,
    DurationModel,
    FunctionMemory,
    JobShape,
    actual_cost,
    function_memory_mb,
    handler_seconds,
    price_overrides,
    round_structure,
    template_parameter,
)
from lambdagrad.cost import estimate as estimate_cost
from lambdagrad.local.sam import load_template
from lambdagrad.pricing import DEFAULT_PRICES
from lambdagrad.spec import parse_spec

from tests.conftest import EVENTS, ROOT, job_doc

HOUSES = EVENTS / "data" / "houses.csv"
P = DEFAULT_PRICES


def test_structure_counts_by_hand():
    s = round_structure(10, orchestration="standard")
    # Map + 10 Worker + Reduce + NextStep; IsContinuation + ContinueAsNew|Finalize; Prepare
    assert (s.transitions_per_round, s.transitions_per_segment, s.transitions_per_job) == (
        13,
        2,
        1,
    )
    assert s.transitions(rounds=100, segments=3) == 1 + 2 * 3 + 13 * 100
    # GET: 10 params + HEAD metrics + 10 grads + 1 record (finalize); PUT: 10 grads + 3 + status
    assert (s.s3_get_per_round, s.s3_put_per_round) == (22, 14)
    inline = round_structure(10, orchestration="standard", inline_gradients=True)
    assert (inline.s3_get_per_round, inline.s3_put_per_round) == (12, 4)
    express = round_structure(10, orchestration="express")
    # RunSegment + SegmentEnded + CountSegment + NextStep per segment;
    # IsContinuation + Prepare + StartSegments + Finalize per job
    assert (
        express.transitions_per_round,
        express.transitions_per_segment,
        express.transitions_per_job,
    ) == (0, 4, 4)
    assert express.express_requests_per_segment == 1
    half = round_structure(1, orchestration="standard", status_writes_per_round=0.5)
    assert (half.s3_put_per_round, half.s3_put_per_segment) == (1 + 3 + 0.5, 0.5)
    # per job: prepare 3 GET / 8+W PUT; workers 3W GET; reducer 5; finalize 6 GET / 5 PUT
    one = round_structure(1, orchestration="standard")
    assert (one.s3_get_per_job, one.s3_put_per_job) == (3 + 3 + 5 + 6, 9 + 5)
    assert one.s3_requests(rounds=1001, segments=1) == (17 + 4 * 1001, 14 + 2 + 0 + 5 * 1001)
    with pytest.raises(CostError, match="orchestration"):
        round_structure(2, orchestration="lambda")  # type: ignore[arg-type]


def test_status_interval_matches_the_steps():
    assert STATUS_INTERVAL_SECONDS == steps.STATUS_INTERVAL_SECONDS


FLAT = DurationModel(
    worker_overhead_s=0.5,
    worker_per_row_param_s=0.0,
    reduce_overhead_s=0.25,
    reduce_per_worker_s=0.0,
    reduce_per_worker_param_s=0.0,
    prepare_overhead_s=1.0,
    prepare_per_row_feature_s=0.0,
    finalize_overhead_s=2.0,
    finalize_per_round_s=0.0,
    s3_request_s=0.0,
    invoke_s=0.0,
)
SHAPE = JobShape(
    rows=100, features=3, n_params=4, workers=2, rounds=10, segment_rounds=4, batch_rows=20
)


def test_estimate_standard_by_hand():
    bill = estimate_cost(
        SHAPE, memory_mb=1024, durations=FLAT, inline_gradients=False, orchestration="standard"
    )
    assert bill.segments == 3
    gb_s = bill.line("Lambda compute")
    assert gb_s.per_round == pytest.approx(2 * 0.5 + 0.25)
    assert gb_s.total == pytest.approx(1.25 * 10 + 1.0 + 2.0)
    assert bill.line("Lambda requests").total == 3 * 10 + 2
    assert bill.line("Step Functions Standard").total == 1 + 2 * 3 + 5 * 10
    # round 0.75 s: status.json in 75 % of rounds and at 25 % of the hand-overs
    assert bill.line("S3 GET/HEAD").total == pytest.approx(20 + 6 * 10)
    assert bill.line("S3 PUT/LIST").total == pytest.approx(15 + 1 + 0.25 * 3 + 5.75 * 10)
    dollars = (
        15.5 * P.lambda_gb_second
        + 32 * P.lambda_request
        + 74.25 * P.s3_put
        + 80 * P.s3_get
        + 57 * P.standard_transition
    )
    assert bill.dollars == pytest.approx(dollars)
    assert bill.dollars_per_round == pytest.approx(
        1.25 * P.lambda_gb_second
        + 3 * P.lambda_request
        + 5.75 * P.s3_put
        + 6 * P.s3_get
        + 5 * P.standard_transition
    )
    doc = bill.to_json()
    assert doc["dollars"] == pytest.approx(dollars)
    assert json.loads(json.dumps(doc)) == doc


def test_estimate_express_by_hand():
    bill = estimate_cost(
        SHAPE, memory_mb=1024, durations=FLAT, inline_gradients=False, orchestration="express"
    )
    assert bill.line("Step Functions Standard").total == 4 + 4 * 3
    lines = [line for line in bill.lines if line.item == "Step Functions Express"]
    requests, gb_s = (next(x for x in lines if x.unit == u) for u in ("requests", "GB-s"))
    assert requests.total == 3
    # 10 rounds of 0.75 s in 3 segments: 2.5 s each, already whole 100 ms; 64 MB
    assert gb_s.total == pytest.approx(3 * 2.5 * 64 / 1024)
    standard = estimate_cost(
        SHAPE, memory_mb=1024, durations=FLAT, inline_gradients=False, orchestration="standard"
    )
    assert standard.line("Lambda compute").total == bill.line("Lambda compute").total


def test_rounding_lambda_ms_and_express_100ms():
    durations = replace(FLAT, worker_overhead_s=0.0101, reduce_overhead_s=0.0)
    shape = replace(SHAPE, workers=1, rounds=1, segment_rounds=1)
    bill = estimate_cost(shape, memory_mb=2048, durations=durations, orchestration="express")
    assert bill.line("Lambda compute").per_round == pytest.approx(0.011 * 2)
    express = [x for x in bill.lines if x.item == "Step Functions Express" and x.unit == "GB-s"]
    assert express[0].total == pytest.approx(0.1 * 64 / 1024)


def test_express_segments_end_on_time_and_too_long_rounds_are_flagged():
    shape = replace(SHAPE, rounds=1000, segment_rounds=1000)
    bill = estimate_cost(shape, durations=FLAT, inline_gradients=False, orchestration="express")
    # 0.75 s rounds: a segment ends after the round that passes 120 s, i.e. after 161
    assert bill.segments == -(-1000 // 161) == 7
    assert bill.details["warnings"] == []
    assert (
        estimate_cost(
            shape, durations=FLAT, inline_gradients=False, orchestration="standard"
        ).segments
        == 1
    )
    slow = replace(FLAT, worker_overhead_s=200.0)
    over_timeout, warning = estimate_cost(shape, durations=slow, orchestration="express").details[
        "warnings"
    ]
    assert "300 s" in warning and "SegmentSeconds" in warning
    assert "over the 55 s RoundFunctionTimeout" in over_timeout


def measured_bill(memory_mb):
    """A 4-round, 2-worker job's bill from what its steps measured."""
    return actual_cost(
        workers=2,
        rounds=4,
        segments=1,
        seconds={"prepare": 0.1, "worker": 0.05, "reduce": 0.002, "finalize": 0.01},
        billed_ms={"prepare": 100, "worker": 52, "reduce": 4, "finalize": 10},
        invocations={"prepare": 1, "worker": 8, "reduce": 4, "finalize": 1},
        memory_mb=memory_mb,
        orchestration="standard",
    )


def test_actual_cost_from_measured_seconds():
    per_round = handler_seconds([{"seconds": 0.0101}, {"seconds": 0.002}], 0.0005)
    assert per_round == {
        "workers": 2,
        "worker": pytest.approx(0.0121),
        "worker_billed_ms": 11 + 2,
        "reduce": 0.0005,
        "reduce_billed_ms": 1,
    }
    bill = measured_bill(memory_mb=1024)
    assert bill.basis == "measured"
    assert bill.line("Lambda compute").total == pytest.approx(0.166)
    assert bill.line("Lambda compute").per_round == pytest.approx(0.056 / 4)
    assert bill.line("Lambda requests").total == 14
    assert bill.line("Step Functions Standard").total == 1 + 2 + 5 * 4


def test_shape_from_spec_matches_the_split_and_rounds():
    spec = parse_spec(job_doc("houses-linear.json"))  # 20 epochs, batch 64, validation 0.1
    shape = JobShape.from_spec(spec, rows=1000, features=5, n_classes=1)
    assert (shape.rows, shape.n_params, shape.batch_rows) == (900, 6, 64)
    assert shape.rounds == -(-20 * 900 // 64)
    with pytest.raises(CostError, match="positive"):
        JobShape.from_spec(spec, rows=0, features=5, n_classes=1)


def test_memory_from_the_template():
    template = load_template(ROOT / "template.yaml")
    default = template["Parameters"]["WorkerMemorySize"]["Default"]
    assert function_memory_mb(template, "WorkerFunction") == default
    assert function_memory_mb(template, "ReduceFunction") == default
    assert (
        function_memory_mb(template, "RecordFailureFunction")
        == (template["Globals"]["Function"]["MemorySize"])
    )


def test_each_function_is_priced_at_its_own_memory():
    memory = FunctionMemory(prepare=4096, worker=1024, reduce=2048)
    bill = estimate_cost(
        SHAPE, memory_mb=memory, durations=FLAT, inline_gradients=False, orchestration="standard"
    )
    gb_s = bill.line("Lambda compute")
    # a round: 2 workers x 0.5 s x 1 GB + reducer 0.25 s x 2 GB;
    # once: prepare 1 s x 4 GB, finalize 2 s x 2 GB
    assert gb_s.per_round == pytest.approx(2 * 0.5 + 0.25 * 2)
    assert gb_s.total == pytest.approx(1.5 * 10 + 1.0 * 4 + 2.0 * 2)
    assert bill.details["memory_mb_by_function"] == {
        "prepare": 4096,
        "worker": 1024,
        "reduce": 2048,
        "finalize": 2048,
    }
    measured = measured_bill(memory_mb=memory)
    total = 0.1 * 4 + 0.052 + 0.004 * 2 + 0.01 * 2
    assert measured.line("Lambda compute").total == pytest.approx(total)
    assert measured.line("Lambda compute").per_round == pytest.approx((0.052 + 0.008) / 4)


def test_function_memory_from_the_environment():
    env = {"LAMBDAGRAD_FUNCTION_MEMORY": "prepare=3008,worker=1769,reduce=2048"}
    assert FunctionMemory.from_env(env) == FunctionMemory(3008, 1769, 2048)
    # a stack deployed before the variable: the running function's own memory for all
    old = {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024"}
    assert FunctionMemory.from_env(old) == FunctionMemory.uniform(1024)
    broken = {**old, "LAMBDAGRAD_FUNCTION_MEMORY": "prepare=3008,worker=x"}
    assert FunctionMemory.from_env(broken) == FunctionMemory.uniform(1024)
    assert FunctionMemory.from_env({}) == FunctionMemory.uniform(DEFAULT_MEMORY_MB)


def test_the_template_tells_every_function_each_memory():
    """The variable FunctionMemory.from_env reads is set, from the three parameters."""
    template = load_template(ROOT / "template.yaml")
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    sizes = "prepare=${PrepareMemorySize},worker=${WorkerMemorySize},reduce=${ReduceMemorySize}"
    assert variables["LAMBDAGRAD_FUNCTION_MEMORY"] == {"Fn::Sub": sizes}
    assert FunctionMemory.from_template(template) == FunctionMemory(
        prepare=template["Parameters"]["PrepareMemorySize"]["Default"],
        worker=template["Parameters"]["WorkerMemorySize"]["Default"],
        reduce=template["Parameters"]["ReduceMemorySize"]["Default"],
    )
    assert function_memory_mb(template, "FinalizeFunction") == FunctionMemory.from_template(
        template
    ).of("finalize")


def test_defaults_are_the_templates():
    """The constants the bill falls back on without a template are the template's defaults."""
    template = load_template(ROOT / "template.yaml")
    assert FunctionMemory.from_template(template) == FunctionMemory()
    assert FunctionMemory().prepare == DEFAULT_PREPARE_MEMORY_MB
    for name, value in (
        ("SegmentSeconds", DEFAULT_SEGMENT_SECONDS),
        ("RoundFunctionTimeout", DEFAULT_ROUND_FUNCTION_TIMEOUT),
    ):
        assert template_parameter(template, name, -1.0) == value
    assert template_parameter(template, "NoSuchParameter", 7.0) == 7.0


def test_price_overrides():
    prices = price_overrides(P, ["lambda_gb_second=0.0000166667", "s3_get=0"])
    assert (prices.lambda_gb_second, prices.s3_get, prices.as_of) == (0.0000166667, 0.0, P.as_of)
    for bad, message in [
        ("lambda=1", "NAME=DOLLARS"),
        ("s3_get", "NAME=DOLLARS"),
        ("s3_get=abc", "not a number"),
        ("s3_get=-1", ">= 0"),
        ("as_of=1", "NAME=DOLLARS"),
    ]:
        with pytest.raises(CostError, match=message):
            price_overrides(P, [bad])


# ---- the command --------------------------------------------------------------------
def test_estimate_command_prints_the_bill(capsys):
    rc = main(["estimate", str(HOUSES), "--label", "price", "--workers", "4", "--rounds", "50"])
    out = capsys.readouterr().out
    assert rc == 0
    for text in ("Lambda compute", "S3 GET/HEAD", "Step Functions", "total", P.as_of, "--price"):
        assert text in out, text
    assert "except" not in out
    rc = main(["estimate", str(HOUSES), "--label", "price", "--price", "s3_get=0.001"])
    out = " ".join(capsys.readouterr().out.split())  # rich wraps lines
    assert rc == 0 and f"list prices as of {P.as_of}" in out
    assert ", except s3_get=0.001 (--price);" in out
    rc = main(
        [
            *("estimate", str(HOUSES), "--label", "price", "--rounds", "50", "--json"),
            *("--price", "standard_transition=0", "--orchestration", "express"),
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["rounds"] == 50 and doc["orchestration"] == "express"
    assert doc["prices"]["standard_transition"] == 0
    assert doc["details"]["memory_mb"] == 1769
    assert doc["details"]["memory_mb_by_function"]["prepare"] == 3008


def test_estimate_reads_the_limits_and_memory_from_the_template(tmp_path, capsys):
    """A stack deployed with other settings is priced with them: the template given."""
    text = (ROOT / "template.yaml").read_text()
    for name, default, value in (
        ("RoundFunctionTimeout", 55, 20),
        ("PrepareMemorySize", 3008, 4096),
    ):
        block = text.index(f"  {name}:")
        at = text.index(f"Default: {default}", block)
        text = text[:at] + f"Default: {value}" + text[at + len(f"Default: {default}") :]
    template = tmp_path / "template.yaml"
    template.write_text(text)
    # a reducer call of ~32 s (4 requests at 8 s): over 20 s, under the default 55 s
    slow = [str(HOUSES), "--label", "price", "--rounds", "5", "--s3-latency", "8", "--json"]
    assert main(["estimate", *slow]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["details"]["warnings"] == []
    assert main(["estimate", *slow, "--template", str(template), "--memory", "1024"]) == 0
    doc = json.loads(capsys.readouterr().out)
    warning = "reducer call takes about 32 s, over the 20 s RoundFunctionTimeout"
    assert any(warning in w for w in doc["details"]["warnings"])
    assert doc["details"]["memory_mb_by_function"] == {
        "prepare": 4096,
        "worker": 1024,
        "reduce": 1769,
        "finalize": 1769,
    }
    assert doc["details"]["memory_from"] == f"--memory, {template}"


def test_estimate_for_data_in_s3_takes_its_size(capsys):
    args = ["estimate", "s3://bucket/big.csv", "--label", "y", "--workers", "100"]
    assert main(args) == 1
    assert "--rows N --features D" in capsys.readouterr().err
    rc = main([*args, "--rows", "1000000", "--features", "50", "--batch-size", "full", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["workers"] == 100 and doc["details"]["n_params"] == 51


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.csv"], "missing.csv: no such file"),
        ([str(HOUSES), "--label", "nope"], "nope"),
        ([str(HOUSES), "--label", "price", "--price", "lambda=1"], "NAME=DOLLARS"),
        ([str(HOUSES), "--label", "price", "--workers", "0"], "training.workers"),
        ([str(HOUSES), "--label", "price", "--memory", "64"], "--memory: 64 MB"),
        ([str(HOUSES), "--label", "price", "--s3-latency", "-1"], "--s3-latency"),
        ([str(HOUSES), "--label", "price", "--s3-latency", "inf"], "--s3-latency: inf"),
        ([str(HOUSES), "--label", "price", "--template", str(HOUSES)], "--template: "),
        (
            [
                "s3://bucket/k.csv",
                "--rows",
                "10",
                "--features",
                "3",
                "--batch-size",
                "full",
                "--workers",
                "20",
            ],
            "20 workers for 9",
        ),
        ([str(HOUSES), "--label", "price", "--batch-size", "5000"], "5000 is larger than the 1800"),
        (
            [str(HOUSES), "--label", "price", "--rows", "1000", "--features", "20000"],
            "houses.csv: 20000 feature columns; the limit is 10000 (raise dataset.max_features",
        ),
    ],
)
def test_estimate_bad_input_is_one_clear_line(argv, message, capsys):
    assert main(["estimate", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_gradients_inline_or_via_s3_as_the_workers_decide():
    small = replace(SHAPE, n_params=6, workers=4)
    wide = replace(SHAPE, n_params=100_000, workers=4)
    assert small.inline_gradients and not wide.inline_gradients
    assert replace(wide, n_params=1024, itemsize=4, workers=8).inline_gradients  # 32 KiB
    for shape in (small, wide):
        auto = estimate_cost(shape, durations=FLAT, orchestration="express")
        chosen = estimate_cost(
            shape, durations=FLAT, orchestration="express", inline_gradients=shape.inline_gradients
        )
        assert auto.to_json() == chosen.to_json()
    puts = [
        estimate_cost(s, durations=FLAT, orchestration="express").line("S3 PUT/LIST").total
        for s in (small, wide)
    ]
    assert puts[1] - puts[0] == SHAPE.rounds * 4  # one gradient PUT per worker and round


def test_estimate_prices_a_job_larger_than_its_sample_file(capsys):
    # houses.csv has 1,800 training rows; --rows prices the full-size job from it
    houses = str(EVENTS / "data" / "houses.csv")
    argv = ["estimate", houses, "--label", "price", "--rows", "1000000", "--batch-size", "4096"]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dollars"] > 0


def test_local_steps_multiply_a_workers_work_and_an_overlong_call_is_flagged():
    doc = job_doc("houses-linear.json", training={"workers": 2, "rounds": 4, "batch_size": 512})
    one = JobShape.from_spec(parse_spec(doc), rows=2000, features=4, n_classes=1)
    doc["training"]["steps_per_round"] = 8
    eight = JobShape.from_spec(parse_spec(doc), rows=2000, features=4, n_classes=1)
    assert eight.steps_per_round == 8
    w1 = estimate_cost(one).details["seconds"]["worker"]
    w8 = estimate_cost(eight).details["seconds"]["worker"]
    per_row = DEFAULT_DURATIONS.worker_per_row_param_s * one.n_params * 512 / 2
    assert w8 - w1 == pytest.approx(7 * per_row)  # 7 more batches of 256 rows each
    assert not estimate_cost(one).details["warnings"]
    slow = replace(DEFAULT_DURATIONS, worker_overhead_s=60.0)
    (warning,) = estimate_cost(one, durations=slow).details["warnings"]
    assert "a worker call takes about 60 s, over the 55 s RoundFunctionTimeout" in warning


def test_cost_json_counts_the_segments_that_ran_time_cut_ones_too():
    from lambdagrad.cost import actual_cost_of_job

    spec = parse_spec(job_doc("houses-linear.json", training={"workers": 2, "rounds": 6}))
    meta = {"segment_rounds": 1000, "prepare_seconds": 0.1}
    starts = ["t0", "t0", "t1", "t1", "t1", "t2"]  # cut on time twice, not by rounds
    records = [{"round": r + 1, "segment_started": s} for r, s in enumerate(starts)]
    assert actual_cost_of_job(spec, meta, records, 6, 0.1, n_params=5).segments == 3
    older = [{"round": r + 1} for r in range(6)]  # records of an earlier version
    assert actual_cost_of_job(spec, meta, older, 6, 0.1, n_params=5).segments == 1


def test_estimate_prices_an_auto_mlp_on_a_regression_label_as_a_regression(capsys):
    """task auto on a continuous label is a regression (one output), as train decides."""
    flags = [str(HOUSES), "--label", "price", "--model", "mlp", "--hidden", "8", "--json"]
    n_params = {}
    for task in ("auto", "regression"):
        assert main(["estimate", *flags, "--task", task]) == 0
        n_params[task] = json.loads(capsys.readouterr().out)["details"]["n_params"]
    assert n_params["auto"] == n_params["regression"] == 4 * 8 + 8 + 8 + 1


def test_estimate_warns_of_a_model_the_functions_cannot_hold(capsys):
    """8 layers of 4096 with adam: 122 M parameters, 14 GB in the reducer."""
    flags = [
        *("estimate", "s3://bucket-name/big.csv", "--rows", "100000", "--features", "1000"),
        *("--classes", "10", "--model", "mlp", "--hidden", ",".join(["4096"] * 8)),
        *("--optimizer", "adam", "--epochs", "1", "--workers", "8", "--batch-size", "512"),
        *("--task", "classification", "--json"),
    ]
    assert main(flags) == 0
    warnings = json.loads(capsys.readouterr().out)["details"]["warnings"]
    # 8 workers' gradients (7.4 GB) + parameters, sum, new parameters, adam's 2 x 2 (6.5 GB)
    assert (
        "the reducer needs about 14,017 MB (workers' gradients, parameters, state; "
        "121,610,250 parameters as float64): more than its 1769 MB, so it would run out of "
        "memory; Lambda allows at most 10,240 MB: use a smaller model or fewer workers"
    ) in warnings, warnings
    assert any(
        w.startswith("a worker needs about 2,004 MB") and "raise WorkerMemorySize" in w
        for w in warnings
    ), warnings
    # the workers' gradients alone: 2 x 4096 with sgd, 5000 features, 8 workers
    wide = [
        *("estimate", "s3://bucket-name/big.csv", "--rows", "100000", "--features", "5000"),
        *("--model", "mlp", "--hidden", "4096,4096", "--workers", "8", "--task", "regression"),
    ]
    assert main([*wide, "--json"]) == 0
    (warning,) = json.loads(capsys.readouterr().out)["details"]["warnings"]
    assert warning.startswith("the reducer needs about 3,228 MB") and "raise Reduce" in warning
    # Lambda's smallest memory holds a small job
    assert main(["estimate", str(HOUSES), "--label", "price", "--memory", "128", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["details"]["warnings"] == []
    small = [f if f != ",".join(["4096"] * 8) else "64,64" for f in flags]
    assert main(small) == 0
    assert json.loads(capsys.readouterr().out)["details"]["warnings"] == []


def test_memory_needs_count_the_optimizers_state():
    shape = JobShape(
        rows=1000, features=10, n_params=2**20, workers=2, rounds=1, segment_rounds=1,
        batch_rows=100,
    )  # fmt: skip
    from lambdagrad.cost import _state_vectors

    # read off each optimizer's own state
    names = ("sgd", "momentum", "rmsprop", "adamw")
    assert [_state_vectors(name) for name in names] == [0, 1, 1, 2]
    sgd, adam = shape.memory_mb(), replace(shape, state_vectors=2).memory_mb()
    assert adam["reduce"] - sgd["reduce"] == pytest.approx(4 * 8)  # 2 vectors, read + written
    assert adam["worker"] == sgd["worker"]


def test_estimate_prices_registering_the_model(capsys):
    """train --model-name writes the registry pointer: estimate takes the same flag."""
    totals = {}
    for extra in ([], ["--model-name", "houses"]):
        assert main(["estimate", str(HOUSES), "--label", "price", "--json", *extra]) == 0
        lines = json.loads(capsys.readouterr().out)["lines"]
        totals[bool(extra)] = next(x["total"] for x in lines if x["item"] == "S3 PUT/LIST")
    assert totals[True] == pytest.approx(totals[False] + 1)
