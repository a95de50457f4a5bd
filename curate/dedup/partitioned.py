"""Dedup barrier reduces split into hash-range partitions: split, reduce each partition alone, combine.

Three steps, each a plain function of polars frames, so any executor can run them where it likes
(the local process pool: `partition_pool.reduce_partitioned`; Ray tasks over partition files):

1. `split(summary, P)` — per shard, after `summarize`: the shard's summary cut into P frames.
2. `reduce_partition(partition, summaries)` — per partition, independently of the others.
3. `combine(results, summaries)` — once: the decision table `apply` uses.

The decision table is identical (same rows, values, order and types) to the single-process
`stage.reduce(summaries)` for every P, because a partition owns whole groups:

- `minhash_dedup`: a band value h belongs to partition ⌊h·P / 2⁶⁴⌋ (the same ranges in every
  band), so each LSH bucket (band, h) lies in one partition. A partition's frame is `_pos` plus
  the band columns, a value of another partition set to null, and only rows with at least one
  value left. `MinHashDedup.links` over it gives the duplicate pairs of its buckets (verified
  against `verify_jaccard` with the texts of the full summaries, which stay where they are);
  the pairs of all partitions are the pairs of the whole, and `MinHashDedup.decisions` (connected
  components, one keeper per cluster) turns them into the decision table. Only pairs travel
  to the combine — far fewer than documents on real data.
- `exact_dedup`: rows go to the partition of their `h0` range, so equal hashes meet in one
  partition, whose decision rows are `ExactDedup.reduce` of its rows; the combine concatenates
  them in `_pos` order.

Memory of one partition (MinHash, 64-bit band values): the rows holding a value of the
partition, 8 B `_pos` + 8 B per band each (a document falls in about min(P, bands) partitions
out of P; with 9 bands and P = 64 that is 13% of the documents), plus polars' group-by table of
one band at a time; the combine holds the pairs (16 B each) and union–find arrays over the
documents that have a pair.
"""

from __future__ import annotations

from typing import Protocol

import polars as pl

from datamill.curate.dedup.exact import ExactDedup
from datamill.curate.dedup.minhash_stage import MinHashDedup
from datamill.curate.engine.stage import POSITION, BarrierStage

_HALF = 1 << 32


def hash_partition(hashes: pl.Expr, partitions: int) -> pl.Expr:
    """⌊h·P / 2⁶⁴⌋ of a uint64 column: the partition of each hash by value range (contiguous,
    equally wide ranges; computed in 64-bit arithmetic from the top 32 bits)."""
    if not 1 <= partitions <= _HALF:
        raise ValueError(f"partitions must be between 1 and 2**32, got {partitions}")
    return ((hashes.cast(pl.UInt64) // _HALF) * partitions // _HALF).cast(pl.UInt32)


class PartitionReducer(Protocol):
    """What an executor calls to reduce a barrier in partitions (see the module docstring)."""

    def split(self, summary: pl.DataFrame, partitions: int) -> list[pl.DataFrame]:
        """One frame per partition (index = partition), possibly empty, always with the same columns."""
        ...

    def reduce_partition(self, partition: pl.LazyFrame, summaries: pl.LazyFrame) -> pl.DataFrame:
        """The result of one partition: all shards' frames of that partition, and every summary."""
        ...

    def combine(self, results: pl.LazyFrame, summaries: pl.LazyFrame) -> pl.DataFrame:
        """The decision table from all partitions' results (in any order) and every summary."""
        ...


class MinHashPartitions:
    """`minhash_dedup` by LSH bucket ranges; partitions emit duplicate pairs (`src`, `dst`)."""

    def __init__(self, stage: MinHashDedup):
        self.stage = stage

    def split(self, summary: pl.DataFrame, partitions: int) -> list[pl.DataFrame]:
        bands = self.stage.band_columns
        owned = summary.select(POSITION, *bands, *(hash_partition(pl.col(b), partitions).alias(f"_p_{b}") for b in bands))
        frames = []
        for p in range(partitions):
            frame = owned.select(POSITION, *(pl.when(pl.col(f"_p_{b}") == p).then(pl.col(b)).alias(b) for b in bands))
            frames.append(frame.filter(pl.any_horizontal(pl.col(b).is_not_null() for b in bands)))
        return frames

    def reduce_partition(self, partition: pl.LazyFrame, summaries: pl.LazyFrame) -> pl.DataFrame:
        return self.stage.links(partition, texts=summaries)

    def combine(self, results: pl.LazyFrame, summaries: pl.LazyFrame) -> pl.DataFrame:
        return self.stage.decisions(results.select("src", "dst").collect(), summaries)


class ExactPartitions:
    """`exact_dedup` by ranges of the first hash word; partitions emit decision rows."""

    def __init__(self, stage: ExactDedup):
        self.stage = stage

    def split(self, summary: pl.DataFrame, partitions: int) -> list[pl.DataFrame]:
        owner = summary.select(hash_partition(pl.col("h0"), partitions)).to_series()
        return [summary.filter(owner == p) for p in range(partitions)]

    def reduce_partition(self, partition: pl.LazyFrame, summaries: pl.LazyFrame) -> pl.DataFrame:
        return self.stage.reduce(partition)

    def combine(self, results: pl.LazyFrame, summaries: pl.LazyFrame) -> pl.DataFrame:
        return results.sort(POSITION).collect()


def partition_reducer(stage: BarrierStage) -> PartitionReducer | None:
    """The partitioned reduce of a barrier stage, or None where it has none (reduce it whole)."""
    if isinstance(stage, MinHashDedup):
        return MinHashPartitions(stage)
    if isinstance(stage, ExactDedup):
        return ExactPartitions(stage)
    return None
