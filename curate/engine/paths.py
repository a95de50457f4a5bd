"""Paths as fsspec URLs: local paths stay plain and fast; `s3://`, `gs://`, `hf://`, `file://` go through fsspec.

Credentials and endpoints come from the environment as the filesystem packages read them (e.g.
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` for an S3-compatible server).
A URL keeps its protocol everywhere it travels (plans, ids, quarantine rows), so the same recipe
reads the same records on any machine that can reach the store.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import IO

GLOB_CHARS = "*?["


def is_url(path: str | Path) -> bool:
    """True for `protocol://…` (anything but a plain local path)."""
    return "://" in str(path)


def join(base_dir: str, path: str) -> str:
    """`path` read from `base_dir` (the recipe's folder) unless it is absolute or a URL."""
    if is_url(path):
        return path
    return os.path.join(base_dir, os.path.expanduser(path))


def _filesystem(url: str):
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
    fs, root = _filesystem(pattern)
    protocol = pattern.split("://", 1)[0]
    found = fs.glob(root) if any(c in root for c in GLOB_CHARS) else ([root] if fs.exists(root) else [])
    return sorted(f"{protocol}://{p}" for p in found if fs.isfile(p))


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(path)
    fs, root = _filesystem(path)
    return fs.isfile(root)


def open_binary(path: str, buffering: int = -1) -> IO[bytes]:
    """A readable binary file object for a local path or a URL."""
    if not is_url(path):
        return open(path, "rb", buffering=buffering)
    fs, root = _filesystem(path)
    return fs.open(root, "rb")


def file_size(path: str) -> int:
    """Bytes in a local file or at a URL."""
    if not is_url(path):
        return os.path.getsize(path)
    fs, root = _filesystem(path)
    return int(fs.size(root))
