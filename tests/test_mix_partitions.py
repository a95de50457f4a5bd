"""`mix` reduced in partitions gives the single-process decision table byte for byte (P = 1/3/8): token
shares, replay, epochs, the anneal phase and loss weights, with tied hashes, null/zero/negative token
counts and coarse buckets; the driver walks only the rows of the cut buckets; a recipe writes the same corpus."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest
from conftest import write_jsonl
from datamill.curate.dedup.partition_pool import reduce_partitioned
from datamill.curate.dedup.partitioned import partition_reducer
from datamill.curate.engine.recipe import validate_recipe
from datamill.curate.engine.records import TOKENS
from datamill.curate.engine.stage import POSITION
from datamill.curate.executors.run import run_recipe
from datamill.curate.selection import mix_partitions
from datamill.curate.selection.mix import Mix
from datamill.curate.selection.mix_partitions import COPIES, MixPartitions
from test_partitioned_reduce import real_paragraphs
from test_ranking_partitions import assert_partitioned_equals_whole, write_summaries

SOURCES = ["web", "web", "web", "wiki", "code", "books"]


def mix_corpus(n: int = 3000, seed: int = 1) -> pl.DataFrame:
    """Rows of four sources; every 40th row repeats one id (the same seeded draws: ties broken by
    `_pos`), null, zero and long token counts, a score with nulls, NaNs and negatives."""
    rng = random.Random(seed)
    tokens = [rng.choice([None, 0, 5000]) if i % 17 == 0 else rng.randint(1, 400) for i in range(n)]
    return pl.DataFrame({
        POSITION: pl.Series(range(n), dtype=pl.Int64),
        "id": pl.Series([f"doc-{i}" if i % 40 else "doc-same" for i in range(n)], dtype=pl.String),
        "source": pl.Series([rng.choice(SOURCES) for _ in range(n)], dtype=pl.String),
        "q": pl.Series([rng.choice([0.5, -1.0, 2.0, 2.0, None, float("nan"), rng.random()]) for _ in range(n)],
                       dtype=pl.Float64),
        TOKENS: pl.Series(tokens, dtype=pl.Int64),
    })


def mix_stage(params: dict) -> Mix:
    return Mix(Mix.Params.model_validate(params))


def summaries(stage: Mix, corpus: pl.DataFrame, folder: Path, shards: int = 5) -> list[Path]:
    return write_summaries([stage.summarize(part) for part in corpus.iter_slices(-(-corpus.height // shards))],
                           folder)


CASES = {
    "weights-epochs-anneal-loss-weights": {
        "epochs": {"wiki": 2.5, "code": 0.5}, "weights": {"web": 0.6, "wiki": 0.3, "code": 0.1, "books": 0.2},
        "anneal": {"fraction": 0.2, "weights": {"wiki": 1, "code": 2}}, "weight_from": "q"},
    "replay-anneal": {"replay": {"source": "web", "fraction": 0.3},
                      "anneal": {"fraction": 0.5, "weights": {"web": 1, "books": 1}}},
    "epochs-anneal-whole-sources": {"epochs": {"code": 0.5, "books": 1.7},
                                    "anneal": {"fraction": 0.1, "weights": {"web": 1, "code": 1, "absent": 1}}},
    "weights-with-a-zero": {"weights": {"web": 1, "wiki": 1, "code": 0, "books": 0.5}},
    "loss-weights-only": {"epochs": {"web": 1.5}, "weight_from": "q", "weight_clip": [0.5, 2.0]},
    "nothing": {},
}


@pytest.mark.parametrize("params", CASES.values(), ids=CASES.keys())
def test_mix_partitioned_equals_whole(params, tmp_path):
    stage = mix_stage(params)
    whole = assert_partitioned_equals_whole(stage, summaries(stage, mix_corpus(), tmp_path / "s"), tmp_path)
    copies = whole[COPIES]
    if "weights" in params or "replay" in params:
        assert 0 < (copies == 0).sum() < whole.height  # downsampled
    if "anneal" in params:
        assert set(whole["phase"].drop_nulls()) == {0, 1}


@pytest.mark.parametrize("buckets", [1, 3, 16])
def test_coarse_buckets_and_negative_token_counts_stay_exact(buckets, monkeypatch, tmp_path):
    """With few buckets most rows are undecided, and a negative count makes a running load go down:
    the bounds must still send every row whose fate is open to the driver."""
    monkeypatch.setattr(mix_partitions, "BUCKETS", buckets)
    corpus = mix_corpus(1500, seed=buckets).with_columns(
        pl.when(pl.col(POSITION) % 11 == 0).then(-300).otherwise(pl.col(TOKENS)).alias(TOKENS))
    for k, params in enumerate([CASES["weights-epochs-anneal-loss-weights"], CASES["replay-anneal"]]):
        stage = mix_stage(params)
        folder = tmp_path / f"case{k}"
        assert_partitioned_equals_whole(stage, summaries(stage, corpus, folder / "s", shards=3), folder)


def test_partitions_decide_every_copy_and_the_driver_walks_one_anneal_bucket(monkeypatch):
    """64 buckets, 8 partitions: each partition gets whole `_mix_u` buckets (about 1/8 of the rows)
    and decides every row's copies; the driver reads back only the rows of the anneal split's
    buckets (about 1/64 of each anneal source's kept rows)."""
    monkeypatch.setattr(mix_partitions, "BUCKETS", 64)
    corpus = mix_corpus(12_000, seed=4).with_columns(pl.col(TOKENS).fill_null(7).clip(1, 400))
    stage = mix_stage({"weights": {"web": 0.4, "wiki": 0.3, "code": 0.2, "books": 0.1},
                       "anneal": {"fraction": 0.3, "weights": {"web": 1, "wiki": 1}}})
    reducer = partition_reducer(stage)
    assert isinstance(reducer, MixPartitions)
    shards = [stage.summarize(part) for part in corpus.iter_slices(3000)]
    stats, whole = pl.concat([reducer.stats(s) for s in shards]), pl.concat(shards)
    frames = reducer.split(whole, 8)
    assert sum(f.height for f in frames) == whole.height and min(f.height for f in frames) > 12_000 / 8 / 2
    results = [reducer.reduce_partition(f.lazy(), whole.lazy(), stats) for f in frames]
    assert all(r.filter(pl.col(POSITION).is_not_null())[COPIES].null_count() == 0 for r in results)
    walked = []
    real_walk = MixPartitions.walk_open_anneal

    def walk(self, *args):
        walked.append(real_walk(self, *args))
        return walked[-1]

    monkeypatch.setattr(MixPartitions, "walk_open_anneal", walk)
    decision = reducer.combine(pl.concat(results).lazy(), whole.lazy(), stats)
    assert decision.equals(stage.reduce(whole.lazy()))
    assert walked and 0 < walked[0].height <= 2 * 2 * 12_000 // 64 // 4  # ≤ twice a mean bucket per source
    assert 0 < (decision[COPIES] == 0).sum() and decision["phase"].sum() > 0


def test_shards_without_rows_give_the_same_empty_decision(tmp_path):
    stage = mix_stage(CASES["epochs-anneal-whole-sources"] | {"weight_from": "q"})  # weights/replay need rows
    empty = mix_corpus(0)
    files = write_summaries([stage.summarize(empty), stage.summarize(empty)], tmp_path / "s")
    assert assert_partitioned_equals_whole(stage, files, tmp_path).height == 0


def test_a_source_without_a_weight_fails_the_partitioned_reduce_the_same_way(tmp_path):
    stage = mix_stage({"weights": {"web": 1, "wiki": 1}})
    files = summaries(stage, mix_corpus(300), tmp_path / "s")
    for reduce in (lambda: stage.reduce(pl.scan_parquet(files)),
                   lambda: reduce_partitioned(stage, files, tmp_path / "w", 3)):
        with pytest.raises(ValueError, match=r"source\(s\) books, code have rows but no entry in weights"):
            reduce()


def test_a_recipe_mixing_in_partitions_writes_the_same_corpus(tmp_path):
    """`executor.reduce_partitions: 3` on the local pool: two sources, epochs, token shares, an
    anneal phase and loss weights; the shards are the bytes of the one-process run."""
    paragraphs = real_paragraphs(120)
    rng = random.Random(6)
    for name, part in (("web", paragraphs[:80]), ("wiki", paragraphs[80:])):
        for k in range(2):
            write_jsonl(tmp_path / "raw" / f"{name}{k}.jsonl",
                        [{"text": t, "logw": rng.choice([-1.0, 0.0, 0.5, None])} for t in part[k::2]])
    stages = [{"type": "mix", "epochs": {"wiki": 1.5}, "weights": {"web": 0.5, "wiki": 0.5},
               "anneal": {"fraction": 0.25, "weights": {"wiki": 1}}, "weight_from": "logw"}]
    shards = {}
    for partitions in (1, 3):
        spec = {"name": "mix", "stages": stages, "output": {"dir": str(tmp_path / f"p{partitions}")},
                "sources": [{"type": "jsonl", "path": str(tmp_path / "raw" / f"{n}*.jsonl"), "name": n,
                             "columns": {"logw": "float"}} for n in ("web", "wiki")],
                "executor": {"batch_rows": 16, "reduce_partitions": partitions}}
        stats = run_recipe(validate_recipe(spec), workers=1)
        out = tmp_path / f"p{partitions}" / "shards"
        shards[partitions] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert shards[3] == shards[1]
    kept = pl.read_parquet(sorted((tmp_path / "p3" / "shards").glob("*.parquet")))
    assert stats["stages"][0]["dropped"]["mix_not_selected"] > 0
    assert set(kept.filter(pl.col("phase") == 1)["source"]) == {"wiki"} and kept["id"].str.ends_with("#2").any()
