"""Timing helper shared by the benchmarks: best wall-clock time over repeated runs."""

from __future__ import annotations

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
