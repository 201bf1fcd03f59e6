"""The embedded engine running the real template, against its floor, per round.

For each width (1, 4, 8, 32 workers) one subprocess deploys two stacks into the same moto:
``template.yaml`` with the real handlers, training a tiny linear model (houses.csv, batch
64, one execution for the whole job), and the floor of ``benchmarks/engine_floor.py`` (the
same Map -> task -> task -> Choice loop with handlers that return at once). It alternates
short and long runs of both and reports the marginal milliseconds per round (long minus
short, so deploy, Prepare and Finalize cancel out), the ratio real / floor of the medians
over the repeats (and of the fastest repeats, and of the process CPU time, both less
sensitive to other load on the machine), and the S3 requests the real handlers make per
round, counted on the engine (every request moto's S3 serves, through boto3 or the
engine's in-process S3 client, by method and kind of key; the CLI's polling excluded).

``--before DIR`` measures a checkout of an earlier version too (its ``template.yaml``,
functions and package), e.g. ``git worktree add /tmp/before <commit>``, for the S3
requests before and after in the same run.

Usage::

    python benchmarks/engine.py [--workers 1 4 8 32] [--short 10] [--long 40] [--repeats 5]
    python benchmarks/engine.py --before /tmp/before
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class S3Counter:
    """Counts the S3 requests moto serves in this process, by method and kind of key."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def install(self) -> None:
        from moto.core.botocore_stubber import BotocoreStubber

        stock = BotocoreStubber.process_request
        counter = self

        def process_request(stub, request):
            counter.record(request.method, request.url)
            return stock(stub, request)

        BotocoreStubber.process_request = process_request
        from lambdagrad.local import moto_fixes

        direct = getattr(moto_fixes, "InProcessS3Client", None)  # not in older versions
        for name, method in [("put_object", "PUT"), ("get_object", "GET"), ("head_object", "HEAD")]:
            if direct is not None:
                setattr(direct, name, self._counting(getattr(direct, name), method))

    def _counting(self, call, method: str):
        def counted(client, Bucket, Key, **kwargs):
            self.record(method, f"https://s3.amazonaws.com/{Bucket}/{Key}")
            return call(client, Bucket, Key, **kwargs)

        return counted

    def record(self, method: str, url: str) -> None:
        match = re.match(r"https?://[^/]*s3[^/]*/(?:[^/?]+/)?jobs/[^/?]+/([^?]*)", url)
        if not match:
            return
        kind = re.sub(r"\d+", "N", match.group(1))
        if kind == "status.json" and method == "GET":
            return  # the client following the job, not the handlers
        with self._lock:
            self.counts[f"{method} {kind}"] += 1

    def snapshot(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self.counts)


def measure(workers: int, short: int, long: int, repeats: int, tree: Path) -> dict:
    """In this process: the real template and the floor side by side, alternating."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import engine_floor
    from lambdagrad.client import StackClient
    from lambdagrad.local import LocalEngine
    from lambdagrad.spec import parse_spec

    counter = S3Counter()
    doc = json.loads((tree / "events" / "jobs" / "houses-linear.json").read_text())
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalEngine(engine_floor.write_app(Path(tmp)), stack_name="floor") as floor_engine,
        LocalEngine(tree / "template.yaml", stack_name="real") as engine,
    ):
        counter.install()
        sfn = engine.client("stepfunctions")
        stack = StackClient.from_outputs(engine.outputs, engine.client)
        uri = stack.upload_dataset(tree / "events" / "data" / "houses.csv")
        floor_arn = floor_engine.outputs["LoopArn"]

        def wait(arn: str) -> None:
            while True:
                d = sfn.describe_execution(executionArn=arn)
                if d["status"] != "RUNNING":
                    break
                time.sleep(0.05)  # as engine_floor.py polls
            if d["status"] != "SUCCEEDED":
                raise RuntimeError(f"{arn}: {d['status']} {d.get('error')} {d.get('cause')}")

        def floor(rounds: int, name: str) -> tuple[float, float]:
            payload = {"shards": list(range(workers)), "round": 0, "rounds": rounds}
            t0, c0 = time.perf_counter(), time.process_time()
            ex = sfn.start_execution(
                stateMachineArn=floor_arn, name=name, input=json.dumps(payload)
            )
            wait(ex["executionArn"])
            return time.perf_counter() - t0, time.process_time() - c0

        def real(rounds: int, name: str) -> tuple[float, float, collections.Counter[str]]:
            training = {"batch_size": 64, "workers": workers, "rounds": rounds}
            spec = parse_spec(
                {
                    **doc,
                    "job_id": name,
                    "dataset": {**doc["dataset"], "uri": uri},
                    "training": {**training, "segment_rounds": 100_000},
                }
            )
            before = counter.snapshot()
            t0, c0 = time.perf_counter(), time.process_time()
            stack.start(spec)
            wait(stack._executions[spec.job_id])
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            return elapsed, cpu, counter.snapshot() - before

        real(2, "warm-up")
        floor(2, "warm-up")
        floor_ms, real_ms, floor_cpu, real_cpu = [], [], [], []
        requests: collections.Counter[str] = collections.Counter()
        n = long - short
        for i in range(repeats):
            (fs, fcs), (fl, fcl) = floor(short, f"f{i}s"), floor(long, f"f{i}l")
            (rs, rcs, c_short), (rl, rcl, c_long) = real(short, f"r{i}s"), real(long, f"r{i}l")
            floor_ms.append(1000 * (fl - fs) / n)
            real_ms.append(1000 * (rl - rs) / n)
            floor_cpu.append(1000 * (fcl - fcs) / n)
            real_cpu.append(1000 * (rcl - rcs) / n)
            if i == 0:
                requests = c_long
                requests.subtract(c_short)
            engine.reset()
            floor_engine.reset()
    per_round = {k: v / (long - short) for k, v in sorted(requests.items()) if v}
    # ratios of medians (the machine may be shared: a single slow repeat must not decide)
    return {
        "workers": workers,
        "real_ms": statistics.median(real_ms),
        "floor_ms": statistics.median(floor_ms),
        "ratio": statistics.median(real_ms) / statistics.median(floor_ms),
        "best_ratio": min(real_ms) / min(floor_ms),
        "real_cpu_ms": statistics.median(real_cpu),
        "floor_cpu_ms": statistics.median(floor_cpu),
        "cpu_ratio": statistics.median(real_cpu) / statistics.median(floor_cpu),
        "s3_per_round": per_round,
    }


def _child(tree: Path, workers: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", str(workers), "--tree", str(tree)]
    cmd += ["--short", str(args.short), "--long", str(args.long), "--repeats", str(args.repeats)]
    env = {**os.environ, "PYTHONPATH": str(tree / "layers" / "lambdagrad")}
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _requests(r: dict) -> str:
    total = sum(r["s3_per_round"].values())
    parts = ", ".join(f"{k} {v:g}" for k, v in r["s3_per_round"].items())
    return f"{total:g} ({parts})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8, 32])
    ap.add_argument("--short", type=int, default=10)
    ap.add_argument("--long", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--before", type=Path, help="a checkout of an earlier version to compare")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tree", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        result = measure(args.child, args.short, args.long, args.repeats, args.tree.resolve())
        print(json.dumps(result))
        return 0
    trees = [("now", ROOT)] + ([("before", args.before.resolve())] if args.before else [])
    print(
        f"embedded engine, real template (linear, houses.csv, batch 64) vs floor; marginal "
        f"ms/round of {args.long}- minus {args.short}-round runs, median of {args.repeats}"
    )
    print(
        f"{'workers':>7}  {'code':>6}  {'real ms':>8}  {'floor ms':>8}  {'ratio':>6}  "
        f"{'min ratio':>9}  {'CPU ms':>13}  {'CPU ratio':>9}  S3 requests/round"
    )
    for w in args.workers:
        for label, tree in trees:
            r = _child(tree, w, args)
            print(
                f"{w:>7}  {label:>6}  {r['real_ms']:>8.1f}  {r['floor_ms']:>8.1f}  "
                f"{r['ratio']:>5.2f}x  {r['best_ratio']:>8.2f}x  "
                f"{r['real_cpu_ms']:>6.1f}/{r['floor_cpu_ms']:<6.1f}  "
                f"{r['cpu_ratio']:>8.2f}x  {_requests(r)}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
