"""File helpers shared by file sources: expand globs, name files for people, open them decompressed.

Compression is chosen by suffix: `.gz` (gzip), `.zst` / `.zstd` (zstandard, streaming); anything
else is read as plain bytes. Every opener returns a buffered binary stream with `readline`.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
from pathlib import Path
from typing import BinaryIO

import zstandard

READ_BUFFER_BYTES = 1 << 20
COUNT_CHUNK_BYTES = 4 << 20
ZSTD_MAX_WINDOW = 1 << 31
"""Accept frames written with `zstd --long` (windows up to 2 GiB)."""


def as_list(patterns: str | list[str]) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns)


def expand_paths(patterns: str | list[str], base_dir: str) -> list[Path]:
    """Files matching the path(s) or glob(s), relative ones against `base_dir`: sorted, unique.

    A pattern that matches no file is an error: a recipe pointing at nothing is a mistake.
    """
    found: set[Path] = set()
    for pattern in as_list(patterns):
        full = os.path.join(base_dir, os.path.expanduser(pattern))
        matches = [Path(m) for m in glob.glob(full, recursive=True) if os.path.isfile(m)]
        if not matches:
            raise FileNotFoundError(f"no file matches {pattern!r} (looked in {os.path.abspath(base_dir)})")
        found.update(m.resolve() for m in matches)
    return sorted(found)


def display_path(path: Path, base_dir: str) -> str:
    """How a file is named in ids, shard descriptions and quarantine rows: relative to
    `base_dir` when inside it (so ids do not change when the project folder moves), else absolute."""
    base = Path(base_dir).resolve()
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def open_decompressed(path: Path | str) -> BinaryIO:
    """A buffered binary stream over the file's decompressed bytes."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix in (".zst", ".zstd"):
        raw = open(path, "rb")
        reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(raw, closefd=True)
        return io.BufferedReader(reader, buffer_size=READ_BUFFER_BYTES)
    return open(path, "rb", buffering=READ_BUFFER_BYTES)


def count_lines(path: Path | str, stop_at: int | None = None) -> int:
    """Lines in the file (a last line without a newline counts), counted in chunks without
    splitting; stops early once `stop_at` lines are known to exist."""
    lines = 0
    last_byte = b"\n"
    with open_decompressed(path) as stream:
        while chunk := stream.read(COUNT_CHUNK_BYTES):
            lines += chunk.count(b"\n")
            last_byte = chunk[-1:]
            if stop_at is not None and lines >= stop_at:
                return lines
    return lines + (last_byte != b"\n")
