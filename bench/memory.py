"""Rehearsal memory speed and size at 10k, 100k and 1M samples of 784 features.

    python bench/memory.py --json

For each size: a memory of that capacity is filled in batches of 10,000
(add_per_s: keys projected, payloads written, index updated, the last write
included), a snapshot is written (snapshot_s), then a replay batch of 1,024 is
drawn (sample_1024_ms, median of 20), the 10 neighbours of 256 inputs are found
with their payloads (knn_256_ms, median of 10) and the share of the exact
neighbours among them (knn_recall_at_10), the process's resident memory
growth is read (rss_mb: keys, index and bookkeeping; payloads live on disk),
and the snapshot is loaded into a new memory (load_s).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lifelong.daemon.process import pin_mmap_threshold
from lifelong.memory.index import resolve_device
from lifelong.memory.rehearsal import RehearsalMemory

FEATURES = 784
BATCH = 10_000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_ms(call, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(size: int, root: Path, policy: str) -> dict[str, float]:
    rng = np.random.default_rng(size)
    centers = rng.random((10, FEATURES), dtype=np.float32)
    gc.collect()
    before = rss_mb()
    memory = RehearsalMemory(root, features=FEATURES, capacity=size, policy=policy)  # type: ignore[arg-type]
    spent = 0.0
    for start in range(0, size, BATCH):
        count = min(BATCH, size - start)
        y = rng.integers(0, 10, count)
        x = centers[y] + rng.random((count, FEATURES), dtype=np.float32)
        ids = [f"s{start + i}" for i in range(count)]
        began = time.perf_counter()
        memory.add(ids, x, y)
        if start + count == size:
            memory.flush()
        spent += time.perf_counter() - began
    began = time.perf_counter()
    memory.snapshot(offsets={"bench:0": size})
    snapshot_s = time.perf_counter() - began
    # Measured after the snapshot's fsync: a steady state, not the disk writing back the fill.
    queries = centers[rng.integers(0, 10, 256)] + rng.random((256, FEATURES), dtype=np.float32)
    sample_ms = timed_ms(lambda: memory.sample(1024), 20)
    knn_ms = timed_ms(lambda: memory.neighbors(queries, 10), 10)
    gc.collect()
    resident = rss_mb() - before
    # How many of the true neighbours the index finds (after the RSS reading: exact search copies the keys).
    found = set(memory.neighbors(queries, 10).ids)
    truth = set(memory.neighbors(queries, 10, exact=True).ids)
    recall = len(found & truth) / len(truth)
    memory.close()
    began = time.perf_counter()
    loaded = RehearsalMemory(root, features=FEATURES, capacity=size, policy=policy)  # type: ignore[arg-type]
    load_s = time.perf_counter() - began
    if loaded.size != size:
        raise SystemExit(f"loaded {loaded.size} of {size}")
    loaded.close()
    return {
        "add_per_s": round(size / spent),
        "sample_1024_ms": round(sample_ms, 2),
        "knn_256_ms": round(knn_ms, 2),
        "knn_recall_at_10": round(recall, 3),
        "rss_mb": round(resident),
        "snapshot_s": round(snapshot_s, 2),
        "load_s": round(load_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--policy", default="reservoir")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    pin_mmap_threshold()  # as the daemon does
    result: dict[str, object] = {
        "features": FEATURES,
        "policy": args.policy,
        "device": resolve_device("auto"),  # searches on the GPU with a GPU build of faiss
        "sizes": {},
    }
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(dir=".") as tmp:
            figures = measure(size, Path(tmp), args.policy)
        result["sizes"][str(size)] = figures  # type: ignore[index]
        if not args.json:
            print(size, figures, file=sys.stderr)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
