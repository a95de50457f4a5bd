"""The `classifier` stage scores exactly like its models do, and keeps rows by threshold or corpus-wide rank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from classifier_corpus import boilerplate, stdlib_docstrings
from conftest import write_jsonl
from datamill.curate.engine.recipe import RecipeError, validate_recipe
from datamill.curate.executors.run import run_recipe
from datamill.filters.classifier import ClassifierFilter, ClassifierParams
from datamill.filters.classifier_models import preprocess
from datamill.filters.classifier_train import FastTextSettings, TrainSettings, train_classifier

SMALL_FASTTEXT = FastTextSettings(bucket=20_000, dim=16, epoch=10)
"""DCLM's settings except a small hash table and dimension, so the test model is a few MB."""


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    return {"doc": stdlib_docstrings(80), "junk": boilerplate(80)}


@pytest.fixture(scope="module")
def fasttext_folder(tmp_path_factory, texts) -> Path:
    table = pl.DataFrame({"text": texts["doc"] + texts["junk"],
                          "label": ["doc"] * len(texts["doc"]) + ["junk"] * len(texts["junk"])})
    out = tmp_path_factory.mktemp("ft") / "model"
    train_classifier(table, TrainSettings(kind="fasttext", positive_label="doc", fasttext=SMALL_FASTTEXT), out)
    return out


def stage(**params) -> ClassifierFilter:
    s = ClassifierFilter(ClassifierParams(**params))
    s.setup()
    return s


def test_fasttext_scores_equal_fasttext_predict(fasttext_folder: Path, texts) -> None:
    import fasttext

    batch = pl.DataFrame({"text": texts["doc"][:20] + texts["junk"][:20] + ["", "  Mixed\n\nCase  TEXT\t here "]})
    # a datamill folder: preprocessing from the card (dclm), score = P(positive class "doc")
    scored = stage(name="q", model=str(fasttext_folder)).score(batch)
    direct = fasttext.load_model(str(fasttext_folder / "model.bin"))
    seen = preprocess(batch["text"], "dclm").to_list()
    assert seen[-1] == "mixed case text here"
    expected = []
    for line in seen:
        labels, probs = direct.predict(line, k=-1)
        expected.append(dict(zip(labels, probs))["__label__doc"])
    assert scored["q_score"].to_list() == [float(p) for p in expected]  # exactly, not approximately
    assert scored["q_label"].to_list() == [direct.predict(line)[0][0].removeprefix("__label__") for line in seen]
    # the bare .bin file: `lines` preprocessing, explicit label
    bare = stage(name="b", model=str(fasttext_folder / "model.bin"), label="junk").score(batch)
    lines = [t.strip().replace("\n", " ") for t in batch["text"].to_list()]
    assert bare["b_score"].to_list() == [float(dict(zip(*direct.predict(t, k=-1)))["__label__junk"]) for t in lines]
    with pytest.raises(ValueError, match="not one of the model's labels"):
        stage(model=str(fasttext_folder), label="nope")


def tiny_sequence_classifier(folder: Path, num_labels: int) -> Path:
    """A random 2-layer BERT classifier saved with save_pretrained (tokenizer: the bundled MiniLM's)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from datamill.curate.models.embeddings import resolve_embedding_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_embedding_model("all-minilm-l6-v2"), local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
                        id2label={i: f"c{i}" for i in range(num_labels)}, label2id={f"c{i}": i for i in range(num_labels)})
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("num_labels", [1, 3])
def test_transformers_folder_scores_like_a_direct_forward(tmp_path: Path, texts, num_labels: int) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tiny_sequence_classifier(tmp_path / "m", num_labels)
    docs = texts["doc"][:6] + texts["junk"][:6]
    scored = stage(name="edu", model=str(folder), max_tokens=64, batch_tokens=256).score(pl.DataFrame({"text": docs}))
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.inference_mode():
        logits = np.stack([model(**tokenizer(d, return_tensors="pt", truncation=True, max_length=64)).logits[0].numpy()
                           for d in docs])
    if num_labels == 1:  # a regressor: the raw logit, and its rounded, clipped int score as the label
        np.testing.assert_allclose(scored["edu_score"].to_numpy(), logits[:, 0], rtol=0, atol=1e-5)
        assert scored["edu_label"].to_list() == [int(round(min(max(x, 0), 5))) for x in logits[:, 0]]
    else:  # classes: softmax probability of the top class
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(scored["edu_score"].to_numpy(), probs.max(axis=1), rtol=0, atol=1e-5)
        assert scored["edu_label"].to_list() == [f"c{i}" for i in probs.argmax(axis=1)]
        chosen = stage(name="edu", model=str(folder), label="c2", max_tokens=64).score(pl.DataFrame({"text": docs}))
        np.testing.assert_allclose(chosen["edu_score"].to_numpy(), probs[:, 2], rtol=0, atol=1e-5)


def corpus(tmp_path: Path, texts) -> Path:
    rows = [{"text": t} for pair in zip(texts["doc"][:30], texts["junk"][:30]) for t in pair]
    write_jsonl(tmp_path / "raw" / "a.jsonl", rows[:30])
    write_jsonl(tmp_path / "raw" / "b.jsonl", rows[30:])
    return tmp_path / "raw"


def run(raw: Path, out: Path, stages: list, workers: int = 1) -> pl.DataFrame:
    recipe = {"name": "clf", "sources": [{"type": "jsonl", "path": str(raw / "*.jsonl"), "name": "web"}],
              "stages": stages, "output": {"dir": str(out)}, "executor": {"batch_rows": 7}}
    stats = run_recipe(validate_recipe(recipe), workers=workers)
    return pl.read_parquet(sorted((out / "shards").glob("*.parquet"))), stats


def test_thresholds_keep_top_and_flag_in_a_run(tmp_path: Path, fasttext_folder: Path, texts) -> None:
    raw = corpus(tmp_path, texts)
    model = str(fasttext_folder)
    # flagged: every row stays, with the first rule it fails (threshold first, then rank)
    flagged, stats = run(raw, tmp_path / "all", [{"type": "classifier", "name": "q", "model": model, "action": "flag",
                                                  "min_score": 0.5, "keep_top": 0.25}])
    assert flagged.height == 60
    low = flagged.filter(pl.col("q_score") < 0.5)
    assert 25 <= low.height <= 35 and set(low["q_reason"]) == {"q_below_min_score"}
    assert (flagged.filter(pl.col("q_score") >= 0.5)["q_label"] == "doc").mean() > 0.8
    best = flagged.sort(["q_score", "id"], descending=[True, False]).head(15)
    assert best["q_reason"].null_count() == 15 and flagged["q_reason"].null_count() == 15
    assert set(flagged["q_reason"].drop_nulls()) == {"q_below_min_score", "q_not_top"}
    step = next(s for s in stats["stages"] if s["name"] == "q")
    assert step["flagged"] == {"q_below_min_score": low.height, "q_not_top": 45 - low.height}
    # dropped: keep_top ranks the whole corpus (two files, batches of 7): exactly the best 25 % of 60 rows,
    # with the scores the flagged run gave them
    top, _ = run(raw, tmp_path / "top", [{"type": "classifier", "name": "q", "model": model, "keep_top": 0.25}])
    assert sorted(top["id"]) == sorted(best["id"])
    assert top["q_score"].to_list() == top.join(flagged, on="id")["q_score_right"].to_list()


def test_bad_params_are_named() -> None:
    base = {"name": "x", "sources": [{"type": "jsonl", "path": "x.jsonl"}], "output": {"dir": "o"}}
    for stage_entry, message in (
        ({"type": "classifier"}, "exactly one of `model`"),
        ({"type": "classifier", "model": "m", "min_score": 0.9, "max_score": 0.1}, "larger than max_score"),
        ({"type": "classifier", "model": "m", "keep_top": 1.5}, "keep_top"),
        ({"type": "classifier", "train": {"label_column": "s", "out": "o"}, "keep_top": 0.5}, "budget"),
    ):
        with pytest.raises(RecipeError, match=message):
            validate_recipe({**base, "stages": [stage_entry]})
    with pytest.raises(FileNotFoundError, match="classifier model not found"):
        stage(model="/nonexistent/model")
