"""The decontamination n-gram index, built once per run and opened memory-mapped by every worker.

An index is three numpy arrays of equal length, one entry per distinct (n-gram hash, benchmark,
eval item), sorted by hash: `hashes.npy` (uint64), `orders.npy` (uint16: the benchmark's position
in the recipe) and `items.npy` (uint32: the eval record's number), plus `meta.json` (the n-gram
lengths to look up, entry count, build time). `shared_index(folder, key, build)` returns the index
stored in `<folder>/<key>/`, building it first when it is not there: the first process takes
`<folder>/<key>.lock`, builds into a temporary folder beside the target and renames it into place
(one atomic rename; `meta.json` is written last), so processes that start together build it once,
the others wait for the lock and then open the finished folder, and a killed build leaves only a
temporary folder that is never read. Opened with `mmap_mode="r"`, the arrays' pages live in the
page cache, shared by every worker on the machine instead of copied into each.

`NgramIndex.matches(hashes)` is the lookup: the batch's distinct hashes are sorted once
(polars' `unique().sort()`), found in the sorted table with `np.searchsorted`, and only the hits are expanded
to their (hash, benchmark, item) entries, with no per-record Python loop.

The key must name everything the hashes depend on (eval files, n-gram parameters, polars version,
see `datamill.filters.ngrams`); the stage computes it. `FORMAT` is part of it, so a change of the
layout here never reads an older folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from filelock import FileLock

from datamill.filters.ngrams import HASH

FORMAT = 1
"""Layout version of an index folder; part of every key."""
ORDER = "_order"
ITEM = "_item"
ARRAYS = {"hashes": np.uint64, "orders": np.uint16, "items": np.uint32}
MAX_BENCHMARKS = int(np.iinfo(np.uint16).max) + 1


@dataclass(frozen=True)
class NgramIndex:
    """Sorted n-gram hashes with the benchmark and eval item of each (arrays may be memory-mapped)."""

    hashes: np.ndarray
    orders: np.ndarray
    items: np.ndarray
    lengths: tuple[int, ...]
    """N-gram lengths (in words) that occur in the index; a batch is cut into n-grams of these."""

    @classmethod
    def from_table(cls, table: pl.DataFrame, lengths: list[int]) -> NgramIndex:
        """From a (hash, _order, _item) table in any order; repeated rows are kept once."""
        if table.height and table[ORDER].max() >= MAX_BENCHMARKS:
            raise ValueError(f"at most {MAX_BENCHMARKS} benchmarks fit in one index")
        table = table.sort(HASH, ORDER, ITEM)
        hashes = table[HASH].to_numpy().astype(np.uint64, copy=False)
        orders = table[ORDER].to_numpy().astype(np.uint16)
        items = table[ITEM].to_numpy().astype(np.uint32, copy=False)
        del table
        # sorted, so a repeated entry follows its first copy (no hash table of 16M rows needed)
        repeated = np.zeros(len(hashes), dtype=bool)
        repeated[1:] = (hashes[1:] == hashes[:-1]) & (orders[1:] == orders[:-1]) & (items[1:] == items[:-1])
        if repeated.any():
            kept = ~repeated
            hashes, orders, items = hashes[kept], orders[kept], items[kept]
        return cls(hashes, orders, items, tuple(sorted(set(lengths))))

    def __len__(self) -> int:
        return len(self.hashes)

    def matches(self, hashes: pl.Series) -> pl.DataFrame:
        """Every index entry whose hash is among `hashes`: columns hash (UInt64), _order (UInt32),
        _item (UInt32), one row per (hash, benchmark, item), in hash order."""
        wanted = hashes.unique().sort().to_numpy()
        first = np.searchsorted(self.hashes, wanted, side="left")
        inside = first < len(self.hashes)
        found = np.zeros(len(wanted), dtype=bool)
        found[inside] = self.hashes[first[inside]] == wanted[inside]
        first, wanted = first[found], wanted[found]
        count = np.searchsorted(self.hashes, wanted, side="right") - first
        # entry positions first[i] .. first[i] + count[i] - 1 for every hit i, laid end to end
        offsets = np.cumsum(count) - count
        positions = np.arange(int(count.sum()), dtype=np.int64) + np.repeat(first - offsets, count)
        return pl.DataFrame(
            {
                HASH: pl.Series(HASH, self.hashes[positions], dtype=pl.UInt64),
                ORDER: pl.Series(ORDER, self.orders[positions].astype(np.uint32), dtype=pl.UInt32),
                ITEM: pl.Series(ITEM, self.items[positions], dtype=pl.UInt32),
            }
        )

    def save(self, folder: Path, extra: dict | None = None) -> None:
        """Write the arrays and then `meta.json` into `folder` (which must exist)."""
        for name in ARRAYS:
            np.save(folder / f"{name}.npy", getattr(self, name), allow_pickle=False)
        meta = {"format": FORMAT, "entries": len(self), "lengths": list(self.lengths), **(extra or {})}
        (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def open(cls, folder: Path) -> NgramIndex:
        """The index saved in `folder`, its arrays memory-mapped read-only."""
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in ARRAYS}
        for name, dtype in ARRAYS.items():
            if arrays[name].dtype != dtype or len(arrays[name]) != meta["entries"]:
                raise ValueError(f"decontamination index {folder} is damaged ({name}.npy); delete the folder")
        return cls(arrays["hashes"], arrays["orders"], arrays["items"], tuple(meta["lengths"]))


def shared_index(folder: Path, key: str, build: Callable[[], NgramIndex]) -> NgramIndex:
    """The index in `<folder>/<key>/`, memory-mapped; built with `build()` first (by one process
    only, atomically) when it is not there yet."""
    target = folder / key
    if (target / "meta.json").is_file():
        return NgramIndex.open(target)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f"{key}.lock")):
        if (target / "meta.json").is_file():  # another process built it while this one waited
            return NgramIndex.open(target)
        started = time.perf_counter()
        index = build()
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=folder))
        try:
            index.save(staging, {"build_seconds": round(time.perf_counter() - started, 3)})
            staging.chmod(0o755)  # mkdtemp makes it private; other users' runs may share a cache
            if target.exists() and not (target / "meta.json").is_file():  # not a folder this module finished
                shutil.rmtree(target)
            try:
                staging.rename(target)
            except OSError:
                if not (target / "meta.json").is_file():
                    raise
                shutil.rmtree(staging)  # a process the lock did not hold off (another machine) was first
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        del index  # the built arrays are private memory; the mapped files are shared
    return NgramIndex.open(target)
