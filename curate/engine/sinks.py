"""Write one shard's records as files of at most `shard_rows` rows: parquet, jsonl or jsonl.zst.

Writers stream: each batch is appended to the open file (a parquet row group, or ndjson lines
through a zstd stream), and a new file starts when `shard_rows` is reached, so a shard never has
to fit in memory. Columns starting with `_` are the executor's and are never written.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

EXTENSIONS = {"parquet": "parquet", "jsonl": "jsonl", "jsonl.zst": "jsonl.zst"}


def public_columns(batch: pl.DataFrame) -> pl.DataFrame:
    return batch.select([c for c in batch.columns if not c.startswith("_")])


class ShardWriter:
    """Streams batches into `<folder>/<prefix>-CCC.<ext>` files of at most `shard_rows` rows."""

    def __init__(self, folder: Path, prefix: str, fmt: str, shard_rows: int, *, keep_hidden: bool = False):
        self.folder, self.prefix, self.fmt, self.shard_rows = folder, prefix, fmt, shard_rows
        self.keep_hidden = keep_hidden
        self.files: list[Path] = []
        self.rows = 0
        self._rows_in_file = 0
        self._parquet: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._text: io.IOBase | None = None
        self._raw: io.IOBase | None = None
        self._is_open = False

    def write(self, batch: pl.DataFrame) -> None:
        if not self.keep_hidden:
            batch = public_columns(batch)
        offset = 0
        while offset < batch.height:
            if not self._is_open:
                self._open_file()
            take = min(self.shard_rows - self._rows_in_file, batch.height - offset)
            self._append(batch.slice(offset, take))
            offset += take
            self._rows_in_file += take
            self.rows += take
            if self._rows_in_file >= self.shard_rows:
                self._close_file()

    def _open_file(self) -> None:
        path = self.folder / f"{self.prefix}-{len(self.files):03d}.{EXTENSIONS[self.fmt]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.files.append(path)
        self._rows_in_file = 0
        self._is_open = True
        if self.fmt == "jsonl":
            self._text = open(path, "wb")
        elif self.fmt == "jsonl.zst":
            self._raw = open(path, "wb")
            self._text = zstandard.ZstdCompressor(level=3).stream_writer(self._raw)

    def _append(self, part: pl.DataFrame) -> None:
        if self.fmt == "parquet":
            table = part.to_arrow()
            if self._parquet is None:
                self._schema = self._schema or table.schema
                self._parquet = pq.ParquetWriter(self.files[-1], self._schema, compression="zstd")
            if table.schema != self._schema:
                table = _conform(table, self._schema, self.files[-1])
            self._parquet.write_table(table)
        else:
            self._text.write(part.write_ndjson().encode("utf-8"))

    def _close_file(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._text is not None:
            self._text.close()
            self._text = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        self._rows_in_file = 0
        self._is_open = False

    def close(self) -> list[Path]:
        self._close_file()
        return self.files


def _conform(table: pa.Table, schema: pa.Schema, path: Path) -> pa.Table:
    """Cast a later batch to the file's schema (e.g. an all-null column); fail clearly otherwise."""
    if table.schema.names != schema.names:
        raise ValueError(f"{path}: batch columns {table.schema.names} differ from the file's {schema.names}")
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise ValueError(f"{path}: batch schema {table.schema} cannot be cast to the file's {schema}: {err}") from err
