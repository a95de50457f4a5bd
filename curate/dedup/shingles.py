"""Turn a polars text column into one row per (document, shingle): word or character n-grams.

Text is normalized first (lowercase, punctuation removal, whitespace collapsing — each optional),
then split into tokens (whitespace-separated words, or characters) and every run of `ngram`
consecutive tokens becomes a shingle: words joined by one space, characters concatenated.
A document with at least one but fewer than `ngram` tokens gets a single shingle of all its
tokens (so short texts still have a fingerprint); an empty document gets none.

Everything is polars expressions: explode the token lists, then build n-grams from `ngram`
shifted copies of the token column, masked at document ends. Cost is linear in text length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import polars as pl

ShingleKind = Literal["word", "char"]

DOC = "doc"
"""Column of the shingle table: index of the document in the input series (UInt32)."""
SHINGLE = "shingle"
"""Column of the shingle table: the shingle text."""


@dataclass(frozen=True)
class Shingler:
    """How documents become shingle sets."""

    kind: ShingleKind = "word"
    ngram: int = 5
    lowercase: bool = True
    whitespace: bool = True
    """Collapse runs of whitespace to one space and trim. Only `char` shingles see whitespace;
    word shingles always split on any whitespace run and join words with one space."""
    punctuation: bool = False
    """Remove punctuation and symbols (Unicode P and S classes) before shingling."""

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram}")

    def cased(self, text: pl.Expr) -> pl.Expr:
        """The text after lowercasing and punctuation removal, before whitespace handling."""
        if self.lowercase:
            text = text.str.to_lowercase()
        if self.punctuation:
            text = text.str.replace_all(r"[\p{P}\p{S}]+", "")
        return text

    def normalized(self, text: pl.Expr) -> pl.Expr:
        """The text the shingles are cut from."""
        text = self.cased(text)
        if self.whitespace and self.kind == "char":
            text = text.str.replace_all(r"\s+", " ").str.strip_chars()
        return text

    def _tokens(self, text: pl.Expr) -> pl.Expr:
        if self.kind == "word":
            return text.str.extract_all(r"\S+")
        return pl.when(text.str.len_bytes() > 0).then(text.str.split(""))

    def table(self, texts: pl.Series) -> pl.DataFrame:
        """One row per shingle occurrence: `doc` (position in `texts`, UInt32) and `shingle`,
        grouped by `doc` in ascending order. Documents without shingles have no rows; a shingle
        repeated inside a document appears once per occurrence."""
        docs = pl.DataFrame({DOC: pl.int_range(0, texts.len(), dtype=pl.UInt32, eager=True), "_text": texts})
        tokens = (
            docs.select(DOC, self._tokens(self.normalized(pl.col("_text"))).alias("_tok"))
            .with_columns(pl.col("_tok").list.len().fill_null(0).alias("_n"))
            .filter(pl.col("_n") > 0)
            .with_columns(pl.int_ranges(0, pl.col("_n"), dtype=pl.UInt32).alias("_i"))
            .explode(["_tok", "_i"])
        )
        idx, count, tok = pl.col("_i"), pl.col("_n"), pl.col("_tok")
        parts = [tok] + [pl.when(idx + k < count).then(tok.shift(-k)) for k in range(1, self.ngram)]
        separator = " " if self.kind == "word" else ""
        last_start = (count.cast(pl.Int64) - self.ngram).clip(lower_bound=0)
        is_start = idx.cast(pl.Int64) <= last_start
        # n-grams are built on all token rows (shift must see them), then cut to start positions
        return (
            tokens.select(
                DOC,
                pl.concat_str(parts, separator=separator, ignore_nulls=True).alias(SHINGLE),
                is_start.alias("_start"),
            )
            .filter(pl.col("_start"))
            .drop("_start")
        )

    def max_counts(self, texts: pl.Series) -> pl.Series:
        """Cheap upper bound of each document's shingle count, to plan chunks with: a character
        takes at least one byte, a word at least one byte plus a separator."""
        size = texts.str.len_bytes().fill_null(0).cast(pl.Int64)
        return size if self.kind == "char" else (size + 1) // 2
