"""Bytes a worker reads from S3 per round, with and without the shard cache.

Runs the real training steps (prepare, then rounds of worker x K and reduce, in the order
the state machine runs them) over a store whose S3 client counts every byte ``get_object``
hands out, by kind of key. "no cache" is a worker that fetches its shard every round (a
cold Lambda each round); "shard cache" is the default (:mod:`lambdagrad.shard_cache`):
warm workers read only the parameters. A third run keeps no shard in memory (budget 0),
so every round is served from /tmp: still no shard bytes from S3.

Run: ``PYTHONPATH=layers/lambdagrad python benchmarks/worker_io.py [--rows N] [--workers K]``
"""

from __future__ import annotations

import argparse
import io
import re
from collections import Counter

import numpy as np
from lambdagrad import shard_cache, steps
from lambdagrad.store import MemoryS3, Store

BUCKET = "bench-bucket"
KINDS = (
    ("shards", r"/shards/"),
    ("params", r"/params/"),
    ("grads", r"/grads/"),
    ("optimizer", r"/optimizer/"),
)


class CountingS3(MemoryS3):
    """MemoryS3 that counts the bytes of every object read, by kind of key."""

    def __init__(self) -> None:
        super().__init__()
        self.read: Counter[str] = Counter()
        self.gets: Counter[str] = Counter()

    def get_object(self, Bucket: str, Key: str, **kw):
        out = super().get_object(Bucket, Key, **kw)
        kind = next((k for k, pat in KINDS if re.search(pat, Key)), "other")
        self.read[kind] += len(self.objects[(Bucket, Key)])
        self.gets[kind] += 1
        return out


def run(data: bytes, spec: dict, rounds: int, cache: shard_cache.ShardCache) -> CountingS3:
    """Prepare, one warm-up round, then ``rounds`` rounds: the counts cover those only
    (steady state: every worker has read its shard once)."""
    steps.clear_cache()
    shard_cache._DEFAULT = cache
    client = CountingS3()
    store = Store(client, BUCKET)
    store.put_bytes("datasets/data.npy", data)
    state = steps.prepare(store, {"input": {"job_id": "io", "spec": spec}, "execution": "e"})
    for r in range(rounds + 1):
        if r == 1:
            client.read.clear()
            client.gets.clear()
        results = [
            steps.worker(store, {"job_id": "io", "round": state["round"], "shard": k})
            for k in state["shards"]
        ]
        state = steps.reduce(store, {**state, "results": results})
    cache.clear()
    return client


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", default="1024")
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    arr = rng.standard_normal((args.rows, args.features + 1)).astype(args.dtype)
    buf = io.BytesIO()
    np.save(buf, arr)
    bs = args.batch_size if args.batch_size == "full" else int(args.batch_size)
    spec = {
        "dataset": {"uri": f"s3://{BUCKET}/datasets/data.npy", "format": "npy"},
        "model": {"type": "linear"},
        "training": {
            "batch_size": bs,
            "workers": args.workers,
            "rounds": args.rounds + 2,
            "dtype": args.dtype,
        },
    }
    runs = {
        "no cache (fetch every round)": shard_cache.ShardCache(0, 0),
        "shard cache (memory, default)": shard_cache.ShardCache(2 << 30, 2 << 30),
        "shard cache (/tmp only, memory 0)": shard_cache.ShardCache(0, 2 << 30),
    }
    print(
        f"{args.rows} rows x {args.features} features {args.dtype}, {args.workers} workers, "
        f"batch {args.batch_size}; bytes read from S3 per round (mean of {args.rounds} rounds "
        "after the first)"
    )
    kinds = [k for k, _ in KINDS] + ["other"]
    print(f"{'':36}" + "".join(f"{k:>12}" for k in kinds) + f"{'total':>14}{'GETs':>6}")
    totals = {}
    for name, cache in runs.items():
        client = run(buf.getvalue(), spec, args.rounds, cache)
        per = {k: client.read[k] / args.rounds for k in kinds}
        totals[name] = sum(per.values())
        gets = sum(client.gets.values()) / args.rounds
        print(
            f"{name:36}"
            + "".join(f"{per[k]:>12,.0f}" for k in kinds)
            + f"{totals[name]:>14,.0f}{gets:>6.0f}"
        )
    before, after = totals[next(iter(runs))], totals["shard cache (memory, default)"]
    print(
        f"bytes per round: before {before:,.0f}, after {after:,.0f}: {before / after:,.0f}x fewer"
    )


if __name__ == "__main__":
    main()
