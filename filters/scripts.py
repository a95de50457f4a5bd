"""The dominant Unicode script of each text (Latin, Cyrillic, Han…), computed for a whole batch with polars regex.

Each character belongs to one Unicode script (the `Script` property). `dominant_script` counts the
characters of every script in `SCRIPTS` with `\\p{<Script>}` regex classes and names the one with
the most; digits, punctuation and spaces belong to the scripts `Common` / `Inherited` and count for
none. A text with no character of a listed script gets null. Ties go to the script listed first.

Counting ~30 scripts means ~30 passes over the text, so only texts that hold a character outside
Latin/Common/Inherited pay for them: for the rest (most web text) one pass decides "Latin" or null.
Japanese text is counted as its three scripts (Han, Hiragana, Katakana); the largest one wins.
"""

from __future__ import annotations

import polars as pl

SCRIPTS = (
    "Latin",
    "Cyrillic",
    "Greek",
    "Armenian",
    "Georgian",
    "Hebrew",
    "Arabic",
    "Syriac",
    "Thaana",
    "Devanagari",
    "Bengali",
    "Gurmukhi",
    "Gujarati",
    "Oriya",
    "Tamil",
    "Telugu",
    "Kannada",
    "Malayalam",
    "Sinhala",
    "Thai",
    "Lao",
    "Tibetan",
    "Myanmar",
    "Khmer",
    "Ethiopic",
    "Hangul",
    "Hiragana",
    "Katakana",
    "Han",
)
"""Unicode script names as the `Script` property spells them; the result column uses these names."""

_NOT_LATIN = r"[^\p{Latin}\p{Common}\p{Inherited}]"


def _script_of_counts(text: pl.Expr) -> pl.Expr:
    """The script with the most characters in `text`, counting every script in SCRIPTS."""
    counts = pl.concat_list([text.str.count_matches(rf"\p{{{script}}}") for script in SCRIPTS])
    name = counts.list.arg_max().replace_strict(range(len(SCRIPTS)), SCRIPTS, return_dtype=pl.String)
    return pl.when(counts.list.max() > 0).then(name)


def dominant_script(texts: pl.Series) -> pl.Series:
    """Per text, the name of its most frequent script from SCRIPTS, or null when it has none."""
    frame = pl.DataFrame({"text": texts.fill_null("")}).with_row_index("row")
    mixed = frame.filter(pl.col("text").str.contains(_NOT_LATIN))
    counted = mixed.select("row", _script_of_counts(pl.col("text")).alias("script"))
    latin_only = pl.when(pl.col("text").str.contains(r"\p{Latin}")).then(pl.lit("Latin"))
    return (
        frame.join(counted, on="row", how="left", maintain_order="left")
        .select(pl.col("script").fill_null(latin_only))
        .to_series()
        .alias(texts.name)
    )
