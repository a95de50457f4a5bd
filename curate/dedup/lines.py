"""Line-level boilerplate removal across documents (CCNet / Dolma style).

A line (or paragraph) whose normalized text occurs in more than `max_documents` documents of the
whole corpus is boilerplate — navigation, cookie notices, license headers — and is removed from
every document that has it; a document left with no text is dropped.

Map: per document, the distinct 64-bit hashes of its lines (8 bytes + position per line travel to
the reduce; lines shorter than `min_chars` are never counted nor removed). Reduce: count documents
per hash with polars and keep the hashes over the limit; that set is small and goes to every
shard. Apply: split, hash, drop the listed lines, join again. Hashes use polars' `hash`, stable
within one polars version (a run and its resume use the same one).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import polars as pl
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import DROP_REASON, POSITION, BarrierStage, FilterParams

HASH = "_line_hash"
PARAGRAPH_BREAK = r"\r?\n[ \t\r]*\n\s*"
"""A blank line between paragraphs: `\n\n`, `\r\n\r\n`, or with spaces on the blank line."""


class LineDedupParams(FilterParams):
    unit: Literal["line", "paragraph"] = Field("line", description="Split on newlines or on blank lines.")
    max_documents: int = Field(
        5, ge=1, description="A line found in more documents than this is boilerplate everywhere."
    )
    min_chars: int = Field(10, ge=1, description="Shorter lines (after normalization) are left alone.")
    lowercase: bool = Field(True, description="Compare lines case-insensitively.")


@register_stage
class LineDedup(BarrierStage):
    """Remove lines or paragraphs repeated across many documents; drop documents left empty."""

    type_name = "line_dedup"
    Params: ClassVar = LineDedupParams
    outputs = ("text", "boilerplate_lines_removed")

    def _separator(self) -> str:
        return "\n" if self.params.unit == "line" else "\n\n"

    def _units(self, batch: pl.DataFrame) -> pl.DataFrame:
        """One row per (document, unit), in document order, with the unit's hash (null if too short)."""
        p = self.params
        pieces = pl.col("text").str.split(self._separator()) if p.unit == "line" else (
            pl.col("text").str.replace_all(PARAGRAPH_BREAK, "\n\n").str.split("\n\n"))
        exploded = batch.select(POSITION, pieces.alias("_unit")).explode("_unit")
        key = pl.col("_unit").str.replace_all(r"\s+", " ").str.strip_chars()
        if p.lowercase:
            key = key.str.to_lowercase()
        return exploded.with_columns(
            pl.when(key.str.len_chars() >= p.min_chars).then(key.hash(seed=7)).otherwise(None).alias(HASH)
        )

    def summarize(self, batch: pl.DataFrame) -> pl.DataFrame:
        units = self._units(batch).filter(pl.col(HASH).is_not_null())
        return units.select(POSITION, HASH).unique(maintain_order=True)

    def reduce(self, summaries: pl.LazyFrame) -> pl.DataFrame:
        counts = summaries.group_by(HASH).agg(pl.len().alias("documents"))
        return counts.filter(pl.col("documents") > self.params.max_documents).select(HASH).sort(HASH).collect()

    def decision_for_shard(self, decision: pl.LazyFrame, first_pos: int, end_pos: int) -> pl.DataFrame:
        return decision.collect()  # the boilerplate set is global, not per row

    def apply(self, batch: pl.DataFrame, decision: pl.DataFrame) -> pl.DataFrame:
        units = self._units(batch).with_columns(pl.col(HASH).is_in(decision[HASH].implode()).fill_null(False).alias("_boiler"))
        rebuilt = units.group_by(POSITION, maintain_order=True).agg(
            pl.col("_unit").filter(~pl.col("_boiler")).str.join(self._separator()).alias("_kept"),
            pl.col("_boiler").sum().cast(pl.UInt32).alias("boilerplate_lines_removed"),
        )
        joined = batch.join(rebuilt, on=POSITION, how="left", maintain_order="left")
        kept = pl.col("_kept").str.strip_chars()
        return joined.with_columns(
            pl.when(pl.col("boilerplate_lines_removed") > 0).then(pl.col("_kept")).otherwise(pl.col("text"))
            .alias("text"),
            pl.when((pl.col("boilerplate_lines_removed") > 0) & (kept.str.len_chars() == 0))
            .then(pl.lit("all_lines_boilerplate")).otherwise(None).alias(DROP_REASON),
        ).drop("_kept")
