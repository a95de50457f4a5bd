"""Benchmark: the MinHash combine over duplicate pairs — one-process union–find vs partitioned components.

Input: --pairs generated duplicate pairs over documents numbered like datamill's `_pos` (shard << 40
| row, 100k rows per shard), shaped like MinHash LSH output: clusters of 2 + geometric(0.5)
documents and a few of thousands (boilerplate), each member linked to a random earlier member
plus extra links inside its cluster (several bands agreeing), and three near-copy drift chains of
20,000 documents (the worst case for label propagation). The pairs are cut into --partitions
files, as that many MinHash partitions leave them.

Each mode runs in a fresh child process (`--measure`):
- union-find: `MinHashDedup.decisions` on all pairs read into one process (today's combine);
- partitioned: `components_partitioned.partitioned_decisions` in --partitions partitions on a
  spawned pool of --workers processes (`engine.partition_tasks.LocalRunner`), the decision then
  streamed range by range into one parquet file (as `reduce_barrier` writes it).
Memory: peak RSS (VmHWM) of the driver and of the largest pool process (noted by each task), and how
much each grew above its imports — the largest single process is what must fit on one machine. The two decision
tables are compared for equality.

    python bench/bench_components.py [--pairs 3000000] [--partitions 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
from datamill.curate.dedup.components_partitioned import partitioned_decisions
from datamill.curate.dedup.minhash_stage import MinHashDedup
from datamill.curate.engine.partition_tasks import LocalRunner, write_decision
from datamill.curate.engine.stage import POSITION

ROWS_PER_SHARD = 100_000


def generate_pairs(pairs: int, seed: int = 18) -> tuple[np.ndarray, np.ndarray, int]:
    """(src, dst, documents): about `pairs` duplicate pairs (see the module docstring)."""
    rng = np.random.default_rng(seed)
    members = int(pairs / 1.4)
    sizes = 2 + rng.geometric(0.5, size=members // 3) - 1
    sizes = np.concatenate([sizes, rng.integers(1000, 5000, size=20)])
    sizes = sizes[np.cumsum(sizes) <= members - 60_000]
    chains = 3 * [20_000]
    sizes = np.concatenate([sizes, chains])
    total = int(sizes.sum())
    documents = total * 4  # three in four documents have no duplicate
    ids = rng.permutation(documents)[:total]
    ids = (ids // ROWS_PER_SHARD << 40) | (ids % ROWS_PER_SHARD)
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    rank = np.arange(total) - starts
    chain = np.repeat(np.arange(sizes.size) >= sizes.size - len(chains), sizes)
    linked = rank > 0
    earlier = np.where(chain, rank - 1, (rng.random(total) * rank).astype(np.int64))
    src, dst = ids[linked], ids[(starts + earlier)[linked]]
    extra = rng.choice(np.flatnonzero(linked & ~chain), size=max(0, pairs - src.size))
    other = starts[extra] + (rng.random(extra.size) * rank[extra]).astype(np.int64)
    src, dst = np.concatenate([src, ids[extra]]), np.concatenate([dst, ids[other]])
    return np.maximum(src, dst), np.minimum(src, dst), documents


def peak_mib() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measured_task(folder: Path, fn, *args):
    """A pool task that notes its process's peak RSS before and after (`hwm-<pid>`)."""
    import os

    before = peak_mib()
    result = fn(*args)
    note = Path(folder) / f"hwm-{os.getpid()}"
    first = note.read_text().split()[0] if note.exists() else f"{before:.0f}"
    note.write_text(f"{first} {peak_mib():.0f}")
    return result


def measure(mode: str, folder: Path, partitions: int, workers: int) -> dict:
    files = sorted(folder.glob("pairs-*.arrow"))
    summaries = folder / "summary.parquet"
    stage = MinHashDedup()
    baseline = peak_mib()  # the interpreter, polars, numpy and datamill imported
    started = time.perf_counter()
    out = folder / f"decision-{mode}.parquet"
    stats: dict = {}
    if mode == "union-find":
        pairs = pl.read_ipc(files)
        write_decision(stage.decisions(pairs, pl.scan_parquet(summaries)), out)
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            runner = LocalRunner(folder / "work", lambda fn, *a: pool.submit(measured_task, folder, fn, *a))
            parts = partitioned_decisions(runner, [[f] for f in files], partitions, keep="first",
                                          pos_dtype=pl.Int64, summary_files=[str(summaries)], stats=stats)
            write_decision(parts, out)
    notes = [[float(v) for v in f.read_text().split()] for f in folder.glob("hwm-*")]
    return {"mode": mode, "seconds": round(time.perf_counter() - started, 2), "baseline_mib": round(baseline),
            "driver_mib": round(peak_mib()), "worker_mib": round(max((n[1] for n in notes), default=0)),
            "worker_baseline_mib": round(min((n[0] for n in notes), default=0)), **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]), args.partitions, args.workers)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-components-") as tmp:
        folder = Path(tmp)
        src, dst, documents = generate_pairs(args.pairs)
        order = np.random.default_rng(1).permutation(src.size)
        for i, rows in enumerate(np.array_split(order, args.partitions)):  # as P MinHash partitions leave them
            pl.DataFrame({"src": src[rows], "dst": dst[rows]}).write_ipc(folder / f"pairs-{i}.arrow")
        pl.DataFrame({POSITION: pl.Series([], dtype=pl.Int64)}).write_parquet(folder / "summary.parquet")
        print(f"{src.size:,} pairs over {documents:,} documents; {args.partitions} partitions, "
              f"{args.workers} workers")
        results = {}
        for mode in ("union-find", "partitioned"):
            line = subprocess.run([sys.executable, __file__, "--partitions", str(args.partitions), "--workers",
                                   str(args.workers), "--measure", mode, str(folder)],
                                  check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results[mode] = json.loads(line)
            print(results[mode])
        same = pl.read_parquet(folder / "decision-union-find.parquet").equals(
            pl.read_parquet(folder / "decision-partitioned.parquet"))
        uf, part = results["union-find"], results["partitioned"]
        largest = max(part["driver_mib"], part["worker_mib"])
        grown = max(part["driver_mib"] - part["baseline_mib"], part["worker_mib"] - part["worker_baseline_mib"])
        print(f"same decision table: {same}; largest process {uf['driver_mib']} MiB -> {largest} MiB; above its "
              f"imports {uf['driver_mib'] - uf['baseline_mib']} MiB -> {grown} MiB; wall {uf['seconds']} s -> "
              f"{part['seconds']} s (x{uf['seconds'] / part['seconds']:.2f}); {part['rounds']} rounds; union-find "
              f"{(uf['driver_mib'] - uf['baseline_mib']) * 2**20 / src.size:.0f} B/pair above the imports")


if __name__ == "__main__":
    main()
