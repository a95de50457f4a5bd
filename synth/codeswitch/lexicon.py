"""Load bilingual lexicons and entity tables into one lexicon table (polars), from any supported format.

The lexicon table has one row per (source term → target term) pair:
`source_lang` (null: any), `source_term`, `target_lang`, `target_term`, `pos` (nullable: noun,
verb, adj…), `number` (nullable: sg / pl), `rank` (nullable: 1 = the sense to use without a context
model) and `type` ("word" or "entity"). Multiword terms are ordinary rows ("ice cream" → "helado").

Formats, chosen by file name:
- `.tsv` / `.jsonl`: columns `source_term`, `target_lang`, `target_term`, optional `source_lang`,
  `pos`, `type`.
- `.index` (with its `.dict` / `.dict.dz`): a FreeDict dictd dictionary (needs the language pair).
- `.tei` / `.xml`: a FreeDict TEI dictionary (needs the language pair).
- entity tables (`entity_id`, `lang`, `label`, e.g. a Wikidata export) as `.tsv` / `.jsonl` with
  those columns: every pair of labels of one entity in two languages becomes an `entity` row.

A name that is not an existing path is looked up in the lexicons that ship with datamill
(`synth/codeswitch/data/`), e.g. `en-es.tsv`. A URL (`s3://`, `gs://`, `hf://`, `file://`) is
downloaded once into datamill's cache (a dictd `.index` with its `.dict.dz`/`.dict` beside it).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import polars as pl

from datamill.curate.engine.paths import exists, is_url, local_copy
from datamill.synth.codeswitch.dictd import normalize_pos, read_dictd
from datamill.synth.codeswitch.tei import read_tei

LEXICON_SCHEMA: dict[str, pl.DataType] = {
    "source_lang": pl.String(),
    "source_term": pl.String(),
    "target_lang": pl.String(),
    "target_term": pl.String(),
    "pos": pl.String(),
    "number": pl.String(),
    "rank": pl.Int32(),
    "type": pl.String(),
}
REQUIRED = ("source_term", "target_lang", "target_term")
ENTITY_COLUMNS = ("entity_id", "lang", "label")
TERM_TYPES = ("word", "entity")
DATA_PACKAGE = "datamill.synth.codeswitch"


def data_path(name: str) -> Path:
    """A file shipped under `synth/codeswitch/data/`."""
    return Path(str(resources.files(DATA_PACKAGE).joinpath("data", name)))


def lexicon_exists(path: str) -> bool:
    """True when `path` is an existing file or URL, or the name of a shipped lexicon."""
    if is_url(path):
        return exists(path)
    return Path(path).expanduser().exists() or data_path(path).exists()


def resolve(path: str | Path) -> Path:
    """An existing path, a URL (downloaded once into the cache), else the shipped data file of that
    name; raises naming the places looked in."""
    if is_url(path):
        return fetch(str(path))
    given = Path(path).expanduser()
    if given.exists():
        return given
    shipped = data_path(str(path))
    if shipped.exists():
        return shipped
    raise FileNotFoundError(f"lexicon {str(path)!r} not found (neither a path nor a file in {data_path('')})")


def fetch(url: str) -> Path:
    """A local copy of a lexicon URL; a dictd `.index` brings its `.dict.dz` / `.dict` along."""
    if not exists(url):
        raise FileNotFoundError(f"lexicon {url!r} not found")
    local = Path(local_copy(url))
    if local.suffix.lower() == ".index":
        stem = url[: -len(".index")]
        for suffix in (".dict.dz", ".dict"):
            beside = local.parent / (local.stem + suffix)
            if exists(stem + suffix):
                if not beside.exists():
                    try:
                        os.symlink(local_copy(stem + suffix), beside)
                    except FileExistsError:  # another worker linked it first
                        pass
                break
    return local


def read_table(path: Path) -> pl.DataFrame:
    """A TSV (header row, no quoting) or JSON-lines file as strings; errors name the file."""
    try:
        if path.suffix == ".tsv":
            return pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False, comment_prefix="#")
        if path.suffix == ".jsonl":
            return pl.read_ndjson(path, infer_schema_length=None).cast(pl.String)
    except (pl.exceptions.ComputeError, pl.exceptions.PolarsError) as err:
        raise ValueError(f"{path}: cannot read as {path.suffix[1:]}: {err}") from None
    raise ValueError(f"{path}: unknown lexicon format {path.suffix!r}; use .tsv, .jsonl, .index (dictd) or .tei/.xml")


def conform(table: pl.DataFrame, where: str) -> pl.DataFrame:
    """Check required columns and values, add missing optional ones, keep the lexicon columns."""
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; a lexicon needs {list(REQUIRED)}")
    table = table.with_columns(
        pl.lit(None, pl.String).alias(c) for c in LEXICON_SCHEMA if c not in table.columns
    ).select(pl.col(c).cast(t) for c, t in LEXICON_SCHEMA.items())
    table = table.with_columns(pl.col("type").fill_null("word"), normalize_pos(pl.col("pos")).fill_null(pl.col("pos")),
                               pl.col("source_term", "target_term").str.strip_chars())
    empty = table.with_row_index("row").filter(
        pl.any_horizontal(pl.col(c).is_null() | (pl.col(c) == "") for c in REQUIRED))
    if empty.height:
        row = empty.row(0, named=True)
        field = next(c for c in REQUIRED if not row[c])
        raise ValueError(f"{where}: record {row['row'] + 1}: field {field!r} is empty")
    bad_type = table.filter(~pl.col("type").is_in(TERM_TYPES))
    if bad_type.height:
        raise ValueError(f"{where}: field 'type' must be one of {list(TERM_TYPES)}, got {bad_type['type'][0]!r}")
    return table


def entities_to_lexicon(entities: pl.DataFrame, where: str = "entity table") -> pl.DataFrame:
    """Every ordered pair of labels of one entity in two languages, as `entity` lexicon rows."""
    missing = [c for c in ENTITY_COLUMNS if c not in entities.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; an entity table needs {list(ENTITY_COLUMNS)}")
    labels = entities.select(pl.col(c).cast(pl.String).str.strip_chars() for c in ENTITY_COLUMNS).drop_nulls()
    pairs = labels.join(labels, on="entity_id", suffix="_target").filter(pl.col("lang") != pl.col("lang_target"))
    return pairs.select(
        pl.col("lang").alias("source_lang"), pl.col("label").alias("source_term"),
        pl.col("lang_target").alias("target_lang"), pl.col("label_target").alias("target_term"),
        pl.lit(None, pl.String).alias("pos"), pl.lit("entity").alias("type"),
    ).unique(maintain_order=True)


def load_lexicon(path: str | Path, source_lang: str | None = None, target_lang: str | None = None) -> pl.DataFrame:
    """One lexicon file (any supported format) as a lexicon table.

    dictd and TEI files carry no language codes: pass `source_lang` and `target_lang` (FreeDict's
    file names say them, e.g. eng-spa → en, es). For tables they fill a missing `source_lang`.
    """
    resolved = resolve(path)
    suffix = resolved.suffix.lower()
    if suffix in (".index", ".tei", ".xml"):
        if not (source_lang and target_lang):
            raise ValueError(f"{resolved}: dictd/TEI dictionaries need source_lang and target_lang")
        reader = read_dictd if suffix == ".index" else read_tei
        return conform(reader(resolved, source_lang, target_lang), str(resolved))
    table = read_table(resolved)
    if set(ENTITY_COLUMNS) <= set(table.columns):
        return entities_to_lexicon(table, str(resolved))
    table = conform(table, str(resolved))
    if source_lang:
        table = table.with_columns(pl.col("source_lang").fill_null(source_lang))
    return table


def combine(tables: list[pl.DataFrame]) -> pl.DataFrame:
    """Several lexicon tables as one, duplicates removed, first occurrence first."""
    if not tables:
        return pl.DataFrame(schema=LEXICON_SCHEMA)
    full = [t.with_columns(pl.lit(None, dtype).alias(c) for c, dtype in LEXICON_SCHEMA.items() if c not in t.columns)
            .select(pl.col(c).cast(dtype) for c, dtype in LEXICON_SCHEMA.items()) for t in tables]
    return pl.concat(full).unique(maintain_order=True)
