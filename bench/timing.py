"""Timing helpers shared by the benchmarks: best wall-clock time over repeated runs, a measurement
in a fresh child process, peak memory, and a barrier reduce timed as the reduce benches run it."""

from __future__ import annotations

import json
import subprocess
import sys
import shutil
import time
from pathlib import Path
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def fastest(run: Callable[[], T], repeat: int) -> tuple[float, T]:
    """(best wall-clock seconds over `repeat` runs, result of the last run): the box may be shared,
    so the fastest run is the one least disturbed by other jobs."""
    best, result = float("inf"), None
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def measure_in_child(script: str, *args) -> dict:
    """Run `python script --measure ARGS…` in a fresh process (so its peak memory is its own) and
    return the JSON object it prints last."""
    command = [sys.executable, script, "--measure", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def peak_rss() -> int:
    """This process's peak resident set in bytes (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def timed_reduce(stage, files: list[Path], partitions: int, workers: int, out: Path,
                 memory_mib: int | None = None) -> float:
    """Seconds to reduce `stage` over `files` and write the decision to `out`: in this process
    (`partitions` 0) or partitioned on a pool of `workers` (combined range by range past `memory_mib`)."""
    import polars as pl

    from datamill.curate.dedup.partition_pool import reduce_partitioned
    from datamill.curate.engine.partition_tasks import write_decision

    start = time.perf_counter()
    work = out.with_suffix(".work")
    if partitions == 0:
        decision = stage.reduce(pl.scan_parquet(files))
    else:
        decision = reduce_partitioned(stage, files, work, partitions, workers=workers, combine_memory_mib=memory_mib)
    write_decision(decision, out)
    seconds = time.perf_counter() - start
    shutil.rmtree(work, ignore_errors=True)
    return seconds
