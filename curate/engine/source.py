"""The Source protocol: plan a source into shards, then read one shard as record batches.

Every source yields the same record schema (see `datamill.curate.engine.records`): `id`, `source`,
`text`, `meta`, plus any typed `columns` the recipe declares. Malformed input is not an error:
it comes back as quarantine rows (file, line, reason, detail, raw) next to the good records.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field


class SourceParams(BaseModel):
    """Parameters every source accepts; each source type extends this with its own `type`."""

    model_config = ConfigDict(extra="forbid")

    type: str
    name: str | None = Field(None, description="Value of the `source` column; defaults to the type.")
    text_field: str = Field("text", description="Field holding the document text.")
    id_field: str | None = Field(
        None, description="Field holding a stable record id; default: derived from file and line."
    )
    columns: dict[str, Literal["str", "int", "float", "bool"]] = Field(
        default_factory=dict, description="Extra fields to keep as typed columns."
    )
    keep_meta: bool = Field(True, description="Keep all other fields as a JSON string column `meta`.")
    limit: int | None = Field(None, ge=1, description="Read at most this many input records.")

    def check_paths(self, base_dir: str) -> list[str]:
        """Input paths that do not exist, as `key: message` lines; checked before any work starts.
        Sources that read files override it; relative paths are read from `base_dir`."""
        return []


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: a part of one source that a single worker reads start to end."""

    source_index: int
    description: str
    """Human-readable: what this shard covers (a file, a row range…)."""
    payload: dict[str, Any] = field(default_factory=dict)
    """Source-specific: paths, ranges, per-shard limits. Must be picklable and deterministic."""


@dataclass
class SourceBatch:
    """What reading yields: good records and quarantined ones, either may be empty."""

    records: pl.DataFrame
    quarantine: pl.DataFrame
    lines_read: int = 0
    """Input records consumed to produce this batch (good + quarantined + skipped)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Input records deliberately not made into documents (e.g. a WARC's non-HTML or non-200
    responses), by reason: counted in the report, not quarantined."""


class Source:
    """Base class of every input. Subclasses set `type_name`, `Params`, `plan`, `read`."""

    type_name: ClassVar[str] = ""
    Params: ClassVar[type[SourceParams]] = SourceParams

    def __init__(self, params: SourceParams, *, index: int, base_dir: str = "."):
        self.params = params
        self.index = index
        self.name = params.name or params.type
        self.base_dir = base_dir
        """Directory relative paths in the recipe are resolved against (the recipe's folder)."""

    def plan(self) -> list[ShardSpec]:
        """Split the source into shards, in a deterministic order. `params.limit` is applied here
        (as per-shard caps) so that shards can be read independently."""
        raise NotImplementedError

    def read(self, shard: ShardSpec, batch_rows: int) -> Iterator[SourceBatch]:
        """Read one shard as batches of at most `batch_rows` records."""
        raise NotImplementedError
