"""Seconds per segment of a job on the embedded engine, with and without the fast wait.

The training execution waits on each Express segment with ``startExecution.sync:2``. Stock
moto checks the child, then sleeps 0.5 s between checks; ``moto_fixes.fix_sync_poll_backoff``
polls with a doubling pause from 5 ms. This trains the same job (linear regression on
events/data/houses.csv, one round per segment, so the wait is paid every round) with the
fix and with moto's stock wait, alternating in one process, and prints seconds per segment
and their ratio. The fix is a speed fix only: both runs end with the same parameters.

Usage::

    python benchmarks/segment_wait.py [--segments 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=20, help="rounds = segments")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from lambdagrad.client import StackClient
    from lambdagrad.local import LocalEngine
    from lambdagrad.spec import parse_spec
    from lambdagrad.store import JobKeys
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_callback as module,
    )

    cls = module.StateTaskServiceCallback
    doc = json.loads((ROOT / "events" / "jobs" / "houses-linear.json").read_text())
    timings: dict[str, list[float]] = {"fix": [], "stock": []}
    params: dict[str, np.ndarray] = {}
    with LocalEngine(ROOT / "template.yaml") as engine:
        fixed = cls._eval_sync
        stack = StackClient.from_outputs(engine.outputs, engine.client)
        uri = stack.upload_dataset(ROOT / "events" / "data" / "houses.csv")
        for i in range(args.repeat):
            for mode in ("fix", "stock"):
                cls._eval_sync = fixed if mode == "fix" else fixed.stock
                training = {"batch_size": 64, "workers": 2, "rounds": args.segments}
                spec = parse_spec(
                    {
                        **doc,
                        "job_id": f"wait-{mode}-{i}",
                        "dataset": {**doc["dataset"], "uri": uri},
                        "training": {**training, "segment_rounds": 1},
                    }
                )
                t0 = time.perf_counter()
                stack.start(spec)
                status = stack.follow(spec.job_id, poll_seconds=0.02)
                timings[mode].append((time.perf_counter() - t0) / args.segments)
                params[mode] = stack.store.get_array(JobKeys(spec.job_id).params(status["round"]))
                engine.reset()
        cls._eval_sync = fixed
    fix, stock = (statistics.median(timings[m]) for m in ("fix", "stock"))
    print(f"{args.segments} segments x {args.repeat} repeats, median seconds per segment:")
    print(f"  fast polling (fix)  {fix:.3f} s")
    print(f"  moto's 0.5 s sleep  {stock:.3f} s")
    saved = 1000 * (stock - fix)
    print(f"  stock / fix         {stock / fix:.2f}x; saved {saved:.0f} ms a segment")
    print(f"  same parameters: {bool(np.array_equal(params['fix'], params['stock']))}")


if __name__ == "__main__":
    main()
