"""The `parquet` and `hf` sources: inputs that already come as Arrow tables, checked vectorized.

Both read Arrow record batches, turn them into polars and hand them to
`records.split_table_rows`, which applies the same checks and id rules as every other source.
`datasets` is imported only when an `hf` source is planned or read. Binary columns are decoded as
UTF-8 row by row (a text value that is not UTF-8 is quarantined as `invalid_utf8`).

`parquet` is a `sources.files.FileSource`: a file whose footer cannot be read is one `truncated_file`
/ `corrupt_file` row, and files are read row group by row group, so an unreadable row group is one
`corrupt_file` row while the other groups are kept.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import polars as pl
import polars.selectors as cs
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from datamill.curate.engine.paths import exists, file_size, glob_files, open_binary
from datamill.curate.engine.records import split_table_rows
from datamill.curate.engine.registry import register_source
from datamill.curate.engine.source import ShardSpec, Source, SourceBatch, SourceParams
from datamill.curate.sources.files import (
    CORRUPT,
    TRUNCATED,
    Damage,
    DamagedFile,
    FilePart,
    FileSource,
    FileSourceParams,
)


class ParquetParams(FileSourceParams):
    type: Literal["parquet"] = "parquet"
    shard_rows: int = Field(
        200_000,
        ge=1,
        description="A file with more rows is split into shards of whole row groups, about this many rows each.",
    )


class HfParams(SourceParams):
    type: Literal["hf"] = "hf"
    path: str = Field(
        description="A folder written by `save_to_disk` (read from disk); otherwise streamed with "
        "`datasets.load_dataset`: a local folder of data files, a builder name (json, parquet, csv…) "
        "with `data_files`, or a Hub dataset id."
    )
    config: str | None = Field(None, description="Dataset configuration name (`load_dataset(name=…)`).")
    split: str = Field("train", description="Split to read.")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="Data files for `load_dataset`; relative to the recipe when `path` is a builder name."
    )
    shard_rows: int = Field(50_000, ge=1, description="Rows per shard when reading a `save_to_disk` folder.")

    def check_paths(self, base_dir: str) -> list[str]:
        """Local `data_files` must match files (URLs and `hf://` paths are left to `datasets`)."""
        files = self.data_files
        patterns = (list(files.values()) if isinstance(files, dict) else [files]) if files is not None else []
        flat = [p for entry in patterns for p in ([entry] if isinstance(entry, str) else entry)]
        return [f"data_files: no file matches {p!r} (looked in {os.path.abspath(base_dir)})"
                for p in flat if "://" not in p and not glob_files(p, base_dir)]


@register_source
class ParquetSource(FileSource):
    """Parquet files, split into shards of whole row groups."""

    type_name = "parquet"
    Params = ParquetParams
    params: ParquetParams

    def file_parts(self, path: str, file: str, remaining: int | None) -> list[FilePart]:
        """One shard per file, or per run of row groups in big files; with a `limit`, from the row
        counts in the footer: the last shard needed gets a row cap. A file whose footer cannot be
        read is damaged as a whole."""
        try:
            with open_binary(path) as handle:
                metadata = pq.read_metadata(handle)
        except (OSError, pa.ArrowException) as error:
            raise DamagedFile(_footer_damage(path, error)) from None
        row_counts = [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]
        parts = []
        for first_group, end_group, first_row, rows in row_group_ranges(row_counts, self.params.shard_rows):
            max_rows = None
            if remaining is not None:
                if remaining == 0:
                    break
                if rows > remaining:
                    max_rows = rows = remaining
                    end_group = first_group + groups_covering(row_counts[first_group:end_group], rows)
                remaining -= rows
            description = file if len(row_counts) == end_group - first_group else (
                f"{file} row groups {first_group}-{end_group - 1}"
            )
            payload = {"path": path, "file": file, "row_groups": (first_group, end_group),
                       "first_row": first_row, "max_rows": max_rows}
            parts.append(FilePart(description, payload, rows))
        return parts

    def read_part(self, shard: ShardSpec, batch_rows: int) -> Iterator[SourceBatch]:
        """Row group by row group: a group that cannot be read becomes one `corrupt_file` row
        (its rows are lost, those of every other group are kept)."""
        with open_binary(shard.payload["path"]) as handle:
            yield from self._read_groups(handle, shard.payload, batch_rows)

    def _read_groups(self, handle, payload: dict, batch_rows: int) -> Iterator[SourceBatch]:
        file = payload["file"]
        try:
            parquet = pq.ParquetFile(handle)
        except (OSError, pa.ArrowException) as error:
            yield self.damage_batch(file, None, _footer_damage(payload["path"], error))
            return
        first_group, end_group = payload["row_groups"]
        columns = self._columns_to_read(parquet.schema_arrow.names)
        row, left = payload["first_row"], payload["max_rows"]
        for group in range(first_group, end_group):
            rows = parquet.metadata.row_group(group).num_rows
            take = rows if left is None else min(left, rows)
            batches = parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns)
            try:
                yield from table_batches(self, batches, file=file, first_row=row, max_rows=take)
            except (OSError, pa.ArrowException) as error:
                damage = Damage(CORRUPT, f"row group {group} (rows {row}-{row + rows - 1}) cannot be read: "
                                f"{_first_line(error)}", row_group=group)
                yield self.damage_batch(file, row, damage)
            row += rows
            if left is not None:
                left -= take
                if left == 0:
                    return

    def _columns_to_read(self, available: list[str]) -> list[str] | None:
        """Without `keep_meta` only the fields that become columns are read; None means all."""
        if self.params.keep_meta:
            return None
        used = {self.params.text_field, self.params.id_field, *self.params.columns}
        wanted = [name for name in available if name in used]
        return wanted or None


@register_source
class HfSource(Source):
    """A Hugging Face dataset: a `save_to_disk` folder, local data files or a Hub id (`datasets`)."""

    type_name = "hf"
    Params = HfParams
    params: HfParams

    def plan(self) -> list[ShardSpec]:
        """`save_to_disk` folders: row ranges of `shard_rows`. Streamed datasets: one shard per
        stream shard, or with `limit` a single shard holding the first `limit` rows."""
        params = self.params
        label = f"{params.path}:{params.split}"
        if self._saved_folder() is not None:
            rows = self._load_saved().num_rows
            if params.limit is not None:
                rows = min(rows, params.limit)
            return [
                ShardSpec(self.index, f"{label}[{start}:{min(start + params.shard_rows, rows)}]",
                          {"rows": (start, min(start + params.shard_rows, rows)), "file": label})
                for start in range(0, rows, params.shard_rows)
            ]
        if params.limit is not None:
            return [ShardSpec(self.index, f"{label}[:{params.limit}]",
                              {"stream_shard": None, "file": label, "max_rows": params.limit})]
        count = self._load_stream().num_shards
        shards = []
        for index in range(count):
            shard_label = label if count == 1 else f"{label}#{index}"
            payload = {"stream_shard": (index, count), "file": shard_label, "max_rows": None}
            shards.append(ShardSpec(self.index, shard_label, payload))
        return shards

    def read(self, shard: ShardSpec, batch_rows: int) -> Iterator[SourceBatch]:
        payload = shard.payload
        if "rows" in payload:
            start, stop = payload["rows"]
            dataset = self._load_saved().select(range(start, stop))
            tables = dataset.with_format("arrow").iter(batch_size=batch_rows)
            yield from table_batches(self, tables, file=payload["file"], first_row=start, max_rows=None)
            return
        dataset = self._load_stream()
        if payload["stream_shard"] is not None:
            index, count = payload["stream_shard"]
            dataset = dataset.shard(num_shards=count, index=index)
        tables = dataset.with_format("arrow").iter(batch_size=batch_rows)
        yield from table_batches(self, tables, file=payload["file"], first_row=0, max_rows=payload["max_rows"])

    def _local_path(self) -> Path:
        return Path(self.base_dir, os.path.expanduser(self.params.path))

    def _saved_folder(self) -> Path | None:
        folder = self._local_path()
        if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
            return folder
        return None

    def _load_saved(self) -> Any:
        import datasets

        loaded = datasets.load_from_disk(str(self._saved_folder()))
        if isinstance(loaded, datasets.DatasetDict):
            if self.params.split not in loaded:
                raise KeyError(f"{self.params.path} has splits {sorted(loaded)}, not {self.params.split!r}")
            loaded = loaded[self.params.split]
        return loaded

    def _load_stream(self) -> Any:
        import datasets
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

        local = self._local_path()
        path = str(local.resolve()) if local.is_dir() else self.params.path
        data_files = self.params.data_files
        if path in _PACKAGED_DATASETS_MODULES and data_files is not None:
            data_files = _resolve_data_files(data_files, self.base_dir)
        return datasets.load_dataset(
            path, name=self.params.config, split=self.params.split, streaming=True, data_files=data_files
        )


def table_batches(
    source: Source, tables: Iterable[pa.Table | pa.RecordBatch], *, file: str, first_row: int, max_rows: int | None
) -> Iterator[SourceBatch]:
    """Check Arrow batches row by row number (ids `<source>:<file>:<row>`), stopping after `max_rows`."""
    params = source.params
    row = first_row
    left = max_rows
    for arrow_table in tables:
        table = pl.from_arrow(arrow_table)
        if left is not None:
            table = table.head(left)
            left -= table.height
        table, undecodable = decode_binary(table, params.text_field)
        records, quarantine = split_table_rows(
            _plain_strings(table),
            source=source.name,
            file=file,
            first_line=row,
            text_field=params.text_field,
            id_field=params.id_field,
            columns=params.columns,
            keep_meta=params.keep_meta,
        )
        if undecodable:
            quarantine = _mark_undecodable(quarantine, undecodable, file, params.text_field, first_row=row)
        row += table.height
        yield SourceBatch(records=records, quarantine=quarantine, lines_read=table.height)
        if left == 0:
            return


def decode_binary(table: pl.DataFrame, text_field: str) -> tuple[pl.DataFrame, dict[int, bytes]]:
    """Binary columns decoded as UTF-8, row by row. A text value that is not UTF-8 becomes null
    and is returned (row index → bytes) to be quarantined as `invalid_utf8`; in other columns such
    a value is kept as base64 text."""
    undecodable: dict[int, bytes] = {}
    decoded = []
    for name, dtype in table.schema.items():
        if dtype != pl.Binary:
            continue
        values = []
        for index, value in enumerate(table[name].to_list()):
            if value is None:
                values.append(None)
                continue
            try:
                values.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                if name == text_field:
                    undecodable[index] = value
                    values.append(None)
                else:
                    values.append(base64.b64encode(value).decode("ascii"))
        decoded.append(pl.Series(name, values, dtype=pl.String))
    return (table.with_columns(decoded) if decoded else table), undecodable


def _mark_undecodable(quarantine: pl.DataFrame, undecodable: dict[int, bytes], file: str, text_field: str,
                      *, first_row: int) -> pl.DataFrame:
    """Rows whose binary text is not UTF-8: reason `invalid_utf8`, the bytes kept as base64."""
    lines = {first_row + index: value for index, value in undecodable.items()}
    bad = pl.col("line").is_in(list(lines))
    details = {line: f"{file} row {line}: field {text_field!r} is binary and not valid UTF-8 "
               f"({_utf8_error(value)})" for line, value in lines.items()}
    encoded = {line: base64.b64encode(value).decode("ascii") for line, value in lines.items()}
    return quarantine.with_columns(
        pl.when(bad).then(pl.lit("invalid_utf8")).otherwise(pl.col("reason")).alias("reason"),
        pl.when(bad).then(pl.col("line").replace_strict(details, default=None, return_dtype=pl.String))
        .otherwise(pl.col("detail")).alias("detail"),
        pl.when(bad).then(pl.col("line").replace_strict(encoded, default=None, return_dtype=pl.String))
        .otherwise(pl.col("raw_b64")).alias("raw_b64"),
    )


def _utf8_error(value: bytes) -> str:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"byte {bad.start}: {bad.reason}"
    return "valid"


def _footer_damage(path: str, error: Exception) -> Damage:
    """A parquet file without a readable footer: cut short when it starts like parquet but does
    not end like it, else corrupt."""
    size = file_size(path) if exists(path) else 0
    with open_binary(path) as handle:
        head = handle.read(4)
        handle.seek(max(size - 4, 0))
        tail = handle.read(4)
    if head == b"PAR1" and tail != b"PAR1":
        return Damage(TRUNCATED, f"the file is cut short ({size} bytes, no parquet footer): {_first_line(error)}")
    return Damage(CORRUPT, f"the parquet footer cannot be read: {_first_line(error)}")


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _plain_strings(table: pl.DataFrame) -> pl.DataFrame:
    """Dictionary-encoded strings arrive as Categorical and all-null columns as Null: read both
    as String, so such a text column is checked as text rather than rejected for its type."""
    return table.with_columns((cs.categorical() | cs.enum() | cs.by_dtype(pl.Null)).cast(pl.String))


def row_group_ranges(row_counts: list[int], shard_rows: int) -> list[tuple[int, int, int, int]]:
    """Consecutive row groups gathered until each run has at least `shard_rows` rows:
    (first group, end group, first row, rows)."""
    ranges = []
    first_group, first_row, rows = 0, 0, 0
    for group, count in enumerate(row_counts):
        rows += count
        if rows >= shard_rows or group == len(row_counts) - 1:
            ranges.append((first_group, group + 1, first_row, rows))
            first_group, first_row, rows = group + 1, first_row + rows, 0
    return ranges


def groups_covering(row_counts: list[int], rows: int) -> int:
    """How many leading row groups hold the first `rows` rows."""
    total = 0
    for taken, count in enumerate(row_counts, start=1):
        total += count
        if total >= rows:
            return taken
    return len(row_counts)


def _resolve_data_files(data_files: Any, base_dir: str) -> Any:
    if isinstance(data_files, dict):
        return {split: _resolve_data_files(files, base_dir) for split, files in data_files.items()}
    if isinstance(data_files, list):
        return [_resolve_data_files(files, base_dir) for files in data_files]
    return os.path.join(base_dir, os.path.expanduser(data_files))
