"""Timing helpers shared by the benchmarks: best wall-clock time over repeated runs, and a
measurement in a fresh child process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
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
