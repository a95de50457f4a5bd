"""The downloads cache of `local_copy` (remote models, lexicons, the summaries Ray reduce tasks fetch) stays
under `DATAMILL_CACHE_MAX_GB`: least recently used copies go first, copies in use never."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from datamill.curate.engine import paths
from datamill.curate.engine.paths import download_dir, local_copy, prune_downloads

KB = 1000


@pytest.fixture
def objects(tmp_path, monkeypatch):
    """Five 1 kB objects behind file:// URLs (the fsspec path every store's URL takes), a cache capped at 2.5 kB."""
    monkeypatch.setenv("DATAMILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DATAMILL_CACHE_MAX_GB", str(2.5 * KB / 1e9))
    urls = {}
    for name in "abcde":
        (tmp_path / "store").mkdir(exist_ok=True)
        (tmp_path / "store" / f"{name}.parquet").write_bytes(name.encode() * KB)
        urls[name] = f"file://{tmp_path}/store/{name}.parquet"
    return urls


def idle(copy: str, seconds_ago: float) -> None:
    """As if the copy was last used `seconds_ago`."""
    stamp = time.time() - seconds_ago
    os.utime(Path(copy).parent, (stamp, stamp))


def cached_names() -> set[str]:
    return {p.read_bytes()[:1].decode() for p in download_dir().rglob("*.parquet")}


def test_least_recently_used_copies_go_first_once_the_cap_is_passed(objects):
    a, b = local_copy(objects["a"]), local_copy(objects["b"])
    assert cached_names() == {"a", "b"}  # 2 kB: under the cap
    idle(a, 3000), idle(b, 2000)
    assert local_copy(objects["a"]) == a  # a used again now: b is the least recently used
    local_copy(objects["c"])  # 3 kB > 2.5 kB: b goes
    assert cached_names() == {"a", "c"} and not Path(b).exists()
    idle(a, 5000)
    assert Path(local_copy(objects["b"])).read_bytes() == b"b" * KB  # asked for again: fetched again
    assert cached_names() == {"b", "c"}  # and a, idle longest, made room


def test_copies_in_use_are_never_pruned_and_the_cap_comes_from_the_environment(objects, monkeypatch):
    copies = [local_copy(objects[n]) for n in "abcd"]
    assert cached_names() == set("abcd")  # 4 kB > 2.5 kB, but all used within IN_USE_S: all kept
    for k, copy in enumerate(copies):
        idle(copy, paths.IN_USE_S + 100 - k)
    local_copy(objects["e"])  # the three idle longest go; the one just fetched stays
    assert cached_names() == {"d", "e"}
    monkeypatch.setenv("DATAMILL_CACHE_MAX_GB", "0")
    assert prune_downloads() == [Path(copies[3]).parent]  # only copies in use are left
    assert cached_names() == {"e"}
    monkeypatch.setenv("DATAMILL_CACHE_MAX_GB", "lots")
    with pytest.raises(ValueError, match="DATAMILL_CACHE_MAX_GB='lots': not a number of gigabytes"):
        prune_downloads()
