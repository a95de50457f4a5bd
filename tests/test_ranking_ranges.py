"""Ranking barriers combined range by range (`combine_memory_mib` exceeded): the driver decides only
the candidates and never holds every row, and the decision is the one-process table for P = 1/3/8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from datamill.curate.dedup import partition_pool
from datamill.curate.dedup.partition_pool import reduce_partitioned
from datamill.curate.engine import partition_tasks
from datamill.curate.engine.partition_tasks import DecisionParts, LocalRunner, write_decision
from datamill.curate.dedup.partitioned import partition_reducer
from datamill.curate.selection import ranking_partitions
from datamill.curate.selection.budget import BudgetStage, PercentileBand
from ranged_combine import CountingRunner, ranged
from test_ranking_partitions import (
    PARTITIONS,
    ds_weight_case,
    scored_corpus,
    shard_summaries,
)


def assert_ranged_equals_whole(stage, files: list[Path], tmp_path: Path, partitions=PARTITIONS) -> pl.DataFrame:
    whole = stage.reduce(pl.scan_parquet(files))
    for p in partitions:
        table = ranged(stage, files, tmp_path / f"work-{p}", p)
        assert table.schema == whole.schema, p
        assert table.equals(whole, null_equal=True), f"{p} partitions"
        table.write_parquet(tmp_path / f"p{p}.parquet")  # the same bytes as the one-process table
        whole.write_parquet(tmp_path / "whole.parquet")
        assert (tmp_path / f"p{p}.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    return whole


@pytest.mark.parametrize("stage", [
    BudgetStage(BudgetStage.Params(score="q", budget=0.3, per_source=True)),
    BudgetStage(BudgetStage.Params.model_validate({"score": "q", "budget": {"tokens": 9000}, "keep": "lowest"})),
    PercentileBand(PercentileBand.Params(score="q", lower=10, upper=90, per_source=True)),
], ids=["fraction-per-source", "tokens-lowest", "band-per-source"])
def test_ranged_combine_gives_the_one_process_decision(stage, tmp_path):
    whole = assert_ranged_equals_whole(stage, shard_summaries(stage, scored_corpus(), tmp_path / "s"), tmp_path)
    assert 0 < whole["_drop_reason"].null_count() < whole.height


def test_the_decision_file_has_the_same_bytes_however_it_was_reduced(monkeypatch, tmp_path):
    """The one-process table and the ranged one (ranges straddling row groups) make one file."""
    monkeypatch.setattr(partition_tasks, "DECISION_ROW_GROUP", 700)
    stage = BudgetStage(BudgetStage.Params(score="q", budget=0.3, per_source=True))
    files = shard_summaries(stage, scored_corpus(), tmp_path / "s")
    write_decision(stage.reduce(pl.scan_parquet(files)), tmp_path / "whole.parquet")
    for p in (3, 8):
        decision = reduce_partitioned(stage, files, tmp_path / f"work-{p}", p, combine_memory_mib=0)
        assert isinstance(decision, DecisionParts) and len(decision.handles) > 1
        write_decision(decision, tmp_path / f"ranged-{p}.parquet")
        assert (tmp_path / f"ranged-{p}.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes(), p


def test_ranged_combine_with_coarse_samples_and_scores_from_the_corpus(monkeypatch, tmp_path):
    monkeypatch.setattr(ranking_partitions, "SAMPLES", 3)
    assert_ranged_equals_whole(*ds_weight_case(tmp_path / "ds"), tmp_path / "ds", partitions=(3,))


def test_the_driver_never_holds_every_row(monkeypatch, tmp_path):
    """40,000 rows in 40 shards, 8 partitions: the driver receives the candidates (a few rows
    near the cut) and fetches one `_pos` range at a time."""
    monkeypatch.setattr(partition_pool, "LocalRunner", CountingRunner)
    monkeypatch.setattr(CountingRunner, "received", [])
    monkeypatch.setattr(CountingRunner, "fetched", [])
    n = 40_000
    corpus = scored_corpus(n).with_columns(pl.Series("q", np.random.default_rng(4).random(n).round(3)))
    stage = BudgetStage(BudgetStage.Params(score="q", budget=0.3))
    files = shard_summaries(stage, corpus, tmp_path / "s", shards=40)
    table = ranged(stage, files, tmp_path / "work", 8, workers=2)
    assert table.equals(stage.reduce(pl.scan_parquet(files)), null_equal=True)
    assert 0 < sum(CountingRunner.received) <= 2 * 40 * 2  # two sample steps (of 2 rows) of every shard
    # every row fetched twice (written, then collected by `ranged`), never more than a range at once
    assert sum(CountingRunner.fetched) == 2 * n and max(CountingRunner.fetched) <= n // 8


def test_shards_without_rows_give_the_empty_decision(tmp_path):
    stage = PercentileBand(PercentileBand.Params(score="q"))
    empty = scored_corpus(0)
    files = [tmp_path / f"summary-{k}.parquet" for k in range(2)]
    for f in files:
        stage.summarize(empty).write_parquet(f)
    whole = stage.reduce(pl.scan_parquet(files))
    work = tmp_path / "work"
    reduce_partitioned(stage, files, work, 3)  # leaves the partitions' result files in `work`
    runner = LocalRunner(work / "ranges")
    parts = DecisionParts(runner, *partition_reducer(stage).combine_ranges(
        runner, [[partition_pool.result_file(work, p)] for p in range(3)], partition_pool.read_stats(work)))
    write_decision(parts, tmp_path / "decision.parquet")
    table = pl.read_parquet(tmp_path / "decision.parquet")
    assert table.height == 0 and table.schema == whole.schema


def test_dsir_ranged_on_real_text(tmp_path):
    """DSIR's key needs the corpus' bucket counts: partitions score, send their top rows."""
    from conftest import write_jsonl
    from datamill.curate.engine.records import TOKENS
    from datamill.curate.engine.stage import POSITION
    from datamill.curate.selection.dsir import Dsir
    from test_partitioned_reduce import real_paragraphs

    paragraphs = real_paragraphs(240)
    target = write_jsonl(tmp_path / "target.jsonl", [{"text": p} for p in paragraphs[::10]])
    corpus = pl.DataFrame({"text": paragraphs, "id": [f"p{i}" for i in range(len(paragraphs))]}).with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias(POSITION),
        pl.col("text").str.count_matches(r"\S+").cast(pl.Int64).alias(TOKENS))
    stage = Dsir(Dsir.Params.model_validate({"target": {"type": "jsonl", "path": str(target)}, "budget": 0.2}))
    assert_ranged_equals_whole(stage, shard_summaries(stage, corpus, tmp_path / "s"), tmp_path, partitions=(3,))


def test_a_recipe_combined_range_by_range_writes_the_same_corpus(monkeypatch, tmp_path):
    """`reduce_partitions: 3, combine_memory_mib: 0`: run.py writes the decision range by range;
    the shards are the bytes of the one-process run."""
    import random

    from conftest import write_jsonl
    from datamill.curate.engine.recipe import validate_recipe
    from datamill.curate.executors.run import run_recipe
    from test_partitioned_reduce import real_paragraphs

    rng = random.Random(5)
    paragraphs = real_paragraphs(120)
    for k in range(3):
        write_jsonl(tmp_path / "raw" / f"part{k}.jsonl",
                    [{"text": t, "quality": rng.choice([0.1, 0.5, 0.9, None])} for t in paragraphs[k::3]])
    stages = [{"type": "percentile_band", "score": "quality", "lower": 5, "upper": 80},
              {"type": "budget", "score": "quality", "budget": 0.5, "keep": "lowest"}]
    shards, decisions, ranged_calls = {}, {}, []
    combine_ranges = ranking_partitions.RankingPartitions.combine_ranges
    monkeypatch.setattr(ranking_partitions.RankingPartitions, "combine_ranges",
                        lambda self, *a: ranged_calls.append(self.stage.name) or combine_ranges(self, *a))
    for name, executor in (("whole", {}), ("ranged", {"reduce_partitions": 3, "combine_memory_mib": 0})):
        spec = {"name": "rank", "stages": stages, "output": {"dir": str(tmp_path / name)},
                "sources": [{"type": "jsonl", "path": str(tmp_path / "raw" / "*.jsonl"), "name": "web",
                             "columns": {"quality": "float"}}],
                "executor": {"batch_rows": 16, **executor}}
        run_recipe(validate_recipe(spec), workers=1)
        shards[name] = {p.name: p.read_bytes() for p in sorted((tmp_path / name / "shards").iterdir())}
        decisions[name] = [pl.read_parquet(f) for f in sorted((tmp_path / name).rglob("decision.parquet"))]
    assert shards["ranged"] == shards["whole"] and len(ranged_calls) == 2  # both barriers combined by range
    assert len(decisions["whole"]) == 2 and all(a.equals(b, null_equal=True) for a, b in
                                                zip(decisions["ranged"], decisions["whole"]))


def test_ranged_combine_as_ray_tasks(tmp_path):
    """A percentile band and a mix (anneal, loss weights) combined range by range in Ray tasks."""
    ray = pytest.importorskip("ray")
    from datamill.curate.executors.ray import reduce_on_ray
    from test_mix_partitions import CASES, mix_corpus, mix_stage, summaries

    band = PercentileBand(PercentileBand.Params(score="q", lower=10, upper=90, per_source=True))
    mix = mix_stage(CASES["weights-epochs-anneal-loss-weights"])
    cases = [(band, shard_summaries(band, scored_corpus(), tmp_path / "band")),
             (mix, summaries(mix, mix_corpus(), tmp_path / "mix"))]
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        for stage, files in cases:
            decision = reduce_on_ray(stage, files, 3, combine_memory_mib=0)
            assert isinstance(decision, DecisionParts)
            assert decision.collect().equals(stage.reduce(pl.scan_parquet(files)), null_equal=True)
    finally:
        if started:
            ray.shutdown()


@pytest.mark.parametrize("budget", [None, {"tokens": 1500}], ids=["no-ranking", "tokens"])
def test_ifd_ranged(budget, tmp_path):
    """IFD without a budget ranks nothing (no candidates: every row decided in its partition)."""
    from datamill.curate.engine.stage import POSITION
    from datamill.curate.selection.ifd import IFDParams, IFDSelect
    from test_ranking_partitions import ifd_summary, write_summaries

    stage = IFDSelect(IFDParams(model="unused", budget=budget))
    files = write_summaries([ifd_summary(90, k).with_columns(pl.col(POSITION) + 90 * k) for k in range(4)],
                            tmp_path / "s")
    whole = assert_ranged_equals_whole(stage, files, tmp_path, partitions=(3,))
    assert {"ifd_too_high", "ifd_no_response"} <= set(whole["_drop_reason"].drop_nulls())
