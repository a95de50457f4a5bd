"""Paths as fsspec URLs: local paths stay plain and fast; `s3://`, `gs://`, `hf://`, `file://` go through fsspec.

Credentials and endpoints come from the environment as the filesystem packages read them (e.g.
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` for an S3-compatible server).
A URL keeps its protocol everywhere it travels (plans, ids, quarantine rows), so the same recipe
reads the same records on any machine that can reach the store.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

GLOB_CHARS = "*?["
CACHE_MAX_GB = 20.0
"""Default size cap of the downloads cache (`$DATAMILL_CACHE_MAX_GB` overrides it)."""
IN_USE_S = 600.0
"""A downloaded copy handed out (or fetched) in the last this many seconds is never pruned: a worker
may be about to open it."""


def is_url(path: str | Path) -> bool:
    """True for `protocol://…` (anything but a plain local path)."""
    return "://" in str(path)


def join(base_dir: str, path: str) -> str:
    """`path` read from `base_dir` (the recipe's folder) unless it is absolute or a URL."""
    if is_url(path):
        return path
    return os.path.join(base_dir, os.path.expanduser(path))


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a URL; a clear error when the protocol's package is missing."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as err:  # e.g. s3fs missing for s3://
        raise ImportError(f"{url}: {err} (install the filesystem package for this protocol, e.g. "
                          "`pip install s3fs` for s3://)") from None


def glob_files(pattern: str, base_dir: str = ".") -> list[str]:
    """Files (not folders) matching a path or glob (`**` allowed), sorted; local paths come back
    resolved, URLs with their protocol."""
    if not is_url(pattern):
        full = join(base_dir, pattern)
        return sorted(str(Path(m).resolve()) for m in glob.glob(full, recursive=True) if os.path.isfile(m))
    fs, root = filesystem(pattern)
    protocol = pattern.split("://", 1)[0]
    found = fs.glob(root) if any(c in root for c in GLOB_CHARS) else ([root] if fs.exists(root) else [])
    return sorted(f"{protocol}://{p}" for p in found if fs.isfile(p))


def exists(path: str) -> bool:
    """True when `path` (a local path or a URL) is a file."""
    if not is_url(path):
        return os.path.isfile(path)
    fs, root = filesystem(path)
    return fs.isfile(root)


def is_dir(path: str) -> bool:
    """True when `path` (a local path or a URL) is a folder (on object stores: a non-empty prefix)."""
    if not is_url(path):
        return os.path.isdir(path)
    fs, root = filesystem(path)
    return fs.isdir(root)


def read_bytes(path: str) -> bytes:
    """The whole file at a local path or a URL."""
    with open_binary(path) as handle:
        return handle.read()


def open_binary(path: str, buffering: int = -1) -> IO[bytes]:
    """A readable binary file object for a local path or a URL."""
    if not is_url(path):
        return open(path, "rb", buffering=buffering)
    fs, root = filesystem(path)
    return fs.open(root, "rb")


def file_size(path: str) -> int:
    """Bytes in a local file or at a URL."""
    if not is_url(path):
        return os.path.getsize(path)
    fs, root = filesystem(path)
    return int(fs.size(root))


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file atomically: locally a temporary name renamed into place (folders made);
    on an object store one PUT, which readers see whole or not at all."""
    if is_url(path):
        fs, root = filesystem(path)
        fs.pipe_file(root, data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def download_dir() -> Path:
    """Where `local_copy` keeps remote files: `$DATAMILL_CACHE/downloads` (default `~/.cache/datamill`)."""
    root = os.environ.get("DATAMILL_CACHE") or Path.home() / ".cache" / "datamill"
    return Path(root).expanduser() / "downloads"


def cache_cap_bytes() -> int:
    """The downloads cache's size cap: `$DATAMILL_CACHE_MAX_GB` (GB of 10^9 bytes; default 20)."""
    text = os.environ.get("DATAMILL_CACHE_MAX_GB", "").strip()
    try:
        gigabytes = float(text) if text else CACHE_MAX_GB
    except ValueError:
        raise ValueError(f"DATAMILL_CACHE_MAX_GB={text!r}: not a number of gigabytes (e.g. 50 or 0.5)") from None
    if not gigabytes >= 0:
        raise ValueError(f"DATAMILL_CACHE_MAX_GB={text!r}: must be 0 or more")
    return int(gigabytes * 1e9)


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder`."""
    return sum(os.path.getsize(os.path.join(top, name)) for top, _, names in os.walk(folder) for name in names)


def prune_downloads(keep: Path | None = None) -> list[Path]:
    """Bound the downloads cache: while it holds more than `cache_cap_bytes()`, delete the least recently
    used copies (an entry's folder time is its last use), sparing `keep` and anything used in the last
    `IN_USE_S` seconds, which may exceed the cap until they go idle. Returns the entries removed. A
    removed entry is renamed away first, so `local_copy` never hands out a half-deleted copy; asked for
    again, it is downloaded again."""
    root = download_dir()
    if not root.is_dir():
        return []
    cap, now = cache_cap_bytes(), time.time()
    entries, total = [], 0
    for entry in root.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            size, used = folder_bytes(entry), entry.stat().st_mtime
        except OSError:  # removed meanwhile by another process's prune
            continue
        entries.append((used, entry, size))
        total += size
    removed = []
    for used, entry, size in sorted(entries):
        if total <= cap:
            break
        if entry == keep or now - used < IN_USE_S:
            continue
        trash = root / f".pruned-{uuid.uuid4().hex}"
        try:
            os.rename(entry, trash)
        except OSError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
        total -= size
        removed.append(entry)
    return removed


def _fingerprint(fs, root: str) -> tuple[str, list[str]]:
    """What identifies the current content at `root` (ETags, sizes, times) and, for a folder, its files."""
    def stamp(info: dict) -> str:
        keys = ("ETag", "etag", "VersionId", "generation", "md5Hash", "crc32c", "blob_id", "oid", "sha",
                "checksum", "size", "LastModified", "mtime", "last_modified", "updated")  # S3, GCS, HF, local
        return ";".join(f"{k}={info[k]}" for k in keys if info.get(k) is not None)

    info = fs.info(root)
    if info.get("type") != "directory":
        return stamp(info), []
    found = fs.find(root, detail=True)
    files = sorted(found)
    return "|".join(f"{name}:{stamp(found[name])}" for name in files), files


def version_stamp(url: str) -> str:
    """What identifies the current content at a URL (its ETag, size and time as the store reports
    them), so caches keyed by it are rebuilt when the object changes."""
    fs, root = filesystem(url)
    return _fingerprint(fs, root)[0]


def local_copy(path: str) -> str:
    """A local path holding the file or folder at `path`: plain paths come back unchanged; a URL is
    downloaded once into `download_dir()`, keyed by the URL and its ETag/size/time, so libraries
    that need a real file (fastText, transformers, dictd's random access) can read it. A changed
    object gets a fresh copy; concurrent workers download to temporary names and the first rename
    wins, so nobody sees a half-written copy. Every copy handed out is stamped as used, and after
    each download the cache is pruned to its size cap, least recently used first (`prune_downloads`):
    model files and the barrier summaries that Ray reduce tasks fetch do not pile up without bound."""
    if not is_url(path):
        return path
    fs, root = filesystem(path)
    if not fs.exists(root):
        raise FileNotFoundError(f"{path}: no such file or folder")
    stamp, files = _fingerprint(fs, root)
    where = f"{path.split('://', 1)[0]}://{root.rstrip('/')}"  # one copy for `s3://b/m` and `s3://b/m/`
    key = hashlib.sha256(f"{where}\n{stamp}".encode()).hexdigest()[:32]
    name = root.rstrip("/").rsplit("/", 1)[-1] or "download"
    target = download_dir() / key / name
    if target.exists():
        try:
            os.utime(target.parent)  # last used now (the LRU order of prune_downloads)
        except OSError:
            pass
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".part-", dir=target.parent))
    try:
        if not files:
            fs.get_file(root, str(staging / name))
        else:
            prefix = root.rstrip("/") + "/"
            for remote in files:
                local = staging / name / remote.removeprefix(prefix)
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(local))
            (staging / name).mkdir(exist_ok=True)
        try:
            os.rename(staging / name, target)
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    os.utime(target.parent)
    prune_downloads(keep=target.parent)
    return str(target)
