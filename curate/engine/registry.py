"""Name→class tables for stage and source types; recipes pick entries by their `type:` name.

Recipes can never name code: only types registered here exist. Modules that define stages or
sources are plug-ins (the `datamill.plugins` entry points, see `engine.plugins`), imported on the
first lookup; they must import heavy libraries (torch, fasttext…) lazily, inside `setup()`.
"""

from __future__ import annotations

from typing import TypeVar

from datamill.curate.engine.plugins import load_plugins
from datamill.curate.engine.source import Source
from datamill.curate.engine.stage import Stage

_stages: dict[str, type[Stage]] = {}
_sources: dict[str, type[Source]] = {}
StageT = TypeVar("StageT", bound=type[Stage])
SourceT = TypeVar("SourceT", bound=type[Source])


def register_stage(cls: StageT) -> StageT:
    """Class decorator: make a Stage available to recipes under `cls.type_name`."""
    _register(_stages, cls)
    return cls


def register_source(cls: SourceT) -> SourceT:
    """Class decorator: make a Source available to recipes under `cls.type_name`."""
    _register(_sources, cls)
    return cls


def _register(table: dict, cls: type) -> None:
    name = cls.type_name
    if not name:
        raise ValueError(f"{cls.__name__} has no type_name")
    if name in table and table[name] is not cls:
        raise ValueError(f"type name {name!r} is taken by {table[name].__name__}")
    table[name] = cls


def stage_types() -> dict[str, type[Stage]]:
    load_plugins()
    return dict(sorted(_stages.items()))


def source_types() -> dict[str, type[Source]]:
    load_plugins()
    return dict(sorted(_sources.items()))
