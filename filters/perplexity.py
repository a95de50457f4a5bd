"""Perplexity under a small causal LM as a Filter: drop text the model finds too surprising (or too predictable).

Each document gets `ppl` (exp of its mean token loss over its first `max_tokens` tokens) and
`ppl_tokens` (how many tokens were scored). Documents with no scorable token (empty, or one
token) keep a null `ppl` and are never dropped. Thresholds are fixed numbers, so a document's
fate does not depend on which batch or worker it lands in; keeping a percentile band of the
whole dataset is a ranking decision and belongs to the selection stages, which see every row.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter, Resources
from datamill.curate.models.params import CausalLMParams


CPU_BATCH_TOKENS = 512
"""Default tokens per forward pass on CPU. On CPU a forward pass is compute-bound and large padded
batches fall out of cache: on the 2-core box (best of two interleaved runs, 30 real documents of
up to 256 tokens) the plain per-document loop took 9.8 s, batches of 256/512/1024 tokens 5.9/6.2/
6.5 s, and 4096 or 16384 tokens 3x longer than the loop. Batching buys little on CPU; it is the
GPU's default that amortizes kernel launches."""
GPU_BATCH_TOKENS = 16384


class PerplexityParams(CausalLMParams):
    batch_tokens: int | None = Field(
        None,
        ge=1,
        description=f"Tokens (rows × padded length) per forward pass; default {CPU_BATCH_TOKENS} on CPU, "
        f"{GPU_BATCH_TOKENS} on a GPU. Lower it if memory runs out.",
    )
    max_ppl: float | None = Field(None, gt=0, description="Drop documents with a higher perplexity.")
    min_ppl: float | None = Field(
        None, gt=0, description="Drop documents with a lower perplexity (boilerplate, repeated lines)."
    )
    @model_validator(mode="after")
    def _bounds_ordered(self):
        if self.min_ppl is not None and self.max_ppl is not None and self.min_ppl > self.max_ppl:
            raise ValueError(f"min_ppl={self.min_ppl} is larger than max_ppl={self.max_ppl}")
        return self


@register_stage
class PerplexityFilter(Filter):
    """Scores `ppl` with a causal LM (GPU when the worker has one) and drops documents outside the bounds."""

    type_name: ClassVar[str] = "perplexity"
    Params: ClassVar[type[PerplexityParams]] = PerplexityParams
    outputs: ClassVar[tuple[str, ...]] = ("ppl", "ppl_tokens")
    resources: ClassVar[Resources] = Resources(cpus=1, gpus=0)
    """Runs on CPU; uses a GPU when the executor places it where one is visible."""

    params: PerplexityParams
    model: Any = None
    tokenizer: Any = None

    def setup(self) -> None:
        from datamill.curate.models.resolve import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(self.params.model, dtype=self.params.torch_dtype())

    def facts(self) -> dict[str, int]:
        """Which precision scored (auto picks bfloat16 where the device computes it natively)."""
        if self.model is None:
            return {}
        return {f"scored_in_{str(next(self.model.parameters()).dtype).removeprefix('torch.')}": 1}

    def batch_tokens(self) -> int:
        """`batch_tokens`, or the default for the device the model sits on."""
        if self.params.batch_tokens is not None:
            return self.params.batch_tokens
        on_gpu = self.model is not None and next(self.model.parameters()).device.type != "cpu"
        return GPU_BATCH_TOKENS if on_gpu else CPU_BATCH_TOKENS

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        from datamill.curate.models.lm_scoring import token_losses

        if self.model is None:
            raise RuntimeError(f"stage {self.name!r}: setup() must load the model before scoring")
        scores = token_losses(
            self.model,
            self.tokenizer,
            batch["text"].to_list(),
            max_tokens=self.params.max_tokens,
            batch_tokens=self.batch_tokens(),
        )
        return batch.with_columns(
            pl.Series("ppl", scores.perplexity, dtype=pl.Float64).fill_nan(None),
            pl.Series("ppl_tokens", scores.tokens.astype(np.int64), dtype=pl.Int64),
        )

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        rules = []
        if self.params.max_ppl is not None:
            rules.append(("perplexity_too_high", pl.col("ppl") > self.params.max_ppl))
        if self.params.min_ppl is not None:
            rules.append(("perplexity_too_low", pl.col("ppl") < self.params.min_ppl))
        return rules
