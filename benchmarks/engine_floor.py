"""The embedded engine's floor: milliseconds per training-loop round with trivial handlers.

Builds a throwaway SAM app shaped like lambdagrad's loop (Map over N shards -> worker via
``arn:aws:states:::lambda:invoke``, a reducer, a Choice that loops) whose handlers do nothing,
deploys it with :class:`lambdagrad.local.LocalEngine` and times whole executions. What is left
is the engine's own cost per round: moto's ASL interpreter, boto3 in process, the invoker.

Usage::

    python benchmarks/engine_floor.py                  # Map of 1, 4, 8 workers, fixes on
    python benchmarks/engine_floor.py --compare-stock  # also without the three speed fixes
    python benchmarks/engine_floor.py --workers 1 4 8 16 --rounds 40

Each configuration runs in its own subprocess (moto's fixes are process-wide).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SPEED_FIXES = {
    "boto_client_cache",
    "json_path_parse_cache",
    "tmp_threads_leak",
    "s3_url_module_reload",
}

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.13
    Timeout: 30
Resources:
  WorkerFunction:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: worker/, Handler: app.handler}
  ReduceFunction:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: reduce/, Handler: app.handler}
  Loop:
    Type: AWS::Serverless::StateMachine
    Properties:
      DefinitionUri: loop.asl.json
      DefinitionSubstitutions:
        WorkerArn: !GetAtt WorkerFunction.Arn
        ReduceArn: !GetAtt ReduceFunction.Arn
Outputs:
  LoopArn: {Value: !Ref Loop}
"""

RETRY = [
    {
        "ErrorEquals": ["Lambda.ServiceException", "Lambda.TooManyRequestsException"],
        "IntervalSeconds": 1,
        "MaxAttempts": 3,
        "BackoffRate": 2,
    }
]

ASL = {
    "StartAt": "Workers",
    "States": {
        "Workers": {
            "Type": "Map",
            "ItemsPath": "$.shards",
            "MaxConcurrency": 40,
            "ItemSelector": {"shard.$": "$$.Map.Item.Value", "round.$": "$.round"},
            "ItemProcessor": {
                "ProcessorConfig": {"Mode": "INLINE"},
                "StartAt": "Worker",
                "States": {
                    "Worker": {
                        "Type": "Task",
                        "Resource": "arn:aws:states:::lambda:invoke",
                        "Parameters": {"FunctionName": "${WorkerArn}", "Payload.$": "$"},
                        "OutputPath": "$.Payload",
                        "Retry": RETRY,
                        "End": True,
                    }
                },
            },
            "ResultPath": "$.grads",
            "Next": "Reduce",
        },
        "Reduce": {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {"FunctionName": "${ReduceArn}", "Payload.$": "$"},
            "OutputPath": "$.Payload",
            "Retry": RETRY,
            "Next": "Done?",
        },
        "Done?": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.done", "BooleanEquals": True, "Next": "End"}],
            "Default": "Workers",
        },
        "End": {"Type": "Succeed"},
    },
}

WORKER = "def handler(event, context):\n    return {'shard': event['shard'], 'loss': 0.5}\n"
REDUCE = textwrap.dedent(
    """\
    def handler(event, context):
        r = event["round"] + 1
        return {"shards": event["shards"], "round": r, "rounds": event["rounds"],
                "done": r >= event["rounds"]}
    """
)


def write_app(root: Path) -> Path:
    (root / "worker").mkdir()
    (root / "reduce").mkdir()
    (root / "worker" / "app.py").write_text(WORKER)
    (root / "reduce" / "app.py").write_text(REDUCE)
    (root / "loop.asl.json").write_text(json.dumps(ASL, indent=2))
    (root / "template.yaml").write_text(TEMPLATE)
    return root / "template.yaml"


def measure(workers: int, rounds: int, repeats: int, stock_speed: bool) -> dict:
    """Run in this process: deploy, warm up, time ``repeats`` executions of ``rounds`` rounds."""
    from lambdagrad.local import LocalEngine, moto_fixes

    if stock_speed:
        moto_fixes.FIXES = tuple(f for f in moto_fixes.FIXES if f.fix_name not in SPEED_FIXES)
    with tempfile.TemporaryDirectory() as tmp, LocalEngine(write_app(Path(tmp))) as eng:
        sfn = eng.client("stepfunctions")
        arn = eng.outputs["LoopArn"]

        def run(n_rounds: int, name: str) -> float:
            payload = {"shards": list(range(workers)), "round": 0, "rounds": n_rounds}
            t0 = time.perf_counter()
            ex = sfn.start_execution(stateMachineArn=arn, name=name, input=json.dumps(payload))
            while True:
                d = sfn.describe_execution(executionArn=ex["executionArn"])
                if d["status"] != "RUNNING":
                    break
                # Each describe_execution costs ~2 ms of GIL in moto: poll gently, or the
                # poller itself slows the handlers' threads down.
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            if d["status"] != "SUCCEEDED":
                raise RuntimeError(f"{name}: {d['status']} {d.get('error')} {d.get('cause')}")
            return elapsed

        run(2, "warm-up")
        per_round = []
        for i in range(repeats):
            per_round.append(run(rounds, f"run-{i}") / rounds * 1000)
            eng.reset()
        return {
            "workers": workers,
            "rounds": rounds,
            "ms_per_round": statistics.median(per_round),
            "min_ms": min(per_round),
            "speed_fixes": not stock_speed,
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare-stock", action="store_true", help="also run without speed fixes")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:  # one configuration, JSON on stdout
        w, stock = args.child.split(",")
        print(json.dumps(measure(int(w), args.rounds, args.repeats, stock == "stock")))
        return 0

    modes = ["fixed", "stock"] if args.compare_stock else ["fixed"]
    print(f"engine floor: trivial handlers, {args.rounds} rounds x {args.repeats} executions")
    print(f"{'workers':>7}  {'speed fixes':>11}  {'ms/round (median)':>17}  {'min':>7}")
    for workers in args.workers:
        for mode in modes:
            cmd = [sys.executable, __file__, "--child", f"{workers},{mode}"]
            cmd += ["--rounds", str(args.rounds), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return out.returncode
            r = json.loads(out.stdout.strip().splitlines()[-1])
            fixes = "on" if r["speed_fixes"] else "off"
            print(f"{workers:>7}  {fixes:>11}  {r['ms_per_round']:>17.1f}  {r['min_ms']:>7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
