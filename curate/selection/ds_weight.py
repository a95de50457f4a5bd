"""DS weight (IWSI): drop self-generated samples whose distribution shifts most from a small valid set.

Jiang et al. 2024, "Importance Weighting Can Help Large Language Models Self-Improve" (AAAI 2025,
arXiv 2408.09849). After self-consistency filtering (keep the answers that agree with the majority
vote), the samples that are correct but far from the true data distribution still hurt. The paper
estimates each sample's distribution shift extent (DSE) from a tiny valid set (at most 5% of the
training set) with an importance-weighting style ratio of LM losses, as its released code does:

    ds_weight_i = clip(mean valid loss / loss_i, 0, 2)          (0 when loss_i = 0)
    shift_i     = max(ds_weight_i, 1 / ds_weight_i), at most 5

A weight near 1 means the sample looks like valid data to the model; far above 1 (much easier
than valid data) or far below (much harder) means shift. Among the self-consistent samples, the
`drop_fraction` with the highest shift are dropped (ties: the later record in the dataset).

Losses are the mean loss of the tokens the trainer learns (`scoring.py`) under `model` (the model
that generated the data, or the one about to train on it), for the records and the valid set alike.
Columns: `ds_weight`, `ds_shift`, `ds_loss`. Drop reasons: `not_self_consistent` (the
`consistent_column` is false), `ds_unscored` (no token to score), `distribution_shift`.

This is a barrier (the cut-off is a quantile of the whole dataset); every worker scores the valid
set once in `setup()`, the same way, so the result does not depend on the worker count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
from pydantic import Field

from datamill.curate.engine.paths import exists, is_url, local_copy
from datamill.curate.engine.registry import register_stage
from datamill.curate.selection.ranking import SELECTED, Budget, RankingBarrier, RankPlan, select_by_rank
from datamill.curate.selection.ranking_partitions import ROWS, group_stats
from datamill.curate.selection.scoring import (
    LMScoreParams, encode_records, record_losses, require_model, resolve_format,
)
from datamill.curate.engine.stage import POSITION, Resources

MAX_WEIGHT = 2.0
MAX_SHIFT = 5.0
SCORES = ("ds_weight", "ds_shift", "ds_loss")


class DSWeightParams(LMScoreParams):
    valid_path: str = Field(..., description="Valid set: a .jsonl or .parquet file of records in the same format.")

    def check_paths(self, base_dir: str) -> list[str]:
        found = exists(self.valid_path) if is_url(self.valid_path) else Path(self.valid_path).expanduser().is_file()
        missing = [] if found else [f"valid_path: valid set {self.valid_path!r} does not exist"]
        return [*super().check_paths(base_dir), *missing]
    drop_fraction: float = Field(
        0.2, ge=0, lt=1, description="Drop this fraction of the self-consistent records, highest shift first."
    )
    consistent_column: str | None = Field(
        None, description="Boolean column marking self-consistent records (majority-vote answers); none: all are."
    )
    max_valid_fraction: float = Field(
        0.05, gt=0, le=1, description="Refuse a valid set larger than this fraction of the dataset (the paper: ≤ 5%)."
    )


@register_stage
class DSWeightSelect(RankingBarrier):
    """Scores `ds_weight` against a small valid set and drops the highest-shift self-consistent records."""

    type_name: ClassVar[str] = "ds_weight"
    Params: ClassVar[type[DSWeightParams]] = DSWeightParams
    inputs: ClassVar[tuple[str, ...]] = ("text", "prompt", "completion", "messages")
    outputs: ClassVar[tuple[str, ...]] = SCORES
    carried: ClassVar[tuple[str, ...]] = SCORES
    resources: ClassVar[Resources] = Resources(cpus=1, gpus=0)

    params: DSWeightParams
    model: Any = None
    tokenizer: Any = None
    valid_loss: float | None = None
    valid_rows: int = 0

    def setup(self) -> None:
        from datamill.curate.models.resolve import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(self.params.model, dtype=self.params.torch_dtype())
        valid = read_valid_set(self.params.valid_path)
        losses = self.losses(valid, f"valid set {self.params.valid_path}")
        scored = losses[~np.isnan(losses)]
        if scored.size == 0:
            raise ValueError(f"stage {self.name!r}: valid set {self.params.valid_path} has no scorable record")
        self.valid_loss, self.valid_rows = float(scored.mean()), valid.height

    def losses(self, frame: pl.DataFrame, what: str) -> np.ndarray:
        """Mean learned-token loss of every record of `frame` (NaN where nothing is scored)."""
        require_model(self, self.model)
        p = self.params
        try:
            fmt = resolve_format(frame.columns, p.format, self.name)
        except ValueError as err:
            raise ValueError(f"{what}: {err}") from None
        encoded = encode_records(self.tokenizer, frame, fmt)
        return record_losses(self.model, self.tokenizer, encoded, max_tokens=p.max_tokens,
                             batch_tokens=p.batch_tokens).mean_loss

    def summarize(self, batch: pl.DataFrame) -> pl.DataFrame:
        column = self.params.consistent_column
        if column is not None and column not in batch.columns:
            raise ValueError(f"stage {self.name!r}: consistent_column {column!r} is not a column (have {batch.columns})")
        consistent = batch[column].fill_null(False).cast(pl.Boolean) if column else pl.Series([True] * batch.height)
        return pl.DataFrame({
            POSITION: batch[POSITION],
            "ds_loss": pl.Series(self.losses(batch, "dataset"), dtype=pl.Float64).fill_nan(None),
            "_consistent": consistent,
            "_valid_loss": pl.Series([self.valid_loss] * batch.height, dtype=pl.Float64),
            "_valid_rows": pl.Series([self.valid_rows] * batch.height, dtype=pl.Int64),
        })

    def ranking(self, table: pl.DataFrame) -> pl.DataFrame:
        if table.height == 0:
            return pl.DataFrame(schema={POSITION: pl.Int64, **{c: pl.Float64 for c in SCORES}, SELECTED: pl.Boolean,
                                        "_consistent": pl.Boolean})
        scored = self.scored(table, None)
        n_candidates = scored.select(pl.col("_closeness").is_not_null().sum()).item()
        keep = n_candidates - int(np.floor(self.params.drop_fraction * n_candidates + 0.5))
        return select_by_rank(scored, "_closeness", Budget(count=keep), descending=True)

    def rank_plan(self) -> RankPlan:
        return RankPlan("_closeness", descending=True, drop_fraction=self.params.drop_fraction)

    def rank_stats(self, summary: pl.DataFrame) -> pl.DataFrame:
        """Rows and candidates, and the valid set's numbers as the shard's first row carries them."""
        first = summary.sort(POSITION).head(1)
        scored = self.closeness(summary, float(first["_valid_loss"][0]) if first.height else 0.0)
        return group_stats(scored, self.rank_plan()).with_columns(
            pl.Series("_first_pos", first[POSITION].to_list() or [None], dtype=pl.Int64),
            pl.Series("_valid_loss", first["_valid_loss"].to_list() or [None], dtype=pl.Float64),
            pl.Series("_valid_rows", first["_valid_rows"].to_list() or [None], dtype=pl.Int64))

    def scored(self, table: pl.DataFrame, stats: pl.DataFrame | None) -> pl.DataFrame:
        """`ds_weight`, `ds_shift` and the ranking key `_closeness` (−shift of a candidate) of
        every row; the valid set's numbers from the corpus' first row (in `table` or `stats`)."""
        if stats is None:
            first, rows = table.sort(POSITION).head(1), table.height
        else:
            first, rows = stats.drop_nulls("_first_pos").sort("_first_pos").head(1), int(stats[ROWS].sum())
        if first.height == 0:
            return self.closeness(table, 0.0)
        valid_rows, valid_loss = int(first["_valid_rows"][0]), float(first["_valid_loss"][0])
        if valid_rows > self.params.max_valid_fraction * rows:
            raise ValueError(
                f"stage {self.name!r}: the valid set has {valid_rows} records, more than max_valid_fraction="
                f"{self.params.max_valid_fraction:g} of the {rows} records; DS weight assumes a tiny valid set"
            )
        return self.closeness(table, valid_loss)

    @staticmethod
    def closeness(table: pl.DataFrame, valid_loss: float) -> pl.DataFrame:
        scored = table.with_columns(ds_weight(pl.col("ds_loss"), valid_loss)).with_columns(ds_shift(pl.col("ds_weight")))
        candidates = pl.col("_consistent") & pl.col("ds_shift").is_not_null()
        return scored.with_columns(pl.when(candidates).then(-pl.col("ds_shift")).alias("_closeness"))

    def drop_reason(self) -> pl.Expr:
        return (
            pl.when(~pl.col("_consistent")).then(pl.lit("not_self_consistent"))
            .when(pl.col("ds_shift").is_null()).then(pl.lit("ds_unscored"))
            .when(~pl.col(SELECTED)).then(pl.lit("distribution_shift"))
        )


def ds_weight(loss: pl.Expr, valid_loss: float) -> pl.Expr:
    """`ds_weight` = clip(valid_loss / loss, 0, 2); 0 for a zero loss; null when unscored."""
    return pl.when(loss > 0).then((valid_loss / loss).clip(0.0, MAX_WEIGHT)).when(loss == 0).then(0.0).alias("ds_weight")


def ds_shift(weight: pl.Expr) -> pl.Expr:
    """`ds_shift` = max(w, 1/w), at most 5 (a zero weight is the most shifted)."""
    inverse = pl.when(weight > 0).then(1.0 / weight).otherwise(MAX_SHIFT)
    return pl.when(weight.is_not_null()).then(
        pl.max_horizontal(weight, inverse).clip(upper_bound=MAX_SHIFT)
    ).alias("ds_shift")


def read_valid_set(path: str) -> pl.DataFrame:
    """The valid set's records, from a .jsonl or .parquet file (a local path or a URL)."""
    if is_url(path) and not exists(path):
        raise FileNotFoundError(f"ds_weight valid set {path} does not exist")
    file = Path(local_copy(path)).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"ds_weight valid set {file} does not exist")
    if file.suffix == ".parquet":
        return pl.read_parquet(file)
    if file.suffix in (".jsonl", ".json"):
        return pl.read_ndjson(file)
    raise ValueError(f"ds_weight valid set {file}: expected a .jsonl or .parquet file")
