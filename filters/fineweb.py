"""FineWeb's extra quality rules (Penedo et al. 2024) as a vectorized Filter.

Follows datatrove's `FineWebQualityFilter`: on the non-blank lines of `text` (split on "\n", not
stripped), drop the document when too few lines end in terminal punctuation, too many lines are
short, too many characters sit in repeated lines, or there are too many newlines per word.
Words come from `text_stats.words` (datatrove uses spaCy's English tokenizer).
"""

from __future__ import annotations

import re
from typing import ClassVar

import polars as pl
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter, FilterParams
from datamill.filters import text_stats as ts


class FineWebQualityParams(FilterParams):
    line_punct_thr: float = Field(
        0.12, description="Drop if the share of lines ending in terminal punctuation is below."
    )
    line_punct_exclude_zero: bool = Field(
        False, description="Keep documents where no line at all ends in punctuation."
    )
    stop_chars: list[str] | None = Field(
        None, description="Line endings that count as terminal punctuation; null: datatrove's set."
    )
    short_line_thr: float = Field(0.67, description="Drop if the share of short lines is above.")
    short_line_length: int = Field(30, description="A line of at most this many characters is short.")
    char_duplicates_ratio: float = Field(
        0.01, description="Drop if characters in repeated lines / characters (newlines excluded) is above."
    )
    new_line_ratio: float = Field(0.3, description="Drop if newlines per word is above.")


@register_stage
class FineWebQuality(Filter):
    """FineWeb quality: line punctuation, short lines, repeated lines, list-like documents."""

    type_name: ClassVar[str] = "fineweb_quality"
    Params: ClassVar[type[FineWebQualityParams]] = FineWebQualityParams
    outputs: ClassVar[tuple[str, ...]] = (
        "fineweb_lines",
        "fineweb_line_punct_ratio",
        "fineweb_short_line_ratio",
        "fineweb_char_dup_ratio",
        "fineweb_list_ratio",
    )
    params: FineWebQualityParams

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        text = pl.col("text")
        stop_chars = p.stop_chars if p.stop_chars is not None else list(ts.TERMINAL_PUNCTUATION)
        ends_in_stop = "(?:" + "|".join(re.escape(mark) for mark in stop_chars) + ")$"
        lines = text.str.split("\n").list.eval(pl.element().filter(pl.element().str.strip_chars() != ""))
        n_lines = lines.list.len()
        return batch.with_columns(
            n_lines.alias("fineweb_lines"),
            ts.ratio(ts.count_where(lines, pl.element().str.contains(ends_in_stop)), n_lines).alias(
                "fineweb_line_punct_ratio"
            ),
            ts.ratio(
                ts.count_where(lines, pl.element().str.len_chars() <= p.short_line_length), n_lines
            ).alias("fineweb_short_line_ratio"),
            ts.ratio(ts.duplicate_chars(lines), text.str.replace_all("\n", "", literal=True).str.len_chars())
            .alias("fineweb_char_dup_ratio"),
            ts.ratio(text.str.count_matches("\n", literal=True), ts.token_count(text)).alias(
                "fineweb_list_ratio"
            ),
        )

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        p = self.params
        punct = pl.col("fineweb_line_punct_ratio")
        too_little_punct = punct < p.line_punct_thr
        if p.line_punct_exclude_zero:
            too_little_punct = too_little_punct & (punct != 0)
        return [
            ("fineweb_empty", pl.col("fineweb_lines") == 0),
            ("fineweb_line_punct_ratio", too_little_punct),
            ("fineweb_short_line_ratio", pl.col("fineweb_short_line_ratio") > p.short_line_thr),
            ("fineweb_char_dup_ratio", pl.col("fineweb_char_dup_ratio") > p.char_duplicates_ratio),
            ("fineweb_list_ratio", pl.col("fineweb_list_ratio") > p.new_line_ratio),
        ]
