"""Parts of speech for untagged lexicon rows, borrowed from tagged lexicons of the same source language.

A part of speech belongs to the source term, not to the translation: whether `set` or `run` can be
a noun is a fact about English. FreeDict's eng-spa has no part-of-speech tags while eng-deu (Ding)
tags nearly every English headword, so eng-deu's tags let the code-switch stage keep noun → noun
for Spanish too. An untagged row takes every part of speech its (lower-cased) source term has in
the tagged lexicons, one row each: a term that is only a verb or adjective there (`sure`, `free`)
is then filtered out like a tagged verb, and a noun/verb term (`set`, `copy`) is switched only in
a noun context. Terms the tagged lexicons do not know keep `pos` null (kept, as before).
"""

from __future__ import annotations

import polars as pl

TAGGED_SHARE = 0.5
"""A lexicon whose rows carry a part of speech at least this often counts as tagged."""


def is_tagged(table: pl.DataFrame) -> bool:
    """Whether a lexicon table has parts of speech (most rows tagged)."""
    return table.height > 0 and table["pos"].is_not_null().mean() >= TAGGED_SHARE


def source_term_pos(tagged: list[pl.DataFrame], source_lang: str) -> pl.DataFrame:
    """Distinct (lower-cased source term, part of speech) pairs of the tagged tables' rows in
    `source_lang` (or with no source language)."""
    if not tagged:
        return pl.DataFrame(schema={"term_key": pl.String, "borrowed_pos": pl.String})
    rows = pl.concat([t.select("source_lang", "source_term", "pos") for t in tagged])
    return (rows.filter(pl.col("pos").is_not_null()
                        & (pl.col("source_lang").is_null() | (pl.col("source_lang") == source_lang)))
            .select(pl.col("source_term").str.to_lowercase().alias("term_key"), pl.col("pos").alias("borrowed_pos"))
            .unique(maintain_order=True))


def borrow_pos(table: pl.DataFrame, term_pos: pl.DataFrame) -> pl.DataFrame:
    """`table` with every untagged row given the parts of speech of its source term in `term_pos`
    (one row per part of speech); rows already tagged and unknown terms are unchanged."""
    if term_pos.is_empty():
        return table
    columns = table.columns
    keyed = table.with_columns(
        pl.when(pl.col("pos").is_null()).then(pl.col("source_term").str.to_lowercase()).alias("term_key"))
    joined = keyed.join(term_pos, on="term_key", how="left", maintain_order="left")
    return joined.with_columns(pl.coalesce("pos", "borrowed_pos").alias("pos")).select(columns)
