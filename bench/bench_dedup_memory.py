"""Benchmark: peak memory of `minhash_dedup` over --docs generated short documents (target < 4 GiB).

Input: --docs documents of 10–40 words drawn (numpy RNG, --seed) from the vocabulary of the
standard library's docstrings, 1 % of them copies of an earlier document with one word changed,
written as parquet files of 100k rows. Generation happens in this process; the measured run is a
fresh child process (`--measure`), so the generator's memory does not count.

The child runs `run_recipe` (parquet source → `minhash_dedup` with the default 112 permutations,
threshold 0.8 → parquet output) with --workers processes. Memory of the whole process tree:
- `VmHWM` (peak resident set) of the child itself, from /proc/self/status;
- with workers > 1, a sampler thread reads `VmRSS` of the child and every descendant (the worker
  processes) every 50 ms; the largest *sum* seen is the tree's peak (a short spike between two
  samples can be missed), and the sum of every worker's last-seen `VmHWM` plus the child's is an
  upper bound (those peaks need not coincide).

    python bench/bench_dedup_memory.py [--docs 1000000] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl

GIB = 1 << 30
TARGET_GIB = 4.0


def status_kib(pid: int | str, field: str) -> int:
    """A `kB` field of /proc/<pid>/status (0 when the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(text.split(f"{field}:")[1].split()[0])


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(children)
            todo.extend(children)
    return found


class TreeSampler(threading.Thread):
    """Samples the summed VmRSS of this process and its descendants; remembers the peak sum and
    every descendant's latest VmHWM."""

    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval, self.peak_sum_kib, self.child_hwm_kib = interval, 0, {}
        self.stop = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            children = descendants(me)
            total = status_kib(me, "VmRSS")
            for child in children:
                total += status_kib(child, "VmRSS")
                self.child_hwm_kib[child] = max(self.child_hwm_kib.get(child, 0), status_kib(child, "VmHWM"))
            self.peak_sum_kib = max(self.peak_sum_kib, total)
            time.sleep(self.interval)


def generate(folder: Path, docs: int, seed: int, rows_per_file: int = 100_000) -> None:
    """`docs` short documents as parquet files (column `text`); 1 % near-copies of earlier ones."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_minhash import installed_docstrings

    vocabulary = np.unique(np.array(" ".join(installed_docstrings(3000)).split()))
    rng = np.random.default_rng(seed)
    lengths = rng.integers(10, 41, docs)
    words = pl.Series(vocabulary[rng.integers(0, vocabulary.size, int(lengths.sum()))])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    copies = rng.choice(np.arange(docs // 2, docs), docs // 100, replace=False)
    originals = rng.integers(0, docs // 2, copies.size)
    changed_word = offsets[copies] + rng.integers(0, lengths[copies])
    frame = (
        pl.DataFrame({"doc": np.repeat(np.arange(docs), lengths), "word": words})
        .group_by("doc", maintain_order=True)
        .agg(pl.col("word").str.join(" ").alias("text"))
    )
    texts = frame["text"].to_numpy().astype(object)
    # a copy = the original's text with its first word replaced by the copy's own word at `changed_word`
    texts[copies] = [w + " " + t.split(" ", 1)[1] for w, t in zip(words.gather(changed_word), texts[originals])]
    folder.mkdir(parents=True)
    for k, start in enumerate(range(0, docs, rows_per_file)):
        pl.DataFrame({"text": texts[start : start + rows_per_file].tolist()}).write_parquet(folder / f"part-{k:03d}.parquet")


def measure(inputs: Path, out: Path, workers: int) -> dict:
    """Run the recipe here; peak memory figures in MiB."""
    from datamill.curate.executors.run import run_recipe
    from datamill.curate.engine.recipe import validate_recipe

    recipe = validate_recipe(
        {
            "name": "bench-dedup-memory",
            "sources": [{"type": "parquet", "path": str(inputs / "*.parquet")}],
            "stages": [{"type": "minhash_dedup"}],
            "output": {"dir": str(out)},
            "executor": {"workers": workers},
        }
    )
    sampler = TreeSampler()
    sampler.start()
    start = time.perf_counter()
    stats = run_recipe(recipe, workers=workers, resume=False)
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    own_hwm = status_kib("self", "VmHWM")
    dropped = sum(stage.get("dropped", {}).get("near_duplicate", 0) for stage in stats["stages"])
    return {
        "seconds": round(seconds, 1),
        "removed": dropped,
        "process_hwm_mib": own_hwm // 1024,
        "tree_peak_rss_sum_mib": sampler.peak_sum_kib // 1024,
        "hwm_sum_upper_bound_mib": (own_hwm + sum(sampler.child_hwm_kib.values())) // 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", nargs=2, metavar=("INPUTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), Path(args.measure[1]), args.workers)))
        return
    root = Path(tempfile.mkdtemp(prefix="bench-dedup-memory-"))
    try:
        start = time.perf_counter()
        generate(root / "in", args.docs, args.seed)
        print(f"generated {args.docs} documents in {time.perf_counter() - start:.0f} s")
        child = subprocess.run(
            [sys.executable, __file__, "--workers", str(args.workers), "--measure", str(root / "in"), str(root / "out")],
            check=True, capture_output=True, text=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    peak_mib = max(result["process_hwm_mib"], result["tree_peak_rss_sum_mib"])
    print(f"minhash_dedup over {args.docs} documents, workers={args.workers}: {result['seconds']} s, "
          f"removed {result['removed']} (planted copies: {args.docs // 100})")
    print(f"peak memory: process VmHWM {result['process_hwm_mib']} MiB, process tree peak RSS sum "
          f"{result['tree_peak_rss_sum_mib']} MiB, sum of VmHWMs (upper bound) {result['hwm_sum_upper_bound_mib']} MiB")
    verdict = "meets" if peak_mib < TARGET_GIB * 1024 else "MISSES"
    print(f"{verdict} the {TARGET_GIB:.0f} GiB target ({peak_mib / 1024:.2f} GiB)")


if __name__ == "__main__":
    main()
