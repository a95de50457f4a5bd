"""Incremental near-duplicate removal against a persisted `datasketch.MinHashLSH` index.

A corpus that grows run by run (yesterday's crawl is curated, today's must not repeat it) needs
the earlier documents' LSH index, not their text. This barrier stage loads a pickled
`datasketch.MinHashLSH` (keys = earlier documents' ids), queries every document of this run
against it and drops the ones with a candidate: `_drop_reason` "indexed_duplicate", column
`dup_of` = the matched key (the smallest, as text, when several match). With `save_index` it
writes the index with this run's kept documents inserted, ready for the next run.

Phases (the executor's barrier protocol):
- map (`summarize`, per shard, any number of workers): the document's MinHash signature,
  computed by datamill and identical to `datasketch.MinHash` over the same shingles (same
  shingling options as `minhash_dedup`), with its key and `_pos`.
- reduce (once, one process): walk the documents in `_pos` order; each one is queried as a
  `datasketch.LeanMinHash` through `MinHashLSH.query`. With `dedup_within` (default) a kept
  document is inserted at once, so a later near-duplicate *within this run* is dropped too, with
  `dup_of` = the earlier document's key — the classic streaming "query, then insert" loop. Because
  one process walks a fixed order, the result never depends on shards or worker count.
- apply (per shard): join the decisions on `_pos`.

Documents without shingles (empty text) are never queried or inserted. The index is loaded with
an unpickler that only builds datasketch's LSH and storage classes (a recipe must never run
arbitrary code); an index built with a custom `hashfunc` is refused. The LSH stores neither the
seed nor the shingling: use the same `seed`, `ngram`, `shingle`… that built the index (the
scheme is checked by datasketch).

Cost: one `query` (+ `insert`) Python call per document — datasketch's dict storage has no batch
lookup — about 70 µs of CPU per document at 112 permutations (~1 min per million). Memory of the
reducing process: the summaries (4 B × num_perm + key per document) and the index itself, which
datasketch keeps as Python dicts of sets: ~3 KB per key in memory, ~600 B pickled (9 bands).

Resume: the saved index is written atomically in the reduce, and `save_index` must differ from
`index`, so a reduce that is re-run after a crash starts from the same input index and writes
the same output.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from datamill.curate.dedup.minhash import MinHasher, text_signatures
from datamill.curate.dedup.minhash_stage import MinHashParams
from datamill.curate.engine.paths import exists, is_url, join, read_bytes, write_bytes
from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import DROP_REASON, POSITION, BarrierStage

DUP_OF = "dup_of"
REASON = "indexed_duplicate"
KEY = "_key"
SIGNATURE = "_signature"
HAS_SHINGLES = "_has_shingles"
TEXT = "text"

_ALLOWED_GLOBALS = {
    ("datasketch.lsh", "MinHashLSH"),
    ("datasketch.storage", "DictSetStorage"),
    ("datasketch.storage", "DictListStorage"),
    ("collections", "defaultdict"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
}
_BOUND_METHODS = frozenset({"_byteswap", "_hashed_byteswap"})
"""A pickled MinHashLSH stores its band-key method `_H` as getattr(index, name)."""


class MinHashLSHIndexParams(MinHashParams):
    """With a loaded `index`, num_perm, seed and scheme must be the ones it was built with and
    bands/rows (default: from threshold) are checked against its layout."""

    index: str | None = Field(
        None,
        description="Pickled datasketch.MinHashLSH to dedup against (keys: earlier documents' ids). "
        "None: start from an empty index laid out by threshold/num_perm/bands/rows (a first run).",
    )
    save_index: str | None = Field(
        None,
        description="Write the index, with this run's kept documents inserted, to this path at the "
        "end of the reduce (atomically). Must differ from `index`.",
    )
    dedup_within: bool = Field(
        True,
        description="Insert each kept document before querying the next (dataset order), so "
        "near-duplicates inside this run are dropped too. False: only the loaded index is queried.",
    )
    key_field: str = Field("id", description="Column whose value (as text) is a document's key in the index.")

    def check_paths(self, base_dir: str) -> list[str]:
        """The index to load exists (a local file, or a URL checked through fsspec)."""
        if self.index is None or exists(join(base_dir, self.index)):
            return []
        return [f"index: LSH index {self.index!r} does not exist (set index: null to start a new one)"]

    @model_validator(mode="after")
    def _check_index(self) -> MinHashLSHIndexParams:
        if self.index is not None and self.save_index is not None:
            if same_place(self.index, self.save_index):
                raise ValueError("save_index must differ from index (a re-run must start from the same index)")
        if self.num_perm < 2:
            raise ValueError("datasketch's MinHashLSH needs num_perm >= 2")
        return self


def same_place(a: str, b: str) -> bool:
    """True when two index paths name one file (URLs compared as written, local paths resolved)."""
    if is_url(a) or is_url(b):
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


class _IndexUnpickler(pickle.Unpickler):
    """Builds only datasketch's MinHashLSH and its dict storages, never other code."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if (module, name) == ("builtins", "getattr"):
            return _bound_method
        raise pickle.UnpicklingError(
            f"{self.path}: the index references {module}.{name}; only a datasketch MinHashLSH with dict "
            "storage and no custom hashfunc can be loaded"
        )


def _bound_method(obj: Any, name: str) -> Any:
    from datasketch import MinHashLSH

    if not isinstance(obj, MinHashLSH) or name not in _BOUND_METHODS:
        raise pickle.UnpicklingError(f"the index asks for attribute {name!r} of {type(obj).__name__}")
    return getattr(obj, name)


def load_index(path: str | Path) -> Any:
    """The `datasketch.MinHashLSH` pickled at `path` (restricted unpickling)."""
    from datasketch import MinHashLSH

    path = str(path)
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"LSH index {path} does not exist (set index: null to start a new one)") from None
    index = _IndexUnpickler(io.BytesIO(data), path).load()
    if not isinstance(index, MinHashLSH):
        raise ValueError(f"{path} holds a {type(index).__name__}, not a datasketch MinHashLSH")
    return index


def save_index(index: Any, path: str | Path) -> None:
    """Pickle `index` to `path` (a local path or a URL) atomically: temp file then rename, or one PUT."""
    write_bytes(str(path), pickle.dumps(index, protocol=pickle.HIGHEST_PROTOCOL))


@register_stage
class MinHashLSHIndex(BarrierStage):
    """Drop documents near-duplicate to any in a persisted datasketch MinHashLSH; optionally grow it."""

    type_name = "minhash_lsh_index"
    Params: ClassVar = MinHashLSHIndexParams
    outputs = (DUP_OF,)
    params: MinHashLSHIndexParams

    def __init__(self, params: MinHashLSHIndexParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        p = self.params
        """Folder relative index paths are resolved against (the recipe's folder)."""
        self.hasher = MinHasher(p.num_perm, p.seed, p.scheme)
        self.shingler = p.shingler()

    def _path(self, value: str) -> str:
        return join(self.base_dir, value)

    def open_index(self) -> Any:
        """The loaded index (checked against the params), or a new empty one."""
        from datasketch import MinHashLSH

        p = self.params
        if p.index is None:
            return MinHashLSH(num_perm=p.num_perm, params=p.band_layout())
        path = self._path(p.index)
        index = load_index(path)
        if index.h != p.num_perm:
            raise ValueError(f"{self.name}: index {path} has num_perm={index.h}, the stage num_perm={p.num_perm}")
        for field, value in (("bands", index.b), ("rows", index.r)):
            wanted = getattr(p, field)
            if wanted is not None and wanted != value:
                raise ValueError(f"{self.name}: index {path} has {field}={value}, the stage {field}={wanted}")
        return index

    def summarize(self, batch: pl.DataFrame) -> pl.DataFrame:
        """`_pos`, `_key` (the key field as text), `_signature` (num_perm values) and `_has_shingles`."""
        key = self.params.key_field
        if key not in batch.columns:
            raise ValueError(f"{self.name}: key_field {key!r} names no column (have: {', '.join(batch.columns)})")
        if batch[key].null_count():
            raise ValueError(f"{self.name}: key_field {key!r} is null in {batch[key].null_count()} record(s)")
        signatures, has_shingles = text_signatures(batch[TEXT], self.shingler, self.hasher)
        return pl.DataFrame(
            {
                POSITION: batch[POSITION],
                KEY: batch[key].cast(pl.String),
                SIGNATURE: signatures,
                HAS_SHINGLES: has_shingles,
            }
        )

    def reduce(self, summaries: pl.LazyFrame) -> pl.DataFrame:
        """Query (and insert) every document in `_pos` order; decision rows for the dropped ones:
        `_pos`, `dup_of`, `_drop_reason`. Saves the grown index when `save_index` is set."""
        from datasketch import LeanMinHash

        p = self.params
        pos_dtype = summaries.collect_schema()[POSITION]
        table = summaries.filter(pl.col(HAS_SHINGLES)).sort(POSITION).collect()
        index = self.open_index()
        keys = table[KEY].to_list()
        signatures = table[SIGNATURE].to_numpy() if table.height else np.empty((0, p.num_perm))
        insert_now = p.dedup_within
        dropped, matched, kept = [], [], []
        for row, key in enumerate(keys):
            sketch = LeanMinHash(seed=p.seed, hashvalues=signatures[row], scheme=p.scheme)
            found = index.query(sketch)
            if found:
                dropped.append(row)
                matched.append(min(map(str, found)))
            elif insert_now:
                self._insert(index, key, sketch)
            else:
                kept.append((key, sketch))
        if p.save_index is not None:
            for key, sketch in kept:
                self._insert(index, key, sketch)
            save_index(index, self._path(p.save_index))
        return pl.DataFrame(
            {
                POSITION: table[POSITION].gather(dropped).cast(pos_dtype),
                DUP_OF: pl.Series(matched, dtype=pl.String),
                DROP_REASON: pl.Series([REASON] * len(dropped), dtype=pl.String),
            }
        )

    def _insert(self, index: Any, key: str, sketch: Any) -> None:
        if key in index:
            raise ValueError(
                f"{self.name}: record {self.params.key_field}={key!r} is already a key of the index but "
                "matches no indexed document; keys must be unique across runs"
            )
        index.insert(key, sketch, check_duplication=False)

    def apply(self, batch: pl.DataFrame, decision: pl.DataFrame) -> pl.DataFrame:
        """`batch` in its order with `dup_of` (null when kept) and `_drop_reason`."""
        decision = decision.select(
            pl.col(POSITION).cast(batch.schema[POSITION]),
            pl.col(DUP_OF).cast(pl.String),
            pl.col(DROP_REASON).cast(pl.String),
        )
        previous = [c for c in (DUP_OF, DROP_REASON) if c in batch.columns]
        return batch.drop(previous).join(decision, on=POSITION, how="left", maintain_order="left")
