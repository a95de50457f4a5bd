"""Record and quarantine schemas, and the vectorized checks every source applies to its rows.

A record is a row with `id`, `source`, `text`, `meta` (JSON of the other input fields, or null)
and any typed columns the source declares. A quarantine row keeps what could not become a record,
with where it came from and why, so that nothing read is ever lost.
"""

from __future__ import annotations

import base64

import polars as pl

RECORD_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "source": pl.String(),
    "text": pl.String(),
    "meta": pl.String(),
}

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "file": pl.String(),
    "line": pl.Int64(),
    "reason": pl.String(),
    "detail": pl.String(),
    "raw": pl.String(),
    "raw_b64": pl.String(),
}

COLUMN_TYPES: dict[str, pl.DataType] = {
    "str": pl.String(),
    "int": pl.Int64(),
    "float": pl.Float64(),
    "bool": pl.Boolean(),
}

TOKENS = "_tokens"
"""Hidden column: approximate token count of `text` (words and punctuation marks)."""

_TOKEN_PATTERN = r"\w+|[^\w\s]"


def record_schema(columns: dict[str, str]) -> dict[str, pl.DataType]:
    """The schema of records from a source that declares these extra typed `columns`."""
    return {**RECORD_SCHEMA, **{name: COLUMN_TYPES[kind] for name, kind in columns.items()}}


def empty_records(columns: dict[str, str]) -> pl.DataFrame:
    return pl.DataFrame(schema=record_schema(columns))


def empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


def quarantine_row(
    source: str, file: str, line: int | None, reason: str, detail: str, raw: bytes | str | None
) -> dict:
    """One quarantine entry; undecodable bytes are kept exactly, as base64."""
    raw_text, raw_b64 = None, None
    if isinstance(raw, bytes):
        try:
            raw_text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raw_b64 = base64.b64encode(raw).decode("ascii")
    else:
        raw_text = raw
    return {
        "source": source,
        "file": file,
        "line": line,
        "reason": reason,
        "detail": detail,
        "raw": raw_text,
        "raw_b64": raw_b64,
    }


def approx_tokens(text: pl.Expr) -> pl.Expr:
    """Approximate token count: words plus punctuation marks (a BPE tokenizer's lower bound)."""
    return text.str.count_matches(_TOKEN_PATTERN).cast(pl.UInt32)


def split_table_rows(
    table: pl.DataFrame,
    *,
    source: str,
    file: str,
    first_line: int,
    text_field: str,
    id_field: str | None,
    columns: dict[str, str],
    keep_meta: bool,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Turn a raw table batch (parquet, HF datasets) into (records, quarantine), vectorized.

    `first_line` is the 0-based row number of the table's first row in `file`; ids default to
    `<source>:<file>:<row>`. Rows whose text is missing, not a string or empty are quarantined,
    as are rows whose declared columns cannot be cast.
    """
    n = table.height
    line = pl.int_range(first_line, first_line + n, dtype=pl.Int64).alias("_line")
    work = table.with_columns(line)
    reason = pl.lit(None, dtype=pl.String)
    detail = pl.lit(None, dtype=pl.String)

    def fail(cond: pl.Expr, why: str, message: pl.Expr | str) -> None:
        nonlocal reason, detail
        msg = pl.lit(message) if isinstance(message, str) else message
        reason = pl.when(reason.is_null() & cond).then(pl.lit(why)).otherwise(reason)
        detail = pl.when(detail.is_null() & cond).then(msg).otherwise(detail)

    where = pl.lit(f"{file} row ") + pl.col("_line").cast(pl.String)
    if text_field not in table.columns:
        fail(pl.lit(True), f"missing_field:{text_field}", where + pl.lit(f": no field {text_field!r}"))
        text = pl.lit(None, dtype=pl.String)
    elif table.schema[text_field] != pl.String:
        dtype = table.schema[text_field]
        fail(pl.lit(True), f"non_string_field:{text_field}",
             where + pl.lit(f": field {text_field!r} is {dtype}, expected string"))
        text = pl.lit(None, dtype=pl.String)
    else:
        text = pl.col(text_field)
        fail(text.is_null(), f"missing_field:{text_field}", where + pl.lit(f": field {text_field!r} is null"))
        fail(text.str.strip_chars().str.len_bytes() == 0, "empty_text",
             where + pl.lit(f": field {text_field!r} is empty"))

    if id_field is not None:
        if id_field not in table.columns:
            fail(pl.lit(True), f"missing_field:{id_field}", where + pl.lit(f": no id field {id_field!r}"))
            ident = pl.lit(None, dtype=pl.String)
        else:
            ident = pl.col(id_field).cast(pl.String, strict=False)
            fail(ident.is_null(), f"missing_field:{id_field}", where + pl.lit(f": id field {id_field!r} is null"))
    else:
        ident = pl.lit(f"{source}:{file}:") + pl.col("_line").cast(pl.String)

    typed = []
    for name, kind in columns.items():
        target = COLUMN_TYPES[kind]
        if name not in table.columns:
            typed.append(pl.lit(None, dtype=target).alias(name))
            continue
        cast = pl.col(name).cast(target, strict=False)
        fail(cast.is_null() & pl.col(name).is_not_null(), f"bad_field:{name}",
             where + pl.lit(f": field {name!r} cannot be read as {kind}"))
        typed.append(cast.alias(name))

    used = {text_field, id_field, *columns}
    rest = [c for c in table.columns if c not in used]
    if keep_meta and rest:
        meta = pl.struct(rest).struct.json_encode()
    else:
        meta = pl.lit(None, dtype=pl.String)

    checked = work.with_columns(reason.alias("_reason"), detail.alias("_detail"))
    bad = checked.filter(pl.col("_reason").is_not_null())
    good = checked.filter(pl.col("_reason").is_null())

    records = good.select(
        ident.alias("id"),
        pl.lit(source).alias("source"),
        text.alias("text"),
        meta.alias("meta"),
        *typed,
    )
    quarantine = bad.select(
        pl.lit(source).alias("source"),
        pl.lit(file).alias("file"),
        pl.col("_line").alias("line"),
        pl.col("_reason").alias("reason"),
        pl.col("_detail").alias("detail"),
        pl.struct(table.columns).struct.json_encode().alias("raw") if table.columns else pl.lit(None, dtype=pl.String).alias("raw"),
        pl.lit(None, dtype=pl.String).alias("raw_b64"),
    )
    return records.cast(record_schema(columns)), quarantine.cast(QUARANTINE_SCHEMA)
