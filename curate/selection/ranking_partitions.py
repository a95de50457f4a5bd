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

Candidates of a group (cut = the rank where the selection changes, the stages' own formulas):
- count, fraction, `drop_fraction` budgets and percentile bands, where the key is known when a
  shard is summarized (budget, percentile_band, ifd, ds_weight): every shard also samples its
  ranking (every h-th row, at most `SAMPLES`); merged, the samples bound the corpus rank of each
  sample point, which gives two points around each cut (`cut_table`): rows ranked before the
  first are below the cut, rows from the second on are not, and only the rows between are
  candidates — about two sample steps of every shard per cut. A candidate's corpus rank is its
  rank among the candidates plus the rows decided below the cut's first point;
- the same budgets on a key that needs the whole corpus (DSIR's weights): the partition's
  first k rows (the corpus' top k are among them; weak when k exceeds a partition's size);
- token budgets: the partition's rows up to and including the first one whose running token sum
  passes the budget (a later row of that partition, and so every row ranked after it anywhere,
  is over the budget); every scored row when some row has a negative token count.
  (Without samples, bands take the partition's lowest lo and highest n−1−hi rows, where [lo, hi]
  are the ranks whose percentile 100·rank/(n−1) is in the band.)

Rows without a score (null, NaN) are never candidates and never selected. The combine holds the
slim scored rows of every partition (the decision table it returns has a row per document
anyway) and sorts only the candidates — as long as they fit the executor's `combine_memory_mib`
(~BYTES_PER_ROW per row). Beyond it, `combine_ranges` keeps the rows where they are: a task per
partition cuts its result into `_pos` ranges (whole shards, by the shards' first `_pos` and row
counts that `stats` adds; each range sorted) and sends the driver only its candidates (and, for
cut-based selections, per group the count of its decided rows below each cut's first point);
the driver decides the candidates exactly as `merge_candidates` does; a task per range applies
their decisions to the range's rows and writes its part of the decision table. The ranges in
order are the table (`engine.partition_tasks.DecisionParts`, written one range at a time),
so the driver holds the candidates and one range, never every row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from datamill.curate.engine.partition_tasks import regroup
from datamill.curate.engine.records import TOKENS
from datamill.curate.engine.stage import POSITION

SELECTED = "_selected"
ROWS, KEYED, MIN_TOKENS = "_rows", "_keyed", "_min_tokens"
CANDIDATE, LOW, HIGH = "_candidate", "_low", "_high"
_KEY = "_rank_key"
SAMPLES = 512
"""Rank samples per shard and group: a cut's candidates are about 2 × rows / SAMPLES."""
_SKEY, _SPOS, _SSTEP, _SN = "_sample_key", "_sample_pos", "_sample_step", "_sample_rows"
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
        stats = table.group_by(plan.group).agg(aggs)
    else:
        stats = table.select(aggs)
    if not (cut_based(plan) and plan.key in table.columns):
        return stats
    samples = rank_samples(table, plan)
    if plan.group:
        return stats.join(samples, on=plan.group, how="left", nulls_equal=True)
    return stats.hstack(samples)


def cut_based(plan: RankPlan) -> bool:
    """Whether the selection is a cut at a rank (count, fraction, drop_fraction, band): then
    shards sample their ranking and the partitions send only the rows near the cut."""
    return plan.key is not None and (plan.band is not None or plan.drop_fraction is not None
                                     or (plan.budget is not None and plan.budget.tokens is None))


def rank_samples(table: pl.DataFrame, plan: RankPlan) -> pl.DataFrame:
    """Per group: the key and tie-break of the shard's rows at ranks 0, h, 2h, … of its ranking
    (scored rows only, at most SAMPLES of them), h, and the number of scored rows."""
    group = [plan.group] if plan.group else []
    keyed = table.select(*group, rank_value(table, plan.key).alias(_KEY), pl.col(plan.tie_break))
    ranked = _sorted(keyed.filter(pl.col(_KEY).is_not_null()), plan).with_columns(
        _per_group(pl.int_range(pl.len(), dtype=pl.Int64), plan).alias("_r"),
        _per_group(pl.len().cast(pl.Int64), plan).alias(_SN))
    picked = ranked.with_columns(((pl.col(_SN) + SAMPLES - 1) // SAMPLES).alias(_SSTEP)).filter(
        pl.col("_r") % pl.col(_SSTEP) == 0)
    if plan.group:
        return picked.group_by(plan.group).agg(pl.col(_KEY).alias(_SKEY), pl.col(plan.tie_break).alias(_SPOS),
                                               pl.col(_SSTEP).first(), pl.col(_SN).first())
    return picked.select(pl.col(_KEY).implode().alias(_SKEY), pl.col(plan.tie_break).implode().alias(_SPOS),
                         pl.col(_SSTEP).first(), pl.col(_SN).first())


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


def cut_ranks(plan: RankPlan, rows: int, keyed: int) -> list[int]:
    """Where the selection changes along a group's ranking: a row is selected when its rank is
    below cut 0 (budgets), or at least cut 0 and below cut 1 (bands); the formulas of the
    single-process stages."""
    if plan.band is not None:
        lo, hi = band_ranks(keyed, *plan.band)
        return [lo, hi + 1]
    if plan.drop_fraction is not None:
        return [keyed - int(math.floor(float(keyed) * plan.drop_fraction + 0.5))]
    if plan.budget.count is not None:
        return [plan.budget.count]
    return [int(math.floor(float(rows) * plan.budget.fraction + 0.5))]


def cut_table(stats: pl.DataFrame, plan: RankPlan, total: pl.DataFrame) -> pl.DataFrame | None:
    """Per group and cut i: the cut rank `_cut_i`, and two sample points bracketing it: every row
    ranked before `a_i` has a rank below the cut, every row ranked at or after `b_i` (if any) not.

    From the shards' samples (`rank_samples`): a shard with j samples ranked before a point x has
    between (j−1)·h+1 and j·h (all n after its last sample) rows before x; summed over shards,
    walking the merged samples in ranking order, these bound every sample's global rank.
    None where the stats hold no samples (token budgets, DSIR)."""
    if _SKEY not in stats.columns:
        return None
    group = [plan.group] if plan.group else []
    points = (stats.select(*group, _SKEY, _SPOS, _SSTEP, _SN).filter(pl.col(_SN).is_not_null())
              .with_row_index("_shard").explode(_SKEY, _SPOS)
              .rename({_SKEY: _KEY, _SPOS: plan.tie_break})
              .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("_shard").alias("_idx"),
                            pl.len().cast(pl.Int64).over("_shard").alias("_m")))
    key_type = stats.schema[_SKEY].inner
    cuts = len(cut_ranks(plan, 0, 0))
    schema = ({plan.group: stats.schema[plan.group]} if plan.group else {}) | {
        name: dtype for i in range(cuts) for name, dtype in (
            (f"_cut_{i}", pl.Int64), (f"_a_key_{i}", key_type), (f"_a_pos_{i}", pl.Int64),
            (f"_b_key_{i}", key_type), (f"_b_pos_{i}", pl.Int64))}
    rows = []
    for g in total.iter_rows(named=True):
        part = points.filter(pl.col(plan.group).eq_missing(g[plan.group])) if plan.group else points
        part = _sorted(part, plan)
        if part.height == 0:
            continue
        idx, m, h, n = (part[c].to_numpy() for c in ("_idx", "_m", _SSTEP, _SN))
        upper = np.concatenate([[0], np.cumsum(np.where(idx + 1 < m, h, n - idx * h))[:-1]])
        lower = np.concatenate([[0], np.cumsum(np.where(idx == 0, 1, h))[:-1]])
        keys, positions = part[_KEY].to_list(), part[plan.tie_break].to_list()
        row = {plan.group: g[plan.group]} if plan.group else {}
        for i, cut in enumerate(cut_ranks(plan, int(g[ROWS]), int(g[KEYED] or 0))):
            a = max(int(np.searchsorted(upper, cut, side="right")) - 1, 0)
            b = int(np.searchsorted(lower, cut, side="left"))
            row |= {f"_cut_{i}": cut, f"_a_key_{i}": keys[a], f"_a_pos_{i}": positions[a],
                    f"_b_key_{i}": keys[b] if b < len(keys) else None,
                    f"_b_pos_{i}": positions[b] if b < len(keys) else None}
        rows.append(row)
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def _ranked_before(plan: RankPlan, key: str, position: str) -> pl.Expr:
    """A row ranks before the point (`key`, `position`) in the plan's order."""
    k, ak = pl.col(_KEY), pl.col(key)
    better = k > ak if plan.descending else k < ak
    return (better | ((k == ak) & (pl.col(plan.tie_break) < pl.col(position)))).fill_null(False)


def _with_cuts(table: pl.DataFrame, plan: RankPlan, cuts: pl.DataFrame) -> pl.DataFrame:
    if plan.group:
        return table.join(cuts, on=plan.group, how="left", nulls_equal=True)
    if cuts.height == 0:
        return table.with_columns(pl.lit(None, dtype=dtype).alias(name) for name, dtype in cuts.schema.items())
    return table.join(cuts, how="cross")


def _mark_near_cuts(table: pl.DataFrame, plan: RankPlan, cuts: pl.DataFrame) -> pl.DataFrame:
    """Cut-based selections: rows between a cut's sample points are candidates; the others are
    decided here (`_before_i`: the row's rank is below cut i)."""
    table = _with_cuts(table, plan, cuts)
    keyed = pl.col(_KEY).is_not_null()
    count = 2 if plan.band is not None else 1
    flags = []
    for i in range(count):
        before = keyed & _ranked_before(plan, f"_a_key_{i}", f"_a_pos_{i}")
        after = keyed & pl.col(f"_b_pos_{i}").is_not_null() & ~_ranked_before(plan, f"_b_key_{i}", f"_b_pos_{i}")
        flags += [before.alias(f"_before_{i}"), (keyed & ~before & ~after).alias(f"_inside_{i}")]
    table = table.with_columns(flags)
    inside = pl.any_horizontal(pl.col(f"_inside_{i}") for i in range(count))
    selected = pl.col("_before_0") if count == 1 else ~pl.col("_before_0") & ~pl.col("_inside_0") & pl.col("_before_1")
    return table.with_columns(inside.alias(CANDIDATE), (keyed & selected).alias(SELECTED)).drop([c for c in cuts.columns if c != plan.group])


def before_counts(done: pl.DataFrame, plan: RankPlan) -> pl.DataFrame:
    """Cut-based selections: per group, the decided rows ranked before each cut's first sample
    point (`_offset_i`); counts of several partitions add up (`sum_before_counts`)."""
    count = 2 if plan.band is not None else 1
    offsets = [pl.col(f"_before_{i}").sum().cast(pl.Int64).alias(f"_offset_{i}") for i in range(count)]
    return done.group_by(plan.group).agg(offsets) if plan.group else done.select(offsets)


def sum_before_counts(counts: list[pl.DataFrame], plan: RankPlan) -> pl.DataFrame:
    """`before_counts` of several partitions summed per group."""
    table = pl.concat(counts)
    offsets = [pl.col(c).sum() for c in table.columns if c != plan.group]
    return table.group_by(plan.group).agg(offsets) if plan.group else table.select(offsets)


def _decide_near_cuts(open_: pl.DataFrame, plan: RankPlan, cuts: pl.DataFrame, before: pl.DataFrame) -> pl.DataFrame:
    """The candidates' ranks: their order among all candidates plus the rows decided before the
    cut's first sample point (every other row before a candidate lies there)."""
    count = 2 if plan.band is not None else 1
    group = [plan.group] if plan.group else []
    open_ = _sorted(open_.with_columns(rank_value(open_, plan.key).alias(_KEY)), plan)
    open_ = _with_cuts(open_, plan, cuts)
    open_ = open_.join(before, on=group, how="left", nulls_equal=True) if group else open_.join(before, how="cross")
    offset = pl.col("_offset_0") if count == 1 else pl.when("_inside_0").then(pl.col("_offset_0")).otherwise(
        pl.col("_offset_1"))
    rank = _per_group(pl.int_range(pl.len(), dtype=pl.Int64), plan) + offset.fill_null(0)
    inside = rank < pl.col("_cut_0") if count == 1 else (rank >= pl.col("_cut_0")) & (rank < pl.col("_cut_1"))
    return open_.with_columns(inside.alias(SELECTED))


def mark_candidates(scored: pl.DataFrame, plan: RankPlan, total: pl.DataFrame,
                    cuts: pl.DataFrame | None = None) -> pl.DataFrame:
    """One partition's scored rows with `_selected` (final for rows whose `_candidate` is false)
    and `_candidate` (and for bands `_low`/`_high`: in the partition's bottom/top tail)."""
    if plan.key is None:
        return scored.with_columns(pl.lit(False).alias(CANDIDATE))
    check_columns(scored, plan)
    if cuts is not None:
        return _mark_near_cuts(scored.with_columns(rank_value(scored, plan.key).alias(_KEY)), plan, cuts).drop(_KEY)
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


def decide_candidates(open_: pl.DataFrame, plan: RankPlan, total: pl.DataFrame, cuts: pl.DataFrame | None = None,
                      before: pl.DataFrame | None = None) -> pl.DataFrame:
    """The candidates of all partitions (`_candidate` rows of `mark_candidates`) with `_selected`
    final, ranked together; `before`: the `before_counts` of every partition's decided rows
    (cut-based selections only)."""
    if cuts is not None:
        return _decide_near_cuts(open_, plan, cuts, before)
    open_ = _with_totals(open_.with_columns(rank_value(open_, plan.key).alias(_KEY)), plan, total)
    rank = _per_group(pl.int_range(pl.len(), dtype=pl.Int64), plan)
    if plan.band is not None:
        below, above = _band_tails(open_, plan)
        from_top = _per_group(pl.len(), plan) - 1 - rank
        bottom = _sorted(open_.filter(LOW), plan, descending=False).filter(rank < below)
        top = _sorted(open_.filter(HIGH), plan, descending=False).filter(from_top < above)
        outside = pl.concat([bottom.select(POSITION), top.select(POSITION)])[POSITION]
        return open_.with_columns((~pl.col(POSITION).is_in(outside.implode())).alias(SELECTED))
    ranked = _sorted(open_, plan)
    if plan.budget is not None and plan.budget.tokens is not None:
        tokens = pl.col(plan.tokens).fill_null(0).cast(pl.Int64)
        inside = _per_group(tokens.cum_sum(), plan) <= plan.budget.tokens
    else:
        inside = rank < _keep_count(plan)
    return ranked.with_columns(inside.alias(SELECTED))


def _helper_columns(columns: list[str]) -> list[str]:
    return [c for c in columns if c in (CANDIDATE, LOW, HIGH) or c.startswith(("_before_", "_inside_"))]


def merge_candidates(results: pl.DataFrame, plan: RankPlan, total: pl.DataFrame,
                     cuts: pl.DataFrame | None = None) -> pl.DataFrame:
    """All partitions' `mark_candidates` rows with `_selected` final: the candidates ranked together."""
    if plan.key is None:
        return results.drop(CANDIDATE)
    done = results.filter(~pl.col(CANDIDATE))
    before = before_counts(done, plan) if cuts is not None else None
    decided = decide_candidates(results.filter(pl.col(CANDIDATE)), plan, total, cuts, before)
    merged = pl.concat([done, decided.select(done.columns)])
    return merged.drop(_helper_columns(merged.columns))


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
        return with_shard_rows(self.stage.rank_stats(summary), summary)

    def reduce_partition(self, partition: pl.LazyFrame, summaries: pl.LazyFrame,
                         stats: pl.DataFrame | None = None) -> pl.DataFrame:
        scored = self.stage.scored(partition.collect(), stats)
        total = totals(stats, self.plan)
        return mark_candidates(scored, self.plan, total, cut_table(stats, self.plan, total))

    def combine(self, results: pl.LazyFrame, summaries: pl.LazyFrame,
                stats: pl.DataFrame | None = None) -> pl.DataFrame:
        total = totals(stats, self.plan)
        ranked = merge_candidates(results.collect(), self.plan, total, cut_table(stats, self.plan, total))
        return self.stage.decision(ranked)

    def combines_in_ranges(self, stats: pl.DataFrame | None, memory_mib: int) -> bool:
        """Whether the one-process `combine` (every row of every partition) would pass `memory_mib`."""
        return stats_rows(stats) * BYTES_PER_ROW > memory_mib * (1 << 20)

    def combine_ranges(self, runner: Any, results: Sequence[Sequence[Any]], stats: pl.DataFrame,
                       summaries: pl.LazyFrame | None = None) -> tuple[list[Any], dict[str, pl.DataType]]:
        """The decision table without holding every row here: `runner` (an
        `engine.partition_tasks.TaskRunner`) cuts each partition's result (`results`: one list of handles per
        partition) into `_pos` ranges and sends back only its candidates; they are decided here,
        then one task per range applies their decisions and writes that range's decision rows.
        Returns the ranges' handles in `_pos` order and the decision's schema (a `DecisionParts`)."""
        total = totals(stats, self.plan)
        cuts = cut_table(stats, self.plan, total) if self.plan.key is not None else None
        ranges = range_starts(stats, len(results))
        outs, infos = runner.map(bucket_by_range, results, (self.plan, ranges), len(ranges) + 1)
        schema = infos[0]["schema"]
        decided = self.decide(infos, total, cuts)
        parts, _ = runner.map(decide_range, regroup(outs, len(ranges) + 1), (self.stage, decided, schema), 1)
        runner.drop([h for task in outs for h in task])
        return [task[0] for task in parts], dict(self.stage.decision(pl.DataFrame(schema=schema)).schema)

    def decide(self, infos: list[dict], total: pl.DataFrame, cuts: pl.DataFrame | None) -> pl.DataFrame:
        """`_pos` and final `_selected` of the candidates whose partition guessed wrong (the only
        rows the range tasks need: the others' `_selected` is already final)."""
        open_ = pl.concat([i["candidates"] for i in infos]).rename({SELECTED: _GUESS})
        if self.plan.key is None or open_.height == 0:
            return pl.DataFrame(schema={POSITION: open_.schema[POSITION], SELECTED: pl.Boolean})
        before = sum_before_counts([i["before"] for i in infos], self.plan) if cuts is not None else None
        decided = decide_candidates(open_, self.plan, total, cuts, before)
        return decided.filter(pl.col(SELECTED) != pl.col(_GUESS)).select(POSITION, SELECTED)


SHARD_FIRST, SHARD_ROWS = "_shard_first_pos", "_shard_rows"
"""`RankingPartitions.stats` columns: a shard's first `_pos` and its rows (the `_pos` ranges of the ranged combine)."""
RANGE_ROWS = 1 << 20
"""Most rows of one `_pos` range of the ranged combine (unless one shard holds more)."""
BYTES_PER_ROW = 110
"""Peak memory of the one-process combine per summary row (bench_ranking_reduce.py, 20M rows: 101–129 B)."""
_RANGE, _GUESS = "_pos_range", "_guess"


def with_shard_rows(stats: pl.DataFrame, summary: pl.DataFrame) -> pl.DataFrame:
    """A shard's `rank_stats` with its first `_pos` and row count on every row."""
    first = summary[POSITION].min() if summary.height else None
    return stats.with_columns(pl.lit(first, dtype=pl.Int64).alias(SHARD_FIRST),
                              pl.lit(summary.height, dtype=pl.Int64).alias(SHARD_ROWS))


def stats_rows(stats: pl.DataFrame | None) -> int:
    """Summary rows of every shard, from stats with `with_shard_rows` (a shard's rows are on each of its stats rows)."""
    if stats is None or SHARD_ROWS not in stats.columns:
        return 0
    return int(stats.select(SHARD_FIRST, SHARD_ROWS).drop_nulls().unique()[SHARD_ROWS].sum())


def range_starts(stats: pl.DataFrame, partitions: int) -> list[int]:
    """The first `_pos` of every `_pos` range but the first: whole shards, in `_pos` order, about
    rows / P rows each (at most RANGE_ROWS, unless one shard holds more)."""
    shards = stats.select(SHARD_FIRST, SHARD_ROWS).drop_nulls().unique().sort(SHARD_FIRST)
    target = max(1, min(RANGE_ROWS, -(-int(shards[SHARD_ROWS].sum()) // max(partitions, 1))))
    starts, held = [], 0
    for first, rows in shards.iter_rows():
        if held >= target:
            starts.append(int(first))
            held = 0
        held += int(rows)
    return starts


def cut_ranges(rows: pl.DataFrame, starts: list[int]) -> tuple[list[pl.DataFrame], list[int]]:
    """`rows` cut into the `_pos` ranges that `starts` begin (each sorted by `_pos`), and their sizes."""
    ranges = np.searchsorted(np.asarray(starts, dtype=np.int64), rows[POSITION].to_numpy(), side="right")
    table = rows.with_columns(pl.Series(_RANGE, ranges, dtype=pl.UInt32)).sort(POSITION)
    by_range = table.partition_by(_RANGE, as_dict=True, include_key=False)
    outs = [by_range.get((r,), rows.clear()) for r in range(len(starts) + 1)]
    return outs, [f.height for f in outs]


def bucket_by_range(frames: list[pl.DataFrame], plan: RankPlan, starts: list[int]) -> tuple[list, dict]:
    """Task: one partition's `mark_candidates` rows cut into the `_pos` ranges (each sorted by
    `_pos`); its info: the candidates (slim), the decided rows' `before_counts`, the schema."""
    result = pl.concat(frames)
    outs, _ = cut_ranges(result, starts)
    open_ = result.filter(pl.col(CANDIDATE)) if plan.key is not None else result.clear()
    slim = [c for c in (POSITION, plan.tie_break, plan.group, plan.key, plan.tokens, SELECTED, CANDIDATE, LOW, HIGH)
            if c is not None and c in result.columns] + [c for c in result.columns if c.startswith("_inside_")]
    info = {"candidates": open_.select(list(dict.fromkeys(slim))), "schema": dict(result.schema),
            "before": before_counts(result.filter(~pl.col(CANDIDATE)), plan) if "_before_0" in result.columns else None}
    return outs, info


def decide_range(frames: list[pl.DataFrame], stage: Any, decided: pl.DataFrame,
                 schema: dict[str, pl.DataType]) -> tuple[list, dict]:
    """Task: one `_pos` range of the decision table, its candidates' `_selected` taken from `decided`."""
    rows = pl.concat([pl.DataFrame(schema=schema), *frames], how="vertical")
    if decided.height:
        final = rows.select(POSITION).join(decided, on=POSITION, how="left", maintain_order="left")[SELECTED]
        rows = rows.with_columns(pl.coalesce(final, pl.col(SELECTED)).alias(SELECTED))
    part = stage.decision(rows.drop(_helper_columns(rows.columns)))
    return [part], {"rows": part.height}
