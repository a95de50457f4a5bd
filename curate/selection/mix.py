"""The `mix` stage: source mixture weights, upsampling epochs, replay, an annealing phase, loss weights.

    - type: mix
      epochs: {wiki: 2, books: 1.5}          # repeat a source's rows (copies get ids `<id>#2`, …)
      weights: {web: 0.7, wiki: 0.2, code: 0.1}   # token shares of the output (sources downsampled)
      anneal: {fraction: 0.1, weights: {wiki: 1, code: 1}}   # phase 1 = the last 10% of tokens
      weight_from: dsir_logw                  # per-sample loss weight column `weight`

Steps, all decided once over the whole corpus (a barrier) and all seeded by a hash of the record
`id`, so the same recipe gives the same mix for any worker count or sharding:
1. `epochs`: a source with e epochs gives every row ⌊e⌋ copies, plus one more for a seeded
   (e − ⌊e⌋) share of its rows. Copy 1 keeps the id, copy k gets `<id>#k`.
2. `weights` (token shares) or `replay`: a source is downsampled to its share by keeping a seeded
   random prefix of its rows (all copies of a row together) within its token budget. With
   `weights` the output is as large as the sources allow (the scarcest source relative to its
   weight is kept whole); every source in the data needs a weight (0 drops it). With `replay:
   {source: general, fraction: f}` (continual pretraining) the general source is cut to a share f of
   the output tokens and every other source is kept whole.
3. `anneal` (OLMo 2's mid-training mix): of the rows kept, a seeded token budget of `fraction` ×
   output tokens, split between `anneal.weights`' sources by weight, gets `phase` 1, the rest 0.
   `datamill train` trains every epoch's phase-0 rows first and its phase-1 rows last (shuffled
   within each phase; see train/data.py).
4. `weight_from`: `weight` = exp(column) (a log-weight like `dsir_logw`; `weight_scale: linear`
   takes the column itself), normalized to mean 1 over the kept rows, then clipped to
   `weight_clip`. train/ multiplies each document's token losses by `weight`.
Rows not kept are dropped with reason `mix_not_selected` (or flagged, with `action: flag`).

With `executor.reduce_partitions: P` the reduce runs in P partitions (`mix_partitions`): the same
decision table; partitions decide every row's copies, the driver walks only the anneal split's bucket.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import polars as pl
from datamill.curate.engine.records import TOKENS
from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import (
    DROP_REASON,
    POSITION,
    BarrierStage,
    FilterParams,
)
from datamill.curate.selection.mix_partitions import (
    COPIES,
    SCORE,
    U2,
    MixPartitions,
    U,
    within_budget,
)
from datamill.curate.selection.ranking import uniform_from_hash
from pydantic import BaseModel, ConfigDict, Field, model_validator

PHASE, WEIGHT = "phase", "weight"


class Replay(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="The general source whose rows are replayed.")
    fraction: float = Field(gt=0, lt=1, description="Its share of the output tokens.")


class Anneal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(gt=0, le=1, description="Share of the output tokens in phase 1 (the annealing mix).")
    weights: dict[str, float] = Field(min_length=1, description="Sources of the annealing mix and their token shares.")

    @model_validator(mode="after")
    def _positive(self) -> Anneal:
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("anneal.weights must be non-negative and not all 0")
        return self


class MixParams(FilterParams):
    epochs: dict[str, float] = Field(default_factory=dict, description="Source name → epochs (> 0; 2 = every row twice).")
    weights: dict[str, float] | None = Field(None, description="Source name → share of the output tokens.")
    replay: Replay | None = Field(None, description="Continual pretraining: cut a general source to a token share.")
    anneal: Anneal | None = Field(None, description="Put a token share of chosen sources in phase 1 (trained last).")
    weight_from: str | None = Field(None, description="Column to derive the per-sample loss weight `weight` from.")
    weight_scale: Literal["log", "linear"] = Field("log", description="log: weight ∝ exp(column); linear: ∝ column.")
    weight_clip: tuple[float, float] = Field((0.1, 10.0), description="Clip the mean-1 weights to [low, high].")

    @model_validator(mode="after")
    def _consistent(self) -> MixParams:
        if self.weights is not None and self.replay is not None:
            raise ValueError("give either weights or replay, not both")
        if any(e <= 0 for e in self.epochs.values()):
            raise ValueError("epochs must be > 0")
        if self.weights is not None and (any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0):
            raise ValueError("weights must be non-negative and not all 0")
        low, high = self.weight_clip
        if not 0 < low <= 1 <= high:
            raise ValueError(f"weight_clip must satisfy 0 < low <= 1 <= high, got {list(self.weight_clip)}")
        return self


@register_stage
class Mix(BarrierStage):
    """Mix sources by token shares and epochs, replay a general source, mark an annealing phase."""

    type_name = "mix"
    Params: ClassVar = MixParams
    inputs = ()
    params: MixParams

    def __init__(self, params: MixParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        p = self.params
        self.outputs = ((PHASE,) if p.anneal else ()) + ((WEIGHT,) if p.weight_from else ())

    def summarize(self, batch: pl.DataFrame) -> pl.DataFrame:
        column = self.params.weight_from
        if column is not None and column not in batch.columns:
            shown = ", ".join(c for c in batch.columns if not c.startswith("_"))
            raise ValueError(f"stage {self.name!r}: weight_from column {column!r} not found; columns: {shown}")
        tokens = pl.col(TOKENS).cast(pl.Int64) if TOKENS in batch.columns else pl.lit(1, dtype=pl.Int64)
        return batch.select(
            POSITION, "source", tokens.alias(TOKENS),
            uniform_from_hash("id", self.seed).alias(U), uniform_from_hash("id", self.seed + 1).alias(U2),
            *([pl.col(column).cast(pl.Float64).alias(SCORE)] if column else []),
        )

    def reduce(self, summaries: pl.LazyFrame) -> pl.DataFrame:
        p = self.params
        table = summaries.collect().sort(POSITION)
        present = set(table["source"].unique().to_list())
        table = table.with_columns(self.copies().alias(COPIES))
        load = table.group_by("source").agg((pl.col(COPIES) * pl.col(TOKENS)).sum().alias("t"))
        available = dict(load.iter_rows())
        budgets = self.token_budgets(available, present)
        if budgets:
            table = self._downsample(table, budgets)
        decision = table.select(POSITION, COPIES)
        if p.anneal:
            decision = decision.with_columns(self._phases(table))
        if p.weight_from:
            decision = decision.with_columns(self.loss_weights(table))
        return decision

    def partition_reducer(self) -> MixPartitions:
        """The exact partitioned reduce (`executor.reduce_partitions`, see `mix_partitions`)."""
        return MixPartitions(self)

    def copies(self) -> pl.Expr:
        """Copies of each summary row from its source's epochs (row-local: ⌊e⌋, plus one for a seeded
        (e − ⌊e⌋) share)."""
        epochs = pl.col("source").replace_strict(self.params.epochs, default=1.0, return_dtype=pl.Float64)
        return (epochs.floor() + (pl.col(U) < epochs - epochs.floor()).cast(pl.Float64)).cast(pl.Int64)

    def budgeted_sources(self) -> set[str]:
        """The sources that may get a token budget (be downsampled)."""
        p = self.params
        if p.weights is not None:
            return set(p.weights)
        return {p.replay.source} if p.replay is not None else set()

    def token_budgets(self, available: dict[str, int], present: set[str]) -> dict[str, float]:
        """Source → token budget of the downsampling, from every source's load (copies × tokens)."""
        p = self.params
        if p.weights is not None:
            missing = sorted(present - set(p.weights))
            if missing:
                raise ValueError(f"stage {self.name!r}: source(s) {', '.join(missing)} have rows but no entry in "
                                 f"weights ({', '.join(p.weights)}); give each a weight (0 drops it)")
            total_weight = sum(p.weights.values())
            shares = {s: w / total_weight for s, w in p.weights.items() if s in present}
            total = min(available[s] / share for s, share in shares.items() if share > 0)
            return {s: share * total for s, share in shares.items()}
        if p.replay is not None:
            general = p.replay.source
            if general not in present:
                raise ValueError(f"stage {self.name!r}: replay source {general!r} has no rows; sources: "
                                 f"{', '.join(sorted(present))}")
            others = sum(t for s, t in available.items() if s != general)
            return {general: p.replay.fraction / (1 - p.replay.fraction) * others}
        return {}

    @staticmethod
    def _downsample(table: pl.DataFrame, budgets: dict[str, float]) -> pl.DataFrame:
        """Keep a seeded random prefix of each budgeted source's rows within its token budget."""
        budget = pl.col("source").replace_strict(budgets, default=None, return_dtype=pl.Float64)
        load = (pl.col(COPIES) * pl.col(TOKENS)).cum_sum().over("source", order_by=[U, POSITION])
        inside = budget.is_null() | within_budget(load, budget)
        return table.with_columns(pl.when(inside).then(pl.col(COPIES)).otherwise(0).alias(COPIES))

    def anneal_budgets(self, kept_tokens: float) -> dict[str, float]:
        """Anneal source → token budget of phase 1, from the tokens kept by the downsampling."""
        anneal = self.params.anneal
        total_weight = sum(anneal.weights.values())
        return {s: anneal.fraction * kept_tokens * w / total_weight for s, w in anneal.weights.items()}

    def _phases(self, table: pl.DataFrame) -> pl.Series:
        budgets = self.anneal_budgets(float((table[COPIES] * table[TOKENS]).sum()))
        budget = pl.col("source").replace_strict(budgets, default=None, return_dtype=pl.Float64)
        kept = pl.col(COPIES) > 0
        load = (pl.col(COPIES) * pl.col(TOKENS)).cum_sum().over("source", kept, order_by=[U2, POSITION])
        in_anneal = kept & budget.is_not_null() & within_budget(load, budget)
        return table.select(in_anneal.cast(pl.Int8).alias(PHASE)).to_series()

    def loss_weights(self, table: pl.DataFrame) -> pl.Series:
        """The `weight` column from the rows' scores and final copies, in the rows' (`_pos`) order."""
        score, copies = table[SCORE].to_numpy().astype(np.float64), table[COPIES].to_numpy()
        raw = self.raw_weights(score, self.weight_shift(score, copies > 0))
        return self.scaled_weights(raw, (raw * copies).sum() / max(copies.sum(), 1))

    def weight_shift(self, score: np.ndarray, kept: np.ndarray) -> float:
        """Log scale: the largest finite score of a kept row (0 without one); linear: 0, after
        checking that no kept row has a negative score."""
        p = self.params
        if p.weight_scale == "log":
            finite = np.isfinite(score) & kept
            return score[finite].max() if finite.any() else 0.0
        if np.nanmin(np.where(kept, score, np.nan), initial=0.0) < 0:
            raise ValueError(f"stage {self.name!r}: weight_from column {p.weight_from!r} has negative values; "
                             "use weight_scale: log for log-weights")
        return 0.0

    def raw_weights(self, score: np.ndarray, shift: float) -> np.ndarray:
        """Each row's weight before the corpus mean divides it (row by row)."""
        if self.params.weight_scale == "log":
            score = np.exp(np.where(np.isfinite(score), score - shift, -np.inf))
        return np.nan_to_num(score, nan=0.0)

    def scaled_weights(self, raw: np.ndarray, mean: float) -> pl.Series:
        """The `weight` column: raw weights over the mean (copies counted), clipped (row by row)."""
        weights = raw / mean if mean > 0 else np.ones_like(raw)
        return pl.Series(WEIGHT, np.clip(weights, *self.params.weight_clip))

    def apply(self, batch: pl.DataFrame, decision: pl.DataFrame) -> pl.DataFrame:
        joined = batch.join(decision, on=POSITION, how="left", maintain_order="left")
        copies = joined[COPIES].fill_null(0).to_numpy()
        index = np.repeat(np.arange(joined.height), np.maximum(copies, 1))
        copy_no = np.arange(len(index)) - np.repeat(np.cumsum(np.maximum(copies, 1)) - np.maximum(copies, 1),
                                                    np.maximum(copies, 1)) + 1
        out = joined[index].with_columns(pl.Series("_copy", copy_no, dtype=pl.Int64))
        new_id = pl.when(pl.col("_copy") > 1).then(pl.col("id") + "#" + pl.col("_copy").cast(pl.String))
        reason = pl.when(pl.col(COPIES).fill_null(0) == 0).then(pl.lit("mix_not_selected"))
        return out.with_columns(
            new_id.otherwise(pl.col("id")).alias("id"), reason.otherwise(None).cast(pl.String).alias(DROP_REASON)
        ).drop(COPIES, "_copy")
