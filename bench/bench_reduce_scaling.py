"""Benchmark: peak memory and wall time of the MinHash reduce, whole (one process) vs partitioned.

Input: MinHash summaries of --docs generated documents (what `minhash_dedup.summarize` writes:
`_pos` + one uint64 per LSH band, default layout 9 bands × 12 rows at threshold 0.8), written as
parquet files of 100k rows. Band values are random; 10 % of the documents are near-copies of an
earlier document that share 1–9 of its band values (so real buckets, pairs and clusters exist).
Generating summaries instead of text keeps the benchmark about the reduce alone.

Each configuration runs in a fresh child process (`--measure`):
- whole: `MinHashDedup.reduce(pl.scan_parquet(summaries))`, as the executors do today;
- partitioned: `partition_pool` steps — split every summary file into P partitions, reduce every
  partition (duplicate pairs only), combine (connected components + keepers) — with the split and
  partition tasks in a spawned process pool of --workers processes;
- ray: the same steps as Ray tasks (`executors.ray.reduce_on_ray`) on a local Ray cluster of
  --workers CPUs started in the child: partition frames travel through Ray's object store, the
  combine runs in the driver. Worker memory is the largest VmHWM among the cluster's worker
  processes (object-store pages a worker maps count in its RSS).
Memory is each process's own `VmHWM` (peak resident set, /proc/self/status): the child (the
driver, which also runs the combine) and every pool worker (reported by each task it ran);
the largest single process is what has to fit on one machine. The decision tables of all
configurations are compared byte for byte.

    python bench/bench_reduce_scaling.py [--docs 1000000 5000000] [--partitions 8] [--workers 2]
                                         [--modes whole 1 P ray]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import measure_in_child, peak_rss  # noqa: E402

FILE_ROWS = 100_000
MIB = 1 << 20


def generate(docs: int, bands: int, folder: Path, seed: int = 0) -> list[Path]:
    """Summary files of `docs` documents (see the module docstring)."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**63, size=(docs, bands), dtype=np.int64).astype(np.uint64) * np.uint64(2)
    copies = np.flatnonzero(rng.random(docs) < 0.10)
    copies = copies[copies > 0]
    sources = (rng.random(copies.size) * copies).astype(np.int64)  # an earlier document
    shared = rng.random((copies.size, bands)) < rng.uniform(0.1, 1.0, size=(copies.size, 1))
    shared[np.arange(copies.size), rng.integers(0, bands, copies.size)] = True  # at least one band
    values[copies] = np.where(shared, values[sources], values[copies])
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for start in range(0, docs, FILE_ROWS):
        stop = min(docs, start + FILE_ROWS)
        frame = pl.DataFrame({"_pos": np.arange(start, stop, dtype=np.int64)}
                             | {f"band_{b}": values[start:stop, b] for b in range(bands)})
        files.append(folder / f"summary-{len(files):05d}.parquet")
        frame.write_parquet(files[-1])
    return files


def warm_worker() -> int:
    """Import what the tasks import; the worker's RSS before any reduce work."""
    from datamill.curate.dedup import partition_pool  # noqa: F401

    time.sleep(0.5)  # so that each worker takes one
    return peak_rss()


def measured(function, *args):
    """Run a pool task; return its worker's peak RSS (the worker's peak so far)."""
    function(*args)
    return peak_rss()


def ray_worker_peak() -> int:
    """The largest VmHWM among the Ray worker processes this process started (the raylet's children)."""
    import psutil

    peaks = [0]
    for proc in psutil.Process().children(recursive=True):
        try:
            if "default_worker" in " ".join(proc.cmdline()) or proc.name().startswith("ray::"):
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peaks += [int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")]
        except (psutil.Error, OSError):
            continue
    return max(peaks)


def measure_ray(summaries: Path, partitions: int, workers: int, out: Path) -> dict:
    """The Ray configuration, in this (fresh) process: a local cluster of `workers` CPUs."""
    import ray

    from datamill.curate.dedup.minhash_stage import MinHashDedup
    from datamill.curate.executors.ray import reduce_on_ray

    ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
    warm = ray.remote(warm_worker)
    worker_base = max(ray.get([warm.remote() for _ in range(workers)]))
    files = sorted(summaries.glob("summary-*.parquet"))
    driver_base = peak_rss()
    start = time.perf_counter()
    decision = reduce_on_ray(MinHashDedup(), files, partitions)
    seconds = time.perf_counter() - start
    worker_peak = ray_worker_peak()
    ray.shutdown()
    decision.write_parquet(out)
    return {"seconds": seconds, "driver_peak": peak_rss(), "worker_peak": worker_peak,
            "driver_base": driver_base, "worker_base": worker_base, "decision_rows": decision.height}


def measure(summaries: Path, partitions: int, workers: int, out: Path) -> dict:
    """One configuration, in this (fresh) process (partitions < 0: on Ray, -partitions of them)."""
    if partitions < 0:
        return measure_ray(summaries, -partitions, workers, out)
    from datamill.curate.dedup import partition_pool as pool
    from datamill.curate.dedup.minhash_stage import MinHashDedup

    stage = MinHashDedup()
    files = sorted(summaries.glob("summary-*.parquet"))
    driver_base = peak_rss()  # the interpreter, polars and datamill, before any reduce work
    start = time.perf_counter()
    workers_peak, worker_base, phases = 0, 0, {}
    if partitions == 0:
        decision = stage.reduce(pl.scan_parquet(files))
    else:
        work = out.with_suffix(".work")
        shutil.rmtree(work, ignore_errors=True)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as executor:
            worker_base = max(f.result() for f in [executor.submit(warm_worker) for _ in range(workers)])
            for phase, tasks in (
                ("split", [(pool.split_summary_file, stage, f, i, work, partitions) for i, f in enumerate(files)]),
                ("reduce", [(pool.reduce_partition_folder, stage, work, p, files) for p in range(partitions)]),
            ):
                began = time.perf_counter()
                peaks = [f.result() for f in [executor.submit(measured, *task) for task in tasks]]
                phases[phase] = time.perf_counter() - began
                workers_peak = max([workers_peak, *peaks])
        began = time.perf_counter()
        decision = pool.combine_results(stage, work, partitions, files)
        phases["combine"] = time.perf_counter() - began
        pairs = pl.scan_ipc([pool.result_file(work, p) for p in range(partitions)]).select(pl.len()).collect().item()
        phases["pairs"] = pairs
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    decision.write_parquet(out)
    return {"seconds": seconds, "driver_peak": peak_rss(), "worker_peak": workers_peak,
            "driver_base": driver_base, "worker_base": worker_base,
            "decision_rows": decision.height, **phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["whole", "1", "P"],
                        help="whole, 1 (one partition), P (--partitions), ray (--partitions as Ray tasks)")
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        summaries, partitions, workers, out = args.measure
        print(json.dumps(measure(Path(summaries), int(partitions), int(workers), Path(out))))
        return
    from datamill.curate.dedup.minhash_stage import MinHashDedup

    bands = MinHashDedup().bands
    print(f"MinHash reduce, {bands} bands; partitioned: {args.partitions} partitions on {args.workers} worker processes")
    print("MiB: peak RSS of the driver (runs the whole reduce, or the combine) and of the largest pool worker "
          "(split + partition reduces); B/doc: that peak minus the process's RSS before any reduce work "
          "(interpreter + imports), per document")
    print(f"{'docs':>10} {'mode':>14} {'seconds':>8} {'driver MiB':>10} {'B/doc':>6} {'worker MiB':>10} {'B/doc':>6} "
          f"{'pairs':>9} {'decision rows':>13}")
    with tempfile.TemporaryDirectory(prefix="bench_reduce_") as tmp:
        for docs in args.docs:
            folder = Path(tmp) / f"docs-{docs}"
            generate(docs, bands, folder)
            rows = {}
            modes = {"whole": (0, "whole"), "1": (1, "1 partition"),
                     "P": (args.partitions, f"{args.partitions} partitions"),
                     "ray": (-args.partitions, f"ray {args.partitions} part.")}
            for partitions, label in [modes[m] for m in args.modes]:
                out = Path(tmp) / f"decision-{docs}-{partitions}.parquet"
                r = measure_in_child(__file__, folder, partitions, args.workers, out)
                driver = (r["driver_peak"] - r["driver_base"]) / docs
                worker = (r["worker_peak"] - r["worker_base"]) / docs if r["worker_peak"] else 0
                rows[partitions] = out.read_bytes()
                print(f"{docs:>10,} {label:>14} {r['seconds']:>8.1f} {r['driver_peak'] / MIB:>10,.0f} {driver:>6.0f} "
                      f"{r['worker_peak'] / MIB:>10,.0f} {worker:>6.0f} {r.get('pairs', '-'):>9} "
                      f"{r['decision_rows']:>13,}"
                      + (f"   split {r['split']:.1f}s reduce {r['reduce']:.1f}s combine {r['combine']:.1f}s"
                         if "split" in r else ""), flush=True)
            assert len(set(rows.values())) == 1, "partitioned decisions differ from the whole reduce"
            shutil.rmtree(folder)
    print("decision tables byte-identical across modes")


if __name__ == "__main__":
    main()
