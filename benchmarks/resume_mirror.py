"""What keeping checkpoints on disk costs the embedded engine.

Trains linear regression on events/data/houses.csv through template.yaml twice per setting:
a short and a long job, so that deploy, prepare and finalize cancel out, and reports the
marginal milliseconds per round with the bucket mirrored to a run directory
(``LocalEngine(state_dir=...)``, what ``lambdagrad train`` does) against the same engine
without it, measured in the same run. Then times loading the resulting run directory into a
fresh engine (what ``lambdagrad resume`` does first).

Usage::

    python benchmarks/resume_mirror.py [--workers 4] [--short 20] [--long 80]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_rounds import marginal_ms  # noqa: E402  (one timing loop for both benchmarks)


def restore_seconds(state_dir: Path) -> tuple[int, float]:
    """Objects loaded and seconds to load them into a fresh engine's bucket."""
    from lambdagrad.local import LocalEngine
    from lambdagrad.local.mirror import BucketMirror

    with LocalEngine(ROOT / "template.yaml") as engine:
        mirror = BucketMirror(state_dir)
        t0 = time.perf_counter()
        n = mirror.restore(engine.buckets(), engine.client("s3"))
        return n, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--short", type=int, default=20)
    ap.add_argument("--long", type=int, default=80)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        plain = marginal_ms(args.workers, args.short, args.long, None)
        mirrored = marginal_ms(args.workers, args.short, args.long, state, tag="mirror")
        files = sum(1 for p in state.rglob("*") if p.is_file() and p.name != ".lock")
        n, seconds = restore_seconds(state)
    print(f"ms per round, {args.workers} workers (linear, houses.csv, batch 64)")
    print(f"  engine, bucket in memory only      {plain:8.1f}")
    print(f"  engine, bucket mirrored to disk    {mirrored:8.1f}   ratio {mirrored / plain:.2f}x")
    print(f"mirror: {files} files; loading {n} objects into a fresh engine: {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
