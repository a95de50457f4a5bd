"""The dominant Unicode script of each text (Latin, Cyrillic, Han…), computed for a whole batch with polars regex.

Each character belongs to one Unicode script (the `Script` property). `dominant_script` counts the
characters of every script in `SCRIPTS` (`\\p{<Script>}` regex classes) and names the one with
the most; digits, punctuation and spaces belong to the scripts `Common` / `Inherited` and count for
none. A text with no character of a listed script gets null. Ties go to the script listed first.

Only texts that hold a character outside Latin/Common/Inherited are counted script by script (see
`script_counts`): for the rest (most web text) one pass decides "Latin" or null.
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


def script_counts(frame: pl.DataFrame) -> pl.DataFrame:
    """Per `row` of `frame` (columns row, text): the script with the most characters, counting every
    script in SCRIPTS (rows with none are left out).

    Latin is counted with one regex pass; the other scripts' characters are pulled out in one pass
    and looked up in a table of the batch's distinct characters, so the ~30 script classes run
    over those few characters instead of over every text."""
    latin = frame.select("row", pl.col("text").str.count_matches(r"\p{Latin}").alias("count"),
                         pl.lit(0, pl.UInt32).alias("order")).filter(pl.col("count") > 0)
    chars = frame.select("row", pl.col("text").str.extract_all(_NOT_LATIN).alias("char")).explode("char")
    distinct = chars.select(pl.col("char").drop_nulls().unique())
    order = pl.coalesce(pl.when(pl.col("char").str.contains(rf"^\p{{{script}}}$")).then(pl.lit(i, pl.UInt32))
                        for i, script in enumerate(SCRIPTS))
    lookup = distinct.with_columns(order.alias("order")).drop_nulls("order")
    others = chars.join(lookup, on="char").group_by("row", "order").agg(pl.len().cast(pl.UInt32).alias("count"))
    ranked = pl.concat([latin.with_columns(pl.col("count").cast(pl.UInt32)), others.select(latin.columns)])
    return (ranked.sort(["row", "count", "order"], descending=[False, True, False])
            .group_by("row", maintain_order=True).first()
            .select("row", pl.col("order").replace_strict(range(len(SCRIPTS)), SCRIPTS, return_dtype=pl.String)
                    .alias("script")))


def dominant_script(texts: pl.Series) -> pl.Series:
    """Per text, the name of its most frequent script from SCRIPTS, or null when it has none."""
    frame = pl.DataFrame({"text": texts.fill_null("")}).with_row_index("row")
    mixed = frame.filter(pl.col("text").str.contains(_NOT_LATIN))
    counted = script_counts(mixed)
    latin_only = pl.when(pl.col("text").str.contains(r"\p{Latin}")).then(pl.lit("Latin"))
    return (
        frame.join(counted, on="row", how="left", maintain_order="left")
        .select(pl.col("script").fill_null(latin_only))
        .to_series()
        .alias(texts.name)
    )
