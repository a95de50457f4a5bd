"""Per-token LM losses of records exactly as the trainer tokenizes them: text, prompt+completion or chat.

The selection stages (rho, ifd, learnability, ds_weight) score what training will learn, so they
tokenize a batch with `datamill.train.data`'s own tokenizers: plain text + EOS (every token learned),
prompt + completion + EOS (completion learned), or a chat through the chat template (assistant
replies learned). `Encoded.learned` is that loss mask, per token; position 0 is never scored
(nothing predicts it). The forward passes are `curate.lm_scoring.masked_token_losses`:
length-sorted batches, chunked cross-entropy (no full fp32 logits), bf16 on GPU and fp32 on CPU
(as `curate.models.load_causal_lm` loads the model).

- `record_losses(..., response_only=False)`: loss of the learned tokens given everything before
  them (a completion given its prompt, replies given the conversation).
- `record_losses(..., response_only=True)`: loss of the learned tokens alone, as one sequence
  without the prompt (IFD's unconditioned loss).
- `per_token=True` also gives each record's per-token losses on the scored positions; `token_grid`
  spreads them over the record's token positions (NaN where a token is not scored).

Sequences are cut to their first `max_tokens` tokens; later tokens are not scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from datamill.curate.models.lm_scoring import DocumentLosses, masked_token_losses
from datamill.curate.models.params import CausalLMParams

Format = Literal["auto", "text", "messages", "prompt_completion"]


class LMScoreParams(CausalLMParams):
    """Parameters shared by the selection stages that score records with a causal LM."""

    format: Format = Field(
        "auto", description="Which columns hold a record: text, messages or prompt+completion (auto: as the trainer picks)."
    )


@dataclass(frozen=True)
class Encoded:
    """A batch tokenized as the trainer tokenizes it."""

    format: str
    ids: list[list[int]]
    """Token ids of each record, with the EOS the trainer appends (text, prompt_completion)."""
    learned: list[np.ndarray]
    """bool per token: the trainer learns to predict this token."""
    appended_eos: bool
    """Whether the last token of each record is an EOS the trainer appends (not part of `token_keep`)."""


def resolve_format(columns: list[str], wanted: str, stage: str) -> str:
    """The record format of a batch (the trainer's rule), with an error that names the stage."""
    from datamill.train.data import detect_format

    try:
        return detect_format(columns, wanted)
    except ValueError as err:
        raise ValueError(f"stage {stage!r}: {err}") from None


def encode_records(tokenizer: Any, batch: pl.DataFrame, fmt: str) -> Encoded:
    """Token ids and learned-token masks of every row of `batch`, as `datamill.train` makes them."""
    from datamill.train.data import APPENDS_EOS, TOKENIZERS

    ids, masks = TOKENIZERS[fmt](tokenizer, batch, {"train_on_prompt": False})
    learned = [np.asarray(mask, dtype=bool) for mask in masks]
    return Encoded(fmt, ids, learned, APPENDS_EOS[fmt])


def scoring_inputs(
    encoded: Encoded, max_tokens: int, response_only: bool = False
) -> tuple[list[list[int]], list[np.ndarray]]:
    """(sequences, loss masks) to score: the records cut to `max_tokens`, or their learned tokens alone."""
    if response_only:
        sequences = [list(np.asarray(ids, dtype=np.int64)[mask][:max_tokens]) for ids, mask in zip(encoded.ids, encoded.learned)]
        masks = [np.arange(len(seq)) >= 1 for seq in sequences]
        return sequences, masks
    sequences = [ids[:max_tokens] for ids in encoded.ids]
    masks = [mask[:max_tokens] & (np.arange(len(seq)) >= 1) for mask, seq in zip(encoded.learned, sequences)]
    return sequences, masks


def record_losses(
    model: Any,
    tokenizer: Any,
    encoded: Encoded,
    *,
    max_tokens: int,
    batch_tokens: int,
    response_only: bool = False,
    per_token: bool = False,
) -> DocumentLosses:
    """Mean loss of each record's learned tokens (given their context, or alone with `response_only`)."""
    sequences, masks = scoring_inputs(encoded, max_tokens, response_only)
    return masked_token_losses(
        model, tokenizer, sequences, masks, batch_tokens=batch_tokens, per_token=per_token
    )


def token_grid(encoded: Encoded, losses: DocumentLosses, max_tokens: int) -> list[np.ndarray]:
    """Each record's per-token losses placed at their token positions (float32, NaN where unscored)."""
    if losses.per_token is None:
        raise ValueError("token_grid needs losses computed with per_token=True")
    _, masks = scoring_inputs(encoded, max_tokens)
    grids = []
    for ids, mask, values in zip(encoded.ids, masks, losses.per_token):
        grid = np.full(len(ids), np.nan, dtype=np.float32)
        grid[np.flatnonzero(mask)] = values
        grids.append(grid)
    return grids


def same_tokenizer(first: Any, second: Any) -> bool:
    """Whether two tokenizers split text into the same ids (vocabulary, merges, special tokens)."""
    first_backend = getattr(first, "backend_tokenizer", None)
    second_backend = getattr(second, "backend_tokenizer", None)
    if first_backend is not None and second_backend is not None:
        return first_backend.to_str() == second_backend.to_str()
    return first.get_vocab() == second.get_vocab()


def require_model(stage: Any, model: Any) -> None:
    if model is None:
        raise RuntimeError(f"stage {stage.name!r}: setup() must load the model before scoring")
