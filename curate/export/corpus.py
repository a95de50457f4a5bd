"""Reading what a run left: its shard files in corpus order, as record batches, and its stats and recipe."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import zstandard

SUFFIXES = (".parquet", ".jsonl", ".jsonl.zst", ".json")


def shard_files(path: str | Path) -> list[Path]:
    """The corpus files of a run dir (`<run>/shards/`) or of a folder of parquet/jsonl(.zst) files,
    in name order (the run's corpus order)."""
    folder = Path(path)
    if (folder / "shards").is_dir():
        folder = folder / "shards"
    if not folder.is_dir():
        raise FileNotFoundError(f"{path} is neither a run dir nor a folder of corpus files")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no .parquet, .jsonl or .jsonl.zst files in {folder}")
    return files


def read_file(file: Path) -> pl.DataFrame:
    """One corpus file as a frame."""
    if file.suffix == ".parquet":
        return pl.read_parquet(file)
    if file.name.endswith(".zst"):
        with open(file, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
            return pl.read_ndjson(stream.read())
    return pl.read_ndjson(file)


def columns_of(file: Path) -> list[str]:
    if file.suffix == ".parquet":
        return pl.scan_parquet(file).collect_schema().names()
    return read_file(file).columns


def record_batches(files: list[Path], batch_rows: int) -> Iterator[tuple[Path, pl.DataFrame]]:
    """(file, batch) for every slice of at most `batch_rows` records, file by file."""
    for file in files:
        for batch in read_file(file).iter_slices(batch_rows):
            yield file, batch


def run_info(path: str | Path) -> dict[str, Any]:
    """`stats` (stats.json) and `recipe` (the recipe the run was made from), where the run left them."""
    root = Path(path)
    info: dict[str, Any] = {"stats": None, "recipe": None}
    if (root / "stats.json").is_file():
        info["stats"] = json.loads((root / "stats.json").read_text())
    if (root / "state" / "recipe.json").is_file():
        info["recipe"] = json.loads((root / "state" / "recipe.json").read_text()).get("recipe")
    return info
