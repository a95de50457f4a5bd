"""The `jsonl` source: JSON-lines files (plain, gzip or zstandard) read as streamed record batches.

Each file is one shard, read line by line in binary, so a file of any size, or a single line of
many megabytes, never has to fit in memory whole. A line that cannot become a record goes to
quarantine with the reason, its file and line number, and its bytes; blank lines are skipped.
Files, decompression, damaged files (`truncated_file` / `corrupt_file`: the lines before the damage
are kept, the cut line goes into the damage row) and `limit` come from `sources.files.FileSource`.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterator
from typing import Any, Literal

import orjson
import polars as pl
from pydantic import Field

from datamill.curate.engine.records import QUARANTINE_SCHEMA, quarantine_row, record_schema
from datamill.curate.engine.registry import register_source
from datamill.curate.engine.source import ShardSpec, SourceBatch
from datamill.curate.sources.files import FilePart, FileSource, FileSourceParams, count_lines, open_file

FLUSH_TEXT_CHARS = 64 << 20
"""A batch is handed on once its text (and quarantined raw lines) exceed about 64 MB."""

_INTEGER = re.compile(r"[+-]?\d+")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class JsonlParams(FileSourceParams):
    type: Literal["jsonl"] = "jsonl"
    path: str | list[str] = Field(
        description="File path or glob (`**` allowed), or a list of them; relative to the recipe. "
        "Suffixes .gz and .zst are decompressed; every other file is read as JSON lines."
    )


class Rejected(Exception):
    """A line that cannot become a record: the quarantine reason and a detail for people."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@register_source
class JsonlSource(FileSource):
    """JSON-lines files (plain, .gz or .zst), one record per line."""

    type_name = "jsonl"
    Params = JsonlParams
    params: JsonlParams

    def file_parts(self, path: str, file: str, remaining: int | None) -> list[FilePart]:
        """One shard per file. With a `limit`, the file's lines are counted (up to what is still
        needed) and the shard gets a line cap."""
        max_lines = None if remaining is None else min(count_lines(path, stop_at=remaining), remaining)
        if max_lines == 0:
            return []
        payload = {"path": path, "file": file, "max_lines": max_lines}
        return [FilePart(file, payload, max_lines)]

    def read_part(self, shard: ShardSpec, batch_rows: int) -> Iterator[SourceBatch]:
        file = shard.payload["file"]
        max_lines = shard.payload["max_lines"]
        batch = LineBatch(self.params, self.name, file)
        line_number = 0
        with open_file(shard.payload["path"]) as reader:
            for line_number, raw in enumerate(reader.stream, start=1):
                if max_lines is not None and line_number > max_lines:
                    break
                if reader.damage is not None and not raw.endswith(b"\n"):
                    batch.quarantine.append(self.damage_row(file, line_number, reader.damage, raw))
                    batch.lines += 1
                    break  # the cut line belongs to the damage row, not to a bad_json row
                if line_number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                if not raw or raw.isspace():
                    continue
                batch.add(raw, line_number)
                if batch.records >= batch_rows or batch.rejected >= batch_rows or batch.chars > FLUSH_TEXT_CHARS:
                    yield batch.flush()
            else:
                if reader.damage is not None and (max_lines is None or line_number < max_lines):
                    batch.quarantine.append(self.damage_row(file, line_number + 1, reader.damage))
                    batch.lines += 1
        if batch.lines:
            yield batch.flush()


class LineBatch:
    """Accumulates parsed lines column by column until flushed into a SourceBatch."""

    def __init__(self, params: JsonlParams, source: str, file: str):
        self.params = params
        self.source = source
        self.file = file
        self.schema = record_schema(params.columns)
        self.converters = {name: CONVERTERS[kind] for name, kind in params.columns.items()}
        self.used_fields = {params.text_field, params.id_field, *params.columns}
        self._reset()

    def _reset(self) -> None:
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.metas: list[str | None] = []
        self.typed: dict[str, list[Any]] = {name: [] for name in self.params.columns}
        self.quarantine: list[dict] = []
        self.lines = 0
        self.chars = 0

    @property
    def records(self) -> int:
        return len(self.texts)

    @property
    def rejected(self) -> int:
        return len(self.quarantine)

    def add(self, raw: bytes, line_number: int) -> None:
        self.lines += 1
        where = f"{self.file} line {line_number}"
        try:
            ident, text, meta, typed = self._parse(raw, line_number, where)
        except Rejected as why:
            content = raw.rstrip(b"\r\n")
            self.quarantine.append(
                quarantine_row(self.source, self.file, line_number, why.reason, why.detail, content)
            )
            self.chars += len(content)
            return
        self.ids.append(ident)
        self.texts.append(text)
        self.metas.append(meta)
        for name, value in typed.items():
            self.typed[name].append(value)
        self.chars += len(text)

    def _parse(self, raw: bytes, line_number: int, where: str) -> tuple[str, str, str | None, dict[str, Any]]:
        params = self.params
        row = _load_object(raw, where)
        text = _required(row, params.text_field, where)
        if not isinstance(text, str):
            raise Rejected(
                f"non_string_field:{params.text_field}",
                f"{where}: field {params.text_field!r} is {_json_kind(text)}, expected string",
            )
        if not text or text.isspace():
            raise Rejected("empty_text", f"{where}: field {params.text_field!r} is empty")
        if params.id_field is not None:
            ident = _id_text(_required(row, params.id_field, where))
        else:
            ident = f"{self.source}:{self.file}:{line_number}"
        typed = {}
        for name, convert in self.converters.items():
            value = row.get(name)
            try:
                typed[name] = None if value is None else convert(value)
            except (TypeError, ValueError):
                kind = params.columns[name]
                preview = orjson.dumps(value)[:80].decode("utf-8", "replace")
                found = f"{_json_kind(value)} {preview}"
                raise Rejected(
                    f"bad_field:{name}", f"{where}: field {name!r} is {found}, cannot be read as {kind}"
                ) from None
        meta = None
        if params.keep_meta:
            rest = {key: value for key, value in row.items() if key not in self.used_fields}
            meta = orjson.dumps(rest).decode() if rest else None
        return ident, text, meta, typed

    def flush(self) -> SourceBatch:
        columns = {
            "id": self.ids,
            "source": [self.source] * len(self.ids),
            "text": self.texts,
            "meta": self.metas,
            **self.typed,
        }
        batch = SourceBatch(
            records=pl.DataFrame(columns, schema=self.schema),
            quarantine=pl.DataFrame(self.quarantine, schema=QUARANTINE_SCHEMA),
            lines_read=self.lines,
        )
        self._reset()
        return batch


def _load_object(raw: bytes, where: str) -> dict:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise Rejected("invalid_utf8", f"{where}: invalid UTF-8 at byte {bad.start} ({bad.reason})") from None
        raise Rejected("bad_json", f"{where}: {error.msg} at column {error.colno}") from None
    if not isinstance(value, dict):
        raise Rejected("not_an_object", f"{where}: JSON {_json_kind(value)}, expected object")
    return value


def _required(row: dict, field: str, where: str) -> Any:
    if field not in row:
        raise Rejected(f"missing_field:{field}", f"{where}: no field {field!r}")
    value = row[field]
    if value is None:
        raise Rejected(f"missing_field:{field}", f"{where}: field {field!r} is null")
    return value


def _id_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _json_kind(value: Any) -> str:
    """Type names as a JSON reader sees them: object, array, string, int, float, bool, null."""
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return orjson.dumps(value).decode()
    raise TypeError(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and _INTEGER.fullmatch(value):
        value = int(value)
    if not isinstance(value, int) or not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(value)
    return value


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(value)
    return float(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(value)


CONVERTERS: dict[str, Callable[[Any], Any]] = {"str": _to_str, "int": _to_int, "float": _to_float, "bool": _to_bool}
"""How a JSON value becomes a declared column's type; a value that does not fit is `bad_field`."""
