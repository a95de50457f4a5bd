"""The `budget` and `percentile_band` stages: keep rows of the whole corpus by their rank on a score column.

    - {type: budget, score: ppl, keep: lowest, budget: {tokens: 5_000_000}}
    - {type: budget, score: dsir_logw, budget: 0.25, per_source: true}
    - {type: percentile_band, score: ppl, lower: 10, upper: 90}     # perplexity bands: drop both tails

A barrier: `summarize` keeps `_pos`, the score, the token count and (with `per_source`) the
source of every row; `reduce` ranks all rows once (`ranking.select_by_rank`: ties go to the
earlier row, null scores never selected); `apply` drops (or with `action: flag`, marks) the rows
outside the budget with reason `over_budget`. Any score column an earlier stage wrote can be used,
so thresholds become budgets without recomputing the score.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import polars as pl
from pydantic import Field, model_validator

from datamill.curate.engine.records import TOKENS
from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import POSITION, FilterParams
from datamill.curate.selection.ranking import SELECTED, Budget, RankingBarrier, RankPlan, select_by_rank


class BudgetParams(FilterParams):
    score: str = Field(min_length=1, description="Column to rank by (written by an earlier stage, or a source column).")
    keep: Literal["highest", "lowest"] = Field("highest", description="Keep the highest or the lowest scores.")
    budget: Budget = Field(description="How much to keep: {count|fraction|tokens: n}, or a bare number.")
    per_source: bool = Field(False, description="Apply the budget to every source on its own.")


class ScoreColumnRanking(RankingBarrier):
    """A ranking of the corpus by a score column an earlier stage (or the source) wrote."""

    inputs = ()

    def summarize(self, batch: pl.DataFrame) -> pl.DataFrame:
        """What the ranking needs of each row: `_pos`, the score, the token count, the source."""
        score = self.params.score
        if score not in batch.columns:
            shown = ", ".join(c for c in batch.columns if not c.startswith("_"))
            raise ValueError(f"stage {self.name!r}: score column {score!r} not found; columns: {shown}")
        columns = [POSITION, score, TOKENS] + (["source"] if self.params.per_source else [])
        return batch.select(c for c in columns if c in batch.columns)


@register_stage
class BudgetStage(ScoreColumnRanking):
    """Keep the top rows by a score column: a row count, a fraction, or a token budget."""

    type_name = "budget"
    Params: ClassVar = BudgetParams
    reason = "over_budget"
    params: BudgetParams

    def ranking(self, table: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        return select_by_rank(table, p.score, p.budget, descending=p.keep == "highest",
                              group_by="source" if p.per_source else None)

    def rank_plan(self) -> RankPlan:
        p = self.params
        return RankPlan(p.score, descending=p.keep == "highest", group="source" if p.per_source else None,
                        budget=p.budget)


class PercentileBandParams(FilterParams):
    score: str = Field(min_length=1, description="Column to rank by, e.g. `ppl` from the perplexity stage.")
    lower: float = Field(10.0, ge=0, le=100, description="Drop rows below this percentile of the score.")
    upper: float = Field(90.0, ge=0, le=100, description="Drop rows above this percentile of the score.")
    per_source: bool = Field(False, description="Percentiles within every source on its own.")

    @model_validator(mode="after")
    def _ordered(self):
        if self.lower >= self.upper:
            raise ValueError(f"lower ({self.lower:g}) must be below upper ({self.upper:g})")
        return self


@register_stage
class PercentileBand(ScoreColumnRanking):
    """Keep the middle percentiles of a score over the whole corpus (perplexity bands); drop both tails."""

    type_name = "percentile_band"
    Params: ClassVar = PercentileBandParams
    reason = "outside_band"
    params: PercentileBandParams

    def ranking(self, table: pl.DataFrame) -> pl.DataFrame:
        """A row's percentile is 100·rank/(n−1) among the rows with a score (ties broken by `_pos`);
        rows without a score (null, NaN) are outside every band."""
        p = self.params
        value = pl.col(p.score).cast(pl.Float64)
        group = ["source"] if p.per_source else None
        scored = table.filter(value.is_not_null() & value.is_not_nan()).sort(
            ([*group] if group else []) + [p.score, POSITION])

        def per_group(expr: pl.Expr) -> pl.Expr:
            return expr.over(group) if group else expr

        rank = per_group(pl.int_range(pl.len(), dtype=pl.Int64)).cast(pl.Float64)
        last = per_group(pl.len() - 1).cast(pl.Float64)
        percentile = pl.when(last > 0).then(100.0 * rank / last).otherwise(50.0)
        inside = scored.select(POSITION, percentile.is_between(p.lower, p.upper).alias(SELECTED))
        return (table.select(POSITION).join(inside, on=POSITION, how="left")
                .with_columns(pl.col(SELECTED).fill_null(False)))

    def rank_plan(self) -> RankPlan:
        p = self.params
        return RankPlan(p.score, descending=False, group="source" if p.per_source else None, band=(p.lower, p.upper))
