"""A run directory on an object store (`s3://`, `gs://`, `hf://`…): its files by relative name, through fsspec.

Object stores have no rename and no directories, so the run directory's commit protocol there is
"final names first, marker last" (see engine.layout). This module only moves bytes: read, write,
exclusive create (for the run lock), upload, download, list, delete, and a cheap *version* of an
object (the store's ETag / MD5 / CRC32C) so resume can tell an object was replaced without reading
it back. Where a store reports no version, the layout re-hashes the object's bytes instead.

A remote run also keeps a local scratch copy of what it writes and reads (`local_mirror`): shards
are written there first and uploaded, and segment files, summaries and decisions read back from the
store land there, so stages and polars always see plain local files. The mirror is a cache: delete
it freely, anything missing is fetched from the store again.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from datamill.curate.engine.paths import filesystem, is_url

VERSION_KEYS = ("ETag", "generation", "etag", "md5Hash", "crc32c", "blob_id", "sha", "checksum")
"""Fields of an fsspec `info()` that change whenever an object's bytes do, first found wins: S3's ETag;
GCS's generation (new on every write, also for composed objects, which have no MD5; gcsfs reports it
in `info` and in listings alike), then its etag/MD5/CRC32C; the HF hub's blob id."""


def is_remote(location: str | Path) -> bool:
    """True when a run directory lives on an fsspec store; `file://` URLs and plain paths are local."""
    text = str(location)
    return is_url(text) and not text.startswith("file://")


def local_path(location: str | Path) -> Path:
    """A local run directory's path (`file://` stripped)."""
    text = str(location)
    return Path(text.removeprefix("file://"))


MIRRORS = "datamill-runs"
ORIGIN_SUFFIX = ".url"


def local_mirror(url: str) -> Path:
    """This machine's scratch folder for the remote run directory `url`: `$DATAMILL_SCRATCH`
    (default: the system temp folder) / datamill-runs / <readable name>-<hash of the URL>. The URL
    is noted beside it (`<folder>.url`), so `mirror_origin` can tell any path inside it where its
    object lives."""
    base = Path(os.environ.get("DATAMILL_SCRATCH") or tempfile.gettempdir()) / MIRRORS
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", url.split("://", 1)[-1].strip("/"))[-60:]
    folder = base / f"{name}-{hashlib.sha1(url.encode()).hexdigest()[:12]}"
    origin = folder.with_name(folder.name + ORIGIN_SUFFIX)
    if not origin.is_file():
        base.mkdir(parents=True, exist_ok=True)
        partial = origin.with_name(f".{origin.name}.{os.getpid()}")
        partial.write_text(url)
        os.replace(partial, origin)
    return folder


def mirror_origin(path: str | Path) -> str | None:
    """The URL of the object or prefix that the local `path` stands for when it lies inside a remote
    run directory's mirror (`local_mirror`), e.g. `<mirror>/state/x.json` → `s3://b/run/state/x.json`;
    None for any other path. This is how run-local files that stages write (generation caches,
    tallies) find their place on the store, on whatever machine the stage runs."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if folder.parent.name != MIRRORS:
            continue
        origin = folder.with_name(folder.name + ORIGIN_SUFFIX)
        try:
            url = origin.read_text().strip()
        except OSError:
            return None
        rel = path.relative_to(folder).as_posix()
        return url if rel == "." else f"{url}/{rel}"
    return None


NOT_A_RUN_STORE = {
    "hf": "the Hugging Face Hub makes a commit of every object written (a run writes thousands: shards, "
          "markers, heartbeats) and rate-limits commits; run into a local folder, s3:// or gs://, then "
          "publish the corpus with `datamill export RUN_DIR --format hf` and upload that folder",
}
"""Stores that can be read from but are refused as `output.dir`, with why."""


def output_store_problems(url: str) -> list[str]:
    """Why `output.dir: <url>` cannot be used (a store that is no place for a run directory, or its
    filesystem package is missing), as problem lines."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in NOT_A_RUN_STORE:
        return [f"output.dir: {url} cannot hold a run directory: {NOT_A_RUN_STORE[scheme]}"]
    try:
        filesystem(url)
    except (ImportError, ValueError) as err:
        return [f"output.dir: {err}"]
    return []


class ObjectStore:
    """The files under one URL prefix, named relative to it (`state/done/x.json`)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, self.base = filesystem(self.url)
        self.base = self.base.rstrip("/")

    def key(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def url_of(self, rel: str) -> str:
        return f"{self.url}/{rel}" if rel else self.url

    def info(self, rel: str) -> dict[str, Any] | None:
        """The object's size and metadata, or None when there is none."""
        try:
            info = self.fs.info(self.key(rel), refresh=True)
        except (FileNotFoundError, OSError):
            return None
        return info if info.get("type", "file") == "file" else None

    def exists(self, rel: str) -> bool:
        return self.info(rel) is not None

    def read_bytes(self, rel: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        try:
            return self.fs.cat_file(self.key(rel))
        except FileNotFoundError:
            return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write one object in one PUT (readers see the old bytes or the new, never a part)."""
        self.fs.pipe_file(self.key(rel), data)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create the object only if it does not exist, through the filesystem's exclusive mode "xb"
        (s3fs: `If-None-Match: *`; gcsfs: `ifGenerationMatch=0`, whose 412 it raises as
        FileExistsError); False if it exists. Raises NotImplementedError where the store has no
        conditional create. A server that ignores the condition (gcp-storage-emulator does) lets a
        second create overwrite the first."""
        try:
            with self.fs.open(self.key(rel), "xb") as handle:
                handle.write(data)
        except FileExistsError:
            return False
        except (ValueError, TypeError) as err:  # fsspec: mode "xb" not supported here
            raise NotImplementedError(f"{self.url}: no conditional create ({err})") from None
        return True

    def upload(self, local: Path, rel: str) -> None:
        self.fs.put_file(str(local), self.key(rel))

    def download(self, rel: str, local: Path) -> None:
        """Copy the object to `local` (written beside it, then renamed, so a partial download never
        passes for the file)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.{os.getpid()}.part")
        self.fs.get_file(self.key(rel), str(partial))
        os.replace(partial, local)

    def listing(self, rel_folder: str) -> dict[str, dict[str, Any]]:
        """Every object under `rel_folder` (recursively) by its name relative to the run root."""
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(self.key(rel_folder), detail=True)
        except FileNotFoundError:
            return {}
        prefix = self.base + "/"
        return {name[len(prefix):]: info for name, info in found.items()
                if info.get("type", "file") == "file" and name.startswith(prefix)}

    def with_prefix(self, rel_folder: str, name_prefix: str) -> list[str]:
        """Names of the objects directly in `rel_folder` that start with `name_prefix` (listed by
        the server's prefix filter on S3, so the cost does not grow with the folder)."""
        self.fs.invalidate_cache()
        folder = self.key(rel_folder)
        try:
            if self.fs.protocol in ("s3", "s3a") or "s3" in tuple(self.fs.protocol):
                found = self.fs.find(folder, prefix=name_prefix)
            else:
                found = self.fs.glob(f"{folder}/{name_prefix}*")
        except FileNotFoundError:
            return []
        start = len(self.base) + 1
        return [name[start:] for name in found if "/" not in name[len(folder) + 1:]]

    def folders(self, rel_folder: str) -> list[str]:
        """Names of the "folders" (common prefixes) directly under `rel_folder`: one listing."""
        try:
            found = self.fs.ls(self.key(rel_folder), detail=True, refresh=True)
        except FileNotFoundError:
            return []
        start = len(self.base) + 1
        return sorted(i["name"].rstrip("/")[start:] for i in found if i.get("type") == "directory")

    def delete(self, rels: list[str]) -> None:
        if rels:
            try:
                self.fs.rm([self.key(r) for r in rels])
            except FileNotFoundError:
                pass
            self.fs.invalidate_cache()


def version(info: dict[str, Any] | None) -> str | None:
    """The store's version of an object (ETag, MD5, CRC32C…) from its info, or None."""
    if not info:
        return None
    for name in VERSION_KEYS:
        value = info.get(name)
        if isinstance(value, (str, int)) and value != "":
            return str(value).strip('"')
    return None


def size_of(info: dict[str, Any]) -> int:
    return int(info.get("size", info.get("Size", -1)))
