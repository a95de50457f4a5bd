"""Ranking barriers reduced in partitions (budget, percentile_band, dsir, ifd, ds_weight) give the
single-process decision table byte for byte for P = 1/3/8, with ties, nulls, NaNs and groups."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import write_jsonl
from datamill.curate.dedup.partition_pool import reduce_partitioned
from datamill.curate.dedup.partitioned import partition_reducer
from datamill.curate.engine.records import TOKENS
from datamill.curate.engine.stage import POSITION
from datamill.curate.selection.budget import BudgetStage, PercentileBand
from datamill.curate.selection.ds_weight import DSWeightParams, DSWeightSelect
from datamill.curate.selection.dsir import Dsir
from datamill.curate.selection.ifd import IFDParams, IFDSelect
from datamill.curate.selection import ranking_partitions
from datamill.curate.selection.ranking_partitions import CANDIDATE, band_ranks
from test_partitioned_reduce import real_paragraphs

PARTITIONS = (1, 3, 8)


def scored_corpus(n: int = 400, seed: int = 3) -> pl.DataFrame:
    """Rows with a score of few distinct values (many ties), some null and NaN scores, null and
    zero token counts, three sources."""
    rng = random.Random(seed)
    scores = [rng.choice([0.5, 1.0, 1.0, 2.0, 3.5, None, float("nan")] + [round(rng.random(), 1)] * 4)
              for _ in range(n)]
    tokens = [rng.choice([None, 0, rng.randint(1, 300)]) if i % 9 == 0 else rng.randint(1, 300) for i in range(n)]
    return pl.DataFrame({
        POSITION: pl.Series(range(n), dtype=pl.Int64),
        "id": [f"doc-{i}" for i in range(n)],
        "source": [rng.choice(["web", "books", "code"]) for _ in range(n)],
        "q": pl.Series(scores, dtype=pl.Float64),
        TOKENS: pl.Series(tokens, dtype=pl.Int64),
    })


def write_summaries(summaries: list[pl.DataFrame], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, summary in enumerate(summaries):
        files.append(folder / f"summary-{k:05d}.parquet")
        summary.write_parquet(files[-1])
    return files


def shard_summaries(stage, corpus: pl.DataFrame, folder: Path, shards: int = 5) -> list[Path]:
    return write_summaries([stage.summarize(part) for part in corpus.iter_slices(-(-corpus.height // shards))],
                           folder)


def assert_partitioned_equals_whole(stage, files: list[Path], tmp_path: Path, partitions=PARTITIONS) -> pl.DataFrame:
    whole = stage.reduce(pl.scan_parquet(files))
    whole.write_parquet(tmp_path / "whole.parquet")
    expected = (tmp_path / "whole.parquet").read_bytes()
    for partitions in partitions:
        decision = reduce_partitioned(stage, files, tmp_path / f"work-{partitions}", partitions)
        assert decision.schema == whole.schema, partitions
        assert decision.equals(whole, null_equal=True), f"{partitions} partitions"
        decision.write_parquet(tmp_path / f"p{partitions}.parquet")
        assert (tmp_path / f"p{partitions}.parquet").read_bytes() == expected, f"{partitions} partitions"
    return whole


@pytest.mark.parametrize("params", [
    {"score": "q", "budget": 37},
    {"score": "q", "budget": 0.3, "keep": "lowest"},
    {"score": "q", "budget": 0.55, "per_source": True},
    {"score": "q", "budget": {"tokens": 9000}},
    {"score": "q", "budget": {"tokens": 4000}, "keep": "lowest", "per_source": True},
    {"score": "q", "budget": 1000},
], ids=["count", "fraction-lowest", "fraction-per-source", "tokens", "tokens-lowest-per-source", "count>rows"])
def test_budget_partitioned_equals_whole(params, tmp_path):
    stage = BudgetStage(BudgetStage.Params.model_validate(params))
    whole = assert_partitioned_equals_whole(stage, shard_summaries(stage, scored_corpus(), tmp_path / "s"), tmp_path)
    assert 0 < whole["_drop_reason"].null_count() < whole.height or params["budget"] == 1000


def test_token_budget_with_negative_token_counts_is_still_exact(tmp_path):
    corpus = scored_corpus().with_columns(
        pl.when(pl.col(POSITION) % 17 == 0).then(-50).otherwise(pl.col(TOKENS)).alias(TOKENS))
    stage = BudgetStage(BudgetStage.Params.model_validate({"score": "q", "budget": {"tokens": 7000}}))
    assert_partitioned_equals_whole(stage, shard_summaries(stage, corpus, tmp_path / "s"), tmp_path)


def test_a_long_row_stops_a_token_budget_whichever_partition_holds_it(tmp_path):
    """The ranking's 6th row alone is over the budget: rows after it are out in every partition."""
    corpus = scored_corpus().with_columns(pl.col("q").fill_nan(None))
    sixth = corpus.drop_nulls("q").sort(["q", POSITION], descending=[True, False])[POSITION][5]
    corpus = corpus.with_columns(pl.when(pl.col(POSITION) == sixth).then(10**6).otherwise(pl.col(TOKENS)).alias(TOKENS))
    stage = BudgetStage(BudgetStage.Params.model_validate({"score": "q", "budget": {"tokens": 20000}}))
    whole = assert_partitioned_equals_whole(stage, shard_summaries(stage, corpus, tmp_path / "s"), tmp_path)
    assert whole["_drop_reason"].null_count() == 5


@pytest.mark.parametrize("params", [
    {"score": "q", "lower": 10, "upper": 90},
    {"score": "q", "lower": 0, "upper": 33.3, "per_source": True},
    {"score": "q", "lower": 49, "upper": 51},
], ids=["10-90", "per-source-low-third", "narrow"])
def test_percentile_band_partitioned_equals_whole(params, tmp_path):
    stage = PercentileBand(PercentileBand.Params.model_validate(params))
    whole = assert_partitioned_equals_whole(stage, shard_summaries(stage, scored_corpus(), tmp_path / "s"), tmp_path)
    assert set(whole["_drop_reason"].drop_nulls()) == {"outside_band"}


def test_band_ranks_match_the_percentile_formula():
    for n in (1, 2, 3, 7, 100, 101, 9999):
        for lower, upper in ((10, 90), (0, 100), (33.3, 66.7), (49, 51), (50, 50), (95, 100)):
            last = n - 1
            inside = [r for r in range(n) if lower <= (100.0 * r / last if last > 0 else 50.0) <= upper]
            lo, hi = band_ranks(n, lower, upper)
            assert list(range(lo, hi + 1)) == inside, (n, lower, upper)


def ifd_summary(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ifd = rng.choice([0.4, 0.7, 0.7, 0.9, 1.0, 1.3, np.nan], size=n)
    return pl.DataFrame({
        POSITION: np.arange(n, dtype=np.int64),
        "ifd": pl.Series(ifd).fill_nan(None),
        "ifd_cond_loss": rng.random(n), "ifd_direct_loss": rng.random(n),
        TOKENS: rng.integers(0, 50, n),
    })


@pytest.mark.parametrize("budget", [None, 0.25, 40, {"tokens": 1500}], ids=["none", "fraction", "count", "tokens"])
def test_ifd_partitioned_equals_whole(budget, tmp_path):
    stage = IFDSelect(IFDParams(model="unused", budget=budget))
    files = write_summaries([ifd_summary(90, seed) for seed in range(4)], tmp_path / "s")
    files = write_summaries([pl.read_parquet(f).with_columns(pl.col(POSITION) + 90 * k) for k, f in enumerate(files)],
                            tmp_path / "s")
    whole = assert_partitioned_equals_whole(stage, files, tmp_path)
    assert {"ifd_too_high", "ifd_no_response"} <= set(whole["_drop_reason"].drop_nulls())


def ds_weight_case(tmp_path: Path) -> tuple[DSWeightSelect, list[Path]]:
    write_jsonl(tmp_path / "valid.jsonl", [{"text": "a valid note"}])
    stage = DSWeightSelect(DSWeightParams(model="unused", valid_path=str(tmp_path / "valid.jsonl"), drop_fraction=0.3))
    rng = np.random.default_rng(5)
    n = 300
    summary = pl.DataFrame({
        POSITION: np.arange(n, dtype=np.int64),
        "ds_loss": pl.Series(rng.choice([0.0, 1.5, 2.0, 2.0, 3.0, 6.0, np.nan], size=n)).fill_nan(None),
        "_consistent": rng.random(n) > 0.2,
        "_valid_loss": np.full(n, 2.0), "_valid_rows": np.full(n, 3, dtype=np.int64),
    })
    return stage, write_summaries([summary[i:i + 60] for i in range(0, n, 60)], tmp_path / "s")


def test_ds_weight_partitioned_equals_whole(tmp_path):
    whole = assert_partitioned_equals_whole(*ds_weight_case(tmp_path), tmp_path)
    assert whole["_drop_reason"].value_counts().height == 4  # kept, three drop reasons


@pytest.mark.parametrize("samples", [2, 7])
def test_coarse_rank_samples_still_give_the_exact_decision(samples, monkeypatch, tmp_path):
    """Shards sample every h-th row of their ranking; the bounds they give must hold for any h."""
    monkeypatch.setattr(ranking_partitions, "SAMPLES", samples)
    corpus = scored_corpus(600, seed=samples)
    for k, params in enumerate([
        {"type": "budget", "score": "q", "budget": 111},
        {"type": "budget", "score": "q", "budget": 0.35, "keep": "lowest", "per_source": True},
        {"type": "percentile_band", "score": "q", "lower": 20, "upper": 75, "per_source": True},
        {"type": "percentile_band", "score": "q", "lower": 50, "upper": 50.1},
    ]):
        cls = BudgetStage if params.pop("type") == "budget" else PercentileBand
        stage = cls(cls.Params.model_validate(params))
        folder = tmp_path / f"case{k}"
        assert_partitioned_equals_whole(stage, shard_summaries(stage, corpus, folder / "s", shards=3), folder)
    assert_partitioned_equals_whole(*ds_weight_case(tmp_path / "ds"), tmp_path / "ds")


@pytest.mark.parametrize("params", [{"score": "q", "budget": 0.3}, {"score": "q", "lower": 10, "upper": 90}],
                         ids=["fraction", "band"])
def test_partitions_send_only_the_rows_near_the_cut(params, monkeypatch):
    monkeypatch.setattr(ranking_partitions, "SAMPLES", 50)
    cls = PercentileBand if "lower" in params else BudgetStage
    stage = cls(cls.Params.model_validate(params))
    corpus = scored_corpus(4000).with_columns(pl.Series("q", np.random.default_rng(1).random(4000)))
    reducer = partition_reducer(stage)
    stats = pl.concat([reducer.stats(part) for part in corpus.iter_slices(1000)])  # 4 shards, every 20th row sampled
    results = [reducer.reduce_partition(f.lazy(), corpus.lazy(), stats) for f in reducer.split(corpus, 8)]
    sent = sum(r[CANDIDATE].sum() for r in results)
    assert 0 < sent <= 2 * 4 * 20 * (2 if "lower" in params else 1)  # per cut: two sample steps of every shard
    assert reducer.combine(pl.concat(results).lazy(), corpus.lazy(), stats).equals(stage.reduce(corpus.lazy()))


def test_dsir_partitioned_equals_whole_on_real_text(tmp_path):
    paragraphs = real_paragraphs(240)
    target = write_jsonl(tmp_path / "target.jsonl", [{"text": p} for p in paragraphs[::10]])
    corpus = pl.DataFrame({"text": paragraphs, "id": [f"p{i}" for i in range(len(paragraphs))]}).with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias(POSITION),
        pl.col("text").str.count_matches(r"\S+").cast(pl.Int64).alias(TOKENS))
    for params, partitions in (({"budget": 0.2, "min_words": 30}, PARTITIONS),
                               ({"budget": {"tokens": 4000}, "sampling": "top_k"}, (8,))):
        stage = Dsir(Dsir.Params.model_validate({"target": {"type": "jsonl", "path": str(target)}, **params}))
        whole = assert_partitioned_equals_whole(stage, shard_summaries(stage, corpus, tmp_path / "s"), tmp_path,
                                                partitions)
        assert whole["dsir_logw"].null_count() == 0


def test_partitions_send_only_their_top_k_candidates(tmp_path):
    stage = BudgetStage(BudgetStage.Params.model_validate({"score": "q", "budget": 10}))
    corpus = scored_corpus(2000)
    reducer = partition_reducer(stage)
    stats = pl.concat([reducer.stats(part) for part in corpus.iter_slices(500)])
    frames = reducer.split(corpus, 8)
    assert sum(f.height for f in frames) == corpus.height
    results = [reducer.reduce_partition(f.lazy(), corpus.lazy(), stats) for f in frames]
    assert all(r[CANDIDATE].sum() <= 10 for r in results)
    combined = reducer.combine(pl.concat(results).lazy(), corpus.lazy(), stats)
    assert combined.equals(stage.reduce(corpus.lazy()))
    assert combined["_drop_reason"].null_count() == 10


def test_a_stage_without_a_plan_has_no_partitioned_reduce():
    from datamill.curate.selection.ranking import RankingBarrier

    assert partition_reducer(RankingBarrier()) is None


def test_a_recipe_with_reduce_partitions_writes_the_same_corpus(tmp_path):
    """`executor.reduce_partitions: 4` on the local pool: budget and percentile_band rank in
    partitions; the shards are the bytes of the one-process run."""
    from datamill.curate.engine.recipe import validate_recipe
    from datamill.curate.executors.run import run_recipe

    rng = random.Random(2)
    paragraphs = real_paragraphs(160)
    for k in range(4):
        write_jsonl(tmp_path / "raw" / f"part{k}.jsonl",
                    [{"text": t, "quality": rng.choice([0.1, 0.5, 0.5, 0.9, None])} for t in paragraphs[k::4]])
    stages = [{"type": "percentile_band", "score": "quality", "lower": 5, "upper": 80},
              {"type": "budget", "score": "quality", "budget": 0.5, "keep": "lowest"}]
    shards = {}
    for partitions in (1, 4):
        spec = {"name": "rank", "stages": stages, "output": {"dir": str(tmp_path / f"p{partitions}")},
                "sources": [{"type": "jsonl", "path": str(tmp_path / "raw" / "*.jsonl"), "name": "web",
                             "columns": {"quality": "float"}}],
                "executor": {"batch_rows": 16, "reduce_partitions": partitions}}
        stats = run_recipe(validate_recipe(spec), workers=1)
        shards[partitions] = {p.name: p.read_bytes() for p in sorted((tmp_path / f"p{partitions}" / "shards").iterdir())}
    assert shards[4] == shards[1]
    assert set(stats["stages"][0]["dropped"]) == {"outside_band"} and stats["stages"][1]["dropped"]["over_budget"] > 0


@pytest.mark.parametrize("stage", [BudgetStage(BudgetStage.Params(score="q", budget=0.3, per_source=True)),
                                   PercentileBand(PercentileBand.Params(score="q"))], ids=["budget", "band"])
def test_shards_without_rows_give_the_same_empty_decision(stage, tmp_path):
    empty = scored_corpus(0)
    files = write_summaries([stage.summarize(empty), stage.summarize(empty)], tmp_path / "s")
    assert assert_partitioned_equals_whole(stage, files, tmp_path).height == 0
    reduce_partitioned(stage, files, tmp_path / "work-8", 3)  # a reused work folder starts empty
    assert reduce_partitioned(stage, files, tmp_path / "work-8", 8).height == 0
