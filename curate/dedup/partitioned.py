"""Dedup barrier reduces split into hash-range partitions: split, reduce each partition alone, combine.

Three steps, each a plain function of polars frames, so any executor can run them where it likes
(the local process pool: `partition_pool.reduce_partitioned`; Ray tasks: `executors.ray`):

1. `split(summary, P)` — per shard, after `summarize`: the shard's summary cut into P frames,
   and `stats(summary)`: a few additive numbers of the shard (None where the reduce needs none;
   the ranking barriers' row counts and DSIR's bucket counts), gathered from every shard.
2. `reduce_partition(partition, summaries, stats)` — per partition, independently of the others.
3. `combine(results, summaries, stats)` — once: the decision table `apply` uses.

The decision table is identical (same rows, values, order and types) to the single-process
`stage.reduce(summaries)` for every P, because a partition owns whole groups:

- `minhash_dedup`: a band value h belongs to partition ⌊h·P / 2⁶⁴⌋ (the same ranges in every
  band), so each LSH bucket (band, h) lies in one partition. A partition's frame has one row per
  band value it owns: `_pos`, `band` (0-based index), `hash`. `MinHashDedup.links` runs over
  those rows laid out as band columns (one row per value, its band's column set, the others
  null) and gives the duplicate pairs of the partition's buckets (verified against
  `verify_jaccard` with the texts of the full summaries, which stay where they are); the pairs
  of all partitions are the pairs of the whole, and `MinHashDedup.decisions` (connected
  components, one keeper per cluster) turns them into the decision table. Only pairs travel to
  the combine — far fewer than documents on real data.
- `exact_dedup`: rows go to the partition of their `h0` range, so equal hashes meet in one
  partition, whose decision rows are `ExactDedup.reduce` of its rows; the combine concatenates
  them in `_pos` order.

The ranking barriers (budget, percentile_band, dsir, ifd, ds_weight) have their own reducer,
`selection.ranking_partitions.RankingPartitions`, found through the stage's `partition_reducer()`.

Memory of one partition (MinHash, 64-bit band values): 18 B per band value it owns (about
bands/P of every document's values), plus polars' group-by table of one band at a time; the
combine holds the pairs (16 B each, a pair found in buckets of several partitions counts once per
partition) and union–find arrays over the documents that have a pair — or, beyond the executor's
`combine_memory_mib`, runs partitioned itself (`components_partitioned`).
"""

from __future__ import annotations

from typing import Protocol

import polars as pl

from datamill.curate.dedup.exact import ExactDedup
from datamill.curate.dedup.minhash_stage import BAND_PREFIX, MinHashDedup
from datamill.curate.engine.stage import POSITION, BarrierStage

_HALF = 1 << 32
BAND, HASH = "band", "hash"


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

    def stats(self, summary: pl.DataFrame) -> pl.DataFrame | None:
        """A shard's additive statistics the partitions need (every shard's rows are concatenated
        and handed to `reduce_partition` and `combine`), or None."""
        ...

    def reduce_partition(self, partition: pl.LazyFrame, summaries: pl.LazyFrame,
                         stats: pl.DataFrame | None = None) -> pl.DataFrame:
        """The result of one partition: all shards' frames of that partition, and every summary."""
        ...

    def combine(self, results: pl.LazyFrame, summaries: pl.LazyFrame,
                stats: pl.DataFrame | None = None) -> pl.DataFrame:
        """The decision table from all partitions' results (in any order) and every summary."""
        ...


class MinHashPartitions:
    """`minhash_dedup` by LSH bucket ranges; partitions emit duplicate pairs (`src`, `dst`)."""

    def __init__(self, stage: MinHashDedup):
        self.stage = stage

    def split(self, summary: pl.DataFrame, partitions: int) -> list[pl.DataFrame]:
        bands = self.stage.band_columns
        values = (
            summary.select(POSITION, *bands)
            .unpivot(index=POSITION, on=bands, variable_name=BAND, value_name=HASH)
            .drop_nulls(HASH)
            .select(POSITION, pl.col(BAND).str.strip_prefix(BAND_PREFIX).cast(pl.UInt16), HASH)
        )
        owner = values.select(hash_partition(pl.col(HASH), partitions)).to_series()
        return [values.filter(owner == p) for p in range(partitions)]

    def stats(self, summary: pl.DataFrame) -> None:
        return None

    def reduce_partition(self, partition: pl.LazyFrame, summaries: pl.LazyFrame,
                         stats: pl.DataFrame | None = None) -> pl.DataFrame:
        values = partition.collect()
        # one row per (document, band value) of this partition, the band's column set and the
        # others null: each band's buckets are exactly those of the band's values here
        bands = pl.concat(
            [values.lazy().filter(pl.col(BAND) == i).select(POSITION, pl.col(HASH).alias(name))
             for i, name in enumerate(self.stage.band_columns)],
            how="diagonal",
        )
        return self.stage.links(bands, texts=summaries)

    def combine(self, results: pl.LazyFrame, summaries: pl.LazyFrame,
                stats: pl.DataFrame | None = None) -> pl.DataFrame:
        return self.stage.decisions(results.select("src", "dst").collect(), summaries)


class ExactPartitions:
    """`exact_dedup` by ranges of the first hash word; partitions emit decision rows."""

    def __init__(self, stage: ExactDedup):
        self.stage = stage

    def split(self, summary: pl.DataFrame, partitions: int) -> list[pl.DataFrame]:
        owner = summary.select(hash_partition(pl.col("h0"), partitions)).to_series()
        return [summary.filter(owner == p) for p in range(partitions)]

    def stats(self, summary: pl.DataFrame) -> None:
        return None

    def reduce_partition(self, partition: pl.LazyFrame, summaries: pl.LazyFrame,
                         stats: pl.DataFrame | None = None) -> pl.DataFrame:
        return self.stage.reduce(partition)

    def combine(self, results: pl.LazyFrame, summaries: pl.LazyFrame,
                stats: pl.DataFrame | None = None) -> pl.DataFrame:
        return results.sort(POSITION).collect()


def partition_reducer(stage: BarrierStage) -> PartitionReducer | None:
    """The partitioned reduce of a barrier stage, or None where it has none (reduce it whole):
    the dedup stages' here, any other stage's from its `partition_reducer()` method (the ranking
    barriers have one)."""
    if isinstance(stage, MinHashDedup):
        return MinHashPartitions(stage)
    if isinstance(stage, ExactDedup):
        return ExactPartitions(stage)
    own = getattr(stage, "partition_reducer", None)
    return own() if callable(own) else None
