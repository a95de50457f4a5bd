"""DSIR: documents that read like the target set are selected; the stage is global, seeded and resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import SENTENCES, write_jsonl
from datamill.curate.executors.run import run_recipe
from datamill.curate.engine.recipe import RecipeError, validate_recipe
from datamill.curate.selection.dsir import HashedNgramDSIR
from datamill.curate.selection.hashed_ngrams import ngram_buckets, word_tokens

BEES = [
    "Honeybees communicate the location of flowers through a waggle dance on the comb.",
    "A colony of bees keeps the hive warm in winter by clustering around the queen.",
    "Worker bees collect nectar and pollen, and the beekeeper harvests the honey in late summer.",
    "The queen bee lays up to two thousand eggs a day during the spring build-up of the colony.",
    "Bees store honey in wax cells and cap them when the water content of the nectar is low enough.",
    "Drones are male bees whose only task is to mate with a young queen from another hive.",
]


def bee_doc(i: int) -> str:
    return f"Hive report {i}. " + " ".join(BEES[(i + k) % len(BEES)] for k in range(3))


def village_doc(i: int) -> str:
    return f"Village note {i}. " + " ".join(SENTENCES[(i * 5 + k) % len(SENTENCES)] for k in range(3))


def test_tokens_and_ngrams_follow_wordpunct() -> None:
    tokens = word_tokens(pl.Series(["Don't PANIC: it's 4.5 km!", None]))
    assert tokens.to_list() == [["don", "'", "t", "panic", ":", "it", "'", "s", "4", ".", "5", "km", "!"], []]
    buckets = ngram_buckets(pl.Series(["the bee the bee", "", "bee"]), num_buckets=1000)
    lengths = buckets.list.len().to_list()
    assert lengths == [4 + 3, 0, 1]  # 4 unigrams + 3 bigrams
    first = buckets[0].to_list()
    assert first[0] == first[2] and first[1] == first[3]  # same word, same bucket
    assert first[4] == first[6] != first[5]  # "the bee" twice, "bee the" once
    assert buckets[2].to_list() == [first[1]]
    # the package's buckets: sha256 of the space-joined n-gram, as an integer, mod buckets
    import hashlib

    long_word = "straße" * 20  # > 64 bytes: a multi-block digest
    text = f"Bees {long_word}"
    expected = [int(hashlib.sha256(g.encode()).hexdigest(), 16) % 10_000
                for g in ("bees", long_word, f"bees {long_word}")]
    assert ngram_buckets(pl.Series([text])).to_list() == [expected]


@pytest.mark.parametrize("ngrams", [1, 3, 4])
def test_every_ngram_order_matches_sha256_of_the_joined_tokens(ngrams: int) -> None:
    import hashlib
    import re

    texts = ["The cat sat on the mat. The cat sat on the mat!", None, "", "Ünïcode wörds: the cat sat", "x y x y x y"]
    got = ngram_buckets(pl.Series(texts), num_buckets=997, ngrams=ngrams).to_list()
    for text, buckets in zip(texts, got):
        tokens = re.findall(r"\w+|[^\w\s]+", (text or "").lower())
        assert buckets == [int(hashlib.sha256(" ".join(tokens[s:s + n]).encode()).hexdigest(), 16) % 997
                           for n in range(1, ngrams + 1) for s in range(len(tokens) - n + 1)]


def test_target_like_documents_get_the_highest_weights() -> None:
    raw = [bee_doc(i) for i in range(20)] + [village_doc(i) for i in range(60)]
    target = BEES
    model = HashedNgramDSIR().fit_texts(raw, target)
    logw = model.compute_weights(raw)
    assert logw[:20].min() > logw[20:].max()
    chosen = HashedNgramDSIR.resample(logw, 20, top_k=True)
    assert sorted(chosen.tolist()) == list(range(20))
    # the log-weight is the sum of per-bucket log-ratios over a document's n-grams
    counts = model.counts([raw[0]])
    assert logw[0] == pytest.approx(float(counts @ model.log_diff))


def test_gumbel_resampling_is_seeded_without_replacement_and_follows_weights() -> None:
    logw = np.log(np.array([8.0, 1.0, 1.0]))  # p(first pick = doc 0) = 0.8
    picks = [HashedNgramDSIR.resample(logw, 1, seed=s)[0] for s in range(300)]
    share = np.mean(np.array(picks) == 0)
    assert 0.7 < share < 0.9
    two = HashedNgramDSIR.resample(logw, 3, seed=5)
    assert sorted(two.tolist()) == [0, 1, 2]  # without replacement
    assert np.array_equal(HashedNgramDSIR.resample(logw, 2, seed=7), HashedNgramDSIR.resample(logw, 2, seed=7))
    short = HashedNgramDSIR.resample(logw, 3, eligible=np.array([False, True, True]))
    assert sorted(short.tolist()) == [1, 2]  # ineligible documents never chosen


def make_corpus(tmp_path: Path) -> tuple[Path, Path]:
    raw = tmp_path / "raw"
    docs = [bee_doc(i) for i in range(12)] + [village_doc(i) for i in range(36)]
    order = np.random.default_rng(0).permutation(len(docs))
    for k in range(4):
        write_jsonl(raw / f"part{k}.jsonl", [{"text": docs[j], "topic": "bees" if j < 12 else "village"}
                                             for j in order[k * 12:(k + 1) * 12]])
    target = write_jsonl(tmp_path / "target.jsonl", [{"body": t} for t in BEES])
    return raw, target


def dsir_recipe(raw: Path, target: Path, out: Path, **stage) -> dict:
    return {
        "name": "dsir",
        "sources": [{"type": "jsonl", "path": str(raw / "*.jsonl"), "columns": {"topic": "str"}}],
        "stages": [{"type": "dsir", "target": {"type": "jsonl", "path": str(target), "text_field": "body"},
                    "budget": {"count": 12}, "min_words": 5, **stage}],
        "output": {"dir": str(out)},
        "executor": {"batch_rows": 5},
    }


def read_out(out: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted((out / "shards").glob("*.parquet"))).sort("id")


def test_stage_keeps_the_target_like_documents_same_for_any_worker_count(tmp_path: Path) -> None:
    raw, target = make_corpus(tmp_path)
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        stats = run_recipe(validate_recipe(dsir_recipe(raw, target, out, sampling="top_k")), workers=workers)
        outs.append(read_out(out))
        assert stats["output_records"] == 12 if "output_records" in stats else True
    assert outs[0].equals(outs[1])
    kept = outs[0]
    assert kept.height == 12 and set(kept["topic"]) == {"bees"}
    assert "dsir_logw" in kept.columns


def test_flag_action_scores_every_row_and_resume_gives_identical_output(tmp_path: Path) -> None:
    raw, target = make_corpus(tmp_path)
    out = tmp_path / "out"
    recipe = validate_recipe(dsir_recipe(raw, target, out, action="flag", budget={"fraction": 0.5}))
    run_recipe(recipe, workers=1)
    first = read_out(out)
    assert first.height == 48
    flagged = first.filter(pl.col("dsir_reason").is_not_null())
    assert flagged.height == 24 and set(flagged["dsir_reason"]) == {"dsir_not_selected"}
    bees = first.filter(pl.col("topic") == "bees")
    assert bees["dsir_logw"].min() > first.filter(pl.col("topic") == "village")["dsir_logw"].max()
    # a crash after the reduce (decision kept) and one before it (decision gone): same output
    state = out / "state"
    for lose_decision in (False, True):
        for marker in (state / "done").glob("segment-1-*.json"):
            marker.unlink()
        if lose_decision:
            for decision in state.rglob("decision*.parquet"):
                decision.unlink()
        run_recipe(recipe, workers=1)
        assert read_out(out).equals(first)


def test_bad_target_is_reported_with_its_key(tmp_path: Path) -> None:
    recipe = dsir_recipe(tmp_path, tmp_path / "t.jsonl", tmp_path / "out")
    recipe["stages"][0]["target"] = {"type": "jsnl", "path": "x.jsonl"}
    with pytest.raises(RecipeError, match=r"stages\[0\]\.target.*'jsnl' is not known"):
        validate_recipe(recipe)
    recipe["stages"][0]["target"] = {"type": "jsonl", "path": "x.jsonl"}
    recipe["stages"][0]["budget"] = {"count": 3, "fraction": 0.5}
    with pytest.raises(RecipeError, match="exactly one of count, fraction, tokens"):
        validate_recipe(recipe)


def test_empty_target_names_the_stage(tmp_path: Path) -> None:
    raw, _ = make_corpus(tmp_path)
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"body": "   "}])
    recipe = validate_recipe(dsir_recipe(raw, empty, tmp_path / "out"))
    with pytest.raises(Exception, match="'dsir'.*target sources hold no text"):
        run_recipe(recipe, workers=1)
