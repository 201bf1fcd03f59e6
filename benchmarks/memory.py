"""Peak memory of a local training run against the size of its dataset.

Generates a 1e6 x 100 float32 dataset (.npy, label in the last column), then runs
``lambdagrad train`` on the embedded engine (template.yaml in moto, real handlers) with 8
workers and ``--dtype float32`` in a child process, and reports the child's peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, read by the child itself at exit) as a
multiple of the dataset's bytes. The fixed cost is shown too: the peak RSS of a child that
deploys the engine and runs no job. Goal: peak <= 3x the dataset's bytes.

Run: ``PYTHONPATH=layers/lambdagrad python benchmarks/memory.py [--rows N] [--rounds R]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FEATURES = 100
ROOT = Path(__file__).resolve().parents[1]


def child(mode: str, argv: list[str], report: str) -> None:
    """Run in the child: the CLI (``train``) or only the engine (``baseline``)."""
    code = 0
    try:
        if mode == "baseline":
            from lambdagrad.cli import find_template
            from lambdagrad.local.engine import LocalEngine

            with LocalEngine(find_template()):
                pass
        else:
            from lambdagrad.cli import main

            code = main(argv) or 0
    finally:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        Path(report).write_text(json.dumps({"peak_rss": peak}))
    sys.exit(code)


def measure(mode: str, argv: list[str], workdir: Path) -> int:
    report = workdir / f"{mode}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "layers" / "lambdagrad")}
    cmd = [sys.executable, __file__, "--child", mode, "--report", str(report), "--", *argv]
    subprocess.run(cmd, check=True, cwd=workdir, env=env)
    return json.loads(report.read_text())["peak_rss"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--report", help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.rest, args.report)
        return

    with tempfile.TemporaryDirectory(prefix="lambdagrad-mem-") as tmp:
        work = Path(tmp)
        data = work / "data.npy"
        rng = np.random.default_rng(0)
        arr = np.lib.format.open_memmap(
            data, mode="w+", dtype=np.float32, shape=(args.rows, FEATURES + 1)
        )
        for lo in range(0, args.rows, 100_000):  # write in chunks: the parent stays small
            block = rng.standard_normal((min(100_000, args.rows - lo), FEATURES + 1))
            block[:, -1] = block[:, :5].sum(axis=1)
            arr[lo : lo + len(block)] = block
        arr.flush()
        del arr
        size = data.stat().st_size
        train = [
            "train", str(data), "--model", "linear", "--workers", str(args.workers),
            "--dtype", "float32", "--rounds", str(args.rounds), "--batch-size", "4096",
            "--out", str(work / "model"), "--quiet",
        ]  # fmt: skip
        base = measure("baseline", [], work)
        peak = measure("train", train, work)
    mb = 2**20
    print(
        f"dataset {args.rows} x {FEATURES} float32 (.npy): {size / mb:,.0f} MiB; "
        f"{args.workers} workers, {args.rounds} rounds"
    )
    print(f"engine, no job:  peak RSS {base / mb:,.0f} MiB = {base / size:.2f}x dataset")
    print(f"train:           peak RSS {peak / mb:,.0f} MiB = {peak / size:.2f}x dataset")
    print(
        f"train minus engine: {(peak - base) / mb:,.0f} MiB = {(peak - base) / size:.2f}x dataset"
    )


if __name__ == "__main__":
    main()
