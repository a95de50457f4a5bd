"""Benchmark decontamination: drop or flag training records that share a long word n-gram with an eval set.

Like GPT-3's and TÜLU 3's decontamination: every benchmark named in the recipe is read through the
registered sources (any source type: jsonl, parquet, hf…), the chosen `fields` of each eval record
are normalized (lowercase, every run of punctuation and symbols replaced by a space, so that
"epsilon,zeta" and "epsilon/zeta" read as "epsilon zeta"; see `datamill.filters.ngrams`) and cut
into word n-grams (default 13 words), and a training record is contaminated by a benchmark when it contains
at least `min_overlap` distinct n-grams of it. N-grams are compared by 64-bit hash (see
`datamill.filters.ngrams`: a rolling hash over polars' seeded word hashes, the same in every
process and run of one installation).

All benchmarks' n-grams form one index (sorted uint64 hashes with the benchmark and eval item of
each, `datamill.filters.decontam_index`), built ONCE per run by the first worker to start, under
`<run>/state/decontaminate/` (or `index_dir`, to reuse it across runs: its key names the eval
files' paths, sizes and modification times, the n-gram settings and the polars version), and
opened memory-mapped by every worker, so the pages are shared through the page cache instead of
each worker holding its own copy. Each batch's distinct n-gram hashes are looked up with
`np.searchsorted`.

Eval texts shorter than `ngram` words have no n-gram and never match by default, as in
open-instruct's n-gram search (`decontamination/search.py`, `get_ngram_mapping`) and datatrove's
`NGramsDecontIndexer`. `short_items: true` indexes those with at least `min_item_tokens` words
whole (open-instruct's full-field mode, an Elasticsearch phrase match of the whole field): a
training record containing the whole text as a phrase counts one shared n-gram. It is opt-in
because a generic question ("What is the name of the largest city in the world?") then removes
every document that asks it; `contaminated_items` shows which eval items do the removing.

Columns: `contamination_ngrams` (the largest number of distinct shared n-grams with any one
benchmark, 0 if none), `contaminated_by` (names of the benchmarks that reach `min_overlap`, in
recipe order; empty if none) and `contaminated_items` (the eval items of those benchmarks that
share n-grams with the record, as "<benchmark>#<record number in its source, from 0>", most shared
first). Drop reason: `contaminated:<first benchmark in contaminated_by>`. `item_hits(frame)` counts
the records each eval item hit, worst first.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from datamill.curate.engine.layout import RunLayout
from datamill.curate.engine.paths import is_url, join, version_stamp
from datamill.curate.engine.registry import register_stage, source_types
from datamill.curate.engine.source import SourceParams
from datamill.curate.engine.stage import Filter, FilterParams
from datamill.filters.decontam_index import FORMAT as INDEX_FORMAT
from datamill.filters.decontam_index import NgramIndex, shared_index
from datamill.filters.ngrams import DOC, HASH, LENGTH, N_WORDS, ngram_hashes, normalized_words

READ_BATCH_ROWS = 10_000
BUILD_CHUNK_TEXTS = 50_000
"""Eval texts cut into n-grams at a time while the index is built."""
NGRAMS = "contamination_ngrams"
CONTAMINATED_BY = "contaminated_by"
CONTAMINATED_ITEMS = "contaminated_items"


class Benchmark(BaseModel):
    """One evaluation set to decontaminate against."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Name in `contaminated_by` and in the drop reason.")
    source: dict[str, Any] = Field(
        description="Where the eval records are: a source entry exactly like one in the recipe's "
        "`sources` list, e.g. {type: jsonl, path: evals/gsm8k.jsonl, text_field: question}."
    )
    fields: list[str] | None = Field(
        None,
        min_length=1,
        description="Fields of each eval record to index (each on its own, e.g. [question, answer]); "
        "default: the source's `text_field`.",
    )

    @field_validator("source")
    @classmethod
    def _valid_source(cls, entry: dict[str, Any]) -> dict[str, Any]:
        """Validate with the source type's own Params, so errors name e.g. `…source.path`."""
        types = source_types()
        kind = entry.get("type")
        if kind is None:
            raise ValueError(f"a source needs a `type`; known types: {', '.join(types)}")
        if kind not in types:
            raise ValueError(f"source type {kind!r} is not known; known types: {', '.join(types)}")
        params_model = types[kind].Params
        try:
            params_model.model_validate(entry)
        except ValidationError as err:
            raise _naming_allowed_keys(err, params_model) from None
        return entry

    def source_params(self) -> SourceParams:
        """The source to read: `text_field` is the first indexed field, the others typed str columns."""
        params = source_types()[self.source["type"]].Params.model_validate(self.source)
        fields = self.indexed_fields(params)
        extra = {name: "str" for name in fields[1:]}
        return params.model_copy(
            update={"text_field": fields[0], "columns": {**params.columns, **extra}, "keep_meta": False}
        )

    def indexed_fields(self, params: SourceParams) -> list[str]:
        return list(dict.fromkeys(self.fields)) if self.fields else [params.text_field]


def _naming_allowed_keys(err: ValidationError, model: type[BaseModel]) -> ValidationError:
    """The same errors, but an unknown key lists the keys the source type allows."""
    allowed = ", ".join(model.model_fields)
    details = []
    for error in err.errors():
        detail = {key: error[key] for key in ("type", "loc", "input", "ctx") if key in error}
        if error["type"] == "extra_forbidden":
            detail["type"] = PydanticCustomError("unknown_key", "unknown key; allowed keys: {allowed}", {"allowed": allowed})
        details.append(detail)
    return ValidationError.from_exception_data(err.title, details)


class DecontaminateParams(FilterParams):
    benchmarks: list[Benchmark] = Field(min_length=1, description="Evaluation sets; order decides the drop reason.")
    ngram: int = Field(13, ge=1, le=64, description="N-gram length in words.")
    min_overlap: int = Field(
        1, ge=1, description="Distinct shared n-grams with one benchmark that make a record contaminated."
    )
    short_items: bool = Field(
        False,
        description="Also index eval texts shorter than `ngram` words (but at least `min_item_tokens`) "
        "whole, as a phrase: catches short questions, and generic ones with them.",
    )
    min_item_tokens: int = Field(
        8, ge=1, description="With `short_items`: the fewest words an eval text needs to be indexed whole."
    )
    index_dir: str | None = Field(
        None,
        description="Folder to keep the built n-gram index in, so later runs against the same eval "
        "files and settings reuse it (one sub-folder per eval files + settings); default: the run's "
        "`state/decontaminate`, built once per run and shared by its workers memory-mapped.",
    )
    lowercase: bool = Field(True, description="Compare lowercased text.")
    strip_punctuation: bool = Field(True, description="Remove punctuation and symbols before comparing.")

    def check_paths(self, base_dir: str) -> list[str]:
        return [f"benchmarks[{i}].source.{problem}" for i, benchmark in enumerate(self.benchmarks)
                for problem in benchmark.source_params().check_paths(base_dir)]

    @field_validator("index_dir")
    @classmethod
    def _local_index_dir(cls, folder: str | None) -> str | None:
        if folder is not None and is_url(folder):
            raise ValueError(f"{folder!r}: index_dir must be a local folder (the index is memory-mapped)")
        return folder

    @model_validator(mode="after")
    def _unique_names(self):
        names = [b.name for b in self.benchmarks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"benchmark names must be unique; repeated: {', '.join(repeated)}")
        return self


@register_stage
class Decontaminate(Filter):
    """Drop or flag records sharing a long word n-gram with any listed evaluation set."""

    type_name = "decontaminate"
    Params: ClassVar = DecontaminateParams
    outputs = (NGRAMS, CONTAMINATED_BY, CONTAMINATED_ITEMS)
    params: DecontaminateParams

    def __init__(self, params: DecontaminateParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        """Folder relative benchmark paths are resolved against (the recipe's folder)."""
        self.index: NgramIndex | None = None
        self.lengths: list[int] = []

    # --- setup: the n-gram index of every benchmark --------------------------------------
    def setup(self) -> None:
        """Open the run's n-gram index of every benchmark memory-mapped, building it first if no
        process has yet (see `datamill.filters.decontam_index`); without a run or `index_dir`
        (the stage used on its own), build it in memory."""
        folder = self.index_folder()
        if folder is None:
            self.index = self.build_index()
        else:
            self.index = shared_index(folder, self.index_key(), self.build_index)
        self.lengths = list(self.index.lengths)

    def index_folder(self) -> Path | None:
        """Where the built index is kept: `index_dir`, else `<run>/state/decontaminate`."""
        if self.params.index_dir is not None:
            return Path(join(self.base_dir, self.params.index_dir))
        run_dir = getattr(self, "run_dir", None)
        return None if run_dir is None else RunLayout(run_dir).state / "decontaminate"

    def index_key(self) -> str:
        """Names everything the index depends on: the eval files (path, size, modification time),
        the benchmarks and n-gram parameters, and the polars version (its word hash)."""
        p = self.params
        described = {
            "format": INDEX_FORMAT,
            "polars": pl.__version__,
            "params": p.model_dump(mode="json", include={"ngram", "short_items", "min_item_tokens", "lowercase",
                                                          "strip_punctuation"}),
            "benchmarks": [{"fields": b.fields, "source": b.source, "files": self._eval_files(b)}
                           for b in p.benchmarks],
        }
        digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()
        return f"{self.type_name}-{digest[:24]}"

    def _eval_files(self, benchmark: Benchmark) -> list[list]:
        """Each planned shard of a benchmark's source, with its file's size and mtime when local."""
        params = benchmark.source_params()
        source = source_types()[params.type](params, index=0, base_dir=self.base_dir)
        try:
            specs = source.plan()
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"benchmark {benchmark.name!r}: cannot read its source: {err}") from err
        described = []
        for spec in specs:
            entry = [spec.description, json.dumps(spec.payload, sort_keys=True, default=str)]
            path = spec.payload.get("path")
            if isinstance(path, str) and not is_url(path) and os.path.isfile(path):
                stat = os.stat(path)
                entry += [stat.st_size, stat.st_mtime_ns]
            elif isinstance(path, str) and is_url(path):
                entry.append(version_stamp(path))  # an eval set replaced on the store rebuilds the index
            described.append(entry)
        return described

    def build_index(self) -> NgramIndex:
        """Read every benchmark and build one index of (hash, benchmark order, eval item)."""
        tables, lengths = [], {self.params.ngram}
        for order, benchmark in enumerate(self.params.benchmarks):
            hashes, benchmark_lengths = self._benchmark_hashes(benchmark)
            lengths.update(benchmark_lengths)
            tables.append(hashes.select(HASH, pl.lit(order, dtype=pl.UInt32).alias("_order"), "_item"))
        return NgramIndex.from_table(pl.concat(tables), sorted(lengths))

    def _benchmark_hashes(self, benchmark: Benchmark) -> tuple[pl.DataFrame, set[int]]:
        """(hash, item) of every indexed n-gram of one benchmark (item: the eval record's number),
        distinct within each chunk of `BUILD_CHUNK_TEXTS` eval texts hashed at a time (which bounds
        the build's memory), and the n-gram lengths that occur."""
        texts, items, read, quarantined, first_problem = self._read_texts(benchmark)
        n = self.params.ngram
        shortest = min(self.params.min_item_tokens, n) if self.params.short_items else n
        parts, lengths = [], set()
        for start in range(0, texts.len(), BUILD_CHUNK_TEXTS):
            grams = ngram_hashes(self._words(texts.slice(start, BUILD_CHUNK_TEXTS)), range(shortest, n + 1))
            # full n-grams, plus (short_items) the single whole-text n-gram of texts shorter than n words
            kept = grams.filter((pl.col(LENGTH) == n) | (pl.col(LENGTH) == pl.col(N_WORDS)))
            lengths.update(kept[LENGTH].unique().to_list())
            chunk_items = items.slice(start, BUILD_CHUNK_TEXTS)
            parts.append(kept.select(HASH, chunk_items.gather(kept[DOC]).alias("_item")).unique())
            del grams, kept
        if not lengths:
            problem = f"; first problem: {first_problem}" if first_problem else ""
            raise ValueError(
                f"benchmark {benchmark.name!r} gives nothing to compare with: {read} records read, "
                f"{quarantined} unusable, {texts.len()} texts, none with at least "
                f"{shortest} words after normalization{problem}"
            )
        return pl.concat(parts), lengths

    def _read_texts(self, benchmark: Benchmark) -> tuple[pl.Series, pl.Series, int, int, str | None]:
        """Every indexed field of every eval record as one String Series (nulls and blanks left out),
        and the number of the record each text comes from (UInt32, counted over readable records)."""
        params = benchmark.source_params()
        fields = benchmark.indexed_fields(params)
        source = source_types()[params.type](params, index=0, base_dir=self.base_dir)
        columns = ["text", *fields[1:]]
        parts, parts_n, read, quarantined, first_problem = [], [], 0, 0, None
        try:
            for shard in source.plan():
                for batch in source.read(shard, READ_BATCH_ROWS):
                    read += batch.lines_read
                    quarantined += batch.quarantine.height
                    if first_problem is None and batch.quarantine.height:
                        first_problem = batch.quarantine["detail"][0]
                    records = batch.records.select(
                        pl.concat_list(columns).alias("_t"),
                        pl.int_range(pl.len(), dtype=pl.UInt32).alias("_item") + sum(p.height for p in parts_n),
                    )
                    parts_n.append(records)
                    parts.append(records.explode("_t"))
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"benchmark {benchmark.name!r}: cannot read its source: {err}") from err
        table = pl.concat(parts) if parts else pl.DataFrame(schema={"_t": pl.String, "_item": pl.UInt32})
        table = table.filter(pl.col("_t").is_not_null() & (pl.col("_t").str.strip_chars() != ""))
        return table["_t"], table["_item"], read, quarantined, first_problem

    def _words(self, texts: pl.Series) -> pl.Series:
        p = self.params
        return pl.select(
            normalized_words(pl.lit(texts), lowercase=p.lowercase, strip_punctuation=p.strip_punctuation)
        ).to_series()

    # --- process: score every record against the index -----------------------------------
    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        if self.index is None:
            self.setup()
        p = self.params
        pairs = ngram_hashes(self._words(batch["text"]), self.lengths).select(DOC, HASH).unique()
        names = pl.DataFrame({"_order": range(len(p.benchmarks)), "_benchmark": [b.name for b in p.benchmarks]},
                             schema={"_order": pl.UInt32, "_benchmark": pl.String})
        matches = pairs.join(self.index.matches(pairs[HASH]), on=HASH, how="inner").join(names, on="_order")
        per_benchmark = (
            matches.group_by(DOC, "_order", "_benchmark")
            .agg(pl.col(HASH).n_unique().cast(pl.UInt32).alias("_shared"))
            .with_columns((pl.col("_shared") >= p.min_overlap).alias("_hit"))
        )
        hits = (
            per_benchmark.sort(DOC, "_order")
            .group_by(DOC, maintain_order=True)
            .agg(
                pl.col("_shared").max().alias(NGRAMS),
                pl.col("_benchmark").filter(pl.col("_hit")).alias(CONTAMINATED_BY),
            )
        )
        items = (
            matches.join(per_benchmark.filter("_hit").select(DOC, "_order"), on=[DOC, "_order"], how="semi")
            .group_by(DOC, "_order", "_benchmark", "_item")
            .agg(pl.len().alias("_n"))
            .sort(DOC, "_n", "_order", "_item", descending=[False, True, False, False])
            .group_by(DOC, maintain_order=True)
            .agg(pl.format("{}#{}", "_benchmark", "_item").alias(CONTAMINATED_ITEMS))
        )
        no_names = pl.lit([], dtype=pl.List(pl.String))
        per_record = (
            pl.DataFrame({DOC: np.arange(batch.height, dtype=np.uint32)})
            .join(hits, on=DOC, how="left", maintain_order="left")
            .join(items, on=DOC, how="left", maintain_order="left")
            .select(
                pl.col(NGRAMS).fill_null(0),
                pl.col(CONTAMINATED_BY).fill_null(no_names),
                pl.col(CONTAMINATED_ITEMS).fill_null(no_names),
            )
        )
        return batch.with_columns(per_record.get_columns())

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        first = pl.col(CONTAMINATED_BY).list.first()
        return [(f"contaminated:{b.name}", first == b.name) for b in self.params.benchmarks]


def item_hits(scored: pl.DataFrame) -> pl.DataFrame:
    """How many records each eval item hit (`contaminated_items` of the stage's output, dropped and
    flagged records both): columns benchmark, item, records, most records first."""
    return (
        scored.select(pl.col(CONTAMINATED_ITEMS).explode().drop_nulls().alias("_name"))
        .group_by("_name")
        .agg(pl.len().alias("records"))
        .select(
            pl.col("_name").str.extract(r"^(.*)#\d+$").alias("benchmark"),
            pl.col("_name").str.extract(r"#(\d+)$").cast(pl.UInt32).alias("item"),
            "records",
        )
        .sort("records", "benchmark", "item", descending=[True, False, False])
    )
