"""Exact deduplication on normalized text across the whole corpus, keeping the first occurrence.

Map: one 64- or 128-bit xxhash per document (16–24 bytes per document travel to the reduce);
reduce: group the hashes of all shards with polars; apply: drop every occurrence but the one with
the smallest dataset position. Deterministic for any number of workers or shards.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import polars as pl
import xxhash
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import DROP_REASON, POSITION, BarrierStage, FilterParams


class ExactDedupParams(FilterParams):
    lowercase: bool = Field(True, description="Compare case-insensitively.")
    whitespace: bool = Field(True, description="Collapse and trim whitespace before comparing.")
    punctuation: bool = Field(False, description="Ignore punctuation and symbols.")
    digits: bool = Field(False, description="Treat every digit as 0 (dates, counters, ids).")
    bits: Literal[64, 128] = Field(64, description="Hash width; 128 makes collisions impossible in practice.")
    seed: int = Field(0, ge=0, description="xxhash seed.")


def normalized_text(text: pl.Expr, p: ExactDedupParams) -> pl.Expr:
    """The comparison key of a document under the configured normalization."""
    if p.lowercase:
        text = text.str.to_lowercase()
    if p.punctuation:
        text = text.str.replace_all(r"[\p{P}\p{S}]+", "")
    if p.digits:
        text = text.str.replace_all(r"\d", "0")
    if p.whitespace:
        text = text.str.replace_all(r"\s+", " ").str.strip_chars()
    return text


@register_stage
class ExactDedup(BarrierStage):
    """Drop documents whose normalized text already occurred earlier in the corpus."""

    type_name = "exact_dedup"
    Params: ClassVar = ExactDedupParams
    outputs = ("exact_dup_count",)

    def _hash_columns(self, keys: pl.Series) -> dict[str, pl.Series]:
        seed, values = self.params.seed, [v.encode("utf-8") for v in keys.to_list()]
        if self.params.bits == 64:
            return {"h0": pl.Series([xxhash.xxh3_64_intdigest(v, seed) for v in values], dtype=pl.UInt64)}
        digests = [xxhash.xxh3_128_intdigest(v, seed) for v in values]
        return {
            "h0": pl.Series([d >> 64 for d in digests], dtype=pl.UInt64),
            "h1": pl.Series([d & 0xFFFFFFFFFFFFFFFF for d in digests], dtype=pl.UInt64),
        }

    def summarize(self, batch: pl.DataFrame) -> pl.DataFrame:
        keys = batch.select(normalized_text(pl.col("text"), self.params)).to_series()
        return pl.DataFrame({POSITION: batch[POSITION], **self._hash_columns(keys)})

    def reduce(self, summaries: pl.LazyFrame) -> pl.DataFrame:
        hash_cols = [c for c in summaries.collect_schema().names() if c.startswith("h")]
        groups = summaries.with_columns(
            pl.len().over(hash_cols).alias("exact_dup_count"),
            (pl.col(POSITION) == pl.col(POSITION).min().over(hash_cols)).alias("_first"),
        )
        return (
            groups.filter(pl.col("exact_dup_count") > 1)
            .select(
                POSITION,
                pl.col("exact_dup_count").cast(pl.UInt32),
                pl.when(pl.col("_first")).then(None).otherwise(pl.lit("exact_duplicate")).alias(DROP_REASON),
            )
            .sort(POSITION)
            .collect()
        )

    def apply(self, batch: pl.DataFrame, decision: pl.DataFrame) -> pl.DataFrame:
        joined = batch.join(decision, on=POSITION, how="left", maintain_order="left")
        return joined.with_columns(pl.col("exact_dup_count").fill_null(1))
