"""Budgets keep the best rows by a score; mix sets token shares, epochs, replay, phases and loss weights."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from conftest import SENTENCES, write_jsonl
from datamill.curate.executors.run import run_recipe
from datamill.curate.engine.recipe import RecipeError, validate_recipe
from datamill.curate.selection.ranking import Budget, select_by_rank


def test_ranking_ties_nulls_fractions_and_token_budgets() -> None:
    table = pl.DataFrame({"_pos": [0, 1, 2, 3, 4, 5], "s": [0.5, None, 0.9, 0.9, 0.1, float("nan")],
                          "_tokens": [10, 10, 5, 20, 1, 1], "source": list("aabbab")})
    half = select_by_rank(table, "s", Budget.model_validate(0.5))
    assert half.filter("_selected")["_pos"].to_list() == [2, 3, 0]  # tie 0.9/0.9 -> earlier first
    low = select_by_rank(table, "s", Budget.model_validate(2), descending=False)
    assert low.filter("_selected")["_pos"].to_list() == [4, 0]  # null and NaN never selected
    tokens = select_by_rank(table, "s", Budget(tokens=25), group_by="source")
    assert sorted(tokens.filter("_selected")["_pos"].to_list()) == [0, 2, 3, 4]
    with pytest.raises(ValueError, match="column.*missing"):
        select_by_rank(table, "nope", Budget(count=1))


def corpus(tmp_path: Path) -> Path:
    for name, count in (("web", 40), ("wiki", 10)):
        rows = [{"text": f"{name} page {i}. {SENTENCES[i % len(SENTENCES)]}", "quality": float(i), "logw": i / 10}
                for i in range(count)]
        write_jsonl(tmp_path / "raw" / f"{name}.jsonl", rows)
    return tmp_path / "raw"


def recipe(raw: Path, out: Path, stages: list) -> dict:
    return {
        "name": "mix",
        "sources": [{"type": "jsonl", "path": str(raw / f"{n}.jsonl"), "name": n,
                     "columns": {"quality": "float", "logw": "float"}} for n in ("web", "wiki")],
        "stages": stages,
        "output": {"dir": str(out)},
        "executor": {"batch_rows": 7},
    }


def run(raw: Path, out: Path, stages: list, workers: int = 1) -> pl.DataFrame:
    run_recipe(validate_recipe(recipe(raw, out, stages)), workers=workers)
    return pl.read_parquet(sorted((out / "shards").glob("*.parquet"))).sort("id")


def test_budget_keeps_top_rows_per_source(tmp_path: Path) -> None:
    raw = corpus(tmp_path)
    kept = run(raw, tmp_path / "o", [{"type": "budget", "score": "quality", "budget": 3, "per_source": True}])
    assert kept.group_by("source").agg(pl.col("quality").sort()).sort("source").rows() == [
        ("web", [37.0, 38.0, 39.0]), ("wiki", [7.0, 8.0, 9.0])]
    lowest = run(raw, tmp_path / "l", [{"type": "budget", "score": "quality", "keep": "lowest", "budget": 0.1}])
    assert sorted(lowest["quality"].to_list()) == [0.0, 0.0, 1.0, 1.0, 2.0]  # 10% of 50 rows


def test_percentile_band_keeps_the_middle_of_the_whole_corpus(tmp_path: Path) -> None:
    raw = corpus(tmp_path)  # quality 0..39 (web) and 0..9 (wiki): 50 rows, ranks over both files
    kept = run(raw, tmp_path / "b", [{"type": "percentile_band", "score": "quality", "lower": 10, "upper": 90}],
               workers=2)
    ranks = sorted([*range(40), *range(10)])
    expected = sorted(q for i, q in enumerate(ranks) if 10 <= 100 * i / 49 <= 90)
    assert sorted(kept["quality"].to_list()) == expected
    per_source = run(raw, tmp_path / "s", [{"type": "percentile_band", "score": "quality", "lower": 25,
                                            "upper": 75, "per_source": True}])
    assert per_source.filter(pl.col("source") == "wiki")["quality"].sort().to_list() == [3.0, 4.0, 5.0, 6.0]
    with pytest.raises(RecipeError, match="lower"):
        validate_recipe(recipe(raw, tmp_path / "x", [{"type": "percentile_band", "score": "q", "lower": 90, "upper": 10}]))


def test_mix_shares_epochs_phases_weights_same_for_any_worker_count(tmp_path: Path) -> None:
    raw = corpus(tmp_path)
    stages = [{"type": "mix", "epochs": {"wiki": 2}, "weights": {"web": 0.5, "wiki": 0.5},
               "anneal": {"fraction": 0.2, "weights": {"wiki": 1}}, "weight_from": "logw"}]
    outs = [run(raw, tmp_path / f"o{w}", stages, workers=w) for w in (1, 2)]
    assert outs[0].equals(outs[1])
    out = outs[0]
    tokens = dict(out.group_by("source").agg(pl.col("text").str.split(" ").list.len().sum()).rows())
    wiki = out.filter(pl.col("source") == "wiki")
    assert wiki.height == 20 and wiki.filter(pl.col("id").str.ends_with("#2")).height == 10
    assert abs(tokens["web"] - tokens["wiki"]) / tokens["wiki"] < 0.15  # web cut to wiki's token share
    assert set(out.filter(pl.col("phase") == 1)["source"]) == {"wiki"}
    assert 0 < out.filter(pl.col("phase") == 1).height < wiki.height
    assert out["weight"].mean() == pytest.approx(1.0, abs=0.05)
    assert out["weight"].min() >= 0.1 and out["weight"].max() <= 10
    heavy = out.sort("logw")
    assert heavy["weight"][-1] > heavy["weight"][0]


def test_replay_and_bad_params(tmp_path: Path) -> None:
    raw = corpus(tmp_path)
    out = run(raw, tmp_path / "r", [{"type": "mix", "replay": {"source": "web", "fraction": 0.5}}])
    assert out.filter(pl.col("source") == "wiki").height == 10  # the new data is kept whole
    assert 7 <= out.filter(pl.col("source") == "web").height <= 13  # web ≈ half the tokens
    with pytest.raises(RecipeError, match="either weights or replay"):
        validate_recipe(recipe(raw, tmp_path / "x", [{"type": "mix", "weights": {"web": 1},
                                                      "replay": {"source": "web", "fraction": 0.1}}]))
    with pytest.raises(Exception, match="wiki have rows but no entry in weights"):
        run(raw, tmp_path / "y", [{"type": "mix", "weights": {"web": 1}}])
