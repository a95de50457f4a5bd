"""Load a recipe file and validate it completely before any work starts.

Recipes are YAML read with `yaml.safe_load` (no Python tags), then checked with pydantic: the
top level by `Recipe`, every source and stage by the `Params` model of its registered type. All
problems are reported at once, each naming its key path, the bad value and what is allowed, e.g.
`stages[2].threshold: 1.7 is not in [0, 1]`. A recipe only picks registered types by name; it can
never import or run code.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from datamill.curate.engine.plugins import load_plugins
from datamill.curate.engine.registry import source_types, stage_types
from datamill.curate.engine.source import SourceParams
from datamill.curate.engine.stage import StageParams
from datamill.curate.engine.store import is_remote, output_store_problems
from datamill.recipes import builtin_recipe_names


class RecipeError(ValueError):
    """A recipe that cannot run; the message lists every problem, one per line."""

    def __init__(self, where: str, problems: list[str]):
        self.where = where
        self.problems = problems
        super().__init__(f"{where}: invalid recipe\n" + "\n".join(f"  - {p}" for p in problems))


class OutputSpec(BaseModel):
    """Where and how the curated corpus is written."""

    model_config = ConfigDict(extra="forbid")

    dir: str = Field(description="Run directory: shards/, quarantine/, removed/, state/, report. A local "
                     "path, or an fsspec URL (s3://bucket/prefix, gs://, hf://) for an object-store run.")
    format: Literal["parquet", "jsonl", "jsonl.zst"] = "parquet"
    shard_rows: int = Field(100_000, ge=1, description="Most rows per output file.")
    keep_removed: bool = Field(False, description="Also write dropped rows to removed/<stage>/.")


class ExecutorSpec(BaseModel):
    """How the pipeline is run."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["local", "ray"] = Field(
        "local", description="local: worker processes on this machine; ray: Ray Data on a Ray cluster.")
    workers: int | None = Field(None, ge=1, description="Worker processes (ray: actors/tasks at once); "
                                "default: CPU cores.")
    address: str | None = Field(None, description="ray: cluster address (`auto`, `ray://host:10001`); "
                                "default: start a local Ray cluster.")
    batch_rows: int = Field(1000, ge=1, description="Records per batch handed to stages.")
    reduce_partitions: int = Field(1, ge=1, description="Reduce dedup barriers (minhash_dedup, exact_dedup) and "
                                   "ranking barriers (budget, percentile_band, dsir, ifd, ds_weight) and mix in this "
                                   "many partitions, in parallel (local pool or Ray tasks): no process holds every "
                                   "summary. Same output for any value.")
    combine_memory_mib: int = Field(2048, ge=0, description="minhash_dedup with reduce_partitions > 1: most "
                                    "memory (MiB) the one-process union–find of the duplicate pairs may take "
                                    "(~160 B per pair); more pairs are joined by partitioned connected components "
                                    "in reduce_partitions parallel tasks. Ranking barriers and mix: most memory "
                                    "the driver's combine of every row may take (~110 B per row); beyond it "
                                    "the rows stay with the partitions and the decision is written range by "
                                    "range. Same output for any value.")


@dataclass(frozen=True)
class RecipeSection:
    """A top-level recipe section that a feature adds (`train:`, `eval:`, `synth:`…).

    `model` validates the section (None keeps the mapping as written); `check(value, where)` returns
    further `key.path: problem` lines. Sections run after curation: they never change the fingerprint.
    """

    model: type[BaseModel] | None = None
    check: Callable[[Any, str], list[str]] | None = None
    description: str = ""


_sections: dict[str, RecipeSection] = {}


def register_section(name: str, section: RecipeSection) -> None:
    """Let recipes carry a top-level `name:` section (called by the feature that reads it)."""
    if name in Recipe.model_fields:
        raise ValueError(f"recipe section {name!r} would shadow a core recipe key")
    _sections[name] = section


def recipe_sections() -> dict[str, RecipeSection]:
    load_plugins()
    return dict(_sections)


class Recipe(BaseModel):
    """A validated recipe: sources and stages are already typed Params objects; registered
    sections (`recipe.section("train")`) are held validated in `sections`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    sources: list[dict[str, Any]] = Field(min_length=1)
    stages: list[dict[str, Any]] = Field(default_factory=list)
    output: OutputSpec
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    sections: dict[str, Any] = Field(default_factory=dict, description="Registered sections, by name.")
    _base_dir: str | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _gather_sections(cls, data: Any) -> Any:
        """Registered top-level keys (`train:`…) go into `sections`; null sections are left out."""
        if not isinstance(data, dict):
            return data
        table = recipe_sections()
        found = {k: v for k, v in data.items() if k in table}
        if not found:
            return data
        rest = {k: v for k, v in data.items() if k not in table}
        merged = {**(rest.get("sections") or {}), **found}
        return {**rest, "sections": {k: v for k, v in merged.items() if v is not None}}

    @model_validator(mode="after")
    def _typed_sections(self) -> Recipe:
        table = recipe_sections()
        for name, value in self.sections.items():
            if name not in table:
                raise ValueError(f"{name}: no datamill feature reads this section")
            model = table[name].model
            if model is not None and not isinstance(value, model):
                self.sections[name] = model.model_validate(value)
        return self

    def section(self, name: str) -> Any:
        """The validated section `name`, or None when the recipe has none."""
        return self.sections.get(name)

    def with_sections(self, **sections: Any) -> Recipe:
        """A copy with these sections set (None removes one)."""
        merged = {**self.sections, **sections}
        return self.model_copy(update={"sections": {k: v for k, v in merged.items() if v is not None}})

    @property
    def base_dir(self) -> str:
        """The folder that relative source paths are read from: the recipe file's folder when
        the recipe was loaded from a file, else the current directory."""
        return self._base_dir or "."

    def source_params(self) -> list[SourceParams]:
        types = source_types()
        return [types[s["type"]].Params.model_validate(s) for s in self.sources]

    def stage_params(self) -> list[tuple[str, StageParams]]:
        types = stage_types()
        return [(s["type"], types[s["type"]].Params.model_validate(_without_type(s))) for s in self.stages]

    def fingerprint(self) -> str:
        """Hash of everything that decides the output (not the worker count, nor the executor:
        local and ray write the same output, so either can resume the other's run)."""
        content = self.model_dump(mode="json")
        for key in ("workers", "address", "reduce_partitions", "combine_memory_mib"):
            content["executor"].pop(key, None)
        content["executor"]["type"] = "local"  # the value every fingerprint was made with
        content.pop("sections")
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _without_type(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "type"}


BUILTIN_RECIPES = "datamill.recipes"


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file path, or the name of a recipe that ships with datamill (e.g. `quickstart`)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    stem = path.name.removesuffix(".yaml")
    if stem in builtin_recipe_names() and len(path.parts) <= 2:
        return Path(str(resources.files(BUILTIN_RECIPES).joinpath(f"{stem}.yaml")))
    raise RecipeError(str(name_or_path), [f"no such file; built-in recipes: {', '.join(builtin_recipe_names())}"])


def load_recipe(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read, parse and fully validate a recipe; `overrides` are applied to the raw mapping first."""
    path = resolve_recipe_path(name_or_path)
    try:
        raw = read_yaml_bounded(path.read_text(encoding="utf-8"))
    except YamlTooLarge as err:
        raise RecipeError(str(path), [str(err)]) from None
    except yaml.constructor.ConstructorError as err:
        raise RecipeError(str(path), [f"line {_yaml_line(err)}: {err.problem}; recipes cannot contain "
                                      "Python tags or any other code"]) from None
    except yaml.YAMLError as err:
        raise RecipeError(str(path), [f"line {_yaml_line(err)}: not valid YAML: {getattr(err, 'problem', err)}"]) from None
    except UnicodeDecodeError as err:
        raise RecipeError(str(path), [f"not UTF-8 text: {err}"]) from None
    recipe = validate_recipe(raw, where=str(path), overrides=overrides)
    recipe._base_dir = str(path.resolve().parent)
    if problems := path_problems(recipe):
        raise RecipeError(str(path), problems)
    return recipe


def path_problems(recipe: Recipe) -> list[str]:
    """Missing inputs (each source's and stage's `check_paths`) and an output dir that cannot be
    written, by key path: found before anything is written."""
    problems = [f"sources[{i}].{p}" for i, params in enumerate(recipe.source_params())
                for p in params.check_paths(recipe.base_dir)]
    problems += [f"stages[{i}].{p}" for i, (_, params) in enumerate(recipe.stage_params())
                 for p in params.check_paths(recipe.base_dir)]
    if is_remote(recipe.output.dir):
        return problems + output_store_problems(recipe.output.dir)
    folder = Path(recipe.output.dir.removeprefix("file://")).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a folder" if not existing.is_dir() else "is not writable"
        problems.append(f"output.dir: cannot write {str(folder)!r}: {str(existing)!r} {why}")
    return problems


MAX_EXPANDED_NODES = 100_000
"""A recipe whose YAML aliases would expand to more nodes than this is refused before expansion."""


class YamlTooLarge(ValueError):
    """YAML whose aliases expand past MAX_EXPANDED_NODES (a "billion laughs" document)."""


def read_yaml_bounded(text: str) -> Any:
    """`yaml.safe_load`, but the node graph is measured first: each alias counts as the whole
    subtree it repeats, so a few hundred bytes of nested aliases cannot expand into gigabytes."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_EXPANDED_NODES:
            raise YamlTooLarge(f"its aliases expand to more than {MAX_EXPANDED_NODES:,} values ({size:,}); "
                               "recipes may use anchors and aliases, but not to multiply content")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values in `node` once every alias is expanded; shared nodes are measured once (memo by id)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 1  # a node that contains itself counts once (safe_load refuses to build it anyway)
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    else:
        total = 1
    sizes[id(node)] = min(total, 1 << 62)
    return sizes[id(node)]


def _yaml_line(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return str(mark.line + 1) if mark is not None else "?"


def validate_recipe(raw: Any, *, where: str = "recipe", overrides: dict[str, Any] | None = None) -> Recipe:
    """Validate a recipe mapping; raise RecipeError listing every problem."""
    if not isinstance(raw, dict):
        raise RecipeError(where, [f"the recipe must be a mapping of keys, got {type(raw).__name__}"])
    raw = _apply_overrides(raw, overrides or {})
    table = recipe_sections()
    core = {k: v for k, v in raw.items() if k not in table}
    problems: list[str] = []
    try:
        Recipe.model_validate(core)
    except ValidationError as err:
        problems.extend(_format_errors(err, Recipe, prefix=""))
    problems.extend(_check_entries(raw.get("sources"), "sources", source_types(), keep_type=True))
    problems.extend(stage_entry_problems(raw.get("stages"), "stages"))
    for name, section in table.items():
        if raw.get(name) is not None:
            problems.extend(_section_problems(name, section, raw[name]))
    if problems:
        raise RecipeError(where, problems)
    return Recipe.model_validate(raw)


def _section_problems(name: str, section: RecipeSection, value: Any) -> list[str]:
    if section.model is not None:
        try:
            section.model.model_validate(value)
        except ValidationError as err:
            return _format_errors(err, section.model, prefix=name)
    return section.check(value, name) if section.check is not None else []


def stage_entry_problems(entries: Any, section: str) -> list[str]:
    """`section[i].key: problem` lines for a list of stage entries (`stages`, `synth.stages`…)."""
    return _check_entries(entries, section, stage_types(), keep_type=False)


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides are dotted keys (`executor.workers`), or `sources.*.limit` for every source."""
    raw = json.loads(json.dumps(raw, default=str))
    for dotted, value in overrides.items():
        keys = dotted.split(".")
        targets = [raw]
        for key in keys[:-1]:
            nxt = []
            for t in targets:
                if key == "*" and isinstance(t, list):
                    nxt.extend(x for x in t if isinstance(x, dict))
                elif isinstance(t, dict):
                    nxt.append(t.setdefault(key, {}))
            targets = nxt
        for t in targets:
            if isinstance(t, dict):
                t[keys[-1]] = value
    return raw


def _check_entries(entries: Any, section: str, table: dict[str, type], *, keep_type: bool) -> list[str]:
    if not isinstance(entries, list):
        return []
    problems = []
    for i, entry in enumerate(entries):
        here = f"{section}[{i}]"
        if not isinstance(entry, dict):
            continue  # Recipe validation already reported it
        kind = entry.get("type")
        if kind is None:
            problems.append(f"{here}.type: required; known types: {', '.join(table)}")
            continue
        if kind not in table:
            hint = difflib.get_close_matches(str(kind), list(table), n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(f"{here}.type: {kind!r} is not a known type{suggestion}; known types: {', '.join(table)}")
            continue
        params_model = table[kind].Params
        try:
            params_model.model_validate(entry if keep_type else _without_type(entry))
        except ValidationError as err:
            problems.extend(_format_errors(err, params_model, prefix=here))
    return problems


def _format_errors(err: ValidationError, model: type[BaseModel], prefix: str) -> list[str]:
    lines = []
    for e in err.errors():
        loc = e["loc"]
        path = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
        path = path.lstrip(".") or "recipe"
        lines.append(f"{path}: {_describe(e, model, loc)}")
    return lines


def _describe(e: dict[str, Any], model: type[BaseModel], loc: tuple) -> str:
    kind, value = e["type"], e.get("input")
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    if kind == "extra_forbidden":
        owner = _owner_model(model, loc[:-1])
        keys = list(owner.model_fields) if owner else ["?"]
        if owner is Recipe:
            keys = [k for k in keys if k != "sections"] + list(recipe_sections())
        allowed = ", ".join(keys)
        return f"unknown key; allowed keys: {allowed}"
    if kind == "missing":
        return "required key is missing"
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        info = _field_info(model, loc)
        return f"{shown} is not in {_interval(info)}" if info is not None else f"{shown}: {e['msg']}"
    if kind == "literal_error":
        return f"{shown} is not allowed; allowed: {e['ctx']['expected']}"
    if kind == "string_pattern_mismatch":
        return f"{shown} must match {e['ctx']['pattern']}"
    return f"{shown}: {e['msg']}"


def _owner_model(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `loc` (through lists, dicts and optionals)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = current.model_fields if current is not None else {}
        if part not in fields:
            return None
        current = _model_in(fields[part].annotation)
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _field_info(model: type[BaseModel], loc: tuple):
    owner = _owner_model(model, tuple(p for p in loc[:-1]))
    name = loc[-1] if loc and isinstance(loc[-1], str) else None
    if owner is None or name not in owner.model_fields:
        return None
    return owner.model_fields[name]


def _interval(info) -> str:
    low = high = None
    low_open = high_open = False
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            low = m.ge
        elif isinstance(m, annotated_types.Gt):
            low, low_open = m.gt, True
        elif isinstance(m, annotated_types.Le):
            high = m.le
        elif isinstance(m, annotated_types.Lt):
            high, high_open = m.lt, True
    left = ("(" if low_open else "[") + (str(low) if low is not None else "-inf")
    right = (str(high) if high is not None else "inf") + (")" if high_open or high is None else "]")
    if low is None:
        left = "(-inf"
    return f"{left}, {right}"
