"""The model being trained: a Hugging Face causal LM (a preset from scratch, or loaded by path), its
tokenizer, and `LossModel`, which runs it on packed rows and returns the weighted loss sum.

Documents packed into one row must not see each other, so the attention mask is built from the
per-token document ids and passed to the model ready-made: a block-causal boolean mask
[batch, 1, seq, seq] for sdpa/eager, or a block-sparse flex-attention BlockMask on CUDA (which
skips the masked blocks instead of computing and discarding them).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from datamill.train.loss import linear_cross_entropy, topk_kd_loss
from datamill.train.presets import llama_config

DEFAULT_TOKENIZER = "smollm2-135m"


def local_model_dir(name_or_path: str) -> Path:
    from datamill.curate.models.resolve import resolve_model

    return resolve_model(name_or_path)


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(local_model_dir(name_or_path), local_files_only=True)


def build_model(model_cfg, tokenizer, attention: str, seed: int) -> nn.Module:
    """A float32 causal LM: the preset initialized from `seed`, or the pretrained weights at path."""
    from transformers import AutoModelForCausalLM

    if model_cfg.path is not None:
        return AutoModelForCausalLM.from_pretrained(local_model_dir(model_cfg.path), dtype=torch.float32,
                                                    attn_implementation=attention, local_files_only=True)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = llama_config(model_cfg.preset, len(tokenizer), model_cfg.overrides, special)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=torch.float32)


def block_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """[batch, 1, seq, seq] bool: query i may attend key j iff j <= i and both are in one document."""
    seq = doc_ids.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=doc_ids.device).tril()
    return ((doc_ids[:, :, None] == doc_ids[:, None, :]) & causal)[:, None]


def document_block_mask(doc_ids: torch.Tensor):
    """The same mask as a flex-attention BlockMask (block-sparse: whole masked blocks are skipped)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_document_causal(b, h, q, k):
        return (k <= q) & (doc_ids[b, q] == doc_ids[b, k])

    batch, seq = doc_ids.shape
    return create_block_mask(same_document_causal, batch, None, seq, seq, device=doc_ids.device)


def attention_mask_for(doc_ids: torch.Tensor, attention: str):
    if attention == "flex_attention":
        return document_block_mask(doc_ids)
    allowed = block_causal_mask(doc_ids)
    if attention == "eager":  # eager attention adds its mask to the scores
        return torch.zeros(allowed.shape, device=doc_ids.device).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return allowed


class LossModel(nn.Module):
    """A causal LM on packed rows → Σ weight·CE over the rows' targets (a scalar).

    The decoder gives hidden states; the loss projects them onto the vocabulary chunk by chunk
    (see loss.py) rather than calling the LM head on every position at once."""

    def __init__(self, lm: nn.Module, use_liger: bool = False):
        super().__init__()
        self.lm = lm
        self.use_liger = use_liger

    def forward(self, input_ids, position_ids, attention_mask, targets, weights, binary_weights: bool = False,
                teacher_ids=None, teacher_logprobs=None, kd_weights=None):
        """Σ weight·CE; with teacher top-k tensors, the pair (Σ weight·CE, Σ weight·KL to the teacher)."""
        hidden = self.lm.base_model(input_ids=input_ids, position_ids=position_ids,
                                    attention_mask=attention_mask, use_cache=False).last_hidden_state
        head = self.lm.get_output_embeddings()
        ce = linear_cross_entropy(hidden.flatten(0, 1), head.weight, targets.flatten(), weights.flatten(),
                                  binary_weights=binary_weights, use_liger=self.use_liger)
        if teacher_ids is None:
            return ce
        kd = topk_kd_loss(hidden.flatten(0, 1), head.weight, teacher_ids.flatten(0, 1),
                          teacher_logprobs.flatten(0, 1), kd_weights.flatten())
        return ce, kd
