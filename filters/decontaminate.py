"""Benchmark decontamination: drop or flag training records that share a long word n-gram with an eval set.

Like GPT-3's and TÜLU 3's decontamination: every benchmark named in the recipe is read through the
registered sources (any source type: jsonl, parquet, hf…), the chosen `fields` of each eval record
are normalized (lowercase, punctuation and symbols removed, whitespace collapsed) and cut into word
n-grams (default 13 words), and a training record is contaminated by a benchmark when it contains
at least `min_overlap` distinct n-grams of it. N-grams are compared by 64-bit hash (see
`datamill.filters.ngrams`: a rolling hash over polars' seeded word hashes, the same in every
process and run of one installation); all benchmarks' hashes form one table, joined per batch.

Short eval texts (fewer than `ngram` words, at least `min_item_tokens`) are indexed whole: a training
record that contains the whole text, as a phrase, counts one shared n-gram. This is a choice, not a
copy: open-instruct's n-gram search (`decontamination/search.py`, `get_ngram_mapping`) and
datatrove's `NGramsDecontIndexer` give such texts no n-grams at all, so they never match; only
open-instruct's default full-field mode (an Elasticsearch phrase match of the whole field) catches
them, and indexing the whole text is that phrase match. Texts below `min_item_tokens` words
("Who wrote Hamlet?") are left out: such phrases occur by chance. `min_item_tokens: <ngram>`
gives the open-instruct / datatrove n-gram behaviour.

Columns: `contamination_ngrams` (the largest number of distinct shared n-grams with any one
benchmark, 0 if none) and `contaminated_by` (names of the benchmarks that reach `min_overlap`, in
recipe order; empty if none). Drop reason: `contaminated:<first benchmark in contaminated_by>`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from datamill.curate.engine.registry import register_stage, source_types
from datamill.curate.engine.source import SourceParams
from datamill.curate.engine.stage import Filter, FilterParams
from datamill.filters.ngrams import DOC, HASH, LENGTH, N_WORDS, ngram_hashes, normalized_words

READ_BATCH_ROWS = 10_000
NGRAMS = "contamination_ngrams"
CONTAMINATED_BY = "contaminated_by"


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
    min_item_tokens: int = Field(
        8,
        ge=1,
        description="Eval texts shorter than `ngram` words but at least this long are indexed whole; "
        "shorter ones are not indexed.",
    )
    lowercase: bool = Field(True, description="Compare lowercased text.")
    strip_punctuation: bool = Field(True, description="Remove punctuation and symbols before comparing.")

    def check_paths(self, base_dir: str) -> list[str]:
        return [f"benchmarks[{i}].source.{problem}" for i, benchmark in enumerate(self.benchmarks)
                for problem in benchmark.source_params().check_paths(base_dir)]

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
    outputs = (NGRAMS, CONTAMINATED_BY)
    params: DecontaminateParams

    def __init__(self, params: DecontaminateParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        """Folder relative benchmark paths are resolved against (the recipe's folder)."""
        self.index: pl.DataFrame | None = None
        self.lengths: list[int] = []

    # --- setup: the n-gram index of every benchmark --------------------------------------
    def setup(self) -> None:
        """Read every benchmark and build one table (hash, benchmark order, benchmark name)."""
        tables, lengths = [], {self.params.ngram}
        for order, benchmark in enumerate(self.params.benchmarks):
            hashes = self._benchmark_hashes(benchmark)
            lengths.update(hashes[LENGTH].unique().to_list())
            tables.append(
                hashes.select(HASH).unique().with_columns(
                    pl.lit(order, dtype=pl.UInt32).alias("_order"), pl.lit(benchmark.name).alias("_benchmark")
                )
            )
        self.index = pl.concat(tables)
        self.lengths = sorted(lengths)

    def _benchmark_hashes(self, benchmark: Benchmark) -> pl.DataFrame:
        """(length, hash) of every indexed n-gram of one benchmark."""
        texts, read, quarantined, first_problem = self._read_texts(benchmark)
        n, shortest = self.params.ngram, min(self.params.min_item_tokens, self.params.ngram)
        words = self._words(texts)
        grams = ngram_hashes(words, range(shortest, n + 1))
        # full n-grams, plus the single whole-text n-gram of texts shorter than n words
        kept = grams.filter((pl.col(LENGTH) == n) | (pl.col(LENGTH) == pl.col(N_WORDS))).select(LENGTH, HASH)
        if kept.height == 0:
            problem = f"; first problem: {first_problem}" if first_problem else ""
            raise ValueError(
                f"benchmark {benchmark.name!r} gives nothing to compare with: {read} records read, "
                f"{quarantined} unusable, {texts.len()} texts, none with at least "
                f"{shortest} words after normalization{problem}"
            )
        return kept

    def _read_texts(self, benchmark: Benchmark) -> tuple[pl.Series, int, int, str | None]:
        """Every indexed field of every eval record as one String Series (nulls and blanks left out)."""
        params = benchmark.source_params()
        fields = benchmark.indexed_fields(params)
        source = source_types()[params.type](params, index=0, base_dir=self.base_dir)
        columns = ["text", *fields[1:]]
        parts, read, quarantined, first_problem = [], 0, 0, None
        try:
            for shard in source.plan():
                for batch in source.read(shard, READ_BATCH_ROWS):
                    read += batch.lines_read
                    quarantined += batch.quarantine.height
                    if first_problem is None and batch.quarantine.height:
                        first_problem = batch.quarantine["detail"][0]
                    parts.append(batch.records.select(pl.concat_list(columns).alias("_t")).explode("_t")["_t"])
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"benchmark {benchmark.name!r}: cannot read its source: {err}") from err
        texts = pl.concat(parts) if parts else pl.Series("_t", [], dtype=pl.String)
        texts = texts.filter(texts.is_not_null() & (texts.str.strip_chars() != ""))
        return texts, read, quarantined, first_problem

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
        grams = ngram_hashes(self._words(batch["text"]), self.lengths)
        hits = (
            grams.select(DOC, HASH)
            .join(self.index, on=HASH, how="inner")
            .group_by(DOC, "_order", "_benchmark")
            .agg(pl.col(HASH).n_unique().cast(pl.UInt32).alias("_shared"))
            .sort(DOC, "_order")
            .group_by(DOC, maintain_order=True)
            .agg(
                pl.col("_shared").max().alias(NGRAMS),
                pl.col("_benchmark").filter(pl.col("_shared") >= p.min_overlap).alias(CONTAMINATED_BY),
            )
        )
        per_record = (
            pl.DataFrame({DOC: np.arange(batch.height, dtype=np.uint32)})
            .join(hits, on=DOC, how="left", maintain_order="left")
            .select(
                pl.col(NGRAMS).fill_null(0),
                pl.col(CONTAMINATED_BY).fill_null(pl.lit([], dtype=pl.List(pl.String))),
            )
        )
        return batch.with_columns(per_record[NGRAMS], per_record[CONTAMINATED_BY])

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        first = pl.col(CONTAMINATED_BY).list.first()
        return [(f"contaminated:{b.name}", first == b.name) for b in self.params.benchmarks]
