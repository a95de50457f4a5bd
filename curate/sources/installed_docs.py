"""The `installed_docs` source: docstrings of the Python standard library and the READMEs of
installed packages, the offline corpus every machine with Python already has.

Stdlib `.py` files are parsed with `ast`, never imported (importing `antigravity` opens a browser),
and every module, class and function docstring becomes a record. Every installed distribution with
a long description (its README, from `importlib.metadata`) becomes one more record. The text is real
and varied (prose, reST, Markdown, HTML badges) with real near and exact duplicates (the generated
`encodings/cp*.py` codecs, "Internal function." all over tkinter), so curation stages have work.
A file that cannot be parsed goes to quarantine (reason `unparsable_python`).

The input is fixed when the run is planned: the plan (saved with the run) lists the stdlib files
and, for each distribution, its name, version and metadata folder. Workers read exactly those,
so a worker whose `sys.path` holds other distributions (Ray's workers do) reads the same records;
a planned distribution that is gone or changed in a worker is quarantined as `missing_distribution`.
"""

from __future__ import annotations

import ast
import os
import re
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from importlib import metadata
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import Field, model_validator

from datamill.curate.engine.records import QUARANTINE_SCHEMA, quarantine_row, record_schema
from datamill.curate.engine.registry import register_source
from datamill.curate.engine.source import ShardSpec, Source, SourceBatch, SourceParams

DEFAULT_EXCLUDE = ("test/*", "*/test/*", "tests/*", "*/tests/*", "idlelib/*")
"""Test suites (with their Python 2 fixtures) and IDLE: code about code, not documentation."""

STDLIB_FIELDS = ("kind", "path", "qualname")
PACKAGE_FIELDS = ("kind", "name", "version", "content_type")
FIELDS = tuple(dict.fromkeys(STDLIB_FIELDS + PACKAGE_FIELDS))
"""Fields of a record besides its text: kept in `meta`, or as typed columns when declared."""

MODULE_QUALNAME = "<module>"
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_BODY_NODES = (ast.stmt, ast.excepthandler, ast.match_case)
"""Only statements can hold definitions; expressions are never walked."""


class InstalledDocsParams(SourceParams):
    type: Literal["installed_docs"] = "installed_docs"
    include: list[Literal["stdlib", "packages"]] = Field(
        default_factory=lambda: ["stdlib", "packages"],
        min_length=1,
        description="stdlib: docstrings of the standard library; packages: READMEs of installed "
        "distributions.",
    )
    min_chars: int = Field(
        1, ge=1, description="Docstrings and descriptions shorter than this are not records at all."
    )
    files_per_shard: int = Field(200, ge=1, description="Stdlib files per shard.")
    packages_per_shard: int = Field(100, ge=1, description="Distributions per shard.")
    exclude: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EXCLUDE),
        description="Globs over paths relative to the stdlib folder (`*` crosses `/`); files that "
        "match are skipped. Setting it replaces the default list.",
    )
    stdlib_dir: str | None = Field(
        None,
        description="Read this folder's `.py` files instead of the running Python's standard "
        "library (relative to the recipe).",
    )

    def check_paths(self, base_dir: str) -> list[str]:
        if self.stdlib_dir is None or "stdlib" not in self.include:
            return []
        folder = Path(base_dir) / os.path.expanduser(self.stdlib_dir)
        return [] if folder.is_dir() else [f"stdlib_dir: {str(folder)!r} is not a folder"]

    @model_validator(mode="after")
    def _fields_are_fixed(self) -> InstalledDocsParams:
        if self.text_field != "text" or self.id_field is not None:
            raise ValueError(
                "installed_docs builds its own text and ids: leave text_field and id_field unset"
            )
        for name, kind in self.columns.items():
            if name not in FIELDS or kind != "str":
                raise ValueError(
                    f"installed_docs column {name}: {kind} is not available; "
                    f"columns may name these string fields: {', '.join(FIELDS)}"
                )
        return self


@dataclass(frozen=True)
class Docstring:
    """One docstring found in a parsed file."""

    line: int
    qualname: str
    kind: Literal["module", "class", "function"]
    text: str


@dataclass(frozen=True)
class PackageDoc:
    """One installed distribution's long description."""

    key: str
    """Normalized name (PEP 503): ids, sorting and de-duplication use it."""
    name: str
    version: str
    text: str
    content_type: str | None
    folder: str | None = None
    """The distribution's metadata folder (`*.dist-info` / `*.egg-info`) found at planning."""


def docstrings(tree: ast.Module, min_chars: int) -> list[Docstring]:
    """The module's, classes' and functions' docstrings in source order, with Python's qualnames
    (`Outer.method`, `func.<locals>.helper`); modules are at line 1, named `<module>`."""
    found = []
    pending: list[tuple[ast.AST, str]] = [(tree, "")]
    while pending:
        node, scope = pending.pop()
        inner_scope = scope
        if isinstance(node, _DOCUMENTED):
            if isinstance(node, ast.Module):
                line, qualname, kind = 1, MODULE_QUALNAME, "module"
            else:
                line, qualname = node.lineno, scope + node.name
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                inner_scope = qualname + ("." if kind == "class" else ".<locals>.")
            text = ast.get_docstring(node, clean=True)
            if text and len(text) >= min_chars:
                found.append(Docstring(line, qualname, kind, text))
        children = [child for child in ast.iter_child_nodes(node) if isinstance(child, _BODY_NODES)]
        pending.extend((child, inner_scope) for child in reversed(children))
    return found


def parse_python(source: bytes, name: str) -> ast.Module:
    """Parse without importing; honours PEP 263 coding cookies. Raises SyntaxError, ValueError
    (undecodable bytes, null bytes) or RecursionError for files that are not valid Python."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences and the like are not our concern
        return ast.parse(source, filename=name)


def stdlib_files(root: Path, exclude: list[str]) -> list[str]:
    """`.py` files under `root`, as sorted posix paths relative to it, without installed packages,
    caches, and paths matching an `exclude` glob. Symlinked folders are not followed."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in _SKIPPED_DIRS]
        relative_folder = Path(folder).relative_to(root).as_posix()
        prefix = "" if relative_folder == "." else relative_folder + "/"
        for file in files:
            path = prefix + file
            if file.endswith(".py") and not any(fnmatchcase(path, glob) for glob in exclude):
                found.append(path)
    return sorted(found)


def normalized_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def package_doc(dist: metadata.Distribution, min_chars: int) -> PackageDoc | None:
    """The distribution's README: the metadata body, else its `Description` header; None when it
    has none (or only setuptools' `UNKNOWN` placeholder), is shorter than `min_chars`, or the
    distribution has no name or version."""
    meta = dist.metadata
    name, version = meta.get("Name"), meta.get("Version")
    if not name or not version:
        return None
    body = meta.get_payload()
    text = body if isinstance(body, str) and body.strip() else meta.get("Description") or ""
    text = text.strip()
    if not text or text == "UNKNOWN" or len(text) < min_chars:
        return None
    folder = getattr(dist, "_path", None)  # PathDistribution's metadata folder (no public accessor)
    return PackageDoc(normalized_name(name), name, version, text, meta.get("Description-Content-Type"),
                      None if folder is None else str(Path(folder).resolve()))


def installed_packages(min_chars: int) -> list[PackageDoc]:
    """Documented distributions on `sys.path`, sorted by normalized name then version; a (name,
    version) installed in several places counts once, as the one Python would import. Distributions
    whose metadata cannot be read or that have no name are skipped, as `pip list` does."""
    found: dict[tuple[str, str], PackageDoc] = {}
    for dist in metadata.distributions():
        try:
            doc = package_doc(dist, min_chars)
        except (OSError, TypeError, ValueError):
            continue
        if doc is not None:
            found.setdefault((doc.key, doc.version), doc)
    return [found[key] for key in sorted(found)]


class BatchBuilder:
    """Collects records and quarantine rows of one shard and cuts them into SourceBatches."""

    def __init__(self, source: str, fields: tuple[str, ...], params: InstalledDocsParams):
        self.source = source
        self.fields = fields
        self.columns = params.columns
        self.meta_fields = [name for name in fields if name not in params.columns] if params.keep_meta else []
        self.rows: dict[str, list] = {name: [] for name in ("id", "text", *fields)}
        self.quarantine: list[dict] = []

    def add(self, ident: str, text: str, **fields: str | None) -> None:
        self.rows["id"].append(ident)
        self.rows["text"].append(text)
        for name in self.fields:
            self.rows[name].append(fields[name])

    def __len__(self) -> int:
        return len(self.rows["id"])

    def full_batches(self, batch_rows: int) -> Iterator[SourceBatch]:
        while len(self) >= batch_rows:
            yield self._take(batch_rows)

    def rest(self) -> Iterator[SourceBatch]:
        if len(self) or self.quarantine:
            yield self._take(len(self))

    def _take(self, count: int) -> SourceBatch:
        table = pl.DataFrame({name: values[:count] for name, values in self.rows.items()},
                             schema={name: pl.String for name in self.rows})
        for values in self.rows.values():
            del values[:count]
        meta = (pl.struct(self.meta_fields).struct.json_encode() if self.meta_fields
                else pl.lit(None, dtype=pl.String))
        typed = [pl.col(name) if name in self.fields else pl.lit(None, dtype=pl.String).alias(name)
                 for name in self.columns]
        records = table.select(
            "id", pl.lit(self.source).alias("source"), "text", meta.alias("meta"), *typed
        ).cast(record_schema(self.columns))
        quarantine = pl.DataFrame(self.quarantine, schema=QUARANTINE_SCHEMA)
        self.quarantine = []
        return SourceBatch(records, quarantine, lines_read=records.height + quarantine.height)


@register_source
class InstalledDocs(Source):
    """Docstrings of the Python standard library and READMEs of installed packages (offline text)."""

    type_name = "installed_docs"
    Params = InstalledDocsParams
    params: InstalledDocsParams

    def stdlib_root(self) -> Path:
        if self.params.stdlib_dir is None:
            return Path(sysconfig.get_paths()["stdlib"]).resolve()
        return (Path(self.base_dir) / os.path.expanduser(self.params.stdlib_dir)).resolve()

    def plan(self) -> list[ShardSpec]:
        """Chunks of sorted stdlib files, then chunks of sorted distributions. Without `limit` no
        file is parsed. With it, files are parsed in order until `limit` docstrings are covered and
        each shard gets a record cap; nothing after the record that reaches the limit is planned."""
        remaining = self.params.limit
        shards: list[ShardSpec] = []
        if "stdlib" in self.params.include:
            root = self.stdlib_root()
            files = stdlib_files(root, self.params.exclude)
            counts = None if remaining is None else self._count_docstrings(root, files, remaining)
            if counts is not None:
                files = files[: len(counts)]
            for start in range(0, len(files), self.params.files_per_shard):
                chunk = files[start : start + self.params.files_per_shard]
                cap = None
                if counts is not None:
                    cap = min(remaining, sum(counts[start : start + self.params.files_per_shard]))
                    remaining -= cap
                payload = {"kind": "stdlib", "root": str(root), "files": chunk, "max_records": cap}
                description = f"stdlib {chunk[0]} … {chunk[-1]} ({len(chunk)} files)"
                shards.append(ShardSpec(self.index, description, payload))
        if "packages" in self.params.include and remaining != 0:
            packages = installed_packages(self.params.min_chars)[:remaining]
            for start in range(0, len(packages), self.params.packages_per_shard):
                chunk = packages[start : start + self.params.packages_per_shard]
                planned = [{"key": doc.key, "version": doc.version, "folder": doc.folder} for doc in chunk]
                description = f"packages {chunk[0].key} … {chunk[-1].key} ({len(chunk)} distributions)"
                shards.append(ShardSpec(self.index, description, {"kind": "packages", "packages": planned}))
        return shards

    def _count_docstrings(self, root: Path, files: list[str], limit: int) -> list[int]:
        """Docstrings per file, in order, up to the first file where the total reaches `limit`
        (unparsable files count 0: they yield no records)."""
        counts, total = [], 0
        for path in files:
            try:
                tree = parse_python((root / path).read_bytes(), path)
                counts.append(len(docstrings(tree, self.params.min_chars)))
            except (OSError, SyntaxError, ValueError, RecursionError):
                counts.append(0)
            total += counts[-1]
            if total >= limit:
                break
        return counts

    def read(self, shard: ShardSpec, batch_rows: int) -> Iterator[SourceBatch]:
        if shard.payload["kind"] == "stdlib":
            yield from self._read_stdlib(shard.payload, batch_rows)
        else:
            yield from self._read_packages(shard.payload, batch_rows)

    def _read_stdlib(self, payload: dict, batch_rows: int) -> Iterator[SourceBatch]:
        root = Path(payload["root"])
        budget = payload["max_records"]
        batch = BatchBuilder(self.name, STDLIB_FIELDS, self.params)
        for path in payload["files"]:
            if budget == 0:
                break
            full = root / path
            try:
                source = full.read_bytes()
            except OSError as error:
                batch.quarantine.append(quarantine_row(
                    self.name, str(full), None, "unreadable_file", f"{path}: {error}", None))
                continue
            try:
                found = docstrings(parse_python(source, path), self.params.min_chars)
            except (SyntaxError, ValueError, RecursionError) as error:
                line = error.lineno if isinstance(error, SyntaxError) else None
                batch.quarantine.append(quarantine_row(
                    self.name, str(full), line, "unparsable_python",
                    f"{path}: {type(error).__name__}: {error}", source))
                continue
            if budget is not None:
                found, budget = found[:budget], budget - min(budget, len(found))
            for doc in found:
                batch.add(f"stdlib:{path}:{doc.line}:{doc.qualname}", doc.text,
                          kind=doc.kind, path=path, qualname=doc.qualname)
            yield from batch.full_batches(batch_rows)
        yield from batch.rest()

    def _read_packages(self, payload: dict, batch_rows: int) -> Iterator[SourceBatch]:
        """Exactly the distributions of the plan, read from the metadata folders found then (never
        from what this process' `sys.path` holds); one gone or changed is `missing_distribution`."""
        batch = BatchBuilder(self.name, PACKAGE_FIELDS, self.params)
        for planned in payload["packages"]:
            key, version, folder = planned["key"], planned["version"], planned["folder"]
            doc, why = self._planned_package(key, version, folder)
            if doc is None:
                batch.quarantine.append(quarantine_row(
                    self.name, folder or f"{key}=={version}", None, "missing_distribution",
                    f"{key}=={version} was planned from {folder} but {why}", None))
                continue
            batch.add(f"pkg:{doc.key}=={doc.version}", doc.text, kind="package", name=doc.name,
                      version=doc.version, content_type=doc.content_type)
            yield from batch.full_batches(batch_rows)
        yield from batch.rest()

    def _planned_package(self, key: str, version: str, folder: str | None) -> tuple[PackageDoc | None, str]:
        """The planned distribution's description, or None and why it cannot be read."""
        if folder is None or not Path(folder).is_dir():
            return None, "that folder is gone"
        try:
            doc = package_doc(metadata.PathDistribution(Path(folder)), self.params.min_chars)
        except (OSError, TypeError, ValueError) as error:
            return None, f"its metadata cannot be read ({error})"
        if doc is None or (doc.key, doc.version) != (key, version):
            found = "no description" if doc is None else f"{doc.key}=={doc.version}"
            return None, f"it now holds {found}"
        return doc, ""
