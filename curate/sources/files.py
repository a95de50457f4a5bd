"""The base of every file source: find the files, open them decompressed, quarantine damage, cap at `limit`.

A file source (jsonl, parquet, and any later one such as WARC) subclasses `FileSource` and writes
two hooks: `file_parts` (how one file splits into shards, counting records only when a `limit`
needs it) and `read_part` (the records of one shard). This base owns the rest:

- `path` globs are expanded in sorted order, local paths and fsspec URLs alike (`s3://bucket/raw/*.jsonl.zst`,
  see `engine.paths`), and `check_paths` reports a pattern matching nothing before any work starts;
- `open_file` gives a buffered stream of the decompressed bytes (`.gz`, `.zst`/`.zstd`, else plain)
  that never raises on damage: a file cut short (`truncated_file`) or with bytes that do not
  decompress (`corrupt_file`) simply ends there, and `FileReader.damage` says where. Everything
  before the damage is read;
- a file that cannot even be planned (a parquet footer cut off) becomes a shard of its own whose
  reading yields one quarantine row, so the run goes on with every other file;
- `limit` is spread over the files in order: the last file needed gets a cap, later ones are left out.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import polars as pl
import zstandard
from pydantic import Field

from datamill.curate.engine.paths import exists, glob_files, is_url, open_binary
from datamill.curate.engine.records import QUARANTINE_SCHEMA, empty_records, quarantine_row
from datamill.curate.engine.source import ShardSpec, Source, SourceBatch, SourceParams

READ_BUFFER_BYTES = 1 << 20
COUNT_CHUNK_BYTES = 4 << 20
COMPRESSED_CHUNK_BYTES = 16 << 10
"""Compressed bytes fed to a decompressor at a time: bounds the output of one step."""
GZIP_OUTPUT_BYTES = 1 << 20
ZSTD_INPUT_BYTES = 1 << 10
"""zstd's decompressor takes no output limit, and one 4-byte RLE block can stand for 128 KiB: 1 KiB
of input at a time bounds a step's output to 32 MiB, whatever a crafted file (a zstd bomb) holds."""
ZSTD_MAX_WINDOW = 1 << 31
"""Accept frames written with `zstd --long` (windows up to 2 GiB)."""

TRUNCATED = "truncated_file"
CORRUPT = "corrupt_file"
MISSING = "missing_file"


class FileSourceParams(SourceParams):
    """Parameters of every file source: `path` plus what all sources accept."""

    path: str | list[str] = Field(
        description="File path or glob (`**` allowed), or a list of them; relative to the recipe."
    )

    def check_paths(self, base_dir: str) -> list[str]:
        """Problems with the input paths, as `key: message` lines (empty when every pattern matches)."""
        problems = []
        for i, pattern in enumerate(as_list(self.path)):
            if not glob_files(pattern, base_dir):
                key = "path" if isinstance(self.path, str) else f"path[{i}]"
                problems.append(f"{key}: no file matches {pattern!r} (looked in {os.path.abspath(base_dir)})")
        return problems


@dataclass(frozen=True)
class Damage:
    """Where and how a file stopped being readable."""

    reason: str
    """`truncated_file` or `corrupt_file`."""
    detail: str
    offset: int | None = None
    """Compressed byte offset (stream files) at which the damage was found."""
    row_group: int | None = None
    """Parquet row group that could not be read."""


class DamagedFile(Exception):
    """Raised by `file_parts` when a file cannot be planned at all (e.g. no parquet footer)."""

    def __init__(self, damage: Damage):
        super().__init__(damage.detail)
        self.damage = damage


@dataclass(frozen=True)
class FilePart:
    """One shard of one file, as `file_parts` plans it."""

    description: str
    payload: dict
    records: int | None = None
    """Input records the shard holds (needed only when a `limit` is being spread)."""


# --- paths -------------------------------------------------------------------------------------


def as_list(patterns: str | list[str]) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns)


def expand_paths(patterns: str | list[str], base_dir: str) -> list[str]:
    """Files matching the path(s) or glob(s), relative ones against `base_dir`: sorted, unique.

    A pattern that matches no file is an error: a recipe pointing at nothing is a mistake.
    """
    found: set[str] = set()
    for pattern in as_list(patterns):
        matches = glob_files(pattern, base_dir)
        if not matches:
            raise FileNotFoundError(f"no file matches {pattern!r} (looked in {os.path.abspath(base_dir)})")
        found.update(matches)
    return sorted(found)


def display_path(path: str, base_dir: str) -> str:
    """How a file is named in ids, shard descriptions and quarantine rows: relative to
    `base_dir` when inside it (so ids do not change when the project folder moves), else absolute
    (a URL as it is)."""
    if is_url(path):
        return path
    try:
        return Path(path).relative_to(Path(base_dir).resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


# --- decompressed streams that end at damage instead of raising ---------------------------------


class _Decompressing(io.RawIOBase):
    """Raw stream of a file's decompressed bytes; on damage it records `damage` and ends."""

    def __init__(self, path: Path | str, codec: str):
        self.file = open_binary(str(path))
        self.codec = codec
        self.damage: Damage | None = None
        self.output = b""
        self.pending = b""
        self.decoder = self._new_decoder()
        self.started = False
        """Whether the current member/frame has received any input."""

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.file.close()
        super().close()

    def _new_decoder(self):
        if self.codec == "gz":
            return zlib.decompressobj(wbits=31)
        return zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).decompressobj()

    def offset(self) -> int:
        """Compressed bytes consumed so far."""
        tail = len(self.pending) + len(getattr(self.decoder, "unconsumed_tail", b""))
        return self.file.tell() - tail

    def readinto(self, buffer) -> int:
        while not self.output:
            if not self._step():
                return 0
        size = min(len(buffer), len(self.output))
        buffer[:size] = self.output[:size]
        self.output = self.output[size:]
        return size

    def _step(self) -> bool:
        """Decompress some more into `output`; False at the end of the stream (or damage)."""
        if self.damage is not None:
            return False
        tail = getattr(self.decoder, "unconsumed_tail", b"")
        data = tail or self.pending or self.file.read(COMPRESSED_CHUNK_BYTES)
        self.pending = b""
        if self.codec != "gz" and len(data) > ZSTD_INPUT_BYTES:
            data, self.pending = data[:ZSTD_INPUT_BYTES], data[ZSTD_INPUT_BYTES:]
        if not data:
            if self.started and not self.decoder.eof:
                name = "gzip member" if self.codec == "gz" else "zstd frame"
                self.damage = Damage(TRUNCATED, f"the file ends inside a {name} (cut at byte {self.offset()})",
                                     self.offset())
            return False
        if not self.started and self.codec == "gz" and not data.strip(b"\0"):
            return self._step()  # zero padding after the last gzip member, as gzip allows
        self.started = True
        at = self.file.tell() - len(data) - len(self.pending)
        try:
            if self.codec == "gz":
                self.output = self.decoder.decompress(data, GZIP_OUTPUT_BYTES)
            else:
                self.output = self.decoder.decompress(data)
        except (zlib.error, zstandard.ZstdError) as error:
            self.damage = Damage(CORRUPT, f"cannot decompress the bytes after byte {at}: {error}", at)
            return False
        if self.decoder.eof:
            self.pending = self.decoder.unused_data + self.pending
            self.decoder = self._new_decoder()
            self.started = False
        return True


class FileReader:
    """A file opened for reading: `stream` (buffered, decompressed) and, once it ended, `damage`."""

    def __init__(self, path: Path | str):
        suffix = os.path.splitext(str(path))[1].lower()
        codec = {".gz": "gz", ".zst": "zst", ".zstd": "zst"}.get(suffix)
        self.raw = _Decompressing(path, codec) if codec else None
        self.stream: BinaryIO = (io.BufferedReader(self.raw, buffer_size=READ_BUFFER_BYTES) if self.raw
                                 else open_binary(str(path), buffering=READ_BUFFER_BYTES))

    @property
    def damage(self) -> Damage | None:
        return self.raw.damage if self.raw is not None else None

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc) -> None:
        self.stream.close()


def open_file(path: Path | str) -> FileReader:
    return FileReader(path)


def count_lines(path: Path | str, stop_at: int | None = None) -> int:
    """Lines in the file (a last line without a newline counts), counted in chunks without
    splitting; stops early once `stop_at` lines are known to exist. A damaged file counts the
    lines before the damage."""
    lines = 0
    last_byte = b"\n"
    with open_file(path) as reader:
        while chunk := reader.stream.read(COUNT_CHUNK_BYTES):
            lines += chunk.count(b"\n")
            last_byte = chunk[-1:]
            if stop_at is not None and lines >= stop_at:
                return lines
    return lines + (last_byte != b"\n")


# --- the base class ----------------------------------------------------------------------------


class FileSource(Source):
    """A source read from files matched by `params.path`; subclasses write `file_parts` and `read_part`."""

    params: FileSourceParams

    def file_parts(self, path: str, file: str, remaining: int | None) -> list[FilePart]:
        """The shards of one file (payloads must hold `path` and `file`). With `remaining` set,
        the parts hold at most that many records in all, and say how many in `records`.
        Raise `DamagedFile` when the file cannot be planned."""
        raise NotImplementedError

    def read_part(self, shard: ShardSpec, batch_rows: int) -> Iterator[SourceBatch]:
        """The records of one planned shard."""
        raise NotImplementedError

    def plan(self) -> list[ShardSpec]:
        remaining = self.params.limit
        shards = []
        for path in expand_paths(self.params.path, self.base_dir):
            if remaining == 0:
                break
            file = display_path(path, self.base_dir)
            try:
                parts = self.file_parts(path, file, remaining)
            except DamagedFile as damaged:
                payload = {"path": path, "file": file, "damage": asdict(damaged.damage)}
                shards.append(ShardSpec(self.index, f"{file} (damaged)", payload))
                continue
            for part in parts:
                if remaining is not None:
                    remaining -= part.records or 0
                shards.append(ShardSpec(self.index, part.description, part.payload))
        return shards

    def read(self, shard: ShardSpec, batch_rows: int) -> Iterator[SourceBatch]:
        if "damage" in shard.payload:
            yield self.damage_batch(shard.payload["file"], None, Damage(**shard.payload["damage"]))
            return
        if not exists(shard.payload["path"]):
            gone = Damage(MISSING, f"the file was planned but is gone ({shard.payload['path']})")
            yield self.damage_batch(shard.payload["file"], None, gone)
            return
        yield from self.read_part(shard, batch_rows)

    def damage_row(self, file: str, line: int | None, damage: Damage, raw: bytes | None = None) -> dict:
        """The quarantine row of a damaged file: reason, file, the line or row where it happened."""
        return quarantine_row(self.name, file, line, damage.reason, f"{file}: {damage.detail}", raw)

    def damage_batch(self, file: str, line: int | None, damage: Damage, raw: bytes | None = None) -> SourceBatch:
        quarantine = pl.DataFrame([self.damage_row(file, line, damage, raw)], schema=QUARANTINE_SCHEMA)
        return SourceBatch(records=empty_records(self.params.columns), quarantine=quarantine, lines_read=1)
