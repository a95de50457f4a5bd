"""Benchmark: the ranking barriers' reduce, whole (one process) vs partitioned — wall time, peak memory, candidates.

Input: `budget`/`percentile_band` summaries of --docs generated rows (`_pos`, a score with ties
(rounded to 3 decimals) and 1 % nulls, a token count), parquet files of 100k rows. Each
configuration runs in a fresh child process:
- whole: `stage.reduce(pl.scan_parquet(summaries))`, what the executors do with reduce_partitions: 1;
- P partitions: `partition_pool.reduce_partitioned` (split by a hash of `_pos`, per-partition
  candidates, merge in the driver) on a spawned pool of --workers processes;
- P ranged: the same with `combine_memory_mib=0`: the partitions' rows stay in files cut into
  `_pos` ranges, the driver merges only the candidates and writes the decision range by range.
Seconds include writing decision.parquet. Memory: the driver's VmHWM, and the largest pool
worker's peak (getrusage of the reaped children). The whole and partitioned decision files are
compared byte for byte, the ranged one (written by pyarrow, range by range) as a table.

    python bench/bench_ranking_reduce.py [--docs 5000000] [--partitions 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import measure_in_child, peak_rss, timed_reduce  # noqa: E402

FILE_ROWS = 100_000
MIB = 1 << 20
STAGES = {
    "budget fraction 0.3": ("budget", {"score": "q", "budget": 0.3}),
    "budget 2% of tokens": ("budget", {"score": "q", "budget": {"tokens": 0}}),  # tokens set from the corpus
    "percentile_band 10–90": ("percentile_band", {"score": "q", "lower": 10, "upper": 90}),
}


def generate(docs: int, folder: Path, seed: int = 0) -> int:
    """Summary files; returns the corpus' token total."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for k, start in enumerate(range(0, docs, FILE_ROWS)):
        n = min(FILE_ROWS, docs - start)
        score = np.round(rng.random(n), 3)
        tokens = rng.integers(50, 2000, n)
        total += int(tokens.sum())
        pl.DataFrame({"_pos": np.arange(start, start + n, dtype=np.int64),
                      "q": pl.Series(score).scatter(rng.integers(0, n, n // 100), None),
                      "_tokens": tokens}).write_parquet(folder / f"summary-{k:05d}.parquet")
    return total


def make_stage(name: str, tokens_total: int):
    from datamill.curate.engine.plugins import load_plugins
    from datamill.curate.engine.registry import stage_types

    load_plugins()
    kind, params = STAGES[name]
    if "tokens" in str(params.get("budget")):
        params = {**params, "budget": {"tokens": tokens_total // 50}}
    cls = stage_types()[kind]
    return cls(cls.Params.model_validate(params))


def measure(summaries: Path, name: str, tokens_total: int, partitions: int, workers: int, out: Path,
            memory_mib: int | None = None) -> dict:
    import resource


    stage = make_stage(name, tokens_total)
    files = sorted(summaries.glob("summary-*.parquet"))
    base = peak_rss()
    seconds = timed_reduce(stage, files, partitions, workers, out, memory_mib)
    driver = peak_rss()
    kept = pl.scan_parquet(out).select(pl.col("_drop_reason").null_count()).collect().item()
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"seconds": seconds, "driver_peak": driver, "driver_base": base, "kept": kept, "worker_peak": worker}


def candidates(summaries: Path, name: str, tokens_total: int, partitions: int) -> int:
    """Rows the partitions send to the merge as candidates (in this process)."""
    from datamill.curate.dedup.partitioned import partition_reducer
    from datamill.curate.selection.ranking_partitions import CANDIDATE

    stage = make_stage(name, tokens_total)
    reducer = partition_reducer(stage)
    files = sorted(summaries.glob("summary-*.parquet"))
    stats = pl.concat([reducer.stats(pl.read_parquet(f)) for f in files])
    frames = [reducer.split(pl.read_parquet(f), partitions) for f in files]
    return sum(int(reducer.reduce_partition(pl.concat([f[p] for f in frames]).lazy(), None, stats)[CANDIDATE].sum())
               for p in range(partitions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=5_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--measure", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        summaries, name, total, partitions, workers, out, memory = args.measure
        memory = None if memory == "none" else int(memory)
        print(json.dumps(measure(Path(summaries), name, int(total), int(partitions), int(workers), Path(out), memory)))
        return
    print(f"{args.docs:,} rows; partitioned: {args.partitions} partitions on {args.workers} worker processes")
    print(f"{'stage':>24} {'mode':>14} {'seconds':>8} {'driver MiB':>10} {'B/row':>6} {'worker MiB':>10} "
          f"{'candidates':>11} {'kept':>10}")
    with tempfile.TemporaryDirectory(prefix="bench_rank_") as tmp:
        folder = Path(tmp) / "summaries"
        total = generate(args.docs, folder)
        for name in STAGES:
            outputs = []
            sent = candidates(folder, name, total, args.partitions)
            modes = ((0, "whole", "none"), (args.partitions, f"{args.partitions} partitions", "none"),
                     (args.partitions, f"{args.partitions} ranged", 0))
            for partitions, label, memory in modes:
                out = Path(tmp) / f"decision-{len(outputs)}.parquet"
                r = measure_in_child(__file__, folder, name, total, partitions, args.workers, out, memory)
                outputs.append(out)
                worker = f"{r['worker_peak'] / MIB:,.0f}" if partitions else "-"
                print(f"{name:>24} {label:>14} {r['seconds']:>8.1f} {r['driver_peak'] / MIB:>10,.0f} "
                      f"{(r['driver_peak'] - r['driver_base']) / args.docs:>6.0f} {worker:>10} "
                      f"{sent if partitions else '-':>11} {r['kept']:>10,}", flush=True)
            assert outputs[0].read_bytes() == outputs[1].read_bytes(), f"{name}: the partitioned decision differs"
            assert outputs[0].read_bytes() == outputs[2].read_bytes(), f"{name}: the ranged decision differs"
    print("decision files byte-identical: whole, partitioned, ranged")


if __name__ == "__main__":
    main()
