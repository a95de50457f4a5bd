"""Per-document language-model losses for many texts at once: the core of perplexity and IFD scoring.

`token_losses` tokenizes every text, sorts the documents by token length and packs them into
batches of at most `batch_tokens` (rows × padded length), so that documents of similar length
share a batch and little compute goes to padding; results come back in the input order. The
loss is computed from the decoder's hidden states through the output layer a chunk of tokens at
a time (chunked cross-entropy), so the (batch × length × vocabulary) logits tensor is never
materialized; only `chunk_tokens` × vocabulary float32 logits exist at once.

With `prompts`, each text is a completion of its prompt: the model reads prompt + completion,
and only the completion's tokens are scored (the loss of `text` given `prompt`, as IFD needs).
Sequences longer than `max_tokens` are cut on the right (a prompt that fills `max_tokens`
leaves no completion token: that document's loss is NaN with 0 tokens).
`masked_token_losses` is the same engine for sequences tokenized by the caller, with any per-token
loss mask (chat replies given the conversation, see `curate/selection/scoring.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LOGITS_BUDGET = 2**25
"""Default logits elements per chunk (128 MiB of float32): chunk_tokens = budget // vocab size."""
MAX_CHARS_PER_TOKEN = 32
"""Texts are cut to max_tokens × this many characters before tokenizing, so that a megabyte
document is not tokenized in full to keep its first few hundred tokens."""
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
"""Config fields of models whose logits are more than the output layer's product."""


@dataclass(frozen=True)
class DocumentLosses:
    """Scores of each input document, in input order."""

    mean_loss: np.ndarray
    """float64 mean cross-entropy (nats) over the scored tokens; NaN where no token was scored."""
    tokens: np.ndarray
    """int64 number of scored tokens (a text's first token is never scored: nothing predicts it)."""
    per_token: list[np.ndarray] | None = None
    """float32 loss of each scored token, when asked for."""

    @property
    def perplexity(self) -> np.ndarray:
        return np.exp(self.mean_loss)


def token_losses(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_tokens: int = 1024,
    batch_tokens: int = 16384,
    prompts: Sequence[str] | None = None,
    per_token: bool = False,
    chunk_tokens: int | None = None,
) -> DocumentLosses:
    """Mean token loss of each text under `model` (of each text given its prompt, with `prompts`)."""
    if prompts is not None and len(prompts) != len(texts):
        raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts")
    if max_tokens < 2:
        raise ValueError("max_tokens must be at least 2: a loss needs a token and its successor")
    sequences, first_scored = _encode(tokenizer, texts, prompts, max_tokens)
    masks = [np.arange(len(ids)) >= first for ids, first in zip(sequences, first_scored)]
    return masked_token_losses(
        model, tokenizer, sequences, masks, batch_tokens=batch_tokens, per_token=per_token, chunk_tokens=chunk_tokens
    )


def masked_token_losses(
    model: Any,
    tokenizer: Any,
    sequences: Sequence[Sequence[int]],
    loss_masks: Sequence[np.ndarray],
    *,
    batch_tokens: int = 16384,
    per_token: bool = False,
    chunk_tokens: int | None = None,
) -> DocumentLosses:
    """Mean loss of the tokens of each pre-tokenized sequence whose `loss_masks` entry is true.

    `loss_masks[i][t]` true means "the loss of predicting token t counts"; position 0 never counts
    (nothing predicts it). Sequences are scored whole: cut them to the length you want first.
    `per_token` returns the losses of the counted positions, in position order.
    """
    import torch

    if len(loss_masks) != len(sequences):
        raise ValueError(f"{len(loss_masks)} loss masks for {len(sequences)} sequences")
    head = _output_layer(model)
    if chunk_tokens is None:
        chunk_tokens = max(1, LOGITS_BUDGET // head.out_features)
    lengths = np.array([len(ids) for ids in sequences], dtype=np.int64)
    for i, (ids, mask) in enumerate(zip(sequences, loss_masks)):
        if len(mask) != len(ids):
            raise ValueError(f"sequence {i}: loss mask has {len(mask)} entries for {len(ids)} tokens")
    n = len(sequences)
    loss_sum = np.zeros(n, dtype=np.float64)
    counts = np.zeros(n, dtype=np.int64)
    token_lists: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * n
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for rows in length_sorted_batches(lengths, batch_tokens):
            ids, scored = _pad(sequences, loss_masks, lengths, rows, pad_id)
            ids_t = torch.from_numpy(ids).to(device)
            # no attention mask: rows are right-padded and attention is causal, so no real token
            # ever sees a pad; without a mask the model takes its plain causal attention path
            # (SDPA's is_causal kernels) instead of building and applying a padded 4-D mask
            hidden = model.base_model(input_ids=ids_t).last_hidden_state
            row_of, col_of = np.nonzero(scored[:, 1:])  # hidden at column c predicts the token at c + 1
            positions = torch.from_numpy(col_of).to(device)
            picked = hidden[torch.from_numpy(row_of).to(device), positions]
            targets = ids_t[torch.from_numpy(row_of).to(device), positions + 1]
            losses = chunked_cross_entropy(head, picked, targets, chunk_tokens).cpu().numpy()
            batch_counts = np.bincount(row_of, minlength=len(rows))
            loss_sum[rows] = np.bincount(row_of, weights=losses.astype(np.float64), minlength=len(rows))
            counts[rows] = batch_counts
            if per_token:
                for row, part in zip(rows, np.split(losses, np.cumsum(batch_counts)[:-1])):
                    token_lists[row] = part
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, loss_sum / np.maximum(counts, 1), np.nan)
    return DocumentLosses(mean, counts, token_lists if per_token else None)


def chunked_cross_entropy(head: Any, hidden: Any, targets: Any, chunk_tokens: int) -> Any:
    """Per-token float32 cross-entropy of `head(hidden)` against `targets`, `chunk_tokens` rows at a time."""
    import torch
    import torch.nn.functional as F

    losses = torch.empty(targets.shape[0], dtype=torch.float32, device=targets.device)
    for start in range(0, targets.shape[0], chunk_tokens):
        end = start + chunk_tokens
        logits = head(hidden[start:end]).float()
        losses[start:end] = F.cross_entropy(logits, targets[start:end], reduction="none")
    return losses


def length_sorted_batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Row indices grouped into batches, longest documents first, each batch's rows × its longest
    length at most `batch_tokens` (a longer document gets a batch of its own)."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, batch_tokens // longest)
        batches.append(order[start : start + size])
        start += size
    return batches


def _encode(
    tokenizer: Any, texts: Sequence[str], prompts: Sequence[str] | None, max_tokens: int
) -> tuple[list[list[int]], np.ndarray]:
    """Token ids of each (prompt +) text cut to `max_tokens`, and the index of each one's first
    scored token (1 without prompts, the first completion token with them)."""
    char_limit = max_tokens * MAX_CHARS_PER_TOKEN
    cut = {"truncation": True, "max_length": max_tokens, "return_attention_mask": False}
    clipped = [text[:char_limit] for text in texts]
    if prompts is None:
        sequences = tokenizer(clipped, add_special_tokens=True, **cut)["input_ids"]
        return sequences, np.ones(len(sequences), dtype=np.int64)
    prompt_ids = tokenizer([p[:char_limit] for p in prompts], add_special_tokens=True, **cut)["input_ids"]
    completion_ids = tokenizer(clipped, add_special_tokens=False, **cut)["input_ids"]
    sequences = [(p + c)[:max_tokens] for p, c in zip(prompt_ids, completion_ids)]
    first_scored = np.array([max(len(p), 1) for p in prompt_ids], dtype=np.int64)
    return sequences, first_scored


def _pad(
    sequences: Sequence[Sequence[int]], loss_masks: Sequence[np.ndarray], lengths: np.ndarray, rows: np.ndarray,
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int64 ids of `rows`, and the mask of token positions whose loss counts."""
    width = max(int(lengths[rows].max()), 1)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    scored = np.zeros((len(rows), width), dtype=bool)
    for i, row in enumerate(rows):
        ids[i, : lengths[row]] = sequences[row]
        scored[i, : lengths[row]] = loss_masks[row]
    return ids, scored


def _output_layer(model: Any) -> Any:
    """The linear layer that maps hidden states to logits, refusing models that transform logits further."""
    for field in _LOGIT_TRANSFORMS:
        value = getattr(model.config, field, None)
        if value not in (None, 1, 1.0):
            raise ValueError(
                f"{type(model).__name__} post-processes its logits ({field}={value}); "
                "chunked scoring supports models whose logits are the output layer's product"
            )
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "out_features"):
        raise ValueError(f"{type(model).__name__} has no linear output layer to score with")
    return head
