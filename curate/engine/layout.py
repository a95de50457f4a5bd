"""The run directory: where each output goes, and the atomic commit that makes resume safe.

    <run>/shards/part-SSSSS-CCC.<ext>     the corpus (S = input shard, C = chunk of shard_rows)
    <run>/quarantine/part-SSSSS-segK-CCC.jsonl   malformed input and records a stage failed on, with reasons
    <run>/removed/<stage>/part-SSSSS-segK-CCC.parquet   rows a stage dropped (with output.keep_removed)
    <run>/state/                          intermediate segments, barrier tables, done markers
    <run>/stats.json, report.md, report.html, plots/

A shard's files are first written under `state/tmp/`, then renamed into place, then its done marker
is written (atomically). A shard without a marker is redone from scratch: whatever it left behind
is deleted first, so a killed run never leaves a partial shard behind after the re-run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import xxhash

LOCK_FILES = ("run.lock", "run.owner.json")
"""Files in state/ that belong to the run lock (see engine.lock) and survive `clear()`."""


class RunLayout:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.shards = self.root / "shards"
        self.quarantine = self.root / "quarantine"
        self.removed = self.root / "removed"
        self.state = self.root / "state"

    # --- names -------------------------------------------------------------------------
    def segment_dir(self, segment: int) -> Path:
        return self.state / f"segment-{segment}"

    def intermediate(self, segment: int, shard: int) -> Path:
        return self.segment_dir(segment) / f"part-{shard:05d}-000.parquet"

    def summary(self, segment: int, shard: int) -> Path:
        return self.segment_dir(segment) / f"summary-{shard:05d}.parquet"

    def decision(self, segment: int) -> Path:
        return self.segment_dir(segment) / "decision.parquet"

    def marker(self, segment: int, shard: int) -> Path:
        return self.state / "done" / f"segment-{segment}-shard-{shard:05d}.json"

    def tmp_dir(self, segment: int, shard: int) -> Path:
        return self.state / "tmp" / f"segment-{segment}-shard-{shard:05d}"

    # --- markers -----------------------------------------------------------------------
    def is_done(self, segment: int, shard: int) -> bool:
        return self.marker(segment, shard).exists()

    def verified_done(self, segment: int, shard: int) -> bool:
        """The shard has a done marker and every file it committed is there, unchanged (size and
        xxh3 checksum); a shard whose files were deleted or edited since is redone."""
        if not self.is_done(segment, shard):
            return False
        committed = self.read_marker(segment, shard).get("committed")
        if committed is None:
            return False
        for entry in committed:
            path = self.root / entry["path"]
            if not path.is_file() or path.stat().st_size != entry["bytes"] or file_checksum(path) != entry["xxh3"]:
                return False
        return True

    def read_marker(self, segment: int, shard: int) -> dict[str, Any]:
        return json.loads(self.marker(segment, shard).read_text())

    def done_markers(self) -> list[dict[str, Any]]:
        folder = self.state / "done"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []

    # --- shard lifecycle ---------------------------------------------------------------
    def begin(self, segment: int, shard: int) -> Path:
        """Clear anything an interrupted attempt at this shard left, return a fresh tmp dir."""
        tmp = self.tmp_dir(segment, shard)
        shutil.rmtree(tmp, ignore_errors=True)
        for path in self._final_paths(segment, shard):
            path.unlink(missing_ok=True)
        tmp.mkdir(parents=True)
        return tmp

    def _final_paths(self, segment: int, shard: int) -> list[Path]:
        part, own = f"part-{shard:05d}", shard_prefix(segment, shard)
        found = [self.summary(segment, shard), *self.segment_dir(segment).glob(f"{part}-*")]
        if self.shards.exists():
            found += self.shards.glob(f"{part}-*")
        if self.quarantine.exists():
            found += self.quarantine.glob(f"{own}-*")
        if self.removed.exists():
            found += self.removed.glob(f"*/{own}-*")
        return found

    def commit(self, segment: int, shard: int, moves: list[tuple[Path, Path]], marker: dict[str, Any]) -> None:
        """Rename finished files into place, then write the done marker (the commit point), which
        lists every committed file with its size and checksum so resume can verify them."""
        files = []
        for source, target in moves:
            files.append({"path": target.relative_to(self.root).as_posix(), "bytes": source.stat().st_size,
                          "xxh3": file_checksum(source)})
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        write_json_atomic(self.marker(segment, shard), {**marker, "committed": files})
        shutil.rmtree(self.tmp_dir(segment, shard), ignore_errors=True)

    def clear(self) -> None:
        """Delete every output of a previous run (for --fresh)."""
        for folder in (self.shards, self.quarantine, self.removed, self.root / "plots"):
            shutil.rmtree(folder, ignore_errors=True)
        if self.state.exists():  # the run lock's files stay: the lock is held while clearing
            for path in self.state.iterdir():
                if path.name not in LOCK_FILES:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        for name in ("stats.json", "report.md", "report.html"):
            (self.root / name).unlink(missing_ok=True)


def shard_prefix(segment: int, shard: int) -> str:
    """File-name prefix of what segment `segment` of shard `shard` writes to quarantine/removed."""
    return f"part-{shard:05d}-seg{segment}"


def file_checksum(path: Path) -> str:
    """xxh3-64 of a file's bytes, read in 1 MiB blocks."""
    digest = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1, sort_keys=True))
    os.replace(tmp, path)
