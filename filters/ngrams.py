"""Hash every word n-gram of a polars text column: normalized words, then rolling 64-bit n-gram hashes.

Text is normalized (lowercase; every run of punctuation and symbols, Unicode P and S, becomes a
space, so glued marks split words: "epsilon,zeta" and "epsilon/zeta" give the words of
"epsilon, zeta") and split into whitespace-separated words. Each word
is hashed with polars' own `hash(seed=0)` (64 bits), and an n-gram's hash is the Rabin-Karp
polynomial of its word hashes, `g(1) = h1`, `g(k) = g(k-1) * P + hk` in wrapping UInt64 arithmetic
(P: the 64-bit FNV prime). One pass up to the longest wanted length yields every shorter length on
the way, so asking for several lengths costs no more than the longest. (A polars struct hash per
step mixes more but is three times slower; over well-mixed word hashes the polynomial already
makes two different n-grams collide with probability about 2^-63.)

Determinism: polars' hash is fixed for a given seed in every process and run, but may change between
polars versions. Hashes are therefore compared only with hashes made by the same polars version:
a stored table of them (the decontamination index, `datamill.filters.decontam_index`) is keyed by
`polars.__version__`, so another version builds its own.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

DOC = "doc"
"""Output column: position of the document in the input series (UInt32)."""
N_WORDS = "n_words"
"""Output column: how many words the document has after normalization (UInt32)."""
LENGTH = "length"
"""Output column: the n-gram's length in words (UInt32)."""
HASH = "hash"
"""Output column: the n-gram's 64-bit hash (UInt64)."""

SEED = 0
MULTIPLIER = 0x100000001B3
"""The 64-bit FNV prime: odd, so multiplying by it loses no bits modulo 2^64."""


def normalized_words(text: pl.Expr, *, lowercase: bool = True, strip_punctuation: bool = True) -> pl.Expr:
    """The words of `text` after normalization, as list[str] (null text gives null)."""
    if lowercase:
        text = text.str.to_lowercase()
    if strip_punctuation:
        text = text.str.replace_all(r"[\p{P}\p{S}]+", " ")
    return text.str.extract_all(r"\S+")


def ngram_hashes(words: pl.Series, lengths: Iterable[int]) -> pl.DataFrame:
    """One row per n-gram of each wanted length in each document of a list[str] Series.

    Columns `doc`, `n_words`, `length`, `hash`. A document with fewer words than a length has no
    n-grams of that length; an n-gram repeated in a document appears once per occurrence.
    """
    wanted = sorted(set(lengths))
    if not wanted or wanted[0] < 1:
        raise ValueError(f"n-gram lengths must be >= 1, got {wanted}")
    flat = (
        pl.DataFrame({"_words": words})
        .with_row_index(DOC)
        .with_columns(pl.col("_words").list.len().fill_null(0).cast(pl.UInt32).alias(N_WORDS))
        .filter(pl.col(N_WORDS) >= wanted[0])
        .with_columns(pl.int_ranges(0, pl.col(N_WORDS), dtype=pl.UInt32).alias("_pos"))
        .explode(["_words", "_pos"])
        .select(DOC, N_WORDS, "_pos", pl.col("_words").hash(seed=SEED).alias("_word"))
        .with_columns(pl.col("_word").alias("_gram"))
    )
    parts = []
    for length in range(1, wanted[-1] + 1):
        if length > 1:
            # rows near a document's end take words of the next document here; they are cut below
            following = pl.col("_word").shift(-(length - 1))
            gram = pl.col("_gram") * pl.lit(MULTIPLIER, dtype=pl.UInt64) + following
            flat = flat.with_columns(gram.alias("_gram"))
        if length in wanted:
            parts.append(
                flat.filter(pl.col("_pos") + length <= pl.col(N_WORDS)).select(
                    DOC, N_WORDS, pl.lit(length, dtype=pl.UInt32).alias(LENGTH), pl.col("_gram").alias(HASH)
                )
            )
    return pl.concat(parts)
