"""C4's quality rules (Raffel et al. 2020) as a vectorized Filter that removes bad lines and bad documents.

Follows datatrove's `C4QualityFilter` (split_paragraph=True, its default): each line of `text`
(Python `splitlines`) is stripped, and checked in this order; the first failing check decides:

1. a whitespace-separated word longer than `max_word_length` → the line is removed;
2. (Wikipedia citations like "[12]", "[edit]", "[citation needed]" are deleted from the line)
3. no terminal punctuation (. ? ! " '), or ends with "..." → the line is removed;
4. fewer than `min_words_per_line` words → the line is removed;
5. contains "lorem ipsum" → the whole document is dropped (`c4_lorem_ipsum`);
6. contains "javascript" → the line is removed;
7. contains "{" → the whole document is dropped (`c4_curly_brace`);
8. contains a cookie / terms-of-use phrase → the line is removed.

The document is also dropped when its kept lines hold fewer than `min_num_sentences` sentences
(`c4_too_few_sentences`). Otherwise `text` becomes the kept lines joined with "\n" (unless
`remove_lines` is off: then `text` is left as it is and the line counts are only scores).
Sentences are counted the way spaCy's sentencizer does, on our regex tokens (see `text_stats`).
When a document has both a lorem-ipsum line and a curly-brace line, datatrove names whichever
comes first; we always name `c4_lorem_ipsum` (the document is dropped either way).
"""

from __future__ import annotations

from typing import ClassVar

import polars as pl
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter, FilterParams
from datamill.filters import text_stats as ts

CITATION_PATTERN = r"\[\d*\]|\[edit\]|\[citation needed\]"
END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)

_KEPT = "kept"
_LINE_RULES = ("long_word", "no_terminal_punct", "too_few_words", "javascript", "policy")
_DOC_RULES = ("lorem_ipsum", "curly_brace")


class C4QualityParams(FilterParams):
    remove_lines: bool = Field(
        True, description="Rewrite `text` without the failing lines (C4's behaviour); off: only score."
    )
    remove_citations: bool = Field(True, description="Delete [1], [edit], [citation needed] from lines.")
    filter_no_terminal_punct: bool = Field(
        True, description="Remove lines not ending in . ? ! \" ' (or ending in '...')."
    )
    min_num_sentences: int = Field(
        5, description="Drop documents whose kept lines hold fewer sentences; -1 turns it off."
    )
    min_words_per_line: int = Field(3, description="Remove lines with fewer words; -1 turns it off.")
    max_word_length: int = Field(
        1000, description="Remove lines with a longer whitespace-separated word; -1 turns it off."
    )
    filter_lorem_ipsum: bool = Field(True, description="Drop documents with a 'lorem ipsum' line.")
    filter_javascript: bool = Field(True, description="Remove lines mentioning 'javascript'.")
    filter_curly_bracket: bool = Field(True, description="Drop documents with a line containing '{'.")
    filter_policy: bool = Field(True, description="Remove lines with cookie / terms-of-use phrases.")


@register_stage
class C4Quality(Filter):
    """C4 quality: keeps lines that look like sentences, drops boilerplate and code-like pages."""

    type_name: ClassVar[str] = "c4_quality"
    Params: ClassVar[type[C4QualityParams]] = C4QualityParams
    outputs: ClassVar[tuple[str, ...]] = (
        "text",
        "c4_lines",
        "c4_lines_kept",
        *(f"c4_lines_{rule}" for rule in _LINE_RULES),
        *(f"c4_lines_{rule}" for rule in _DOC_RULES),
        "c4_sentences",
    )
    params: C4QualityParams

    def __init__(self, params: C4QualityParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        if not self.params.remove_lines:
            self.outputs = type(self).outputs[1:]

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        lines = (
            batch.select(
                pl.int_range(pl.len(), dtype=pl.UInt32).alias("doc"),
                ts.python_lines(pl.col("text")).alias("line"),
            )
            .explode("line")
            .with_row_index("row")
            .with_columns(pl.col("line").str.strip_chars())
        )
        cleaned = pl.col("line")
        if p.remove_citations:
            cleaned = cleaned.str.replace_all(CITATION_PATTERN, "")
        lines = lines.with_columns(
            self._has_long_word(lines).alias("long_word"),
            cleaned.alias("cleaned"),
            pl.col("line").str.count_matches(r"\S+").alias("n_words"),
        )
        lines = lines.with_columns(self._line_status().alias("status"))
        kept = lines.filter(pl.col("status") == _KEPT)
        if p.min_num_sentences != -1:
            kept = kept.with_columns(ts.sentence_count(ts.words(pl.col("cleaned"))).alias("sentences"))
        else:
            kept = kept.with_columns(pl.lit(0, dtype=pl.UInt32).alias("sentences"))
        status = pl.col("status")
        per_doc = lines.group_by("doc").agg(
            pl.len().alias("c4_lines"),
            (status == _KEPT).sum().alias("c4_lines_kept"),
            *((status == rule).sum().alias(f"c4_lines_{rule}") for rule in (*_LINE_RULES, *_DOC_RULES)),
        )
        kept_per_doc = kept.group_by("doc").agg(
            pl.col("cleaned").str.join("\n").str.strip_chars().alias("_c4_text"),
            pl.col("sentences").sum().alias("c4_sentences"),
        )
        scores = (
            pl.DataFrame({"doc": pl.int_range(batch.height, eager=True, dtype=pl.UInt32)})
            .join(per_doc, on="doc", how="left")
            .join(kept_per_doc, on="doc", how="left")
            .with_columns(pl.col("c4_sentences").fill_null(0), pl.col("_c4_text").fill_null(""))
            .drop("doc")
        )
        scored = pl.concat([batch.drop(scores.columns, strict=False), scores], how="horizontal")
        if not p.remove_lines:
            return scored.drop("_c4_text")
        keep = pl.all_horizontal(condition.not_() for _, condition in self.drop_rules())
        return scored.with_columns(
            pl.when(keep).then(pl.col("_c4_text")).otherwise(pl.col("text")).alias("text")
        ).drop("_c4_text")

    def _has_long_word(self, lines: pl.DataFrame) -> pl.Series | pl.Expr:
        """Whether a line has a whitespace-separated word over `max_word_length` characters."""
        limit = self.params.max_word_length
        if limit == -1:
            return pl.lit(False)
        candidates = lines.filter(pl.col("line").str.len_chars() > limit).select(
            "row",
            (
                pl.col("line").str.extract_all(r"\S+").list.eval(pl.element().str.len_chars()).list.max()
                > limit
            ).alias("long"),
        )
        return (
            lines.select("row")
            .join(candidates, on="row", how="left")
            .select(pl.col("long").fill_null(False))
            .to_series()
        )

    def _line_status(self) -> pl.Expr:
        """The first C4 check a line fails (`kept` if none), in datatrove's order."""
        p = self.params
        cleaned = pl.col("cleaned")
        ends_ok = pl.any_horizontal(cleaned.str.ends_with(mark) for mark in END_PUNCTUATION)
        checks = [
            ("long_word", pl.col("long_word")),
            (
                "no_terminal_punct",
                (~ends_ok | cleaned.str.ends_with("...")) if p.filter_no_terminal_punct else None,
            ),
            ("too_few_words", pl.col("n_words") < p.min_words_per_line),
            ("lorem_ipsum", cleaned.str.contains("(?i)lorem ipsum") if p.filter_lorem_ipsum else None),
            ("javascript", cleaned.str.contains("(?i)javascript") if p.filter_javascript else None),
            ("curly_brace", cleaned.str.contains("{", literal=True) if p.filter_curly_bracket else None),
            (
                "policy",
                cleaned.str.contains("(?i)" + "|".join(POLICY_SUBSTRINGS)) if p.filter_policy else None,
            ),
        ]
        status = pl.lit(_KEPT)
        for rule, failed in reversed(checks):
            if failed is not None:
                status = pl.when(failed).then(pl.lit(rule)).otherwise(status)
        return status

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        return [
            ("c4_lorem_ipsum", pl.col("c4_lines_lorem_ipsum") > 0),
            ("c4_curly_brace", pl.col("c4_lines_curly_brace") > 0),
            ("c4_too_few_sentences", pl.col("c4_sentences") < self.params.min_num_sentences),
        ]
