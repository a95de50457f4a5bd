"""Instruction-Following Difficulty (IFD): keep instruction data whose instruction helps least, but helps.

Li et al. 2023, "From Quantity to Quality: Boosting LLM Performance with Self-Guided Data Selection
for Instruction Tuning" (Cherry LLM), and Superfiltering (Li et al. 2024, which shows a small model
such as GPT-2 ranks IFD like a large one):

    IFD(Q, A) = loss(A | Q) / loss(A)

the mean token loss of the response given the instruction over the loss of the response alone.
High IFD: the instruction barely helps the model produce the answer, a hard, informative sample.
IFD ≥ 1: the instruction does not help at all (the pair is misaligned), so such samples are
dropped; of the rest the highest IFD are kept.

Records are prompt+completion (response = completion) or chat `messages` (response = the
assistant replies, given the conversation before each; alone = the replies concatenated), scored
on the tokens the trainer learns (`scoring.py`). Columns: `ifd`, `ifd_cond_loss` (loss(A | Q)),
`ifd_direct_loss` (loss(A)); null with no response token.

Selection is global, so this is a barrier: `summarize` scores each shard, `reduce` ranks every
record with `ranking.select_by_rank` by IFD descending, ties by dataset position `_pos`, so the
result is the same for any number of workers or shards. Drop reasons: `ifd_no_response` (nothing
to score), `ifd_too_high` (IFD ≥ `max_ifd`), `ifd_below_budget` (outside the top `budget`, whose
fraction counts every record, dropped ones included).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field

from datamill.curate.engine.records import TOKENS
from datamill.curate.engine.registry import register_stage
from datamill.curate.selection.ranking import SELECTED, Budget, RankingBarrier, RankPlan, select_by_rank
from datamill.curate.selection.scoring import (
    LMScoreParams, encode_records, record_losses, require_model, resolve_format,
)
from datamill.curate.engine.stage import POSITION, Resources

SCORES = ("ifd", "ifd_cond_loss", "ifd_direct_loss")


class IFDParams(LMScoreParams):
    format: Literal["auto", "messages", "prompt_completion"] = Field(
        "auto", description="Instruction data: prompt+completion or chat messages (auto: whichever columns exist)."
    )
    max_ifd: float = Field(1.0, gt=0, description="Drop records with IFD at or above this (1: the instruction does not help).")
    budget: Budget | None = Field(
        None, description="Keep the highest-IFD records within this budget (fraction/count/tokens of response tokens); "
        "none: keep every record under max_ifd.",
    )


@register_stage
class IFDSelect(RankingBarrier):
    """Scores IFD = loss(response | instruction) / loss(response) and keeps the hardest useful records."""

    type_name: ClassVar[str] = "ifd"
    Params: ClassVar[type[IFDParams]] = IFDParams
    inputs: ClassVar[tuple[str, ...]] = ("prompt", "completion", "messages")
    outputs: ClassVar[tuple[str, ...]] = SCORES
    carried: ClassVar[tuple[str, ...]] = SCORES
    resources: ClassVar[Resources] = Resources(cpus=1, gpus=0)

    params: IFDParams
    model: Any = None
    tokenizer: Any = None

    def setup(self) -> None:
        from datamill.curate.models.resolve import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(self.params.model, dtype=self.params.torch_dtype())

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """`batch` with the IFD columns (and `_tokens`, the scored response tokens)."""
        require_model(self, self.model)
        p = self.params
        fmt = resolve_format([c for c in batch.columns if c != "text"], p.format, self.name)
        encoded = encode_records(self.tokenizer, batch, fmt)
        options = dict(max_tokens=p.max_tokens, batch_tokens=p.batch_tokens)
        given = record_losses(self.model, self.tokenizer, encoded, **options)
        alone = record_losses(self.model, self.tokenizer, encoded, response_only=True, **options)
        with np.errstate(invalid="ignore", divide="ignore"):
            ifd = given.mean_loss / alone.mean_loss
        return batch.with_columns(
            pl.Series("ifd", ifd, dtype=pl.Float64).fill_nan(None),
            pl.Series("ifd_cond_loss", given.mean_loss, dtype=pl.Float64).fill_nan(None),
            pl.Series("ifd_direct_loss", alone.mean_loss, dtype=pl.Float64).fill_nan(None),
            pl.Series(TOKENS, given.tokens, dtype=pl.Int64),
        )

    def summarize(self, batch: pl.DataFrame) -> pl.DataFrame:
        return self.score(batch).select(POSITION, *SCORES, TOKENS)

    def eligible(self) -> pl.Expr:
        return pl.col("ifd").is_not_null() & (pl.col("ifd") < self.params.max_ifd)

    def scored(self, table: pl.DataFrame, stats: pl.DataFrame | None) -> pl.DataFrame:
        ranked = table.with_columns(pl.when(self.eligible()).then(pl.col("ifd")).alias("_eligible_ifd"))
        if self.params.budget is None:
            return ranked.with_columns(self.eligible().alias(SELECTED))
        return ranked

    def rank_plan(self) -> RankPlan:
        if self.params.budget is None:
            return RankPlan(None)
        return RankPlan("_eligible_ifd", descending=True, budget=self.params.budget)

    def ranking(self, table: pl.DataFrame) -> pl.DataFrame:
        ranked = self.scored(table, None)
        if self.params.budget is None:
            return ranked
        return select_by_rank(ranked, "_eligible_ifd", self.params.budget, descending=True)

    def drop_reason(self) -> pl.Expr:
        return (
            pl.when(pl.col("ifd").is_null()).then(pl.lit("ifd_no_response"))
            .when(~self.eligible()).then(pl.lit("ifd_too_high"))
            .when(~pl.col(SELECTED)).then(pl.lit("ifd_below_budget"))
        )
