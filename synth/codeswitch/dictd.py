"""Read FreeDict dictionaries in dictd format (`.index` + `.dict` or `.dict.dz`) into lexicon rows.

An index line is `headword<TAB>offset<TAB>length`, the two numbers written in dictd's base64: the
digits `A-Z a-z 0-9 + /` stand for 0…63, most significant first, no padding. They address bytes
of the uncompressed `.dict` file. A `.dict.dz` is a gzip file (dictzip adds random-access chunk
tables in the gzip extra field), so reading it whole with `gzip` gives the same bytes.

A FreeDict entry body starts with the headword line (often with a `/pronunciation/`), followed by
the translations: numbered senses (`1. …`), alternatives separated by `,` or `;`, sometimes a
`<pos>` tag. Each alternative becomes one lexicon row. Entries named `00-database-*` (dictd's
metadata) are skipped.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl

DICTD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_DIGIT = {ch: i for i, ch in enumerate(DICTD_B64)}


def b64_decode(text: str) -> int:
    """A dictd base64 number (`"B5"` → 121)."""
    value = 0
    for ch in text:
        if ch not in _DIGIT:
            raise ValueError(f"{text!r} is not a dictd base64 number (bad character {ch!r})")
        value = value * 64 + _DIGIT[ch]
    return value


def b64_encode(value: int) -> str:
    """The dictd base64 spelling of a non-negative integer (`121` → `"B5"`; 0 → `"A"`)."""
    if value < 0:
        raise ValueError(f"dictd numbers are non-negative, got {value}")
    digits = []
    while True:
        value, rest = divmod(value, 64)
        digits.append(DICTD_B64[rest])
        if value == 0:
            return "".join(reversed(digits))


def dict_path_for(index: Path) -> Path:
    """The `.dict.dz` or `.dict` file next to an `.index` file."""
    stem = index.with_suffix("")
    for candidate in (stem.with_suffix(".dict.dz"), stem.with_suffix(".dict")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{index}: no {stem.name}.dict.dz or {stem.name}.dict next to it")


def read_index(index: Path) -> pl.DataFrame:
    """Columns headword, offset, length (bytes into the uncompressed .dict)."""
    rows = []
    for number, line in enumerate(index.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"{index}:{number}: expected headword<TAB>offset<TAB>length, got {line!r}")
        try:
            rows.append((parts[0], b64_decode(parts[1]), b64_decode(parts[2])))
        except ValueError as err:
            raise ValueError(f"{index}:{number}: {err}") from None
    return pl.DataFrame(rows, schema={"headword": pl.String, "offset": pl.Int64, "length": pl.Int64},
                        orient="row")


def read_dictd(index: str | Path, source_lang: str, target_lang: str) -> pl.DataFrame:
    """Lexicon rows (source_lang, source_term, target_lang, target_term, pos, type) of a dictd pair."""
    index = Path(index)
    data_path = dict_path_for(index)
    raw = data_path.read_bytes()
    data = gzip.decompress(raw) if data_path.suffix == ".dz" else raw
    entries = read_index(index).filter(~pl.col("headword").str.starts_with("00-database"))
    too_far = entries.filter(pl.col("offset") + pl.col("length") > len(data))
    if too_far.height:
        first = too_far.row(0, named=True)
        raise ValueError(f"{index}: entry {first['headword']!r} points past the end of {data_path.name} "
                         f"({first['offset']}+{first['length']} > {len(data)} bytes)")
    bodies = pl.Series("body", [data[o:o + n] for o, n in zip(entries["offset"], entries["length"])],
                       dtype=pl.Binary).cast(pl.String)
    return (
        entries.select("headword").with_columns(bodies)
        # the first line repeats the headword (and pronunciation); translations follow
        .with_columns(pl.col("body").str.split("\n").list.slice(1).list.join("\n"),
                      pl.col("body").str.extract(r"<(\w+)>").alias("pos"))
        .with_columns(pl.col("body").str.replace_all(r"<[^>]*>|\(.*?\)|^\s*\d+\.\s*|\n\s*\d+\.\s*", "\n"))
        .with_columns(pl.col("body").str.replace_all(r"[\n;]", ",").str.split(",").alias("target_term"))
        .explode("target_term")
        .with_columns(pl.col("target_term").str.strip_chars(" \t\"'."))
        .filter(pl.col("target_term").str.len_chars() > 0)
        .select(pl.lit(source_lang).alias("source_lang"), pl.col("headword").alias("source_term"),
                pl.lit(target_lang).alias("target_lang"), "target_term", "pos",
                pl.lit("word").alias("type"))
        .unique(maintain_order=True)
    )
