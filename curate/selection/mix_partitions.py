"""Exact partitioned `mix`: partitions decide every row away from a cut, the driver the few rows in a cut's bucket.

The single-process `Mix.reduce` makes two token-budget cuts, each a walk down a seeded random
order: a downsampled source keeps its rows while the running token load (copies × tokens) in
(`_mix_u`, `_pos`) order stays within its budget; of the rows kept, an anneal source's rows are in
phase 1 while the running load in (`_mix_u2`, `_pos`) order stays within its anneal budget, and
the anneal budgets are shares of the tokens kept by the first cut. Both orders are uniform hashes
of the `id`, so cutting them into BUCKETS equal ranges of the hash gives balanced buckets that are
contiguous in the order. Reduced in P partitions (`MixPartitions`, run by any executor through
the `dedup.partitioned` protocol):

1. split — rows go to a partition by a hash of `_pos`; every shard also emits `stats`: per source
   its token load (copies × tokens, positive and negative parts) and, for a source that may be
   downsampled (a `weights` source, the `replay` source), the same per bucket of `_mix_u`.
   Summed, they give every source's load — hence its budget, exactly as `Mix.token_budgets`
   computes it — and the load before each bucket: a bucket whose last row is surely within the
   budget is kept (IN), one whose first row is surely over it is dropped (OUT), and only the
   bucket the budget ends in is OPEN (with negative token counts, every bucket the bounds
   cannot decide).
2. reduce_partition — per row: the copies (epochs, row-local), final outside OPEN buckets (null
   inside), the row's anneal bucket code (anneal source index × BUCKETS + bucket of `_mix_u2`)
   and its score for `weight_from`; plus, with `anneal`, per anneal bucket the token load of the
   rows it keeps for sure (rows with a null `_pos`: load in `_mix_copies`, positive parts under
   their code, negative parts under code + sources × BUCKETS).
3. combine — the driver reads the OPEN buckets' rows from the summaries (a filtered scan: about
   rows/BUCKETS per downsampled source) and walks them from the bucket's known load, as the
   single process does; that fixes the kept tokens and so the anneal budgets. The anneal buckets'
   loads (the partitions' sums plus the resolved rows) classify the anneal buckets the same way,
   and a second filtered scan walks the rows of the OPEN anneal buckets. The loss weights (a
   mean over every kept row) are computed on the rows in `_pos` order, as `Mix.loss_weights`
   does.

Every comparison is the single process's own (`load <= budget + 1e-6` on the same integer loads),
so the decision table is identical for any P. The driver holds the rows' `_pos`, copies, anneal
code (and score with `weight_from`): ~20 B per row (~28 with weights), plus the OPEN buckets' rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from datamill.curate.engine.records import TOKENS
from datamill.curate.engine.stage import POSITION
from datamill.curate.selection.ranking_partitions import split_rows

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

    def open_filter(self) -> pl.Expr:
        """Summary rows in an OPEN bucket of a budgeted source (with a token count)."""
        open_ = self.classes.filter(pl.col(_CLASS) == OPEN)
        conditions = [(pl.col("source") == s) & bucket(pl.col(U)).is_in(part[_BUCKET].to_list())
                      for (s,), part in open_.group_by("source")]
        return _any_of(conditions) & pl.col(TOKENS).is_not_null()


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

    # --- per shard -----------------------------------------------------------------------------

    def split(self, summary: pl.DataFrame, partitions: int) -> list[pl.DataFrame]:
        return split_rows(summary, partitions)

    def stats(self, summary: pl.DataFrame) -> pl.DataFrame:
        """Per source (and bucket of `_mix_u` for a source that may be downsampled): the positive
        and negative parts of its token load."""
        budgeted = pl.col("source").is_in(self.budgeted) if self.budgeted else pl.lit(False)
        load = load_expr()
        return (summary.with_columns(self.stage.copies().alias(COPIES))
                .group_by("source", pl.when(budgeted).then(bucket(pl.col(U))).alias(_BUCKET))
                .agg(load.clip(lower_bound=0).sum().cast(pl.Int64).alias(_LOAD_POS),
                     load.clip(upper_bound=0).sum().cast(pl.Int64).alias(_LOAD_NEG))
                .sort("source", _BUCKET, nulls_last=True))

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

    def decided_copies(self, rows: pl.DataFrame, cuts: Cuts) -> pl.DataFrame:
        """`rows` (source, `_mix_u`, tokens) with `_mix_copies`: final, or null in an OPEN bucket;
        and `_mix_bucket`, `_mix_prefix` (the load before the row's bucket) for budgeted sources."""
        budgeted = pl.col("source").is_in(list(cuts.budgets)) if cuts.budgets else pl.lit(False)
        rows = rows.with_columns(self.stage.copies().alias(COPIES),
                                 pl.when(budgeted).then(bucket(pl.col(U))).alias(_BUCKET))
        rows = rows.join(cuts.classes, on=["source", _BUCKET], how="left", maintain_order="left")
        final = (pl.when(~budgeted).then(pl.col(COPIES))
                 .when(pl.col(TOKENS).is_null()).then(0)  # a null load is never within a budget
                 .when(pl.col(_CLASS) == IN).then(pl.col(COPIES))
                 .when(pl.col(_CLASS) == OUT).then(0)
                 .otherwise(None))
        return rows.with_columns(final.cast(pl.Int64).alias(COPIES)).drop(_CLASS)

    def phase_code(self) -> pl.Expr:
        index = pl.col("source").replace_strict({s: i for i, s in enumerate(self.anneal)}, default=None,
                                                return_dtype=pl.Int32)
        code = pl.when(pl.col(TOKENS).is_null()).then(pl.lit(-1, pl.Int32)).otherwise(
            index * BUCKETS + bucket(pl.col(U2)))
        return pl.when(index.is_not_null()).then(code).alias(PHASE_BUCKET)

    # --- per partition -------------------------------------------------------------------------

    def reduce_partition(self, partition: pl.LazyFrame, summaries: pl.LazyFrame,
                         stats: pl.DataFrame | None = None) -> pl.DataFrame:
        """Every row of the partition: `_pos`, copies (null: in an OPEN bucket), anneal code and
        score; with anneal, then the rows of per-bucket loads of the rows surely kept."""
        rows = self.decided_copies(partition.collect(), self.cuts(stats))
        columns = [POSITION, COPIES] + ([self.phase_code()] if self.anneal else []) + (
            [pl.col(SCORE).cast(pl.Float64)] if self.weighted else [])
        result = rows.select(columns)
        if not self.anneal:
            return result
        kept = rows.with_columns(self.phase_code(), load_expr().alias("_load")).filter(
            (pl.col(COPIES) > 0) & (pl.col(PHASE_BUCKET) >= 0))
        sums = kept.group_by(PHASE_BUCKET).agg(pl.col("_load").clip(lower_bound=0).sum().alias("_pos_load"),
                                               pl.col("_load").clip(upper_bound=0).sum().alias("_neg_load"))
        shift = len(self.anneal) * BUCKETS
        loads = pl.concat([
            sums.select(pl.col(PHASE_BUCKET), pl.col("_pos_load").alias(COPIES)),
            sums.filter(pl.col("_neg_load") != 0).select(pl.col(PHASE_BUCKET) + shift,
                                                          pl.col("_neg_load").alias(COPIES)),
        ]).select(pl.lit(None, dtype=result.schema[POSITION]).alias(POSITION), pl.col(COPIES).cast(pl.Int64),
                  pl.col(PHASE_BUCKET).cast(pl.Int32),
                  *([pl.lit(None, dtype=pl.Float64).alias(SCORE)] if self.weighted else []))
        return pl.concat([result, loads])

    # --- once, on the driver -------------------------------------------------------------------

    def combine(self, results: pl.LazyFrame, summaries: pl.LazyFrame,
                stats: pl.DataFrame | None = None) -> pl.DataFrame:
        cuts = self.cuts(stats)
        resolved = self.resolve_downsampling(summaries, cuts)
        rows = results.filter(pl.col(POSITION).is_not_null()).sort(POSITION).collect()
        copies = rows[COPIES].scatter(_place(rows[POSITION].to_numpy(), resolved[POSITION].to_numpy()),
                                      resolved[COPIES])
        if copies.null_count():
            raise AssertionError(f"mix: {copies.null_count()} rows in an undecided bucket were not resolved")
        rows = rows.with_columns(copies)
        decision = rows.select(POSITION, COPIES)
        if self.anneal:
            kept_tokens = (sum(t for s, t in cuts.available.items() if s not in cuts.budgets)
                           + sum(cuts.kept_in.values())
                           + int(resolved.select(load_expr().sum()).item() or 0))
            loads = results.filter(pl.col(POSITION).is_null()).select(PHASE_BUCKET, COPIES).collect()
            decision = decision.with_columns(self.phases(rows, loads, resolved, summaries, cuts, float(kept_tokens)))
        if self.weighted:
            decision = decision.with_columns(self.stage.loss_weights(rows))
        return decision

    def resolve_downsampling(self, summaries: pl.LazyFrame, cuts: Cuts) -> pl.DataFrame:
        """The rows of the OPEN buckets with their final copies: each bucket walked in the
        single-process order from the load before it."""
        rows = summaries.filter(cuts.open_filter()).select(POSITION, "source", TOKENS, U, U2).collect(
            engine="streaming")
        rows = self.decided_copies(rows, cuts).with_columns(self.stage.copies().alias(COPIES))
        budget = pl.col("source").replace_strict(cuts.budgets, default=None, return_dtype=pl.Float64)
        load = pl.col(_PREFIX) + load_expr().cum_sum().over("source", _BUCKET, order_by=[U, POSITION])
        decided = rows.with_columns(pl.when(within_budget(load, budget)).then(pl.col(COPIES)).otherwise(0)
                                    .alias(COPIES))
        return decided.with_columns(self.phase_code() if self.anneal else pl.lit(None, pl.Int32).alias(
            PHASE_BUCKET)).select(POSITION, "source", TOKENS, U, U2, COPIES, PHASE_BUCKET).sort(POSITION)

    def phases(self, rows: pl.DataFrame, loads: pl.DataFrame, resolved: pl.DataFrame, summaries: pl.LazyFrame,
               cuts: Cuts, kept_tokens: float) -> pl.Series:
        """`phase` of every row (in `_pos` order), as `Mix._phases` gives it."""
        budgets = self.stage.anneal_budgets(kept_tokens)
        size = len(self.anneal) * BUCKETS
        # kept load per anneal bucket: the partitions' sums (negative parts under code + size) and
        # the resolved rows of the OPEN downsampling buckets
        sums = _dense(loads[PHASE_BUCKET].to_numpy(), loads[COPIES].to_numpy(), 2 * size)
        kept_open = resolved.filter((pl.col(COPIES) > 0) & (pl.col(PHASE_BUCKET) >= 0))
        codes, load = kept_open[PHASE_BUCKET].to_numpy(), kept_open.select(load_expr()).to_series().to_numpy()
        positive = sums[:size] + _dense(codes, np.clip(load, 0, None), size)
        negative = sums[size:] + _dense(codes, np.clip(load, None, 0), size)
        table, prefix = np.empty(size, dtype=np.int8), np.empty(size, dtype=np.int64)
        for i, source in enumerate(self.anneal):
            part = slice(i * BUCKETS, (i + 1) * BUCKETS)
            table[part], prefix[part] = classify(positive[part], negative[part], budgets[source])
        code = rows[PHASE_BUCKET].fill_null(-2).to_numpy()
        kept = rows[COPIES].to_numpy() > 0
        scored = kept & (code >= 0)
        phase = np.zeros(len(code), dtype=np.int8)
        phase[scored] = table[code[scored]]  # IN = 1 and OUT = 0 are the phases; OPEN rows are walked
        open_rows = np.flatnonzero(scored & (phase == OPEN))
        if len(open_rows):
            walked = self.walk_open_anneal(summaries, cuts, resolved, table, prefix, budgets)
            at = _place(walked[POSITION].to_numpy(), rows[POSITION].to_numpy()[open_rows])
            phase[open_rows] = walked["phase"].to_numpy()[at]
        return pl.Series("phase", phase, dtype=pl.Int8).scatter(np.flatnonzero(kept & (code == -1)), None)

    def walk_open_anneal(self, summaries: pl.LazyFrame, cuts: Cuts, resolved: pl.DataFrame, table: np.ndarray,
                         prefix: np.ndarray, budgets: dict) -> pl.DataFrame:
        """`_pos` and `phase` of the kept rows of the OPEN anneal buckets, walked in (`_mix_u2`,
        `_pos`) order from the load before the bucket; sorted by `_pos`."""
        wanted = np.flatnonzero(table == OPEN)
        conditions = [(pl.col("source") == self.anneal[i]) & bucket(pl.col(U2)).is_in(
            (wanted[wanted // BUCKETS == i] % BUCKETS).tolist()) for i in np.unique(wanted // BUCKETS)]
        rows = summaries.filter(_any_of(conditions) & pl.col(TOKENS).is_not_null()).select(
            POSITION, "source", TOKENS, U, U2).collect(engine="streaming")
        rows = self.decided_copies(rows, cuts).drop(_BUCKET, _PREFIX)
        undecided = rows[COPIES].is_null().to_numpy()
        if undecided.any():  # in an OPEN downsampling bucket too: copies as resolved
            at = _place(resolved[POSITION].to_numpy(), rows[POSITION].to_numpy()[undecided])
            rows = rows.with_columns(rows[COPIES].scatter(np.flatnonzero(undecided), resolved[COPIES].gather(at)))
        rows = rows.filter(pl.col(COPIES) > 0).with_columns(self.phase_code())
        before = pl.lit(pl.Series(prefix)).gather(pl.col(PHASE_BUCKET))
        load = before + load_expr().cum_sum().over(PHASE_BUCKET, order_by=[U2, POSITION])
        budget = pl.col("source").replace_strict(budgets, default=None, return_dtype=pl.Float64)
        return rows.select(POSITION, within_budget(load, budget).cast(pl.Int8).alias("phase")).sort(POSITION)
