"""Milliseconds per training round of the real template on the embedded engine.

For 1, 4 and 8 workers, trains linear regression on events/data/houses.csv through
template.yaml's state machine and reports the marginal cost of a round (two job lengths,
so deploy, prepare and finalize cancel out), next to the engine's floor measured in the
same run (benchmarks/engine_floor.py: the same loop shape with handlers that return at
once). The ratio is what the real handlers (S3 reads and writes, numpy, Powertools) add.

Usage::

    python benchmarks/train_rounds.py [--workers 1 4 8] [--short 20] [--long 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def marginal_ms(
    workers: int, short: int, long: int, state_dir: Path | None = None, tag: str = "bench"
) -> float:
    """In this process: deploy template.yaml (its bucket mirrored to ``state_dir``, if
    given), time a short and a long job; milliseconds per round between the two."""
    from lambdagrad.client import StackClient
    from lambdagrad.local import LocalEngine
    from lambdagrad.spec import parse_spec

    doc = json.loads((ROOT / "events" / "jobs" / "houses-linear.json").read_text())
    with LocalEngine(ROOT / "template.yaml", state_dir=state_dir) as engine:
        stack = StackClient.from_outputs(engine.outputs, engine.client)
        uri = stack.upload_dataset(ROOT / "events" / "data" / "houses.csv")
        seconds = {}
        for rounds in (2, short, long):  # the first job warms the handlers up
            spec = parse_spec(
                {
                    **doc,
                    "job_id": f"{tag}-{workers}-{rounds}",
                    "dataset": {**doc["dataset"], "uri": uri},
                    "training": {"batch_size": 64, "workers": workers, "rounds": rounds},
                }
            )
            t0 = time.perf_counter()
            stack.start(spec)
            stack.follow(spec.job_id, poll_seconds=0.05)
            seconds[rounds] = time.perf_counter() - t0
            engine.reset()
    return 1000 * (seconds[long] - seconds[short]) / (long - short)


def measure(workers: int, short: int, long: int) -> dict:
    """In this process: deploy template.yaml, time a short and a long job."""
    return {"workers": workers, "ms_per_round": marginal_ms(workers, short, long)}


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--short", type=int, default=20)
    ap.add_argument("--long", type=int, default=60)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.short, args.long)))
        return 0
    print("ms per round, real template (linear, houses.csv, batch 64) vs engine floor")
    print(f"{'workers':>7}  {'train ms/round':>14}  {'floor ms/round':>14}  {'ratio':>6}")
    floor_script = str(ROOT / "benchmarks" / "engine_floor.py")
    for w in args.workers:
        real = _child(
            [__file__, "--child", str(w), "--short", str(args.short), "--long", str(args.long)]
        )
        floor = _child([floor_script, "--child", f"{w},fixed", "--rounds", "40", "--repeats", "2"])
        ratio = real["ms_per_round"] / floor["ms_per_round"]
        print(
            f"{w:>7}  {real['ms_per_round']:>14.1f}  {floor['ms_per_round']:>14.1f}  {ratio:>5.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
