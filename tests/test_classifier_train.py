"""`datamill classifier train`: fastText and embedding-head classifiers on real text, held-out metrics, card.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from classifier_corpus import boilerplate, shuffled, stdlib_docstrings
from conftest import write_jsonl
from datamill.curate.cli import app
from datamill.filters.classifier_models import load_classifier, preprocess
from datamill.filters.classifier_train import (
    ClassifierTrainConfig, TrainSettings, balance_rows, split_holdout, train_classifier,
)

SMALL = {"bucket": 50_000, "dim": 32}
"""DCLM's settings but a small hash table: the test model is a few MB instead of 800."""


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return stdlib_docstrings(300)


def test_fasttext_cli_docstrings_vs_shuffled_and_boilerplate(tmp_path: Path, docs: list[str]) -> None:
    """Real docstrings (positive) vs their word-shuffled copies plus web boilerplate (negative): the
    shuffled copies have exactly the same words, so only the word bigrams tell them apart."""
    write_jsonl(tmp_path / "pos.jsonl", [{"text": d} for d in docs])
    write_jsonl(tmp_path / "shuf.jsonl", [{"text": d} for d in shuffled(docs)])
    (tmp_path / "webrun" / "shards").mkdir(parents=True)  # a finished run's corpus
    pl.DataFrame({"id": [f"w{i}" for i in range(150)], "text": boilerplate(150)}).write_parquet(
        tmp_path / "webrun" / "shards" / "part-00000-000.parquet")
    config = {"kind": "fasttext", "positive": [{"type": "jsonl", "path": "pos.jsonl"}],
              "negative": [{"type": "jsonl", "path": "shuf.jsonl"}, {"run": "webrun"}],
              "labels": ["hq", "cc"], "holdout": 0.2, "fasttext": {**SMALL, "epoch": 25, "lr": 0.5},
              "out": str(tmp_path / "model")}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["classifier", "train", str(tmp_path / "train.yaml")])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "roc_auc" in result.output
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    m = card["metrics"]
    assert card["labels"] == ["cc", "hq"] and card["positive"] == "hq" and card["preprocess"] == "dclm"
    assert card["settings"]["fasttext"]["wordNgrams"] == 2 and card["settings"]["fasttext"]["minCount"] == 1
    assert card["counts"]["per_class"]["cc"]["rows"] == 450 and card["counts"]["per_class"]["hq"]["rows"] == 300
    # stratified 20 % holdout; training balanced by downsampling the 360 negatives to the 240 positives
    assert card["counts"]["per_class"]["hq"]["holdout"] == 60 and card["counts"]["per_class"]["cc"]["holdout"] == 90
    assert card["counts"]["per_class"]["cc"]["fit"] == card["counts"]["per_class"]["hq"]["fit"] == 240
    assert m["n"] == 150 and m["accuracy"] >= 0.8 and m["roc_auc"] >= 0.9, m  # measured: 0.827 and 0.924
    assert sum(map(sum, m["confusion"]["matrix"])) == 150
    # the metrics are what the saved model gives on the held-out rows
    model = load_classifier(tmp_path / "model")
    assert model.default_label == "hq" and model.default_preprocess == "dclm"


def test_embedding_head_classifier_and_regressor(tmp_path: Path, docs: list[str]) -> None:
    """MiniLM embeddings + logistic regression (docstrings vs boilerplate), and a ridge regressor
    of a 0–5 score (5 for docstrings, 0 for boilerplate, 2 for shuffled docstrings)."""
    few = docs[:40]
    junk = boilerplate(40)
    table = pl.DataFrame({"text": few + junk, "label": ["doc"] * 40 + ["junk"] * 40})
    settings = TrainSettings(kind="embedding", holdout=0.25, positive_label="doc",
                             embedding={"max_tokens": 32, "batch_tokens": 2048})
    card = train_classifier(table, settings, tmp_path / "emb")
    assert card["metrics"]["accuracy"] >= 0.9 and card["metrics"]["roc_auc"] >= 0.95, card["metrics"]
    assert (tmp_path / "emb" / "head.safetensors").is_file() and card["encoder"] == "all-minilm-l6-v2"
    # the stage's scorer reproduces sklearn-free probabilities from the saved head
    model = load_classifier(tmp_path / "emb")
    vectors = model.embed(few[:3])
    probs = model.predict_embeddings(vectors, "doc").score
    assert np.all((probs > 0) & (probs < 1))

    scores = pl.DataFrame({"text": few[:20] + junk[:20] + shuffled(few[20:40]),
                           "label": [5.0] * 20 + [0.0] * 20 + [2.0] * 20})
    regression = TrainSettings(kind="embedding", task="regression", holdout=0.25, seed=1,
                               embedding={"max_tokens": 32, "batch_tokens": 2048, "alpha": 0.1})
    card = train_classifier(scores, regression, tmp_path / "reg")
    m = card["metrics"]
    assert m["n"] == 15 and m["mae"] < 1.0 and m["rounded_accuracy"] >= 0.5, m
    assert m["confusion"]["labels"] == [0, 1, 2, 3, 4, 5]


def test_split_balance_and_config_errors(tmp_path: Path) -> None:
    labels = np.array(["a"] * 90 + ["b"] * 10)
    train, held = split_holdout(labels, 0.1, seed=0, stratify=True)
    assert (labels[held] == "a").sum() == 9 and (labels[held] == "b").sum() == 1
    assert len(set(train) & set(held)) == 0 and len(train) + len(held) == 100
    assert np.array_equal(split_holdout(labels, 0.1, 0, True)[1], held)  # seeded
    down = balance_rows(train, labels, "downsample", 0)
    assert (labels[down] == "a").sum() == (labels[down] == "b").sum() == 9
    up = balance_rows(train, labels, "oversample", 0)
    assert (labels[up] == "a").sum() == (labels[up] == "b").sum() == 81
    assert preprocess(pl.Series(["A  b\n\nC\t"]), "dclm").to_list() == ["a b c"]
    for raw, message in (
        ({"out": "o", "positive": [{"type": "jsonl", "path": "x"}]}, "both need"),
        ({"out": "o", "data": [{"type": "jsonl", "path": "x"}]}, "label_column"),
        ({"out": "o", "data": [{"type": "jsonl", "path": "x"}], "label_column": "s", "task": "regression"},
         "kind: embedding"),
        ({"out": "o", "data": [{"type": "jsonl", "path": "x"}], "label_column": "s", "balance": "weight"},
         "fastText takes no sample weights"),
    ):
        with pytest.raises(ValueError, match=message):
            ClassifierTrainConfig.model_validate(raw)
    with pytest.raises(ValueError, match="two classes"):
        train_classifier(pl.DataFrame({"text": ["a", "b"], "label": ["x", "x"]}), TrainSettings(), tmp_path / "m")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"out": "o", "data": [{"type": "jsonl", "path": "x.jsonl"}],
                                                        "label_column": "s"}))
    result = CliRunner().invoke(app, ["classifier", "train", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2 and "x.jsonl" in result.output
