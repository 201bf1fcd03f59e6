"""Orchestration dollars per training round: the plain Standard loop vs Express segments.

Runs the same job -- linear regression on events/data/houses.csv, 10 workers, N rounds --
twice on the embedded engine, in one deployment of template.yaml:

* baseline: ``benchmarks/standard_loop.asl.json``, the training loop as one Standard
  workflow (Map of workers -> Reduce -> Choice every round, continue-as-new per segment),
  created next to the stack as an extra state machine over the same functions;
* the template's design: the Standard training execution runs segments of rounds in the
  Express segment state machine (``startExecution.sync:2``).

It checks that both end with bit-identical parameters, counts what AWS bills from the real
executions (Standard state transitions = ``*StateEntered`` events plus retries; Express
requests = segment executions; Express GB-seconds = each segment's duration, rounded up to
100 ms, times its memory in 64 MB units), prices them with ``lambdagrad.pricing``, and prints
dollars per round for both and the ratio.

Express duration is priced at a round duration on AWS (``--aws-round-seconds``, default 0.5 s,
an estimate from published latencies, not a measurement: see docs/orchestration.md); the
engine's own seconds per round are printed for reference, and a table shows how the ratio
moves with the round duration (segments are also cut by time, ``SegmentSeconds``).

Usage::

    python benchmarks/orchestration.py [--rounds 200] [--workers 10] [--aws-round-seconds 0.5]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASELINE_ASL = Path(__file__).resolve().parent / "standard_loop.asl.json"
SEGMENT_ASL = ROOT / "statemachine" / "segment.asl.json"

#: Express billing units (AWS Step Functions pricing page).
EXPRESS_MEMORY_UNIT_MB = 64
EXPRESS_DURATION_UNIT_S = 0.1
#: "Workflow memory utilized = 50 MB + definition size + execution data size x Map steps".
EXPRESS_BASE_MEMORY_MB = 50

#: Loop states of the training execution (repeated once per segment).
PARENT_LOOP_STATES = {"RunSegment", "SegmentEnded", "CountSegment", "NextStep"}


@dataclass
class Bill:
    """What one job's orchestration costs on AWS, counted from its executions."""

    transitions: int = 0
    loop_transitions: int = 0
    express_requests: int = 0
    express_segments: list[dict[str, float]] = field(default_factory=list)

    def dollars(self, prices: Any, round_seconds: float) -> float:
        cost = self.transitions * prices.standard_transition
        cost += self.express_requests * prices.express_request
        for seg in self.express_segments:
            cost += billed_gb_seconds(seg["rounds"] * round_seconds, seg["memory_mb"]) * (
                prices.express_gb_second
            )
        return cost


def billed_gb_seconds(seconds: float, memory_mb: float) -> float:
    """Express GB-seconds as billed: duration up to 100 ms, memory up to 64 MB units."""
    units = max(1, math.ceil(seconds / EXPRESS_DURATION_UNIT_S - 1e-9))
    memory = EXPRESS_MEMORY_UNIT_MB * max(1, math.ceil(memory_mb / EXPRESS_MEMORY_UNIT_MB))
    return units * EXPRESS_DURATION_UNIT_S * memory / 1024


def history(sfn: Any, arn: str) -> list[dict]:
    events, token = [], None
    while True:
        kw = {"executionArn": arn, "maxResults": 1000}
        if token:
            kw["nextToken"] = token
        page = sfn.get_execution_history(**kw)
        events += page["events"]
        token = page.get("nextToken")
        if not token:
            return events


def transitions_of(events: list[dict]) -> tuple[int, int]:
    """State transitions (every state entered, plus every retried task) and those of the
    training execution's segment loop."""
    kinds = Counter(e["type"] for e in events)
    entered = [e for e in events if e["type"].endswith("StateEntered")]
    retries = kinds["TaskScheduled"] + kinds["LambdaFunctionScheduled"] - kinds["TaskStateEntered"]
    loop = sum(1 for e in entered if e["stateEnteredEventDetails"]["name"] in PARENT_LOOP_STATES)
    return len(entered) + max(0, retries), loop


def largest_payload(events: list[dict]) -> int:
    """Bytes of the largest state input/output in a history (the execution data size)."""
    size = 0
    for e in events:
        for key, details in e.items():
            if key.endswith("EventDetails") and isinstance(details, dict):
                for field_name in ("input", "output"):
                    size = max(size, len(details.get(field_name) or ""))
    return size


def executions(sfn: Any, machine_arn: str, job_id: str) -> list[dict]:
    found = []
    for e in sfn.list_executions(stateMachineArn=machine_arn)["executions"]:
        desc = sfn.describe_execution(executionArn=e["executionArn"])
        if json.loads(desc["input"]).get("job_id") == job_id:
            found.append(desc)
    return found


def deploy_baseline(engine: Any) -> str:
    """The plain Standard loop, over the stack's own functions and role."""
    sfn, lam = engine.client("stepfunctions"), engine.client("lambda")
    text = BASELINE_ASL.read_text()
    for logical in ("Prepare", "Worker", "Reduce", "Finalize", "RecordFailure"):
        arn = lam.get_function(FunctionName=engine.resources[f"{logical}Function"])
        text = text.replace("${" + logical + "FunctionArn}", arn["Configuration"]["FunctionArn"])
    role = sfn.describe_state_machine(stateMachineArn=engine.outputs["TrainStateMachineArn"])
    return sfn.create_state_machine(
        name=f"{engine.stack_name}-standard-loop", definition=text, roleArn=role["roleArn"]
    )["stateMachineArn"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from lambdagrad.client import StackClient
    from lambdagrad.local import LocalEngine
    from lambdagrad.spec import parse_spec
    from lambdagrad.store import JobKeys
    from lambdagrad.training import segment_rounds_for

    doc = json.loads((ROOT / "events" / "jobs" / "houses-linear.json").read_text())
    with LocalEngine(ROOT / "template.yaml", stack_name="orchestration-bench") as engine:
        sfn = engine.client("stepfunctions")
        stack = StackClient.from_outputs(engine.outputs, engine.client)
        baseline = deploy_baseline(engine)
        uri = stack.upload_dataset(ROOT / "events" / "data" / "houses.csv")

        def spec_for(job_id: str, rounds: int) -> Any:
            return parse_spec(
                {
                    **doc,
                    "job_id": job_id,
                    "dataset": {**doc["dataset"], "uri": uri},
                    "training": {"batch_size": 64, "workers": args.workers, "rounds": rounds},
                }
            )

        # warm the handlers up (imports) so that neither design pays for it
        stack.start(spec_for("warm-up", 2))
        stack.follow("warm-up", poll_seconds=0.05)

        seconds, bills, params = {}, {}, {}
        for design in ("standard", "express"):
            spec = spec_for(f"bench-{design}", args.rounds)
            t0 = time.perf_counter()
            if design == "standard":
                sfn.start_execution(
                    stateMachineArn=baseline,
                    name=spec.job_id,
                    input=json.dumps({"job_id": spec.job_id, "spec": spec.model_dump(mode="json")}),
                )
            else:
                stack.start(spec)
            status = stack.follow(spec.job_id, poll_seconds=0.05)
            seconds[design] = time.perf_counter() - t0
            params[design] = stack.store.get_array(JobKeys(spec.job_id).params(status["round"]))
            bill = Bill()
            standard_arn = baseline if design == "standard" else stack.state_machine_arn
            for desc in executions(sfn, standard_arn, spec.job_id):
                stack.wait_execution(desc["executionArn"], poll_seconds=0.05)
                t, loop = transitions_of(history(sfn, desc["executionArn"]))
                bill.transitions += t
                bill.loop_transitions += loop
            if design == "express":
                definition_mb = len(SEGMENT_ASL.read_bytes()) / 2**20
                for desc in executions(sfn, engine.outputs["SegmentStateMachineArn"], spec.job_id):
                    events = history(sfn, desc["executionArn"])
                    data_mb = largest_payload(events) * args.workers / 2**20
                    first = json.loads(desc["input"])["round"]
                    last = json.loads(desc["output"])["round"]
                    bill.express_requests += 1
                    bill.express_segments.append(
                        {
                            "rounds": last - first,
                            "engine_seconds": (
                                desc["stopDate"] - desc["startDate"]
                            ).total_seconds(),
                            "memory_mb": EXPRESS_BASE_MEMORY_MB + definition_mb + data_mb,
                        }
                    )
            bills[design] = bill
            engine.reset()
        segment_rounds = segment_rounds_for(spec_for("x", args.rounds))
        segment_seconds = float(
            engine.cloudformation_template["Parameters"]["SegmentSeconds"]["Default"]
        )
    return {
        "seconds": seconds,
        "bills": bills,
        "identical": bool(np.array_equal(params["standard"], params["express"])),
        "segment_rounds": segment_rounds,
        "segment_seconds": segment_seconds,
    }


def modelled_per_round(
    result: dict[str, Any], prices: Any, round_seconds: float
) -> tuple[float, float]:
    """Steady-state dollars per round at a round duration: the Standard loop's transitions
    per round, and the Express design's segments as AWS would cut them (by rounds or time)."""
    std, exp = result["bills"]["standard"], result["bills"]["express"]
    rounds = sum(s["rounds"] for s in exp.express_segments)
    standard = (std.transitions / rounds) * prices.standard_transition
    per_segment = exp.loop_transitions / len(exp.express_segments)
    by_time = math.floor(result["segment_seconds"] / round_seconds) + 1
    r = max(1, min(result["segment_rounds"], by_time))
    memory = max(s["memory_mb"] for s in exp.express_segments)
    express = (
        per_segment * prices.standard_transition
        + prices.express_request
        + billed_gb_seconds(r * round_seconds, memory) * prices.express_gb_second
    ) / r
    return standard, express


def main(argv: list[str] | None = None) -> int:
    from lambdagrad.pricing import DEFAULT_PRICES as prices

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--aws-round-seconds", type=float, default=0.5)
    args = ap.parse_args(argv)
    result = run(args)
    std, exp = result["bills"]["standard"], result["bills"]["express"]
    t = args.aws_round_seconds
    n = args.rounds
    std_cost, exp_cost = std.dollars(prices, t) / n, exp.dollars(prices, t) / n
    engine_round = sum(s["engine_seconds"] for s in exp.express_segments) / max(
        1, sum(s["rounds"] for s in exp.express_segments)
    )
    print(f"job: linear regression, houses.csv, {args.workers} workers, {n} rounds")
    print(f"prices: {prices.region}, as of {prices.as_of}")
    print(f"same parameters (bit for bit): {result['identical']}")
    print(
        f"engine wall time: standard {result['seconds']['standard']:.1f} s, "
        f"express {result['seconds']['express']:.1f} s "
        f"({1000 * engine_round:.0f} ms per round inside segments)"
    )
    print()
    print(
        f"{'design':<10} {'transitions':>11} {'express req':>11} {'express GB-s':>12} "
        f"{'$/round':>12}"
    )
    print(f"{'standard':<10} {std.transitions:>11} {0:>11} {0.0:>12.3f} {std_cost:>12.3e}")
    gbs = sum(billed_gb_seconds(s["rounds"] * t, s["memory_mb"]) for s in exp.express_segments)
    print(
        f"{'express':<10} {exp.transitions:>11} {exp.express_requests:>11} {gbs:>12.3f} "
        f"{exp_cost:>12.3e}"
    )
    memory = max(s["memory_mb"] for s in exp.express_segments)
    print(
        f"(Express duration priced at {t} s per round on AWS; memory {memory:.2f} MB -> "
        f"{EXPRESS_MEMORY_UNIT_MB * math.ceil(memory / EXPRESS_MEMORY_UNIT_MB)} MB billed; "
        f"segments of {[s['rounds'] for s in exp.express_segments]} rounds)"
    )
    print(f"orchestration per round: standard / express = {std_cost / exp_cost:.0f}x")
    print()
    print(
        "steady state, by AWS round duration (segments cut at "
        f"{result['segment_rounds']} rounds or {result['segment_seconds']:g} s):"
    )
    print(f"{'s/round':>8} {'standard $/round':>17} {'express $/round':>16} {'ratio':>7}")
    for seconds in (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0):
        s_cost, e_cost = modelled_per_round(result, prices, seconds)
        print(f"{seconds:>8g} {s_cost:>17.3e} {e_cost:>16.3e} {s_cost / e_cost:>6.0f}x")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
