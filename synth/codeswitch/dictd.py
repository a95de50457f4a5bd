"""Read FreeDict dictionaries in dictd format (`.index` + `.dict` or `.dict.dz`) into lexicon rows.

An index line is `headword<TAB>offset<TAB>length`, the two numbers written in dictd's base64: the
digits `A-Z a-z 0-9 + /` stand for 0…63, most significant first, no padding. They address bytes
of the uncompressed `.dict` file. A `.dict.dz` is a gzip file (dictzip adds random-access chunk
tables in the gzip extra field), so reading it whole with `gzip` gives the same bytes.

A FreeDict entry body is one headword line, `headword /pronunciation/ (alternate) <pos>`, then:
- sense lines: translations separated by `,` or `;` (eng-spa numbers them `1. …`), each with
  optional `<pos>` tags (`<masc>`, `<pl>`, `<v, trans>`…), `[domain]` labels and `(notes)`;
- annotation lines, which are not translations: `   Synonym(s): {…}`, ` see: {…}`,
  `         Note: …` and indented `"example"  - Beispiel` lines.
Only sense lines give rows; bracketed labels, parentheticals and tags are removed from the
translation, the tags kept as `pos` (noun, verb, adj, adv, det, prep, conj, pron, num, intj; a
`<pos>` on the headword line wins) and `number` (`pl`, or `sg` for a gendered noun). The source
term is the entry's own headword line, not the index key (an index key can be an alias: `a`
points at the entry of `amp`). Index lines with an empty headword and dictd's metadata entries
(`00-database-info`, `00databaseinfo`…) are skipped and counted, as are entries whose
pronunciation spans more words than their headword kept (eng-spa's `a /ədei/ → aldía`, a
phrase whose headword lost its other words). `rank` orders a source term's translations by how
many of its senses give them (most frequent sense first; ties in dictionary order).
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import polars as pl

log = logging.getLogger(__name__)

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


METADATA = r"^00-?database"
HEAD_LINE = r"^(?P<head>[^/<]*?)\s*(?:/(?P<pron>[^/]*)/)?\s*(?:\([^)]*\))?\s*(?:<(?P<pos>[^>]*)>)?\s*$"
ANNOTATION = r"^\s+(?:Synonyms?:|Note:|\"|see:)|^\s*see:"
POS_TAGS = {
    "noun": "noun", "n": "noun", "masc": "noun", "fem": "noun", "neut": "noun", "pl": "noun", "m": "noun",
    "f": "noun", "nt": "noun", "v": "verb", "vt": "verb", "vi": "verb", "verb": "verb", "adj": "adj", "adv": "adv",
    "art": "det", "det": "det", "prp": "prep", "prep": "prep", "conj": "conj", "pron": "pron", "num": "num",
    "interj": "intj", "intj": "intj",
}
"""FreeDict's grammar tags (first word of a `<…>` tag) → a part of speech."""
DICTD_COUNTS = ("entries", "empty_headword", "metadata", "mangled_entries", "sense_lines", "annotation_lines",
                "rows")


def normalize_pos(tag: pl.Expr) -> pl.Expr:
    """A `<…>` tag's first word as a part of speech (null when unknown)."""
    return tag.str.extract(r"^\s*(\w+)").str.to_lowercase().replace_strict(POS_TAGS, default=None)


def parse_dictd(index: str | Path, source_lang: str, target_lang: str) -> tuple[pl.DataFrame, dict[str, int]]:
    """(lexicon rows with `number` and `rank`, counts of what was read and skipped) of a dictd pair."""
    index = Path(index)
    data_path = dict_path_for(index)
    raw = data_path.read_bytes()
    data = gzip.decompress(raw) if data_path.suffix == ".dz" else raw
    table = read_index(index)
    counts = dict.fromkeys(DICTD_COUNTS, 0)
    empty = table["headword"].str.strip_chars() == ""
    metadata = table["headword"].str.contains(METADATA)
    counts["empty_headword"], counts["metadata"] = int(empty.sum()), int((metadata & ~empty).sum())
    entries = table.filter(~empty & ~metadata).unique(["offset", "length"], maintain_order=True)
    too_far = entries.filter(pl.col("offset") + pl.col("length") > len(data))
    if too_far.height:
        first = too_far.row(0, named=True)
        raise ValueError(f"{index}: entry {first['headword']!r} points past the end of {data_path.name} "
                         f"({first['offset']}+{first['length']} > {len(data)} bytes)")
    counts["entries"] = entries.height
    bodies = pl.Series("body", [data[o:o + n] for o, n in zip(entries["offset"], entries["length"])],
                       dtype=pl.Binary).cast(pl.String)
    lines = (entries.select(pl.int_range(pl.len()).alias("entry")).with_columns(bodies.str.split("\n").alias("line"))
             .explode("line").with_columns(pl.int_range(pl.len()).over("entry").alias("n")))
    heads = (lines.filter(pl.col("n") == 0)
             .with_columns(pl.col("line").str.extract_groups(HEAD_LINE).alias("g"))
             .select("entry", pl.col("g").struct.field("head").str.strip_chars().alias("source_term"),
                     pl.col("g").struct.field("pron").alias("pron"),
                     normalize_pos(pl.col("g").struct.field("pos")).alias("head_pos")))
    # a pronunciation with more words than the headword: the headword lost part of a phrase
    pron_words = pl.col("pron").str.replace_all(r"[ˈˌ]", "").str.strip_chars().str.len_chars()
    mangled = pl.col("pron").is_not_null() & ~pl.col("source_term").str.contains(" ") & (
        pron_words > 1.6 * pl.col("source_term").str.len_chars() + 2)
    counts["mangled_entries"] = int(heads.select(mangled.sum()).item() or 0)
    heads = heads.filter(~mangled & (pl.col("source_term") != ""))
    rest = lines.filter((pl.col("n") > 0) & (pl.col("line").str.strip_chars() != ""))
    annotation = pl.col("line").str.contains(ANNOTATION)
    counts["annotation_lines"] = int(rest.select(annotation.sum()).item() or 0)
    senses = rest.filter(~annotation & ~pl.col("line").str.contains(r"^[^<\[,]*\s/[^/]+/"))  # not another headword line
    counts["sense_lines"] = senses.height
    alternatives = (
        senses.join(heads, on="entry")
        .with_columns(pl.col("line").str.contains(r"\[").alias("labelled"))  # a domain sense: [jur.], [mus.]
        .with_columns(pl.col("line").str.replace(r"^\s*\d+\.\s*", "")
                      .str.replace_all(r"\[[^\]]*\]|\([^)]*\)|\{[^}]*\}", " ").alias("line"))
        .with_columns(pl.col("line").str.extract(r"<([^>]*)>\s*$").alias("line_tag"))
        .with_columns(pl.col("line").str.replace_all(r"<([^>]*),([^>]*)>", "<$1\x1f$2>")
                      .str.replace_all(";", ",").str.split(",").alias("alt"))
        .explode("alt")
        .with_columns(pl.col("alt").str.extract(r"<([^>]*)>").alias("tag"), pl.int_range(pl.len()).over("entry").alias("k"))
        .with_columns(pl.coalesce("tag", "line_tag").str.replace_all("\x1f", ",").alias("tag"),
                      pl.col("alt").str.replace(r"<.*$", "").str.replace_all(r"\s+", " ")  # a tag ends the term
                      .str.strip_chars(" \t\"'.;:").alias("target_term"))
        .filter((pl.col("target_term") != "") & ~pl.col("target_term").str.contains(r"[/…{}=:]|^\d+$"))
    )
    rows = alternatives.select(
        pl.lit(source_lang).alias("source_lang"), "source_term", pl.lit(target_lang).alias("target_lang"),
        "target_term", pl.coalesce("head_pos", normalize_pos(pl.col("tag"))).alias("pos"),
        pl.when(pl.col("tag").str.contains(r"^\s*pl\b")).then(pl.lit("pl"))
        .when(pl.col("tag").str.contains(r"^\s*(masc|fem|neut)\b")).then(pl.lit("sg")).alias("number"),
        pl.lit("word").alias("type"), "entry", "k", "labelled")
    rows = rank_senses(rows, target_lang)
    counts["rows"] = rows.height
    return rows, counts


def rank_senses(rows: pl.DataFrame, target_lang: str) -> pl.DataFrame:
    """One row per (source, target, pos, number) with `rank` 1 for the sense to use without a context
    model: general senses before domain ones ([jur.], [mus.]), a one-word translation for a one-word
    term, then the more frequent target word (wordfreq's Zipf frequency), then the one more of the
    term's entries give, then dictionary order."""
    rows = (rows.with_columns(pl.col("labelled").all().over("source_term", "target_term", "pos").alias("_domain"),
                              pl.col("entry").n_unique().over("source_term", "target_term", "pos").alias("_senses"),
                              (pl.col("entry") * 1_000_000 + pl.col("k")).min()
                              .over("source_term", "target_term", "pos").alias("_first"))
            .unique(["source_term", "target_term", "pos", "number"], keep="first", maintain_order=True)
            .with_columns((pl.col("target_term").str.contains(" ") & ~pl.col("source_term").str.contains(" "))
                          .alias("_multiword")))
    rows = rows.with_columns(target_frequency(rows["target_term"], target_lang).alias("_zipf"))
    return (rows.sort(["source_term", "_domain", "_multiword", "_zipf", "_senses", "_first"],
                      descending=[False, False, False, True, True, False])
            .with_columns(pl.int_range(1, pl.len() + 1).over("source_term").cast(pl.Int32).alias("rank"))
            .drop("entry", "k", "labelled", "_domain", "_senses", "_first", "_multiword", "_zipf"))


def target_frequency(terms: pl.Series, lang: str) -> pl.Series:
    """wordfreq's Zipf frequency of each one-word term in `lang` (0 for phrases, unknown words and
    languages wordfreq does not cover)."""
    from wordfreq import available_languages, zipf_frequency

    single = terms.filter(~terms.str.contains(" ")).unique()
    if lang not in available_languages():
        return pl.Series([0.0] * len(terms), dtype=pl.Float64)
    table = dict(zip(single.to_list(), (zipf_frequency(t, lang) for t in single.to_list())))
    return terms.replace_strict(table, default=0.0, return_dtype=pl.Float64)


def read_dictd(index: str | Path, source_lang: str, target_lang: str) -> pl.DataFrame:
    """Lexicon rows (source_lang, source_term, target_lang, target_term, pos, number, rank, type) of a
    dictd pair; what was skipped is logged."""
    rows, counts = parse_dictd(index, source_lang, target_lang)
    skipped = {k: v for k, v in counts.items() if k in ("empty_headword", "metadata", "mangled_entries") and v}
    if skipped:
        log.info("%s: skipped %s", index, ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items()))
    return rows
