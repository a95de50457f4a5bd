"""`mix` combined range by range (`combine_memory_mib` exceeded): the decision table of the one-process
reduce (copies, anneal phase, loss weights to the last bit) while the driver holds no row table."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from datamill.curate.dedup import partition_pool
from datamill.curate.dedup.partitioned import partition_reducer
from datamill.curate.engine.stage import POSITION
from datamill.curate.selection import mix_partitions
from datamill.curate.selection.mix_partitions import COPIES
from datamill.curate.selection.pairwise_sum import piece_sums, total
from datamill.curate.selection.ranking_partitions import stats_rows
from ranged_combine import CountingRunner, ranged
from test_mix_partitions import CASES, mix_corpus, mix_stage, summaries


def assert_ranged_equals_whole(stage, files: list[Path], tmp_path: Path, partitions=(1, 3, 8)) -> pl.DataFrame:
    whole = stage.reduce(pl.scan_parquet(files))
    for p in partitions:
        table = ranged(stage, files, tmp_path / f"work-{p}", p)
        assert table.schema == whole.schema, p
        assert table.equals(whole, null_equal=True), f"{p} partitions"
    return whole


@pytest.mark.parametrize("name", ["weights-epochs-anneal-loss-weights", "replay-anneal", "loss-weights-only"])
def test_mix_ranged_equals_whole(name, tmp_path):
    stage = mix_stage(CASES[name])
    whole = assert_ranged_equals_whole(stage, summaries(stage, mix_corpus(), tmp_path / "s"), tmp_path)
    if "weight_from" in CASES[name]:
        assert whole["weight"].n_unique() > 3  # the mean's last bit shows in every weight


def test_coarse_buckets_and_negative_tokens_ranged(monkeypatch, tmp_path):
    """Few buckets: most anneal buckets are OPEN, walked on the driver from the ranges' rows."""
    monkeypatch.setattr(mix_partitions, "BUCKETS", 3)
    corpus = mix_corpus(1500, seed=3).with_columns(
        pl.when(pl.col(POSITION) % 11 == 0).then(-300).otherwise(pl.col("_tokens")).alias("_tokens"))
    stage = mix_stage(CASES["weights-epochs-anneal-loss-weights"] | {"weight_scale": "log"})
    assert_ranged_equals_whole(stage, summaries(stage, corpus, tmp_path / "s", shards=4), tmp_path, (3,))


def test_pieces_give_numpys_sum_to_the_last_bit():
    rng = np.random.default_rng(7)
    for n in (0, 1, 7, 129, 1000, 65_537, 300_001):
        values = rng.standard_normal(n) * 10.0 ** rng.integers(-4, 12, n)
        bounds = [0, *sorted(rng.integers(0, n + 1, 6).tolist()), n]
        pieces = [piece_sums(values[a:b], a, n) for a, b in itertools.pairwise(bounds)]
        assert total(n, pieces) == values.sum(), n


def test_the_driver_never_holds_every_row(monkeypatch, tmp_path):
    """24,000 rows in 24 shards, 8 partitions, 64 buckets: the driver receives the anneal loads and
    the rows of the OPEN anneal buckets, and fetches one range at a time."""
    monkeypatch.setattr(mix_partitions, "BUCKETS", 64)
    monkeypatch.setattr(partition_pool, "LocalRunner", CountingRunner)
    monkeypatch.setattr(CountingRunner, "received", [])
    monkeypatch.setattr(CountingRunner, "fetched", [])
    n = 24_000
    corpus = mix_corpus(n, seed=4).with_columns(pl.col("_tokens").fill_null(7).clip(1, 400))
    stage = mix_stage({"weights": {"web": 0.4, "wiki": 0.3, "code": 0.2, "books": 0.1}, "weight_from": "q",
                       "anneal": {"fraction": 0.3, "weights": {"web": 1, "wiki": 1}}})
    files = summaries(stage, corpus, tmp_path / "s", shards=24)
    table = ranged(stage, files, tmp_path / "work", 8)  # in this process: spawned workers would not see BUCKETS
    assert table.equals(stage.reduce(pl.scan_parquet(files)), null_equal=True)
    assert (table[COPIES] == 0).sum() > 0 and table["phase"].sum() > 0
    assert 0 < sum(CountingRunner.received) <= 2 * 2 * 64 * 8 + 2 * 2 * n // 64  # loads, ~two OPEN buckets
    assert sum(CountingRunner.fetched) == 2 * n and max(CountingRunner.fetched) <= n // 8  # written, then collected


def test_the_memory_budget_counts_every_summary_row_once():
    """Stats have a row per (source, bucket) per shard: the budget counts the shards' rows."""
    stage = mix_stage(CASES["weights-epochs-anneal-loss-weights"])
    corpus = mix_corpus(3000)
    reducer = partition_reducer(stage)
    stats = pl.concat([reducer.stats(stage.summarize(part)) for part in corpus.iter_slices(1000)])
    assert stats.height > 3 and stats_rows(stats) == 3000
    fits = 3000 * mix_partitions.BYTES_PER_ROW / (1 << 20)
    assert reducer.combines_in_ranges(stats, int(fits)) and not reducer.combines_in_ranges(stats, int(fits) + 1)


def test_a_recipe_mixing_range_by_range_writes_the_same_corpus(monkeypatch, tmp_path):
    """`reduce_partitions: 3, combine_memory_mib: 0` with epochs, token shares, anneal and loss
    weights: the shards are the bytes of the one-process run."""
    import random

    from conftest import write_jsonl
    from datamill.curate.engine.recipe import validate_recipe
    from datamill.curate.executors.run import run_recipe
    from test_partitioned_reduce import real_paragraphs

    paragraphs = real_paragraphs(90)
    rng = random.Random(8)
    for name, part in (("web", paragraphs[:60]), ("wiki", paragraphs[60:])):
        write_jsonl(tmp_path / "raw" / f"{name}.jsonl",
                    [{"text": t, "logw": rng.choice([-1.0, 0.0, 0.5, None])} for t in part])
    stages = [{"type": "mix", "epochs": {"wiki": 1.5}, "weights": {"web": 0.5, "wiki": 0.5},
               "anneal": {"fraction": 0.25, "weights": {"wiki": 1}}, "weight_from": "logw"}]
    shards, ranged_calls = {}, []
    combine_ranges = mix_partitions.MixPartitions.combine_ranges
    monkeypatch.setattr(mix_partitions.MixPartitions, "combine_ranges",
                        lambda self, *a: ranged_calls.append(1) or combine_ranges(self, *a))
    for name, executor in (("whole", {}), ("ranged", {"reduce_partitions": 3, "combine_memory_mib": 0})):
        spec = {"name": "mix", "stages": stages, "output": {"dir": str(tmp_path / name)},
                "sources": [{"type": "jsonl", "path": str(tmp_path / "raw" / f"{n}.jsonl"), "name": n,
                             "columns": {"logw": "float"}} for n in ("web", "wiki")],
                "executor": {"batch_rows": 16, **executor}}
        run_recipe(validate_recipe(spec), workers=1)
        shards[name] = {p.name: p.read_bytes() for p in sorted((tmp_path / name / "shards").iterdir())}
    assert shards["ranged"] == shards["whole"] and ranged_calls == [1]
