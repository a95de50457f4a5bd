"""DSIR (Xie et al. 2023): select raw documents that look like a target set, by importance resampling.

Method, as in the paper and its `data-selection` package (`HashedNgramDSIR`):
- Features: hashed unigram+bigram counts, 10,000 buckets (see `hashed_ngrams.py`).
- Fit: a multinomial over buckets for the target texts and one for the raw texts (counts / total;
  `smoothing` adds a pseudo-count to every bucket first, 0 like the package), and the table
  `log_diff = log(p_target + 1e-8) − log(p_raw + 1e-8)` (the package's epsilon).
- Weight: `dsir_logw = Σ count(bucket) · log_diff[bucket]` = log p_target(x) − log p_raw(x).
- Resample: documents with fewer than `min_words` WordPunct tokens are left out (the package's
  `min_example_length`, default 100); the rest are ranked by `dsir_logw + Gumbel noise` and the top
  of the ranking within the budget is kept (Gumbel top-k = sampling without replacement with
  probability ∝ importance weight); `sampling: top_k` ranks by `dsir_logw` alone.

Differences from the package: the raw model is fit on all raw documents (the package stops at
10⁵ × buckets tokens), and the Gumbel noise is a hash of the record `id` and the seed, so the same
recipe selects the same documents however the corpus is sharded or run. Buckets and weights are
the package's (SHA-256 buckets, same tokenizer; `bench/bench_dsir.py` checks them).

As a recipe stage (`type: dsir`) it is a barrier: `summarize` hashes each shard's documents (the
summary keeps their bucket lists: about 4 bytes per word, the price of scoring after the global
fit), `reduce` fits both models, scores and ranks every document, `apply` joins the decision.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from datamill.curate.engine.records import TOKENS
from datamill.curate.engine.registry import register_stage, source_types
from datamill.curate.selection.hashed_ngrams import (
    DEFAULT_BUCKETS,
    DEFAULT_NGRAMS,
    bucket_counts,
    ngram_buckets,
    sum_by_document,
)
from datamill.curate.selection.ranking import (
    SELECTED, Budget, RankingBarrier, RankPlan, gumbel_noise, select_by_rank,
)
from datamill.curate.selection.ranking_partitions import group_stats
from datamill.curate.engine.stage import POSITION, FilterParams

LOGW = "dsir_logw"
EPSILON = 1e-8
"""Added to both probabilities before the log, as the data-selection package does."""
READ_BATCH_ROWS = 10_000
_BUCKETS, _WORDS, _NOISE, _COUNTS = "_dsir_buckets", "_dsir_words", "_dsir_noise", "_dsir_counts"


class HashedNgramDSIR:
    """DSIR on hashed n-gram features: `fit` two bag-of-words models, `compute_weights`, `resample`."""

    def __init__(self, num_buckets: int = DEFAULT_BUCKETS, ngrams: int = DEFAULT_NGRAMS, smoothing: float = 0.0):
        self.num_buckets, self.ngrams, self.smoothing = num_buckets, ngrams, smoothing
        self.log_diff: np.ndarray | None = None

    def features(self, texts: pl.Series | list[str]) -> pl.Series:
        """Bucket ids of every n-gram of every text (see `hashed_ngrams.ngram_buckets`)."""
        return ngram_buckets(pl.Series(texts, dtype=pl.String), self.num_buckets, self.ngrams)

    def counts(self, texts: pl.Series | list[str]) -> np.ndarray:
        return bucket_counts(self.features(texts), self.num_buckets)

    def fit(self, raw_counts: np.ndarray, target_counts: np.ndarray) -> HashedNgramDSIR:
        """Fit from bucket count vectors (`counts(...)`, summed over any number of batches)."""
        for name, counts in (("raw", raw_counts), ("target", target_counts)):
            if counts.shape != (self.num_buckets,):
                raise ValueError(f"{name} counts have shape {counts.shape}, expected ({self.num_buckets},)")
            if counts.sum() + self.smoothing * self.num_buckets <= 0:
                raise ValueError(f"the {name} texts have no words: nothing to fit")
        self.log_diff = np.log(self._probs(target_counts) + EPSILON) - np.log(self._probs(raw_counts) + EPSILON)
        return self

    def fit_texts(self, raw: pl.Series | list[str], target: pl.Series | list[str]) -> HashedNgramDSIR:
        return self.fit(self.counts(raw), self.counts(target))

    def _probs(self, counts: np.ndarray) -> np.ndarray:
        smoothed = counts.astype(np.float64) + self.smoothing
        return smoothed / smoothed.sum()

    def compute_weights(self, texts_or_features: pl.Series | list[str]) -> np.ndarray:
        """log p_target(x) − log p_raw(x) per document (float64)."""
        if self.log_diff is None:
            raise RuntimeError("call fit() before compute_weights()")
        features = texts_or_features
        if not (isinstance(features, pl.Series) and features.dtype.base_type() == pl.List):
            features = self.features(texts_or_features)
        return sum_by_document(features, self.log_diff)

    @staticmethod
    def resample(log_weights: np.ndarray, k: int, *, ids: pl.Series | list[str] | None = None,
                 seed: int = 0, top_k: bool = False, eligible: np.ndarray | None = None) -> np.ndarray:
        """Indices of `k` documents: Gumbel top-k on the log-weights (or plain top-k), best first.

        The noise is a seeded hash of `ids` (default: the row numbers as text), so it is
        reproducible; `eligible` (bool) leaves documents out, e.g. too-short ones.
        """
        n = len(log_weights)
        ids = pl.Series("id", ids if ids is not None else np.arange(n).astype(str), dtype=pl.String)
        table = pl.DataFrame({"w": log_weights, "id": ids, POSITION: np.arange(n, dtype=np.int64)})
        key = pl.col("w") if top_k else pl.col("w") + gumbel_noise("id", seed)
        if eligible is not None:
            key = pl.when(pl.Series(eligible)).then(key)
        ranked = select_by_rank(table.with_columns(key.alias("_key")), "_key", Budget(count=k))
        return ranked.filter(SELECTED)[POSITION].to_numpy()


def read_texts(entry: dict[str, Any], base_dir: str = ".", what: str = "target") -> pl.Series:
    """Every non-blank text of one recipe source entry (any registered source type)."""
    types = source_types()
    params = types[entry["type"]].Params.model_validate(entry)
    source = types[params.type](params, index=0, base_dir=base_dir)
    parts = []
    try:
        for shard in source.plan():
            for batch in source.read(shard, READ_BATCH_ROWS):
                parts.append(batch.records["text"])
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{what} source {entry.get('path') or entry['type']!r}: cannot read it: {err}") from err
    texts = pl.concat(parts) if parts else pl.Series("text", [], dtype=pl.String)
    return texts.filter(texts.is_not_null() & (texts.str.strip_chars() != ""))


class DsirParams(FilterParams):
    target: list[dict[str, Any]] = Field(
        min_length=1,
        description="Texts to look like: one source entry, or a list, exactly like the recipe's `sources` "
        "(e.g. {type: jsonl, path: target/*.jsonl}).",
    )
    budget: Budget = Field(description="How much to keep: {count|fraction|tokens: n}, or a bare number.")
    sampling: Literal["gumbel", "top_k"] = Field(
        "gumbel", description="gumbel: importance resampling without replacement (DSIR); top_k: the highest weights."
    )
    num_buckets: int = Field(DEFAULT_BUCKETS, ge=16, le=1 << 24, description="Hash buckets (data-selection: 10000).")
    ngrams: int = Field(DEFAULT_NGRAMS, ge=1, le=5, description="Longest n-gram (2: unigrams and bigrams).")
    min_words: int = Field(
        100, ge=0, description="Documents with fewer WordPunct tokens are never selected (data-selection: 100)."
    )
    smoothing: float = Field(0.0, ge=0, description="Pseudo-count added to every bucket of both models.")

    @field_validator("target", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("target")
    @classmethod
    def _known_sources(cls, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        types = source_types()
        for i, entry in enumerate(entries):
            kind = entry.get("type")
            if kind not in types:
                raise ValueError(f"target[{i}]: source type {kind!r} is not known; known types: {', '.join(types)}")
            types[kind].Params.model_validate(entry)
        return entries


@register_stage
class Dsir(RankingBarrier):
    """Keep a budget of documents resampled by importance weight towards a target set (DSIR)."""

    type_name = "dsir"
    Params: ClassVar = DsirParams
    outputs = (LOGW,)
    carried = (LOGW,)
    reason = "dsir_not_selected"
    params: DsirParams

    def __init__(self, params: DsirParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        """Folder relative target paths are resolved against."""
        p = self.params
        self.model = HashedNgramDSIR(p.num_buckets, p.ngrams, p.smoothing)

    def summarize(self, batch: pl.DataFrame) -> pl.DataFrame:
        buckets = self.model.features(batch["text"])
        return pl.DataFrame({POSITION: batch[POSITION], _BUCKETS: buckets}).with_columns(
            batch[TOKENS] if TOKENS in batch.columns else pl.lit(0, dtype=pl.Int64).alias(TOKENS),
            gumbel_noise(batch["id"], self.seed).alias(_NOISE),
            self._word_count(buckets).alias(_WORDS),
        )

    def _word_count(self, buckets: pl.Series) -> pl.Series:
        """Unigrams in a list of 1..n-grams of w words: w + (w−1) + … ⇒ invert the package's way."""
        n = self.params.ngrams
        total = buckets.list.len().cast(pl.Int64)
        return ((total + n * (n - 1) // 2) // n).cast(pl.UInt32)

    def ranking(self, table: pl.DataFrame) -> pl.DataFrame:
        return select_by_rank(self.scored(table.sort(POSITION), None), "_key", self.params.budget)

    def rank_plan(self) -> RankPlan:
        return RankPlan("_key", descending=True, budget=self.params.budget)

    def rank_stats(self, summary: pl.DataFrame) -> pl.DataFrame:
        """Rows and least token count, and the shard's raw bucket counts (the raw model is fit on all)."""
        counts = bucket_counts(summary[_BUCKETS], self.params.num_buckets)
        return group_stats(summary.select(POSITION, TOKENS), self.rank_plan()).with_columns(
            pl.Series(_COUNTS, [counts.tolist()], dtype=pl.List(pl.Int64)))

    def scored(self, table: pl.DataFrame, stats: pl.DataFrame | None) -> pl.DataFrame:
        """`dsir_logw` and the ranking key `_key` of every row, by the model fit on the whole
        corpus (its bucket counts summed over `stats`, or over `table` when that is the corpus)."""
        if stats is None:
            raw = bucket_counts(table[_BUCKETS], self.params.num_buckets)
        else:
            raw = np.asarray(stats[_COUNTS].to_list(), dtype=np.int64).sum(axis=0)
        target = pl.concat([read_texts(entry, self.base_dir) for entry in self.params.target])
        if target.len() == 0:
            raise ValueError(f"stage {self.name!r}: the target sources hold no text")
        model = self.model.fit(raw, self.model.counts(target))
        logw = model.compute_weights(table[_BUCKETS]) if table.height else np.zeros(0)
        key = pl.col(LOGW) if self.params.sampling == "top_k" else pl.col(LOGW) + pl.col(_NOISE)
        eligible = pl.col(_WORDS) >= self.params.min_words
        scored = table.select(POSITION, TOKENS, _WORDS, _NOISE).with_columns(pl.Series(LOGW, logw, dtype=pl.Float64))
        return scored.with_columns(pl.when(eligible).then(key).alias("_key"))
