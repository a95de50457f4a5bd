"""Learnability (LoBaSS): how much a short fine-tune of the target model lowers a record's loss.

Zhou et al. 2023, "LoBaSS: Gauging Learnability in Supervised Fine-tuning Data" (arXiv 2310.13008):
data suits a model when fine-tuning makes the model much better at it; LoBaSS scores a sample by
the loss of the model before fine-tuning minus its loss after a short fine-tune, and keeps the
most learnable samples. Raw loss drops are larger for samples with a larger loss to begin with,
so the score is normalized by the model's loss before:

    learnability = (loss_before − loss_after) / loss_before

(a relative drop: comparable across records and across target models of different loss scale).
Columns: `learnability`, `loss_before`, `loss_after` (mean learned-token losses, `scoring.py`).
Null when nothing is scored.

The "after" model is either given (`finetuned`: a checkpoint folder) or made in `setup()` by
`datamill.train` fine-tuning `model` for `finetune.steps` steps on `finetune.data` (a corpus
folder or file, typically a sample of the data being scored). That fine-tune runs once per
configuration: it is cached under `$DATAMILL_CACHE/learnability/<hash>` behind a file lock, so
parallel workers train it once and share it.

Keeping the most learnable records of the whole dataset is a `budget` selection on the
`learnability` column after this stage; `min_learnability` drops records under a fixed value.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from datamill.curate.engine.registry import register_stage
from datamill.curate.models.params import causal_lm_problem
from datamill.curate.selection.scoring import (
    LMScoreParams, encode_records, record_losses, require_model, resolve_format, same_tokenizer,
)
from datamill.curate.engine.stage import Filter, Resources


class FinetuneSpec(BaseModel):
    """A short fine-tune of the target model with `datamill.train`."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(..., description="Corpus to fine-tune on: a run dir, or a folder/file of parquet or jsonl records.")
    steps: int = Field(50, ge=1, description="Optimizer steps.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (cosine schedule, warmup 10% of the steps).")
    seq_len: int = Field(512, ge=8, description="Tokens per packed row.")
    micro_batch_size: int = Field(4, ge=1)
    seed: int = 0


class LearnabilityParams(LMScoreParams):
    finetuned: str | None = Field(None, description="The model after fine-tuning (folder); or give `finetune`.")
    finetune: FinetuneSpec | None = Field(None, description="Fine-tune `model` briefly to get the after-model.")
    min_learnability: float | None = Field(None, description="Drop records whose learnability is below this.")

    def check_paths(self, base_dir: str) -> list[str]:
        problems = list(super().check_paths(base_dir))
        if self.finetuned is not None:  # a local folder or a URL (copied once into the cache)
            problems += causal_lm_problem("finetuned", self.finetuned)
        if self.finetune is not None and not Path(self.finetune.data).expanduser().exists():
            problems.append(f"finetune.data: {self.finetune.data!r} does not exist")
        return problems

    @model_validator(mode="after")
    def _one_after_model(self):
        if (self.finetuned is None) == (self.finetune is None):
            raise ValueError("give exactly one of finetuned (a fine-tuned model folder) or finetune (data to fine-tune on)")
        return self


@register_stage
class Learnability(Filter):
    """Scores `learnability` = relative loss drop of a record after a short fine-tune of the target model."""

    type_name: ClassVar[str] = "learnability"
    Params: ClassVar[type[LearnabilityParams]] = LearnabilityParams
    inputs: ClassVar[tuple[str, ...]] = ("text", "prompt", "completion", "messages")
    outputs: ClassVar[tuple[str, ...]] = ("learnability", "loss_before", "loss_after")
    resources: ClassVar[Resources] = Resources(cpus=1, gpus=0)

    params: LearnabilityParams
    before: Any = None
    after: Any = None
    tokenizer: Any = None

    def setup(self) -> None:
        from datamill.curate.models.resolve import load_causal_lm

        p = self.params
        after_path = p.finetuned if p.finetune is None else str(finetune_once(p.model, p.finetune))
        self.before, self.tokenizer = load_causal_lm(p.model, dtype=p.torch_dtype())
        self.after, after_tokenizer = load_causal_lm(after_path, dtype=p.torch_dtype())
        if not same_tokenizer(self.tokenizer, after_tokenizer):
            raise ValueError(f"stage {self.name!r}: {after_path} does not use {p.model}'s tokenizer")

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        require_model(self, self.before)
        p = self.params
        encoded = encode_records(self.tokenizer, batch, resolve_format(batch.columns, p.format, self.name))
        options = dict(max_tokens=p.max_tokens, batch_tokens=p.batch_tokens)
        before = record_losses(self.before, self.tokenizer, encoded, **options).mean_loss
        after = record_losses(self.after, self.tokenizer, encoded, **options).mean_loss
        with np.errstate(invalid="ignore", divide="ignore"):
            learnability = np.where(before > 0, (before - after) / before, np.nan)
        return batch.with_columns(
            pl.Series("learnability", learnability, dtype=pl.Float64).fill_nan(None),
            pl.Series("loss_before", before, dtype=pl.Float64).fill_nan(None),
            pl.Series("loss_after", after, dtype=pl.Float64).fill_nan(None),
        )

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        if self.params.min_learnability is None:
            return []
        return [("learnability_too_low", pl.col("learnability") < self.params.min_learnability)]


def finetune_once(model: str, spec: FinetuneSpec) -> Path:
    """The final folder of `model` fine-tuned as `spec` says, trained on first use and cached."""
    from filelock import FileLock

    from datamill.curate.models.resolve import cache_dir, resolve_model
    from datamill.train import train
    from datamill.train.data import corpus_files

    model_dir = resolve_model(model)
    files = corpus_files(spec.data)
    listing = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = hashlib.sha256(json.dumps(
        {"model": str(model_dir.resolve()), "data": listing, "spec": spec.model_dump()}, sort_keys=True
    ).encode()).hexdigest()[:16]
    root = cache_dir() / "learnability"
    out_dir = root / key
    final = out_dir / "final"
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):
        if not (final / "config.json").is_file():
            train({
                "data": {"path": str(spec.data), "eval_holdout": 0.0, "cache_dir": str(out_dir / "tokens")},
                "model": {"path": str(model_dir)},
                "out_dir": str(out_dir), "seq_len": spec.seq_len, "micro_batch_size": spec.micro_batch_size,
                "max_steps": spec.steps, "seed": spec.seed, "eval_every": 0, "checkpoint_every": 0,
                "resume": False, "progress": False, "tensorboard": False, "compile": False,
                "optim": {"lr": spec.lr, "warmup_steps": max(1, spec.steps // 10), "min_lr_ratio": 0.1},
            })
    return final
