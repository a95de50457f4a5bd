"""Exact partitioned ranking: each partition marks the few rows that could change the selection, a merge decides them.

A ranking barrier (budget, percentile_band, dsir, ifd, ds_weight) keeps the rows of each group whose
rank in the whole corpus — by a key, ties by `_pos` — falls inside a budget. Reduced in P
partitions (`RankingPartitions`, run by any executor through the `dedup.partitioned` protocol):

1. split — rows go to a partition by a hash of `_pos`; every shard also emits `group_stats`
   (rows, scored rows, least token count per group; DSIR adds its bucket counts), summed over
   all shards into the totals every partition sees.
2. reduce_partition — the stage scores its rows (`scored`: the same row-local code as the
   single-process `ranking`, with corpus-wide numbers from the totals), sorts them by the
   ranking, and marks candidates (`mark_candidates`): the only rows whose fate depends on
   other partitions. Every other row is decided here.
3. combine — the candidates of all partitions are sorted together (`merge_candidates`): their
   rank among the candidates is their rank in the corpus, so the decision is exact.

Candidates of a group with n rows (k = rows to keep, the same formula as `select_by_rank`):
- count / fraction budgets: the partition's first k rows (the corpus' top k are among them);
- token budgets: the partition's rows up to and including the first one whose running token sum
  passes the budget (a later row of that partition, and so every row ranked after it anywhere,
  is over the budget); every scored row when some row has a negative token count;
- `drop_fraction` (keep all scored rows but the last round(f·n)): the partition's first k rows;
- percentile bands: the partition's lowest `lo` and highest `n−1−hi` rows, where [lo, hi] are
  the corpus ranks whose percentile 100·rank/(n−1) lies in the band (found with the same float
  arithmetic as `percentile_band`); the rows between are inside the band wherever they are.

Rows without a score (null, NaN) are never candidates and never selected. The combine holds the
slim scored rows of every partition (the decision table it returns has a row per document
anyway) but sorts only the candidates: at most k·P rows for a budget of k, a band's two tails.
One round cannot prune more: where k is above a partition's size (fraction 0.3 with P = 8, a
10–90 band) nearly every row is a candidate and the merge sorts nearly the whole slim table;
the partitions still do the scoring (DSIR's model, DS weights) and the per-row decisions.
A second round with key quantiles per partition would bound the candidates to the rows near
the cut-off; it is not built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from datamill.curate.engine.records import TOKENS
from datamill.curate.engine.stage import POSITION

SELECTED = "_selected"
ROWS, KEYED, MIN_TOKENS = "_rows", "_keyed", "_min_tokens"
CANDIDATE, LOW, HIGH = "_candidate", "_low", "_high"
_KEY = "_rank_key"
PARTITION_SEED = 0x5EED


@dataclass(frozen=True)
class RankPlan:
    """How a stage selects from its scored rows.

    `key`: the column ranked (None: `scored` computes `_selected` row by row, nothing to rank);
    `descending`: highest first; `group`: the column whose values rank apart (e.g. `source`);
    exactly one of `budget` (a `ranking.Budget`), `band` (lower, upper percentiles, key
    ascending) or `drop_fraction` (keep every scored row except the last round-half-up(f × scored
    rows)) applies when `key` is set.
    """

    key: str | None
    descending: bool = True
    group: str | None = None
    budget: Any = None
    band: tuple[float, float] | None = None
    drop_fraction: float | None = None
    tokens: str = TOKENS
    tie_break: str = POSITION


def rank_value(table: pl.DataFrame, key: str) -> pl.Expr:
    """The key as ranked: NaN counts as null (as in `select_by_rank`)."""
    value = pl.col(key)
    if table.schema[key].is_float():
        value = pl.when(value.is_nan()).then(None).otherwise(value)
    return value


def group_stats(table: pl.DataFrame, plan: RankPlan) -> pl.DataFrame:
    """Per group of `table`: rows, rows with a key (null where the plan has no key yet), least token count."""
    keyed = rank_value(table, plan.key).is_not_null().sum() if plan.key in table.columns else pl.lit(None)
    least = (pl.col(plan.tokens).fill_null(0).cast(pl.Int64).min() if plan.tokens in table.columns
             else pl.lit(None, dtype=pl.Int64))
    aggs = [pl.len().cast(pl.Int64).alias(ROWS), keyed.cast(pl.Int64).alias(KEYED), least.alias(MIN_TOKENS)]
    if plan.group:
        return table.group_by(plan.group).agg(aggs)
    return table.select(aggs)


def totals(stats: pl.DataFrame, plan: RankPlan) -> pl.DataFrame:
    """Every shard's `group_stats` summed per group."""
    aggs = [pl.col(ROWS).sum(), pl.col(KEYED).sum(), pl.col(MIN_TOKENS).min()]
    if plan.group:
        return stats.group_by(plan.group).agg(aggs)
    return stats.select(aggs)


def split_rows(summary: pl.DataFrame, partitions: int) -> list[pl.DataFrame]:
    """The rows of a shard's summary by a hash of `_pos` (balanced, the same in every run)."""
    owner = summary.select(pl.col(POSITION).hash(PARTITION_SEED) % partitions).to_series()
    return [summary.filter(owner == p) for p in range(partitions)]


def band_ranks(n: int, lower: float, upper: float) -> tuple[int, int]:
    """(lo, hi): the ranks r of n whose percentile 100·r/(n−1) (50 for n = 1) is in [lower, upper]
    are lo..hi (none when lo > hi). The percentile is monotone in r, so a binary search finds both."""
    last = float(n - 1)

    def percentile(r: int) -> float:
        return 100.0 * float(r) / last if last > 0 else 50.0

    def first(condition) -> int:  # first r in [0, n] with condition(r) true, condition monotone
        low, high = 0, n
        while low < high:
            middle = (low + high) // 2
            if condition(middle):
                high = middle
            else:
                low = middle + 1
        return low

    return first(lambda r: percentile(r) >= lower), first(lambda r: percentile(r) > upper) - 1


def _sorted(table: pl.DataFrame, plan: RankPlan, descending: bool | None = None) -> pl.DataFrame:
    group = [plan.group] if plan.group else []
    down = plan.descending if descending is None else descending
    return table.sort(group + [_KEY, plan.tie_break], descending=[False] * len(group) + [down, False],
                      nulls_last=True)


def _per_group(expr: pl.Expr, plan: RankPlan) -> pl.Expr:
    return expr.over(plan.group) if plan.group else expr


def _with_totals(table: pl.DataFrame, plan: RankPlan, total: pl.DataFrame) -> pl.DataFrame:
    if plan.group:
        return table.join(total, on=plan.group, how="left", nulls_equal=True)
    return table.with_columns(pl.lit(total[c][0]).alias(c) for c in (ROWS, KEYED, MIN_TOKENS))


def _keep_count(plan: RankPlan) -> pl.Expr:
    """k, rows to keep per group, as `select_by_rank` computes it (a float for fractions)."""
    if plan.drop_fraction is not None:
        return pl.col(KEYED) - (pl.col(KEYED).cast(pl.Float64) * plan.drop_fraction + 0.5).floor().cast(pl.Int64)
    if plan.budget.count is not None:
        return pl.lit(plan.budget.count)
    return (pl.col(ROWS).cast(pl.Float64) * plan.budget.fraction + 0.5).floor()


def check_columns(table: pl.DataFrame, plan: RankPlan) -> None:
    needed = [plan.key, plan.tie_break] + ([plan.group] if plan.group else [])
    needed += [plan.tokens] if plan.budget is not None and plan.budget.tokens is not None else []
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"cannot rank: column(s) {', '.join(missing)} missing (have {', '.join(table.columns)})")


def mark_candidates(scored: pl.DataFrame, plan: RankPlan, total: pl.DataFrame) -> pl.DataFrame:
    """One partition's scored rows with `_selected` (final for rows whose `_candidate` is false)
    and `_candidate` (and for bands `_low`/`_high`: in the partition's bottom/top tail)."""
    if plan.key is None:
        return scored.with_columns(pl.lit(False).alias(CANDIDATE))
    check_columns(scored, plan)
    table = _with_totals(scored.with_columns(rank_value(scored, plan.key).alias(_KEY)), plan, total)
    keyed = pl.col(_KEY).is_not_null()
    if plan.band is not None:
        table = _sorted(table.filter(keyed), plan, descending=False).vstack(
            table.filter(~keyed).sort(plan.tie_break))
        lo, hi = _band_tails(table, plan)
        rank = _per_group(pl.int_range(pl.len(), dtype=pl.Int64), plan)
        from_top = _per_group(keyed.sum(), plan) - 1 - rank
        table = table.with_columns((keyed & (rank < lo)).alias(LOW), (keyed & (from_top < hi)).alias(HIGH))
        table = table.with_columns((pl.col(LOW) | pl.col(HIGH)).alias(CANDIDATE), keyed.alias(SELECTED))
    else:
        table = _sorted(table, plan)
        if plan.budget is not None and plan.budget.tokens is not None:
            tokens = pl.col(plan.tokens).fill_null(0).cast(pl.Int64)
            before = _per_group(tokens.cum_sum(), plan) - tokens
            prefix = pl.when(pl.col(MIN_TOKENS) < 0).then(True).otherwise(before <= plan.budget.tokens)
            candidate = keyed & prefix
        else:
            candidate = keyed & (_per_group(pl.int_range(pl.len(), dtype=pl.Int64), plan) < _keep_count(plan))
        table = table.with_columns(candidate.alias(CANDIDATE), pl.lit(False).alias(SELECTED))
    return table.drop(_KEY, ROWS, KEYED, MIN_TOKENS)


def _band_tails(table: pl.DataFrame, plan: RankPlan) -> tuple[pl.Expr, pl.Expr]:
    """Per row: how many of its group's lowest and highest scored ranks are outside the band."""
    lower, upper = plan.band
    low, high = {}, {}
    groups = table.select(([plan.group] if plan.group else []) + [KEYED]).unique()
    for row in groups.iter_rows(named=True):
        n = int(row[KEYED] or 0)
        lo, hi = band_ranks(n, lower, upper)
        name = row[plan.group] if plan.group else None
        low[name], high[name] = lo, max(n - 1 - hi, 0)
    if not plan.group:
        return pl.lit(low.get(None, 0)), pl.lit(high.get(None, 0))
    return (pl.col(plan.group).replace_strict(low, default=0, return_dtype=pl.Int64),
            pl.col(plan.group).replace_strict(high, default=0, return_dtype=pl.Int64))


def merge_candidates(results: pl.DataFrame, plan: RankPlan, total: pl.DataFrame) -> pl.DataFrame:
    """All partitions' `mark_candidates` rows with `_selected` final: the candidates ranked together."""
    if plan.key is None:
        return results.drop(CANDIDATE)
    done = results.filter(~pl.col(CANDIDATE))
    open_ = _with_totals(results.filter(pl.col(CANDIDATE)).with_columns(rank_value(results, plan.key).alias(_KEY)),
                         plan, total)
    rank = _per_group(pl.int_range(pl.len(), dtype=pl.Int64), plan)
    if plan.band is not None:
        below, above = _band_tails(open_, plan)
        from_top = _per_group(pl.len(), plan) - 1 - rank
        bottom = _sorted(open_.filter(LOW), plan, descending=False).filter(rank < below)
        top = _sorted(open_.filter(HIGH), plan, descending=False).filter(from_top < above)
        outside = pl.concat([bottom.select(POSITION), top.select(POSITION)])[POSITION]
        decided = open_.with_columns((~pl.col(POSITION).is_in(outside.implode())).alias(SELECTED))
    else:
        ranked = _sorted(open_, plan)
        if plan.budget is not None and plan.budget.tokens is not None:
            tokens = pl.col(plan.tokens).fill_null(0).cast(pl.Int64)
            inside = _per_group(tokens.cum_sum(), plan) <= plan.budget.tokens
        else:
            inside = rank < _keep_count(plan)
        decided = ranked.with_columns(inside.alias(SELECTED))
    return pl.concat([done, decided.select(done.columns)]).drop(CANDIDATE, LOW, HIGH, strict=False)


class RankingPartitions:
    """The `dedup.partitioned.PartitionReducer` of a ranking barrier (see the module docstring).

    The stage gives `rank_plan()`, `rank_stats(summary)` (`group_stats` plus its own corpus-wide
    numbers), `scored(table, stats)` and `decision(ranked)`.
    """

    def __init__(self, stage):
        self.stage = stage
        self.plan: RankPlan = stage.rank_plan()

    def split(self, summary: pl.DataFrame, partitions: int) -> list[pl.DataFrame]:
        return split_rows(summary, partitions)

    def stats(self, summary: pl.DataFrame) -> pl.DataFrame:
        return self.stage.rank_stats(summary)

    def reduce_partition(self, partition: pl.LazyFrame, summaries: pl.LazyFrame,
                         stats: pl.DataFrame | None = None) -> pl.DataFrame:
        scored = self.stage.scored(partition.collect(), stats)
        return mark_candidates(scored, self.plan, totals(stats, self.plan))

    def combine(self, results: pl.LazyFrame, summaries: pl.LazyFrame,
                stats: pl.DataFrame | None = None) -> pl.DataFrame:
        ranked = merge_candidates(results.collect(), self.plan, totals(stats, self.plan))
        return self.stage.decision(ranked)
