"""Name→class tables for stage and source types; recipes pick entries by their `type:` name.

Recipes can never name code: only types registered here exist. Modules that define stages or
sources are listed in `_STAGE_MODULES` / `_SOURCE_MODULES` and imported on first lookup; they
must import heavy libraries (torch, fasttext…) lazily, inside `setup()`.
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from datamill.curate.engine.source import Source
from datamill.curate.engine.stage import Stage

_STAGE_MODULES = (
    "datamill.curate.engine.stages",
    "datamill.curate.dedup.exact",
    "datamill.curate.dedup.lines",
    "datamill.curate.dedup.minhash_stage",
    "datamill.curate.dedup.lsh_index",
    "datamill.curate.dedup.semantic",
    "datamill.filters.decontaminate",
    "datamill.filters.language",
    "datamill.filters.gopher",
    "datamill.filters.c4",
    "datamill.filters.fineweb",
    "datamill.filters.perplexity",
    "datamill.curate.selection.dsir",
    "datamill.curate.selection.budget",
    "datamill.curate.selection.mix",
    "datamill.curate.selection.rho",
    "datamill.curate.selection.ifd",
    "datamill.curate.selection.lobass",
    "datamill.curate.selection.ds_weight",
    "datamill.synth.distill",
    "datamill.synth.reflect",
    "datamill.synth.codeswitch.switch",
    "datamill.synth.codeswitch.transliterate",
    "datamill.synth.codeswitch.verify",
    "datamill.synth.codeswitch.llm",
)
_SOURCE_MODULES = (
    "datamill.curate.sources.jsonl",
    "datamill.curate.sources.tables",
    "datamill.curate.sources.installed_docs",
    "datamill.synth.self_instruct",
)

_stages: dict[str, type[Stage]] = {}
_sources: dict[str, type[Source]] = {}
_loaded = False

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


def _load() -> None:
    global _loaded
    if not _loaded:
        for module in _STAGE_MODULES + _SOURCE_MODULES:
            importlib.import_module(module)
        _loaded = True


def stage_types() -> dict[str, type[Stage]]:
    _load()
    return dict(sorted(_stages.items()))


def source_types() -> dict[str, type[Source]]:
    _load()
    return dict(sorted(_sources.items()))
