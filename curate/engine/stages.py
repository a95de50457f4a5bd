"""General-purpose stages that every corpus needs: length bounds and text normalization."""

from __future__ import annotations

from typing import ClassVar, Literal

import polars as pl
from pydantic import Field, model_validator

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter, FilterParams, Stage, StageParams


class LengthParams(FilterParams):
    min_chars: int | None = Field(None, ge=0, description="Drop documents shorter than this.")
    max_chars: int | None = Field(None, ge=1, description="Drop documents longer than this.")
    min_words: int | None = Field(None, ge=0, description="Drop documents with fewer words.")
    max_words: int | None = Field(None, ge=1, description="Drop documents with more words.")

    @model_validator(mode="after")
    def _bounds_ordered(self):
        for low, high in (("min_chars", "max_chars"), ("min_words", "max_words")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low}={lo} is larger than {high}={hi}")
        return self


@register_stage
class LengthFilter(Filter):
    """Drop documents outside character and word-count bounds; adds `n_chars`, `n_words`."""

    type_name = "length_filter"
    Params: ClassVar = LengthParams
    outputs = ("n_chars", "n_words")

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        return batch.with_columns(
            pl.col("text").str.len_chars().alias("n_chars"),
            pl.col("text").str.count_matches(r"\S+").alias("n_words"),
        )

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        p = self.params
        rules = []
        if p.min_chars is not None:
            rules.append(("too_few_chars", pl.col("n_chars") < p.min_chars))
        if p.max_chars is not None:
            rules.append(("too_many_chars", pl.col("n_chars") > p.max_chars))
        if p.min_words is not None:
            rules.append(("too_few_words", pl.col("n_words") < p.min_words))
        if p.max_words is not None:
            rules.append(("too_many_words", pl.col("n_words") > p.max_words))
        return rules


class NormalizeParams(StageParams):
    unicode: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = Field(
        "NFC", description="Unicode normalization form; null keeps text as is."
    )
    strip: bool = Field(True, description="Remove leading/trailing whitespace of the document.")
    collapse_spaces: bool = Field(True, description="Runs of spaces/tabs become one space.")
    max_blank_lines: int | None = Field(
        1, ge=0, description="Most consecutive empty lines kept; null keeps all."
    )
    strip_line_ends: bool = Field(True, description="Remove trailing whitespace on each line.")


@register_stage
class NormalizeText(Stage):
    """Normalize Unicode and whitespace in `text` without changing its words."""

    type_name = "normalize_text"
    Params: ClassVar = NormalizeParams
    outputs = ("text",)

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        text = pl.col("text")
        if p.unicode:
            text = text.str.normalize(p.unicode)
        text = text.str.replace_all(r"\r\n?", "\n")
        if p.collapse_spaces:
            text = text.str.replace_all(r"[ \t\u00a0]+", " ")
        if p.strip_line_ends:
            text = text.str.replace_all(r"(?m)[ \t]+$", "")
        if p.max_blank_lines is not None:
            text = text.str.replace_all(r"\n{%d,}" % (p.max_blank_lines + 2), "\n" * (p.max_blank_lines + 1))
        if p.strip:
            text = text.str.strip_chars()
        return batch.with_columns(text.alias("text"))
