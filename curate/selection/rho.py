"""Excess loss (RHO-LOSS / Rho-1): loss under the model being trained minus loss under a reference model.

RHO-LOSS (Mindermann et al. 2022, "Prioritized Training on Points that are Learnable, Worth
Learning, and Not Yet Learnt") trains on the points with the highest reducible loss: the training
model's loss minus an "irreducible loss" model's (a reference trained on clean holdout data).
Noisy points are hard for both (low excess), learnt points easy for both (low excess), learnable
points not yet learnt are hard only for the trained model. Rho-1 (Lin et al. 2024, "Not All Tokens
Are What You Need") applies the same score per token and trains only on the top k% tokens.

This stage writes, per record (the tokens the trainer learns, see `scoring.py`):
- `rho`: mean over the scored tokens of loss(model) − loss(reference), in nats; `rho_tokens`: how
  many tokens were scored. Null when no token was scored.
- with `token_fraction` (Rho-1 mode), `token_keep`: list[bool], one entry per token of the record
  as `datamill.train` tokenizes it (without the EOS the trainer appends), true for the
  `ceil(token_fraction × scored tokens)` tokens of the record with the highest excess loss (ties:
  the earlier token). Tokens that are not scored (the first token, prompt tokens, tokens past
  `max_tokens`) stay true: nothing says to drop them, and prompt tokens are not learned anyway.
  The trainer multiplies its loss mask by this column, so only the kept tokens are learned.

Differences from the papers, on purpose: Rho-1 keeps the top k% tokens of each training *batch*;
here it is the top k% of each *record*, so a record's mask never depends on which batch or
worker it lands in (deterministic for any worker count). Ranking records by `rho` across the
whole dataset (RHO-LOSS) is a `budget` selection on the `rho` column after this stage; `min_rho`
drops records under a fixed threshold.

Both models must share a tokenizer (per-token differences need the same tokens), and `token_keep`
is only valid for a trainer that uses that tokenizer. Put this stage after every stage that
rewrites `text`, since the mask is aligned to the text it saw.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.models.params import causal_lm_problem
from datamill.curate.selection.scoring import (
    LMScoreParams, encode_records, record_losses, require_model, resolve_format, same_tokenizer, token_grid,
)
from datamill.curate.engine.stage import Filter, Resources

TOKEN_KEEP = "token_keep"


class RhoParams(LMScoreParams):
    model: str = Field(
        ..., description="The model being trained (a checkpoint of it) or a proxy for it: built-in name or folder."
    )
    reference: str = Field(
        ..., description="Reference (irreducible-loss) model trained on clean data; must share the model's tokenizer."
    )
    token_fraction: float | None = Field(
        None, gt=0, le=1,
        description="Rho-1 mode: write `token_keep` keeping this fraction of each record's tokens, highest excess loss first.",
    )
    min_rho: float | None = Field(None, description="Drop records whose mean excess loss is below this.")

    def check_paths(self, base_dir: str) -> list[str]:
        return super().check_paths(base_dir) + causal_lm_problem("reference", self.reference)


@register_stage
class RhoScore(Filter):
    """Scores `rho` = loss(model) − loss(reference) per record and, in Rho-1 mode, a per-token keep mask."""

    type_name: ClassVar[str] = "rho"
    Params: ClassVar[type[RhoParams]] = RhoParams
    inputs: ClassVar[tuple[str, ...]] = ("text", "prompt", "completion", "messages")
    """One of: `text`, `prompt`+`completion` or `messages` (see `format`)."""
    outputs: ClassVar[tuple[str, ...]] = ("rho", "rho_tokens")
    resources: ClassVar[Resources] = Resources(cpus=1, gpus=0)
    """Runs on CPU; uses a GPU when the executor places it where one is visible."""

    params: RhoParams
    model: Any = None
    reference: Any = None
    tokenizer: Any = None

    def setup(self) -> None:
        from datamill.curate.models.resolve import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(self.params.model, dtype=self.params.torch_dtype())
        self.reference, reference_tokenizer = load_causal_lm(self.params.reference, dtype=self.params.torch_dtype())
        if not same_tokenizer(self.tokenizer, reference_tokenizer):
            raise ValueError(
                f"stage {self.name!r}: model {self.params.model!r} and reference {self.params.reference!r} use "
                "different tokenizers; excess loss compares the same tokens, so they must share one"
            )

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        require_model(self, self.model)
        p = self.params
        encoded = encode_records(self.tokenizer, batch, resolve_format(batch.columns, p.format, self.name))
        per_token = p.token_fraction is not None
        options = dict(max_tokens=p.max_tokens, batch_tokens=p.batch_tokens, per_token=per_token)
        trained = record_losses(self.model, self.tokenizer, encoded, **options)
        reference = record_losses(self.reference, self.tokenizer, encoded, **options)
        columns = [
            pl.Series("rho", trained.mean_loss - reference.mean_loss, dtype=pl.Float64).fill_nan(None),
            pl.Series("rho_tokens", trained.tokens, dtype=pl.Int64),
        ]
        if per_token:
            excess = [a - b for a, b in zip(token_grid(encoded, trained, p.max_tokens),
                                            token_grid(encoded, reference, p.max_tokens))]
            bodies = [len(ids) - int(encoded.appended_eos) for ids in encoded.ids]
            columns.append(top_token_mask(excess, bodies, p.token_fraction))
        return batch.with_columns(columns)

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        if self.params.min_rho is None:
            return []
        return [("rho_too_low", pl.col("rho") < self.params.min_rho)]


def top_token_mask(excess: list[np.ndarray], body_lengths: list[int], fraction: float) -> pl.Series:
    """`token_keep`: per record, true for the top `fraction` of its scored tokens by excess loss
    (ties: earlier token) and for every unscored token; `body_lengths[i]` entries for record i."""
    lengths = np.array([len(e) for e in excess], dtype=np.int64)
    flat = np.concatenate(excess) if excess else np.zeros(0, np.float32)
    record = np.repeat(np.arange(len(excess)), lengths)
    position = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    body = np.array(body_lengths, dtype=np.int64)
    scored = ~np.isnan(flat) & (position < body[record])
    per_record = np.bincount(record[scored], minlength=len(excess))
    quota = np.ceil(per_record * fraction - 1e-9).astype(np.int64)
    order = np.lexsort((position, -np.where(scored, flat, -np.inf), record))  # by record, excess desc, position
    starts = np.cumsum(lengths) - lengths
    rank = np.empty(flat.size, dtype=np.int64)
    rank[order] = np.arange(flat.size) - starts[record[order]]
    keep = ~scored | (rank < quota[record])
    in_body = position < body[record]
    offsets = np.concatenate([[0], np.cumsum(body)]).astype(np.int32)
    values = pa.array(keep[in_body], type=pa.bool_())
    return pl.Series(TOKEN_KEEP, pl.from_arrow(pa.ListArray.from_arrays(pa.array(offsets), values)))

