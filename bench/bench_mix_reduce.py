"""Benchmark: the `mix` barrier's reduce, whole (one process) vs partitioned — wall time, peak memory, rows walked.

Input: `mix` summaries (`Mix.summarize`) of --docs generated rows: four sources of skewed sizes
(web 60 %, code 20 %, wiki 15 %, books 5 %), token counts 50–2000, a log-weight score with 1 %
nulls; parquet files of 100k rows. Stage: token shares {web .5, code .2, wiki .2, books .1},
wiki for 2 epochs, an anneal phase of 10 % of the tokens (wiki, code) and loss weights. Each
configuration runs in a fresh child process:
- whole: `stage.reduce(pl.scan_parquet(summaries))`, what the executors do with reduce_partitions: 1;
- P partitions: `partition_pool.reduce_partitioned` on a spawned pool of --workers processes;
- P ranged: the same with `combine_memory_mib=0`: the rows stay in the partitions' files cut into
  `_pos` ranges, the decision is written range by range (seconds include writing decision.parquet
  in every mode).
Memory: the driver's VmHWM (B/row: above its start) and the largest pool process's peak RSS.
"walked" counts the rows the driver reads back for the anneal split's buckets (the partitions
decide every row's copies).
The whole and partitioned decision files are compared byte for byte, the ranged one (written by
pyarrow, range by range) as a table.

    python bench/bench_mix_reduce.py [--docs 5000000] [--partitions 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import measure_in_child, peak_rss, timed_reduce  # noqa: E402

FILE_ROWS = 100_000
MIB = 1 << 20
PARAMS = {"weights": {"web": 0.5, "code": 0.2, "wiki": 0.2, "books": 0.1}, "epochs": {"wiki": 2},
          "anneal": {"fraction": 0.1, "weights": {"wiki": 1, "code": 1}}, "weight_from": "logw"}


def make_stage():
    from datamill.curate.selection.mix import Mix

    return Mix(Mix.Params.model_validate(PARAMS))


def generate(docs: int, folder: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    stage = make_stage()
    folder.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, docs, FILE_ROWS)):
        n = min(FILE_ROWS, docs - start)
        batch = pl.DataFrame({
            "_pos": np.arange(start, start + n, dtype=np.int64),
            "id": [f"doc-{i}" for i in range(start, start + n)],
            "source": rng.choice(["web", "code", "wiki", "books"], size=n, p=[0.6, 0.2, 0.15, 0.05]),
            "logw": pl.Series(rng.normal(size=n)).scatter(rng.integers(0, n, n // 100), None),
            "_tokens": rng.integers(50, 2000, n),
        })
        stage.summarize(batch).write_parquet(folder / f"summary-{k:05d}.parquet")


def measure(summaries: Path, partitions: int, workers: int, out: Path, memory_mib: int | None = None) -> dict:
    from datamill.curate.selection.mix_partitions import MixPartitions

    walked = []
    real = MixPartitions.walk_open_anneal

    def counted(self, *args):
        result = real(self, *args)
        walked.append(result.height)
        return result

    MixPartitions.walk_open_anneal = counted
    stage = make_stage()
    files = sorted(summaries.glob("summary-*.parquet"))
    base = peak_rss()
    seconds = timed_reduce(stage, files, partitions, workers, out, memory_mib)
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest pool process
    driver = peak_rss()
    counts = pl.scan_parquet(out).select((pl.col("_mix_copies") > 0).sum(),
                                         pl.col("phase").cast(pl.Int64).sum()).collect()
    return {"seconds": seconds, "driver_peak": driver, "driver_base": base, "walked": sum(walked), "worker": worker,
            "kept": int(counts.item(0, 0)), "phase1": int(counts.item(0, 1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=5_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--measure", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        summaries, partitions, workers, out, memory = args.measure
        memory = None if memory == "none" else int(memory)
        print(json.dumps(measure(Path(summaries), int(partitions), int(workers), Path(out), memory)))
        return
    print(f"{args.docs:,} rows; partitioned: {args.partitions} partitions on {args.workers} worker processes")
    print(f"{'mode':>14} {'seconds':>8} {'driver MiB':>10} {'B/row':>6} {'worker MiB':>10} {'walked':>9} "
          f"{'kept':>10} {'phase 1':>9}")
    with tempfile.TemporaryDirectory(prefix="bench_mix_") as tmp:
        folder = Path(tmp) / "summaries"
        generate(args.docs, folder)
        outputs = []
        modes = ((0, "whole", "none"), (args.partitions, f"{args.partitions} partitions", "none"),
                 (args.partitions, f"{args.partitions} ranged", 0))
        for partitions, label, memory in modes:
            out = Path(tmp) / f"decision-{len(outputs)}.parquet"
            r = measure_in_child(__file__, folder, partitions, args.workers, out, memory)
            outputs.append(out)
            walked, worker = (f"{r['walked']:,}", f"{r['worker'] / MIB:,.0f}") if partitions else ("-", "-")
            print(f"{label:>14} {r['seconds']:>8.1f} {r['driver_peak'] / MIB:>10,.0f} "
                  f"{(r['driver_peak'] - r['driver_base']) / args.docs:>6.0f} {worker:>10} {walked:>9} "
                  f"{r['kept']:>10,} {r['phase1']:>9,}", flush=True)
        assert outputs[0].read_bytes() == outputs[1].read_bytes(), "the partitioned decision differs"
        assert outputs[0].read_bytes() == outputs[2].read_bytes(), "the ranged decision differs"
    print("decision files byte-identical: whole, partitioned, ranged")


if __name__ == "__main__":
    main()
