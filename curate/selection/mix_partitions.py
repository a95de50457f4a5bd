"""Exact partitioned `mix`: partitions decide every copy; the driver walks only the anneal split's bucket.

The single-process `Mix.reduce` makes two token-budget cuts, each a walk down a seeded random
order: a downsampled source keeps its rows while the running token load (copies × tokens) in
(`_mix_u`, `_pos`) order stays within its budget; of the rows kept, an anneal source's rows are in
phase 1 while the running load in (`_mix_u2`, `_pos`) order stays within its anneal budget, and
the anneal budgets are shares of the tokens kept by the first cut. Both orders are uniform hashes
of the `id`, so cutting them into BUCKETS equal ranges of the hash gives balanced buckets that are
contiguous in the order. Reduced in P partitions (`MixPartitions`, run by any executor through
the `dedup.partitioned` protocol):

1. split — a row goes to the partition of its `_mix_u` bucket (bucket × P // BUCKETS: contiguous
   bucket ranges, balanced because the hash is uniform), so every bucket lies in one partition.
   Every shard also emits `stats`: per source its token load (positive and negative parts) and,
   for a source that may be downsampled (a `weights` source, the `replay` source), the same per
   `_mix_u` bucket. Summed, they give every source's load — hence its budget, as
   `Mix.token_budgets` computes it — and the load before each bucket: a bucket whose last row is
   surely within the budget is kept (IN), one whose first row is surely over it dropped (OUT);
   only the bucket the budget ends in is OPEN (with negative token counts, every bucket the
   bounds cannot decide).
2. reduce_partition — the copies of every row: row-local (epochs) in IN buckets and whole
   sources, 0 in OUT buckets, and an OPEN bucket (all of it is here) walked row by row from the
   load before it. With `anneal`, each row's anneal bucket code (anneal source index × BUCKETS +
   bucket of `_mix_u2`) and extra rows (null `_pos`) holding loads in `_mix_copies`: per anneal
   bucket the kept rows' positive (code) and negative (code + size) load, and the load kept in
   the walked OPEN buckets (code 2 × size); with `weight_from`, the score.
3. combine — the driver sorts the rows by `_pos`. With `anneal`: the kept tokens (stats plus the
   walked buckets' loads) give the anneal budgets; the anneal buckets' loads classify them the
   same way, and one filtered scan of the summaries reads the rows of the OPEN anneal buckets
   (about kept rows / BUCKETS per anneal source), walked from the load before the bucket. The loss
   weights (a mean over every kept row) are computed on the rows in `_pos` order, as
   `Mix.loss_weights` does.

Every comparison is the single process's own (`load <= budget + 1e-6` on the same integer loads),
so the decision table is identical for any P. The driver holds the rows' `_pos`, copies, anneal
code (and score with `weight_from`): ~20 B per row (~28 with weights), plus the OPEN anneal
buckets' rows.

Beyond the executor's `combine_memory_mib` (~BYTES_PER_ROW per row), `combine_ranges` keeps the
rows in the partitions' results, cut into `_pos` ranges (whole shards, as for the ranking
barriers): the driver gets each partition's anneal load rows (and rows per range), classifies
the anneal buckets, and fetches only the rows of the OPEN ones (a task per range) to walk them
from the summaries as above. The loss weights' mean is numpy's pairwise float sum of raw weight
× copies over every row in `_pos` order; its tree depends only on the row count, so each range
sends the sums of the tree's nodes inside it and the values of the ≤ 2 blocks it shares
(`pairwise_sum`), and the driver adds them up the tree: the same float to the last bit. A task
per range then writes its decision rows; the driver holds one range at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from datamill.curate.engine.partition_tasks import regroup
from datamill.curate.engine.records import TOKENS
from datamill.curate.engine.stage import POSITION
from datamill.curate.selection import pairwise_sum
from datamill.curate.selection.ranking_partitions import (
    cut_ranges,
    range_starts,
    stats_rows,
    with_shard_rows,
)

COPIES, U, U2, SCORE = "_mix_copies", "_mix_u", "_mix_u2", "_mix_score"
"""Summary and decision columns of `mix`: copies of a row, its two seeded uniforms, the weight_from score."""
PHASE_BUCKET = "_mix_phase_bucket"
"""Partition result column: anneal source index × BUCKETS + bucket of `_mix_u2`; -1: an anneal
source's row without a token count; null: not an anneal source."""
BUCKETS = 1024
"""Ranges of each seeded order: a cut's undecided rows are about rows / BUCKETS of its source."""
SLACK = 1e-6
"""A running load is within a budget when load <= budget + SLACK (the single-process rule)."""
IN, OUT, OPEN = 1, 0, 2
_BUCKET, _LOAD_POS, _LOAD_NEG = "_mix_bucket", "_mix_load_pos", "_mix_load_neg"
_CLASS, _PREFIX = "_mix_class", "_mix_prefix"


def bucket(uniform: pl.Expr) -> pl.Expr:
    """The bucket (0 … BUCKETS − 1) of a uniform in (0, 1): equal ranges, monotone in the value."""
    return (uniform * BUCKETS).floor().cast(pl.Int32).clip(0, BUCKETS - 1)


def within_budget(load: pl.Expr, budget: pl.Expr) -> pl.Expr:
    """A running token load is inside its budget (`mix`'s downsampling and anneal rule)."""
    return load <= budget + SLACK


def load_expr() -> pl.Expr:
    """Token load of a row: copies × tokens (null where the token count is null)."""
    return pl.col(COPIES) * pl.col(TOKENS)


def classify(positive: np.ndarray, negative: np.ndarray, budget: float) -> tuple[np.ndarray, np.ndarray]:
    """Per bucket of one order: IN / OUT / OPEN, and the exact load before the bucket.

    A row's running load lies between (load before its bucket) + (the bucket's negative part) and
    + (its positive part); int → float is monotone, so comparing the bounds as floats decides
    every row of an IN or OUT bucket the way the row-by-row comparison does."""
    prefix = np.concatenate([[0], np.cumsum(positive + negative)[:-1]]).astype(np.int64)
    limit = budget + SLACK
    classes = np.where((prefix + positive).astype(np.float64) <= limit, IN,
                       np.where((prefix + negative).astype(np.float64) > limit, OUT, OPEN))
    return classes.astype(np.int8), prefix


def _dense(codes: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, dtype=np.int64)
    np.add.at(out, codes.astype(np.int64), values.astype(np.int64))
    return out


def _place(positions: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Indices of `wanted` positions in the sorted, unique `positions` (each must be there)."""
    at = np.searchsorted(positions, wanted)
    if len(wanted) and (at.max() >= len(positions) or not np.array_equal(positions[at], wanted)):
        raise AssertionError("mix: a row of an undecided bucket is missing from the partitions' rows")
    return at


def _any_of(conditions: list[pl.Expr]) -> pl.Expr:
    return pl.any_horizontal(conditions) if conditions else pl.lit(False)


@dataclass(frozen=True)
class Cuts:
    """The downsampling cut, from every shard's stats: `available` (source → load), `budgets`
    (source → token budget), `classes` (source, bucket → class and load before the bucket, for
    every budgeted source) and `kept_in` (source → load of its IN buckets)."""

    available: dict
    budgets: dict
    classes: pl.DataFrame
    kept_in: dict


class MixPartitions:
    """The `dedup.partitioned.PartitionReducer` of `mix` (see the module docstring).

    The stage gives `copies()` (the row-local copies expression), `budgeted_sources()`,
    `token_budgets(available, present)`, `anneal_budgets(kept_tokens)` and `loss_weights(table)`.
    """

    def __init__(self, stage):
        self.stage = stage
        params = stage.params
        self.anneal = list(params.anneal.weights) if params.anneal else []
        self.weighted = params.weight_from is not None
        self.budgeted = sorted(stage.budgeted_sources())

    @property
    def size(self) -> int:
        """Anneal bucket codes: 0 … size − 1."""
        return len(self.anneal) * BUCKETS

    # --- per shard -----------------------------------------------------------------------------

    def split(self, summary: pl.DataFrame, partitions: int) -> list[pl.DataFrame]:
        """The rows by `_mix_u` bucket range: each bucket in one partition."""
        owner = summary.select(bucket(pl.col(U)).cast(pl.Int64) * partitions // BUCKETS).to_series()
        return [summary.filter(owner == p) for p in range(partitions)]

    def stats(self, summary: pl.DataFrame) -> pl.DataFrame:
        """Per source (and bucket of `_mix_u` for a source that may be downsampled): the positive
        and negative parts of its token load."""
        budgeted = pl.col("source").is_in(self.budgeted) if self.budgeted else pl.lit(False)
        load = load_expr()
        return with_shard_rows(summary.with_columns(self.stage.copies().alias(COPIES))
                               .group_by("source", pl.when(budgeted).then(bucket(pl.col(U))).alias(_BUCKET))
                               .agg(load.clip(lower_bound=0).sum().cast(pl.Int64).alias(_LOAD_POS),
                                    load.clip(upper_bound=0).sum().cast(pl.Int64).alias(_LOAD_NEG))
                               .sort("source", _BUCKET, nulls_last=True), summary)

    # --- the cuts, from the stats --------------------------------------------------------------

    def cuts(self, stats: pl.DataFrame | None) -> Cuts:
        if stats is None:
            stats = pl.DataFrame(schema={"source": pl.String, _BUCKET: pl.Int32, _LOAD_POS: pl.Int64,
                                         _LOAD_NEG: pl.Int64})
        total = stats.group_by("source", _BUCKET).agg(pl.col(_LOAD_POS).sum(), pl.col(_LOAD_NEG).sum())
        per_source = total.group_by("source").agg((pl.col(_LOAD_POS) + pl.col(_LOAD_NEG)).sum().alias("_load"))
        available = dict(per_source.iter_rows())
        budgets = self.stage.token_budgets(available, set(available))
        frames, kept_in = [], {}
        for source, budget in budgets.items():
            part = total.filter(pl.col("source") == source)
            if part[_BUCKET].null_count():
                raise AssertionError(f"source {source!r} has a token budget but no bucket loads")
            codes = part[_BUCKET].to_numpy()
            positive = _dense(codes, part[_LOAD_POS].to_numpy(), BUCKETS)
            negative = _dense(codes, part[_LOAD_NEG].to_numpy(), BUCKETS)
            classes, prefix = classify(positive, negative, budget)
            kept_in[source] = int((positive + negative)[classes == IN].sum())
            frames.append(pl.DataFrame({"source": [source] * BUCKETS,
                                        _BUCKET: np.arange(BUCKETS, dtype=np.int32),
                                        _CLASS: classes, _PREFIX: prefix}))
        schema = {"source": pl.String, _BUCKET: pl.Int32, _CLASS: pl.Int8, _PREFIX: pl.Int64}
        classes = pl.concat(frames) if frames else pl.DataFrame(schema=schema)
        return Cuts(available, budgets, classes.cast(schema), kept_in)

    def decided_copies(self, rows: pl.DataFrame, cuts: Cuts) -> tuple[pl.DataFrame, int]:
        """`rows` (a partition: whole `_mix_u` buckets) with their final `_mix_copies`, and the
        load kept in the OPEN buckets walked here."""
        budgeted = pl.col("source").is_in(list(cuts.budgets)) if cuts.budgets else pl.lit(False)
        rows = rows.with_columns(self.stage.copies().alias(COPIES),
                                 pl.when(budgeted).then(bucket(pl.col(U))).alias(_BUCKET))
        rows = rows.join(cuts.classes, on=["source", _BUCKET], how="left", maintain_order="left")
        final = (pl.when(~budgeted).then(pl.col(COPIES))
                 .when(pl.col(TOKENS).is_null()).then(0)  # a null load is never within a budget
                 .when(pl.col(_CLASS) == IN).then(pl.col(COPIES))
                 .when(pl.col(_CLASS) == OUT).then(0)
                 .otherwise(None))
        decided = rows.select(final.cast(pl.Int64).alias(COPIES)).to_series()
        walk = np.flatnonzero(decided.is_null().to_numpy())
        if not len(walk):
            return rows.with_columns(decided).drop(_BUCKET, _CLASS, _PREFIX), 0
        budget = pl.col("source").replace_strict(cuts.budgets, default=None, return_dtype=pl.Float64)
        load = pl.col(_PREFIX) + load_expr().cum_sum().over("source", _BUCKET, order_by=[U, POSITION])
        walked = rows[walk].with_columns(pl.when(within_budget(load, budget)).then(pl.col(COPIES)).otherwise(0)
                                         .alias(COPIES))
        rows = rows.with_columns(decided.scatter(walk, walked[COPIES])).drop(_BUCKET, _CLASS, _PREFIX)
        return rows, int(walked.select(load_expr().sum()).item() or 0)

    def phase_code(self) -> pl.Expr:
        index = pl.col("source").replace_strict({s: i for i, s in enumerate(self.anneal)}, default=None,
                                                return_dtype=pl.Int32)
        code = pl.when(pl.col(TOKENS).is_null()).then(pl.lit(-1, pl.Int32)).otherwise(
            index * BUCKETS + bucket(pl.col(U2)))
        return pl.when(index.is_not_null()).then(code).alias(PHASE_BUCKET)

    # --- per partition -------------------------------------------------------------------------

    def reduce_partition(self, partition: pl.LazyFrame, summaries: pl.LazyFrame,
                         stats: pl.DataFrame | None = None) -> pl.DataFrame:
        """Every row of the partition: `_pos`, final copies, anneal code and score; with anneal,
        then the load rows (null `_pos`, see the module docstring)."""
        rows, walked_load = self.decided_copies(partition.collect(), self.cuts(stats))
        columns = [POSITION, COPIES] + ([self.phase_code()] if self.anneal else []) + (
            [pl.col(SCORE).cast(pl.Float64)] if self.weighted else [])
        result = rows.select(columns)
        if not self.anneal:
            return result
        kept = rows.with_columns(self.phase_code(), load_expr().alias("_load")).filter(
            (pl.col(COPIES) > 0) & (pl.col(PHASE_BUCKET) >= 0))
        sums = kept.group_by(PHASE_BUCKET).agg(pl.col("_load").clip(lower_bound=0).sum().alias("_pos_load"),
                                               pl.col("_load").clip(upper_bound=0).sum().alias("_neg_load"))
        loads = pl.concat([
            sums.select(pl.col(PHASE_BUCKET), pl.col("_pos_load").alias(COPIES)),
            sums.filter(pl.col("_neg_load") != 0).select(pl.col(PHASE_BUCKET) + self.size,
                                                          pl.col("_neg_load").alias(COPIES)),
            pl.DataFrame({PHASE_BUCKET: [2 * self.size], COPIES: [walked_load]}),
        ], how="vertical_relaxed").select(
            pl.lit(None, dtype=result.schema[POSITION]).alias(POSITION), pl.col(COPIES).cast(pl.Int64),
            pl.col(PHASE_BUCKET).cast(pl.Int32), *([pl.lit(None, dtype=pl.Float64).alias(SCORE)] if self.weighted
                                                   else []))
        return pl.concat([result, loads])

    # --- once, on the driver -------------------------------------------------------------------

    def combine(self, results: pl.LazyFrame, summaries: pl.LazyFrame,
                stats: pl.DataFrame | None = None) -> pl.DataFrame:
        # one chunk, like the one-process table (a parquet file of it is then the same bytes)
        rows = results.filter(pl.col(POSITION).is_not_null()).collect().sort(POSITION).rechunk()
        decision = rows.select(POSITION, COPIES)
        if self.anneal:
            loads = results.filter(pl.col(POSITION).is_null()).select(PHASE_BUCKET, COPIES).collect()
            decision = decision.with_columns(self.phases(rows, loads, summaries, self.kept_tokens(stats, loads)))
        if self.weighted:
            decision = decision.with_columns(self.stage.loss_weights(rows))
        return decision

    def kept_tokens(self, stats: pl.DataFrame | None, loads: pl.DataFrame) -> float:
        """Tokens kept by the downsampling: whole sources and IN buckets (stats) plus the walked ones (loads)."""
        cuts = self.cuts(stats)
        return float(sum(t for s, t in cuts.available.items() if s not in cuts.budgets) + sum(cuts.kept_in.values())
                     + int(loads.filter(pl.col(PHASE_BUCKET) == 2 * self.size)[COPIES].sum()))

    def anneal_table(self, loads: pl.DataFrame, budgets: dict) -> tuple[np.ndarray, np.ndarray]:
        """Per anneal bucket code: IN / OUT / OPEN for phase 1, and the kept load before the bucket."""
        size = self.size
        sums = _dense(loads[PHASE_BUCKET].to_numpy(), loads[COPIES].to_numpy(), 2 * size + 1)
        table, prefix = np.empty(size, dtype=np.int8), np.empty(size, dtype=np.int64)
        for i, source in enumerate(self.anneal):
            part = slice(i * BUCKETS, (i + 1) * BUCKETS)
            table[part], prefix[part] = classify(sums[:size][part], sums[size:2 * size][part], budgets[source])
        return table, prefix

    def phases(self, rows: pl.DataFrame, loads: pl.DataFrame, summaries: pl.LazyFrame,
               kept_tokens: float) -> pl.Series:
        """`phase` of every row (in `_pos` order), as `Mix._phases` gives it."""
        budgets = self.stage.anneal_budgets(kept_tokens)
        table, prefix = self.anneal_table(loads, budgets)
        walked = None
        if self.open_anneal_rows(rows, table).height:
            walked = self.walk_open_anneal(summaries, rows, table, prefix, budgets)
        return self.phase_column(rows, table, walked)

    def open_anneal_rows(self, rows: pl.DataFrame, table: np.ndarray) -> pl.DataFrame:
        """`_pos` and copies of the rows (kept or not) in an OPEN anneal bucket."""
        wanted = np.flatnonzero(table == OPEN).tolist()
        return rows.filter(pl.col(PHASE_BUCKET).is_in(wanted)).select(POSITION, COPIES)

    def phase_column(self, rows: pl.DataFrame, table: np.ndarray, walked: pl.DataFrame | None) -> pl.Series:
        """`phase` of `rows` (any of them, in their order): the anneal bucket's class, or for a
        row of an OPEN bucket its `walked` phase."""
        code = rows[PHASE_BUCKET].fill_null(-2).to_numpy()
        kept = rows[COPIES].to_numpy() > 0
        scored = kept & (code >= 0)
        phase = np.zeros(len(code), dtype=np.int8)
        phase[scored] = table[code[scored]]  # IN = 1 and OUT = 0 are the phases; OPEN rows are walked
        open_rows = np.flatnonzero(scored & (phase == OPEN))
        if len(open_rows):
            at = _place(walked[POSITION].to_numpy(), rows[POSITION].to_numpy()[open_rows])
            phase[open_rows] = walked["phase"].to_numpy()[at]
        return pl.Series("phase", phase, dtype=pl.Int8).scatter(np.flatnonzero(kept & (code == -1)), None)

    # --- range by range, when the rows do not fit the driver -----------------------------------

    def combines_in_ranges(self, stats: pl.DataFrame | None, memory_mib: int) -> bool:
        """Whether the one-process `combine` (every row's `_pos`, copies, code) would pass `memory_mib`."""
        return stats_rows(stats) * BYTES_PER_ROW > memory_mib * (1 << 20)

    def combine_ranges(self, runner: Any, results: Sequence[Sequence[Any]], stats: pl.DataFrame,
                       summaries: pl.LazyFrame | None = None) -> tuple[list[Any], dict[str, pl.DataType]]:
        """The decision table as `_pos` ranges, the driver never holding every row: a task per
        partition (`runner`, an `engine.partition_tasks.TaskRunner`) cuts its rows into ranges and
        sends back its anneal loads, rows per range and weight shift; the driver classifies the
        anneal buckets (walking the OPEN ones' rows, fetched by a task per range) and, for loss
        weights, adds the ranges' pairwise sums (`pairwise_sum`: numpy's own float mean); a task
        per range writes its decision rows. Returns the ranges' handles in order and the schema."""
        starts = range_starts(stats, len(results))
        ranges = len(starts) + 1
        outs, infos = runner.map(cut_mix_result, results, (self, starts), ranges)
        inputs = regroup(outs, ranges)
        table = walked = None
        if self.anneal:
            loads = pl.concat([i["loads"] for i in infos])
            budgets = self.stage.anneal_budgets(self.kept_tokens(stats, loads))
            table, prefix = self.anneal_table(loads, budgets)
            if (table == OPEN).any():
                done, found = runner.map(open_rows_of_range, inputs, (self, table), 1)
                runner.drop([h for task in done for h in task])
                open_rows = pl.concat([f for f in found if f is not None]).sort(POSITION)
                if open_rows.height:
                    walked = self.walk_open_anneal(summaries, open_rows, table, prefix, budgets)
        weights = None
        if self.weighted:
            shifts = [i["shift"] for i in infos if i["shift"] is not None]
            shift = max(shifts) if shifts else 0.0
            counts = np.sum([i["counts"] for i in infos], axis=0, dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
            args = (self, shift, starts, offsets, int(counts.sum()))
            done, pieces = runner.map(weight_sums_of_range, inputs, args, 1)
            runner.drop([h for task in done for h in task])
            copies = sum(piece["copies"] for piece in pieces)
            weights = (shift, pairwise_sum.total(int(counts.sum()), pieces) / max(copies, 1))
        parts, _ = runner.map(decide_mix_range, inputs, (self, table, walked, weights), 1)
        runner.drop([h for task in outs for h in task])
        empty = decide_mix_range([], self, table, None, weights or (0.0, 1.0), infos[0]["schema"])[0][0]
        return [task[0] for task in parts], dict(empty.schema)

    def walk_open_anneal(self, summaries: pl.LazyFrame, rows: pl.DataFrame, table: np.ndarray,
                         prefix: np.ndarray, budgets: dict) -> pl.DataFrame:
        """`_pos` and `phase` of the kept rows of the OPEN anneal buckets (read from the summaries,
        copies from `rows`), walked in (`_mix_u2`, `_pos`) order from the load before the bucket."""
        wanted = np.flatnonzero(table == OPEN)
        conditions = [(pl.col("source") == self.anneal[i]) & bucket(pl.col(U2)).is_in(
            (wanted[wanted // BUCKETS == i] % BUCKETS).tolist()) for i in np.unique(wanted // BUCKETS)]
        found = summaries.filter(_any_of(conditions) & pl.col(TOKENS).is_not_null()).select(
            POSITION, "source", TOKENS, U2).collect(engine="streaming")
        at = _place(rows[POSITION].to_numpy(), found[POSITION].to_numpy())
        found = found.with_columns(rows[COPIES].gather(at)).filter(pl.col(COPIES) > 0).with_columns(
            self.phase_code())
        before = pl.lit(pl.Series(prefix)).gather(pl.col(PHASE_BUCKET))
        load = before + load_expr().cum_sum().over(PHASE_BUCKET, order_by=[U2, POSITION])
        budget = pl.col("source").replace_strict(budgets, default=None, return_dtype=pl.Float64)
        return found.select(POSITION, within_budget(load, budget).cast(pl.Int8).alias("phase")).sort(POSITION)


BYTES_PER_ROW = 110
"""Peak memory of the one-process `combine` per row (bench_mix_reduce.py: 102 B at 20M rows, 112–127 B at 5M)."""


def cut_mix_result(frames: list[pl.DataFrame], reducer: MixPartitions, starts: list[int]) -> tuple[list, dict]:
    """Task: a partition's result → its rows by `_pos` range (each sorted); info: the anneal load
    rows, rows per range, the weight shift of its rows (None: no finite kept score), the schema."""
    result = pl.concat(frames)
    rows = result.filter(pl.col(POSITION).is_not_null())
    outs, counts = cut_ranges(rows, starts)
    shift = None
    if reducer.weighted:
        score, kept = rows[SCORE].to_numpy().astype(np.float64), rows[COPIES].to_numpy() > 0
        if reducer.stage.params.weight_scale != "log" or (np.isfinite(score) & kept).any():
            shift = reducer.stage.weight_shift(score, kept)  # linear: fails on a negative kept score
    loads = result.filter(pl.col(POSITION).is_null()).select(PHASE_BUCKET, COPIES) if reducer.anneal else None
    return outs, {"loads": loads, "counts": counts, "shift": shift, "schema": dict(rows.schema)}


def _range_rows(frames: list[pl.DataFrame]) -> pl.DataFrame | None:
    """A range's rows from its partitions' frames, in `_pos` order (None: none)."""
    frames = [f for f in frames if f is not None and f.height]
    return pl.concat(frames).sort(POSITION) if frames else None


def open_rows_of_range(frames: list[pl.DataFrame], reducer: MixPartitions, table: np.ndarray) -> tuple[list, Any]:
    """Task: the range's rows in an OPEN anneal bucket (`_pos`, copies)."""
    rows = _range_rows(frames)
    return [pl.DataFrame()], None if rows is None else reducer.open_anneal_rows(rows, table)


def weight_sums_of_range(frames: list[pl.DataFrame], reducer: MixPartitions, shift: float, starts: list[int],
                         offsets: list[int], n: int) -> tuple[list, dict]:
    """Task: the range's share of the loss weights' mean: pairwise sums (`pairwise_sum.piece_sums`)
    of raw weight × copies over its rows, which are rows offsets[r] … of all n (r: its range), and copies."""
    rows = _range_rows(frames)
    if rows is None:
        return [pl.DataFrame()], {"nodes": {}, "shared": {}, "copies": 0}
    offset = offsets[int(np.searchsorted(np.asarray(starts, dtype=np.int64), rows[POSITION][0], side="right"))]
    score, copies = rows[SCORE].to_numpy().astype(np.float64), rows[COPIES].to_numpy()
    piece = pairwise_sum.piece_sums(reducer.stage.raw_weights(score, shift) * copies, offset, n)
    return [pl.DataFrame()], piece | {"copies": int(copies.sum())}


def decide_mix_range(frames: list[pl.DataFrame], reducer: MixPartitions, table: np.ndarray | None,
                     walked: pl.DataFrame | None, weights: tuple[float, float] | None,
                     schema: dict | None = None) -> tuple[list, dict]:
    """Task: one `_pos` range of the decision table (`weights`: the shift and mean of the loss weights)."""
    rows = _range_rows(frames)
    rows = pl.DataFrame(schema=schema) if rows is None else rows
    decision = rows.select(POSITION, COPIES)
    if reducer.anneal:
        decision = decision.with_columns(reducer.phase_column(rows, table, walked))
    if reducer.weighted:
        shift, mean = weights
        score = rows[SCORE].to_numpy().astype(np.float64)
        decision = decision.with_columns(reducer.stage.scaled_weights(reducer.stage.raw_weights(score, shift), mean))
    return [decision], {"rows": decision.height}
