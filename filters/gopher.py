"""Gopher's quality and repetition rules (Rae et al. 2021, Table A1) as vectorized Filters.

Thresholds, rule order and the arithmetic of every ratio follow datatrove's `GopherQualityFilter`
and `GopherRepetitionFilter`; words come from `text_stats.words` (a regex, where datatrove uses
spaCy's English tokenizer; see `text_stats`). Setting a threshold to null turns its rule off.
"""

from __future__ import annotations

from typing import ClassVar

import polars as pl
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter, FilterParams
from datamill.filters import text_stats as ts

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
"""datatrove's Gopher stop words (matched case-sensitively, as there)."""

_TOKENS = "_gopher_tokens"


class GopherQualityParams(FilterParams):
    min_doc_words: int | None = Field(
        50, description="Drop documents with fewer words (punctuation excluded)."
    )
    max_doc_words: int | None = Field(100_000, description="Drop documents with more words.")
    min_avg_word_length: float | None = Field(3, description="Drop if the mean word length is below.")
    max_avg_word_length: float | None = Field(10, description="Drop if the mean word length is above.")
    max_symbol_word_ratio: float | None = Field(
        0.1, description="Drop if '#' per token, or ('...' + '…') per token, is above."
    )
    max_bullet_lines_ratio: float | None = Field(
        0.9, description="Drop if the share of lines starting with '•' or '-' is above."
    )
    max_ellipsis_lines_ratio: float | None = Field(
        0.3, description="Drop if the share of lines ending with '...' or '…' is above."
    )
    max_non_alpha_words_ratio: float | None = Field(
        0.8,
        description="Drop if the share of tokens with a letter is BELOW this (datatrove's name kept).",
    )
    min_stop_words: int | None = Field(
        2, description="Drop if fewer distinct stop words than this occur."
    )
    stop_words: list[str] = Field(default_factory=lambda: list(STOP_WORDS), description="The stop words.")


@register_stage
class GopherQuality(Filter):
    """Gopher quality: document length, word length, symbol ratios, bullets, ellipses, stop words."""

    type_name: ClassVar[str] = "gopher_quality"
    Params: ClassVar[type[GopherQualityParams]] = GopherQualityParams
    outputs: ClassVar[tuple[str, ...]] = (
        "gopher_word_count",
        "gopher_mean_word_length",
        "gopher_hash_ratio",
        "gopher_ellipsis_ratio",
        "gopher_bullet_lines_ratio",
        "gopher_ellipsis_lines_ratio",
        "gopher_alpha_words_ratio",
        "gopher_stop_words",
    )
    params: GopherQualityParams

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        text = pl.col("text")
        tokens = pl.col(_TOKENS)
        word_lengths = tokens.list.eval(pl.element().filter(ts.is_word(pl.element())).str.len_chars())
        lines = ts.python_lines(text)
        n_tokens = tokens.list.len()
        stop_words = pl.Series(self.params.stop_words, dtype=pl.String).implode()
        return (
            batch.with_columns(ts.raw_words(text).alias(_TOKENS))
            .with_columns(
                word_lengths.list.len().alias("gopher_word_count"),
                word_lengths.list.mean().alias("gopher_mean_word_length"),
                ts.ratio(text.str.count_matches("#", literal=True), n_tokens).alias("gopher_hash_ratio"),
                ts.ratio(
                    text.str.count_matches("...", literal=True) + text.str.count_matches("…", literal=True),
                    n_tokens,
                ).alias("gopher_ellipsis_ratio"),
                ts.ratio(
                    ts.count_where(lines, pl.element().str.contains(r"^\s*[•-]")), lines.list.len()
                ).alias("gopher_bullet_lines_ratio"),
                ts.ratio(
                    ts.count_where(lines, pl.element().str.contains(r"(?:\.\.\.|…)\s*$")), lines.list.len()
                ).alias("gopher_ellipsis_lines_ratio"),
                ts.ratio(ts.count_where(tokens, ts.has_letter(pl.element())), n_tokens).alias(
                    "gopher_alpha_words_ratio"
                ),
                tokens.list.eval(pl.element().filter(pl.element().is_in(stop_words)).unique())
                .list.len()
                .alias("gopher_stop_words"),
            )
            .drop(_TOKENS)
        )

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        p = self.params
        rules = [
            ("gopher_short_doc", "gopher_word_count", "<", p.min_doc_words),
            ("gopher_long_doc", "gopher_word_count", ">", p.max_doc_words),
            ("gopher_below_avg_word_length", "gopher_mean_word_length", "<", p.min_avg_word_length),
            ("gopher_above_avg_word_length", "gopher_mean_word_length", ">", p.max_avg_word_length),
            ("gopher_too_many_hashes", "gopher_hash_ratio", ">", p.max_symbol_word_ratio),
            ("gopher_too_many_ellipsis", "gopher_ellipsis_ratio", ">", p.max_symbol_word_ratio),
            ("gopher_too_many_bullets", "gopher_bullet_lines_ratio", ">", p.max_bullet_lines_ratio),
            ("gopher_too_many_end_ellipsis", "gopher_ellipsis_lines_ratio", ">", p.max_ellipsis_lines_ratio),
            ("gopher_below_alpha_threshold", "gopher_alpha_words_ratio", "<", p.max_non_alpha_words_ratio),
            ("gopher_few_stop_words", "gopher_stop_words", "<", p.min_stop_words),
        ]
        return [
            (reason, pl.col(column) < limit if op == "<" else pl.col(column) > limit)
            for reason, column, op, limit in rules
            if limit is not None
        ]


DEFAULT_TOP_N_GRAMS = {2: 0.2, 3: 0.18, 4: 0.16}
DEFAULT_DUP_N_GRAMS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


class GopherRepetitionParams(FilterParams):
    dup_para_frac: float | None = Field(0.3, description="Drop if the share of repeated paragraphs is above.")
    dup_para_char_frac: float | None = Field(
        0.2, description="Drop if characters in repeated paragraphs / all characters is above."
    )
    dup_line_frac: float | None = Field(0.3, description="Drop if the share of repeated lines is above.")
    dup_line_char_frac: float | None = Field(
        0.2, description="Drop if characters in repeated lines / all characters is above."
    )
    top_n_grams: dict[int, float] = Field(
        default_factory=lambda: dict(DEFAULT_TOP_N_GRAMS),
        description="n → max share of characters taken by the most frequent n-gram.",
    )
    dup_n_grams: dict[int, float] = Field(
        default_factory=lambda: dict(DEFAULT_DUP_N_GRAMS),
        description="n → max share of characters in n-grams that repeat an earlier one.",
    )


@register_stage
class GopherRepetition(Filter):
    """Gopher repetition: repeated paragraphs and lines, dominant and repeated word n-grams."""

    type_name: ClassVar[str] = "gopher_repetition"
    Params: ClassVar[type[GopherRepetitionParams]] = GopherRepetitionParams
    outputs: ClassVar[tuple[str, ...]] = (
        "gopher_dup_para_frac",
        "gopher_dup_para_char_frac",
        "gopher_dup_line_frac",
        "gopher_dup_line_char_frac",
        *(f"gopher_top_{n}_gram_char_frac" for n in DEFAULT_TOP_N_GRAMS),
        *(f"gopher_dup_{n}_gram_char_frac" for n in DEFAULT_DUP_N_GRAMS),
    )
    params: GopherRepetitionParams

    def __init__(self, params: GopherRepetitionParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        self.outputs = (
            *type(self).outputs[:4],
            *(f"gopher_top_{n}_gram_char_frac" for n in sorted(self.params.top_n_grams)),
            *(f"gopher_dup_{n}_gram_char_frac" for n in sorted(self.params.dup_n_grams)),
        )

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        text = pl.col("text")
        n_chars = text.str.len_chars()
        paragraphs = ts.paragraphs(text)
        lines = ts.regex_split(text, r"\n+")
        scored = batch.with_columns(
            ts.ratio(ts.duplicate_count(paragraphs), paragraphs.list.len()).alias("gopher_dup_para_frac"),
            ts.ratio(ts.duplicate_chars(paragraphs), n_chars).alias("gopher_dup_para_char_frac"),
            ts.ratio(ts.duplicate_count(lines), lines.list.len()).alias("gopher_dup_line_frac"),
            ts.ratio(ts.duplicate_chars(lines), n_chars).alias("gopher_dup_line_char_frac"),
        )
        top_ns = sorted(self.params.top_n_grams)
        dup_ns = sorted(self.params.dup_n_grams)
        tokens = batch.select(ts.raw_words(text)).to_series()
        counts = ts.ngram_char_counts(tokens, top_ns, dup_ns)
        return (
            scored.hstack(counts.rename(lambda name: f"_gopher_{name}"))
            .with_columns(
                *(
                    ts.ratio(pl.col(f"_gopher_top_{n}"), n_chars).alias(f"gopher_top_{n}_gram_char_frac")
                    for n in top_ns
                ),
                *(
                    ts.ratio(pl.col(f"_gopher_dup_{n}"), n_chars).alias(f"gopher_dup_{n}_gram_char_frac")
                    for n in dup_ns
                ),
            )
            .drop(f"_gopher_{name}" for name in counts.columns)
        )

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        p = self.params
        rules = [
            ("gopher_empty", pl.col("text").str.len_chars() == 0),
        ]
        for reason, threshold, column in (
            ("gopher_dup_para_frac", p.dup_para_frac, "gopher_dup_para_frac"),
            ("gopher_dup_para_char_frac", p.dup_para_char_frac, "gopher_dup_para_char_frac"),
            ("gopher_dup_line_frac", p.dup_line_frac, "gopher_dup_line_frac"),
            ("gopher_dup_line_char_frac", p.dup_line_char_frac, "gopher_dup_line_char_frac"),
        ):
            if threshold is not None:
                rules.append((reason, pl.col(column) > threshold))
        for n, threshold in sorted(p.top_n_grams.items()):
            rules.append((f"gopher_top_{n}_gram", pl.col(f"gopher_top_{n}_gram_char_frac") > threshold))
        for n, threshold in sorted(p.dup_n_grams.items()):
            rules.append((f"gopher_dup_{n}_gram", pl.col(f"gopher_dup_{n}_gram_char_frac") > threshold))
        return rules
