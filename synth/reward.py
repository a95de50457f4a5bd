"""Reward-model scoring: a local AutoModelForSequenceClassification folder scores (prompt, response), batched.

The conversation is rendered with the reward model's chat template when its tokenizer has one
(user turn, assistant turn: what UltraRM / Skywork / ArmoRM-style models expect), else as
"prompt\\n\\nresponse". Pairs are sorted by length and scored `batch_size` at a time, padded on the
tokenizer's side and cut to `max_length` (keeping the start); the score is the model's single
logit (num_labels 1), or logit[1] - logit[0] for a two-label classifier. Column `reward`;
`min_reward` drops lower ones (reason `low_reward`).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import polars as pl
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter, FilterParams, Resources
from datamill.synth.templates import chats_from_batch


class RewardModel:
    """A sequence-classification reward model loaded once; `score(prompts, responses)` → float array."""

    def __init__(self, path: str, batch_size: int = 16, max_length: int = 2048, device: str | None = None,
                 dtype: str = "auto"):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from datamill.curate.models.resolve import default_device, resolve_model

        folder = resolve_model(path)
        self.device = device or default_device()
        torch_dtype = {"auto": torch.bfloat16 if self.device.startswith("cuda") else torch.float32,
                       "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch_dtype,
                                                                        local_files_only=True).to(self.device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length = batch_size, max_length
        self.model_id = f"reward:{folder.name}"

    def texts(self, chats: list[list[dict[str, str]]], responses: list[str]) -> list[str]:
        if getattr(self.tokenizer, "chat_template", None):
            return [self.tokenizer.apply_chat_template([*chat, {"role": "assistant", "content": r}], tokenize=False)
                    for chat, r in zip(chats, responses)]
        return ["\n\n".join(m["content"] for m in chat) + "\n\n" + r for chat, r in zip(chats, responses)]

    def score(self, chats: list[list[dict[str, str]]], responses: list[str]) -> np.ndarray:
        import torch

        texts = self.texts(chats, responses)
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        out = np.zeros(len(texts), np.float64)
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits.float()
                scores = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
                out[rows] = scores.cpu().numpy()
        return out


class RewardParams(FilterParams):
    model: str = Field(description="A local AutoModelForSequenceClassification folder (a reward model).")
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(2048, ge=8, description="Tokens per (prompt, response), the start kept.")
    device: str | None = None
    dtype: str = Field("auto", pattern="^(auto|float32|bfloat16)$")
    response_column: str | None = Field(None, description="The response (default: completion, output or the last "
                                        "assistant message).")
    min_reward: float | None = Field(None, description="Drop rows with a lower reward.")


@register_stage
class RewardStage(Filter):
    """Reward-model score of each (prompt, response), batched; column `reward`."""

    type_name = "reward"
    Params = RewardParams
    inputs: ClassVar[tuple[str, ...]] = ("messages", "prompt", "completion", "instruction", "output")
    outputs: ClassVar[tuple[str, ...]] = ("reward",)
    resources = Resources(cpus=1.0, gpus=0.0, batch_rows=256)

    def setup(self) -> None:
        from pathlib import Path

        p = self.params
        path = Path(p.model).expanduser()
        if not path.is_absolute() and (Path(self.base_dir) / path).exists():
            path = Path(self.base_dir) / path
        self.model = RewardModel(str(path), p.batch_size, p.max_length, p.device, p.dtype)

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        chats, answers = chats_from_batch(batch)
        if self.params.response_column is not None:
            answers = batch[self.params.response_column].to_list()
        missing = [i for i, a in enumerate(answers) if a is None]
        if missing:
            raise ValueError(f"{self.name}: record {batch['id'][missing[0]] if 'id' in batch.columns else missing[0]} "
                             "has no response to score")
        rewards = self.model.score(chats, answers)
        return batch.with_columns(pl.Series("reward", rewards, dtype=pl.Float64),
                                  pl.lit(self.model.model_id).alias("reward_model"))

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        if self.params.min_reward is None:
            return []
        return [("low_reward", pl.col("reward") < self.params.min_reward)]
