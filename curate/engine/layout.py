"""The run directory: where each output goes, and the atomic commit that makes resume safe.

    <run>/shards/part-SSSSS-CCC.<ext>     the corpus (S = input shard, C = chunk of shard_rows)
    <run>/quarantine/part-SSSSS-segK-CCC.jsonl   malformed input and records a stage failed on, with reasons
    <run>/removed/<stage>/part-SSSSS-segK-CCC.parquet   rows a stage dropped (with output.keep_removed)
    <run>/state/                          intermediate segments, barrier tables, done markers
    <run>/stats.json, report.md, report.html, plots/

A shard's files are first written under `state/tmp/`, then renamed into place, then its done marker
is written (atomically). A shard without a marker is redone from scratch: whatever it left behind
is deleted first, so a killed run never leaves a partial shard behind after the re-run.

`output.dir` may also be an fsspec URL (`s3://bucket/prefix`, `gs://…`, `hf://…`; `file://` is a
plain local path). Object stores have no rename, so there the commit is: write the shard's files
to a local scratch folder (engine.store.local_mirror), upload each under its FINAL name, then
write the done marker LAST, listing each file with its size, xxh3 and the store's version of the
object (ETag/MD5/CRC32C). Resume trusts a marker only when every file it lists is on the store
with that size and version (re-hashing the object's bytes where the store reports no version);
otherwise the shard's objects are deleted and it is redone. Segment files, barrier summaries and
decisions are read back from the store into the scratch folder (`fetch`), so another machine can
resume the run, and the run's JSON state (recipe, plan, stats) lives on the store.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path
from typing import Any

import xxhash

from datamill.curate.engine.store import ObjectStore, is_remote, local_mirror, local_path, size_of, version

LOCK_FILES = ("run.lock", "run.owner.json")
"""Files in state/ that belong to the run lock (see engine.lock) and survive `clear()`."""


class RunLayout:
    """Names in a run directory, and its commit protocol; `root` is where files are written locally
    (the run directory itself, or for a remote `location` this machine's scratch mirror of it)."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self.store = ObjectStore(self.location) if is_remote(self.location) else None
        self.root = local_mirror(self.store.url) if self.store else local_path(location)
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

    @property
    def address(self) -> str:
        """What another process or machine opens this run with: the URL, or the absolute path."""
        return self.store.url if self.store else str(self.root.resolve())

    def rel(self, path: Path) -> str:
        """`path` (under `root`) as the run-relative name the store and the markers use."""
        return Path(path).relative_to(self.root).as_posix()

    # --- markers -----------------------------------------------------------------------
    def is_done(self, segment: int, shard: int) -> bool:
        if self.store:
            return self.store.exists(self.rel(self.marker(segment, shard)))
        return self.marker(segment, shard).exists()

    def verified_done(self, segment: int, shard: int) -> bool:
        """The shard has a done marker and every file it committed is there, unchanged (size and
        xxh3 checksum; on an object store size and the store's version of the object, or the
        re-hashed bytes where the store keeps no version); a shard whose files were deleted or
        edited since is redone."""
        if self.store:
            return self._verified_on_store(segment, shard)
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

    def unfinished(self, segment: int, shards: int) -> list[int]:
        """The shards of `segment` (of `shards`) without a verified done marker, to (re)do. On a
        store: one listing of the run and one concurrent read of the markers, not requests per file."""
        if not self.store:
            return [i for i in range(shards) if not self.verified_done(segment, i)]
        listed = self.store.listing("")
        names = {i: self.rel(self.marker(segment, i)) for i in range(shards)}
        present = [n for n in names.values() if n in listed]
        markers = self.store.fs.cat([self.store.key(n) for n in present], on_error="return") if present else {}
        todo = []
        for i, name in names.items():
            raw = markers.get(self.store.key(name))
            if not isinstance(raw, bytes) or not self._committed_match(json.loads(raw).get("committed"), listed):
                todo.append(i)
        return todo

    def _verified_on_store(self, segment: int, shard: int) -> bool:
        raw = self.store.read_bytes(self.rel(self.marker(segment, shard)))
        return raw is not None and self._committed_match(json.loads(raw).get("committed"), None)

    def _committed_match(self, committed: list[dict[str, Any]] | None, listed: dict[str, dict] | None) -> bool:
        """Every committed file is on the store with its size and version (or, where the store has
        no versions, its xxh3); `listed` is a listing of the run to look in, else one HEAD per file."""
        if committed is None:
            return False
        for entry in committed:
            info = listed.get(entry["path"]) if listed is not None else self.store.info(entry["path"])
            if info is None or size_of(info) != entry["bytes"]:
                return False
            recorded, current = entry.get("version"), version(info)
            if recorded is not None and current is not None:
                if recorded != current:
                    return False
            elif file_checksum(self.fetch(self.root / entry["path"])) != entry["xxh3"]:
                return False
        return True

    def read_marker(self, segment: int, shard: int) -> dict[str, Any]:
        if self.store:
            return json.loads(self.store.read_bytes(self.rel(self.marker(segment, shard))))
        return json.loads(self.marker(segment, shard).read_text())

    def done_markers(self) -> list[dict[str, Any]]:
        if self.store:
            names = sorted(n for n in self.store.listing("state/done") if n.endswith(".json"))
            contents = self.store.fs.cat([self.store.key(n) for n in names]) if names else {}
            return [json.loads(contents[self.store.key(n)]) for n in names]
        folder = self.state / "done"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []

    # --- the run's own files (state JSON, plan, decisions, stats, report) ---------------
    def exists(self, path: Path) -> bool:
        return self.store.exists(self.rel(path)) if self.store else path.exists()

    def read_bytes(self, path: Path) -> bytes | None:
        """A run file's bytes (from the store for a remote run), or None when there is none."""
        if self.store:
            return self.store.read_bytes(self.rel(path))
        return path.read_bytes() if path.exists() else None

    def write_bytes(self, path: Path, data: bytes) -> None:
        """Write a run file atomically: a temp file renamed into place, or one PUT to the store."""
        if self.store:
            self.store.write_bytes(self.rel(path), data)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def write_json(self, path: Path, content: Any) -> None:
        self.write_bytes(path, json.dumps(content, indent=1, sort_keys=True).encode())

    def publish(self, written: Path, target: Path) -> None:
        """Put a finished local file in place: renamed to `target`, and on a remote run also
        uploaded (the local copy stays in the mirror as a cache)."""
        if written != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(written, target)
        if self.store:
            rel = self.rel(target)
            self.store.upload(target, rel)
            self._remember_version(rel, version(self.store.info(rel)))

    def fetch(self, path: Path, info: dict[str, Any] | None = None) -> Path | None:
        """A local copy of the run file `path`, or None when the run has no such file. Remote: a
        mirror copy of the same size and store version is reused, else (or where the store keeps
        no versions) the object is downloaded."""
        if not self.store:
            return path if path.exists() else None
        rel = self.rel(path)
        info = info or self.store.info(rel)
        if info is None:
            return None
        current = version(info)  # without one, a mirror copy cannot be told from a changed object
        if current is None or not (path.is_file() and path.stat().st_size == size_of(info)
                                   and self._known_version(rel) == current):
            self.store.download(rel, path)
            self._remember_version(rel, current)
        return path

    def fetch_matching(self, folder: Path, pattern: str) -> list[Path]:
        """Local copies of the run's files in `folder` whose names match `pattern`, sorted."""
        if not self.store:
            return sorted(folder.glob(pattern))
        listed = self.store.listing(self.rel(folder))
        wanted = sorted(n for n in listed if "/" not in n[len(self.rel(folder)) + 1:]
                        and fnmatch.fnmatchcase(n.rsplit("/", 1)[-1], pattern))
        return [self.fetch(self.root / n, listed[n]) for n in wanted]

    def sync_down(self, names: tuple[str, ...]) -> Path:
        """Fetch the run's files and folders `names` (relative) into the local root; returns it.
        A local run has them already."""
        if self.store:
            for name in names:
                listed = self.store.listing(name)
                if not listed and (info := self.store.info(name)) is not None:
                    listed = {name: info}
                for rel, info in listed.items():
                    self.fetch(self.root / rel, info)
                folder = self.root / name
                if folder.is_dir():  # what the mirror holds but the store no longer does
                    for path in folder.rglob("*"):
                        if path.is_file() and self.rel(path) not in listed:
                            path.unlink()
        return self.root

    def sync_up(self, names: tuple[str, ...]) -> None:
        """Upload what stages wrote to the local root under `names` (e.g. generation tallies in
        state/synthesis/) and the store lacks, so the report and other machines see it."""
        if not self.store:
            return
        for name in names:
            folder = self.root / name
            if not folder.is_dir():
                continue
            listed = self.store.listing(name)
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                info = listed.get(self.rel(path))
                if info is None or size_of(info) != path.stat().st_size:
                    self.publish(path, path)

    def _version_file(self, rel: str) -> Path:
        return self.root / ".versions" / f"{rel}.txt"

    def _known_version(self, rel: str) -> str | None:
        try:
            return self._version_file(rel).read_text() or None
        except OSError:
            return None

    def _remember_version(self, rel: str, current: str | None) -> None:
        target = self._version_file(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(current or "")

    # --- shard lifecycle ---------------------------------------------------------------
    def begin(self, segment: int, shard: int) -> Path:
        """Clear anything an interrupted attempt at this shard left, return a fresh tmp dir."""
        tmp = self.tmp_dir(segment, shard)
        shutil.rmtree(tmp, ignore_errors=True)
        for path in self._final_paths(segment, shard):
            path.unlink(missing_ok=True)
        if self.store:
            self.store.delete(self._final_names_on_store(segment, shard))
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

    def _final_names_on_store(self, segment: int, shard: int) -> list[str]:
        part, own = f"part-{shard:05d}", shard_prefix(segment, shard)
        names = [self.rel(self.summary(segment, shard)), self.rel(self.marker(segment, shard))]
        for folder, prefix in ((self.segment_dir(segment), part), (self.shards, part), (self.quarantine, own)):
            names += self.store.with_prefix(self.rel(folder), prefix + "-")
        for stage_folder in self.store.folders("removed"):
            names += self.store.with_prefix(stage_folder, own + "-")
        return names

    def commit(self, segment: int, shard: int, moves: list[tuple[Path, Path]], marker: dict[str, Any]) -> None:
        """Put finished files in place, then write the done marker (the commit point), which lists
        every committed file with its size and checksum so resume can verify them. Locally files
        are renamed into place; on an object store (no rename) each is uploaded under its final
        name first and the marker is written last."""
        files = []
        for source, target in moves:
            entry = {"path": self.rel(target), "bytes": source.stat().st_size, "xxh3": file_checksum(source)}
            if self.store:
                self.store.upload(source, entry["path"])
                entry["version"] = version(self.store.info(entry["path"]))
            files.append(entry)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
            if self.store:
                self._remember_version(entry["path"], entry["version"])
        if self.store:
            self.write_json(self.marker(segment, shard), {**marker, "committed": files})
        else:
            write_json_atomic(self.marker(segment, shard), {**marker, "committed": files})
        shutil.rmtree(self.tmp_dir(segment, shard), ignore_errors=True)

    def clear(self) -> None:
        """Delete every output of a previous run (for --fresh); on a store, every object under
        the prefix but the run lock, and this machine's mirror."""
        if self.store:
            keep = {f"state/{name}" for name in LOCK_FILES}
            self.store.delete([n for n in self.store.listing("") if n not in keep])
            shutil.rmtree(self.root, ignore_errors=True)
            return
        for folder in (self.shards, self.quarantine, self.removed, self.root / "plots"):
            shutil.rmtree(folder, ignore_errors=True)
        if self.state.exists():  # the run lock's files stay: the lock is held while clearing
            for path in self.state.iterdir():
                if path.name not in LOCK_FILES:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        for name in ("stats.json", "report.md", "report.html"):
            (self.root / name).unlink(missing_ok=True)


def local_run_dir(location: str) -> str:
    """Where a run's stages keep run-local files (generation caches, tallies): the run directory
    itself, or this machine's scratch mirror of a remote one."""
    if is_remote(location):
        return str(local_mirror(location.rstrip("/")))
    return str(local_path(location)) if location.startswith("file://") else location


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
