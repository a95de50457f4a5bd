"""Test helpers for combines run range by range: the ranged decision table, and a runner that
counts the rows the driver receives."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import polars as pl
from datamill.curate.dedup.partition_pool import reduce_partitioned
from datamill.curate.engine.partition_tasks import DecisionParts, LocalRunner, write_decision


def ranged(stage, files: list[Path], work: Path, partitions: int, workers: int = 1) -> pl.DataFrame:
    """The barrier's decision table combined range by range (a memory budget of 0 MiB), streamed
    into one parquet file one range at a time and read back."""
    decision = reduce_partitioned(stage, files, work, partitions, workers=workers, combine_memory_mib=0)
    assert isinstance(decision, DecisionParts), "a budget of 0 MiB must combine range by range"
    write_decision(decision, work / "decision.parquet")
    table = pl.read_parquet(work / "decision.parquet")
    assert decision.collect().equals(table, null_equal=True)
    return table


class CountingRunner(LocalRunner):
    """A LocalRunner that counts the rows the driver receives: frames in task infos, and fetched ranges."""

    received: ClassVar[list[int]] = []
    fetched: ClassVar[list[int]] = []

    def map(self, fn, inputs, args, outputs):
        outs, infos = super().map(fn, inputs, args, outputs)
        for info in infos:
            frames = [info] if isinstance(info, pl.DataFrame) else [
                v for v in (info.values() if isinstance(info, dict) else []) if isinstance(v, pl.DataFrame)]
            CountingRunner.received += [f.height for f in frames]
        return outs, infos

    def fetch(self, handle):
        frame = super().fetch(handle)
        CountingRunner.fetched.append(0 if frame is None else frame.height)
        return frame
