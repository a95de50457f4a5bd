"""Global ranking under a budget: keep the best rows by a score, by count, fraction or tokens.

Shared by every selection stage (DSIR, budget, learnability scores). A selection stage is a
`RankingBarrier`: `summarize` keeps `_pos`, the score and the token count of each row, `ranking`
calls `select_by_rank` once over all shards, and the base class writes the decision (drop reason
per row) that each shard joins.

    ranked = select_by_rank(table, "ifd", Budget(fraction=0.3), descending=True)
    # -> table + `_rank` (0 = best in its group) + `_selected` (bool)

Rules, the same for every stage:
- Ties are broken by the `tie_break` column (default `_pos`, the dataset order), smaller first, so a
  selection never depends on the worker count or the order shards finish in.
- Rows whose score is null (or NaN) rank after every scored row and are never selected.
- `fraction` keeps round-half-up(fraction × rows of the group) rows, nulls counted in the rows;
  `count` keeps that many per group; `tokens` keeps the longest prefix of the ranking whose token
  sum is at most the budget (a row that would overflow it stops the selection, later, shorter
  rows are not squeezed in: the order is the ranking, not a knapsack).
- With `group_by` (e.g. `source`), the budget applies to every group on its own.
"""

from __future__ import annotations

from typing import Any, ClassVar

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from datamill.curate.engine.records import TOKENS
from datamill.curate.engine.stage import DROP_REASON, POSITION, BarrierStage
from datamill.curate.selection.ranking_partitions import SELECTED, RankingPartitions, RankPlan, group_stats

RANK = "_rank"
"""Column `select_by_rank` adds: 0-based position in the ranking of the row's group."""
__all__ = ["RANK", "SELECTED", "Budget", "RankPlan", "RankingBarrier", "gumbel_noise", "select_by_rank",
           "uniform_from_hash"]


class Budget(BaseModel):
    """How much to keep: exactly one of a row count, a fraction of the rows, or a token count.

    In a recipe: `budget: {fraction: 0.3}`, `{count: 10000}`, `{tokens: 5_000_000}`, or a bare
    number: a float in (0, 1] is a fraction (`budget: 0.3`), an integer a count (`budget: 10000`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int | None = Field(None, ge=0, description="Keep this many rows (per group).")
    fraction: float | None = Field(None, gt=0, le=1, description="Keep this fraction of the rows (per group).")
    tokens: int | None = Field(
        None, ge=0, description="Keep rows down the ranking while their `_tokens` sum stays within this many."
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("a budget is a number or {count|fraction|tokens: n}, not true/false")
        if isinstance(value, int):
            return {"count": value}
        if isinstance(value, float):
            return {"fraction": value}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Budget:
        given = [k for k in ("count", "fraction", "tokens") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of count, fraction, tokens (got {', '.join(given) or 'none'})")
        return self

    def describe(self) -> str:
        if self.count is not None:
            return f"{self.count} rows"
        if self.fraction is not None:
            return f"{self.fraction:g} of the rows"
        return f"{self.tokens} tokens"


def select_by_rank(
    table: pl.DataFrame,
    score: str,
    budget: Budget,
    *,
    descending: bool = True,
    group_by: str | None = None,
    tokens: str = TOKENS,
    tie_break: str = POSITION,
) -> pl.DataFrame:
    """`table` sorted by (group, rank) with `_rank` and `_selected` added.

    `table` needs the `score` and `tie_break` columns, the `group_by` column when given, and the
    `tokens` column for a token budget. `descending=True` ranks the highest score first.
    """
    needed = [score, tie_break] + ([group_by] if group_by else []) + ([tokens] if budget.tokens is not None else [])
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"cannot rank: column(s) {', '.join(missing)} missing (have {', '.join(table.columns)})")
    value = pl.col(score)
    if table.schema[score].is_float():
        value = pl.when(value.is_nan()).then(None).otherwise(value)
    keys = ([group_by] if group_by else []) + ["_score", tie_break]
    order = ([False] if group_by else []) + [descending, False]
    ranked = table.with_columns(value.alias("_score")).sort(keys, descending=order, nulls_last=True)
    window = [group_by] if group_by else None

    def per_group(expr: pl.Expr) -> pl.Expr:
        return expr.over(window) if window else expr

    rank = per_group(pl.int_range(pl.len(), dtype=pl.Int64))
    if budget.count is not None:
        inside = rank < budget.count
    elif budget.fraction is not None:
        inside = rank < (per_group(pl.len()) * budget.fraction + 0.5).floor()
    else:
        inside = per_group(pl.col(tokens).fill_null(0).cast(pl.Int64).cum_sum()) <= budget.tokens
    return ranked.with_columns(
        rank.alias(RANK), (inside & pl.col("_score").is_not_null()).alias(SELECTED)
    ).drop("_score")


def uniform_from_hash(column: str | pl.Expr, seed: int) -> pl.Expr:
    """A reproducible uniform number in (0, 1) per row, from a seeded hash of a column (e.g. `id`).

    Depends only on the value and the seed, so it is the same however the rows are sharded.
    """
    expr = pl.col(column) if isinstance(column, str) else column
    bits = expr.hash(seed=seed % (1 << 64)) // (1 << 11)  # top 53 bits: exact in a float64
    return (bits.cast(pl.Float64) + 0.5) * (2.0**-53)


def gumbel_noise(column: str | pl.Expr, seed: int) -> pl.Expr:
    """Standard Gumbel noise per row from a seeded hash: adding it to log-weights and taking the
    top k samples k rows without replacement with probability proportional to the weights."""
    return -(-uniform_from_hash(column, seed).log()).log()


class RankingBarrier(BarrierStage):
    """A barrier that ranks the whole corpus once and keeps a budget of rows (budget, percentile
    bands, DSIR, IFD, DS weight, classifier top fractions).

    A subclass writes `summarize` (what each row contributes) and `ranking` (the collected summaries
    with `_selected` added, usually through `select_by_rank`); the base class turns that into the
    decision table — `_pos`, the `carried` score columns, and the drop reason (`reason` for rows
    outside the budget, or the subclass's own `drop_reason`) — and joins it onto each shard's rows.

    A subclass that also gives `rank_plan` (and `scored`, where scores need the whole corpus)
    can be reduced in partitions (`executor.reduce_partitions`, see `ranking_partitions`), with
    the same decision table as `reduce`.
    """

    reason: ClassVar[str] = "not_selected"
    carried: ClassVar[tuple[str, ...]] = ()
    """Columns of the ranking that the decision writes onto every row (scores computed in `reduce`)."""

    def ranking(self, table: pl.DataFrame) -> pl.DataFrame:
        raise NotImplementedError

    def drop_reason(self) -> pl.Expr:
        """Why a row goes (null for a kept row), evaluated on the ranking."""
        return pl.when(~pl.col(SELECTED)).then(pl.lit(self.reason))

    def reduce(self, summaries: pl.LazyFrame) -> pl.DataFrame:
        return self.decision(self.ranking(summaries.collect()))

    def decision(self, ranked: pl.DataFrame) -> pl.DataFrame:
        """The decision table from ranked rows (any order) with `_selected`."""
        reason = self.drop_reason().cast(pl.String).alias(DROP_REASON)
        return ranked.select(POSITION, *self.carried, reason).sort(POSITION)

    # --- the partitioned reduce (ranking_partitions) -------------------------------------------

    def rank_plan(self) -> RankPlan | None:
        """How `scored` rows are selected; None: this stage has no partitioned reduce."""
        return None

    def scored(self, table: pl.DataFrame, stats: pl.DataFrame | None) -> pl.DataFrame:
        """Summary rows with the `rank_plan` key (and what `drop_reason` reads), row by row;
        `stats`: every shard's `rank_stats` rows, None when `table` is the whole corpus."""
        return table

    def rank_stats(self, summary: pl.DataFrame) -> pl.DataFrame:
        """One shard's additive numbers the partitions need (`ranking_partitions.group_stats`)."""
        return group_stats(self.scored(summary, None), self.rank_plan())

    def partition_reducer(self) -> RankingPartitions | None:
        return RankingPartitions(self) if self.rank_plan() is not None else None

    def apply(self, batch: pl.DataFrame, decision: pl.DataFrame) -> pl.DataFrame:
        return batch.join(decision, on=POSITION, how="left", maintain_order="left")
