"""`annotate`: rubric prompts for a seeded sample, strict 0–5 parsing with failures counted; annotate → train → classify in one run."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import polars as pl
import pytest
import yaml

from classifier_corpus import boilerplate, stdlib_docstrings
from conftest import write_jsonl
from datamill.curate.engine.recipe import RecipeError, validate_recipe
from datamill.curate.executors.run import run_recipe
from datamill.synth.annotate import AnnotateParams, AnnotateStage, load_rubric, parse_scores
from datamill.synth.generation import Completion


def test_parse_scores_reads_stated_scores_and_never_guesses() -> None:
    replies = {
        "Clear and useful.\nEducational score: 3": 3,
        "**Educational score:** 4": 4,
        "Mentions a score: 1 in passing. Educational score: 0": 0,  # the last stated score counts
        "Score: 2": 2,
        "I would give it 4/5.": 4,
        "4 out of 5": 4,
        " 5. ": 5,
        "Educational score: <total points>": None,  # the format line echoed back
        "Educational score: 7": None,  # out of range: not clipped
        "Educational score: 2.5": None,  # not a whole number: not rounded
        "The extract is about numbers like 3 and 4.": None,
        "": None,
    }
    frame = pl.DataFrame({"r": list(replies)})
    assert frame.select(parse_scores(pl.col("r"), 0, 5))["r"].to_list() == list(replies.values())
    custom = pl.DataFrame({"r": ["Quality: [[8]] of 10", "Educational score: 3"]})
    assert custom.select(parse_scores(pl.col("r"), 0, 10, r"\[\[(\d+)\]\]"))["r"].to_list() == [8, 3]


class ScriptedGenerator:
    """Replies by what the prompt contains: docstrings score 4, boilerplate 0, anything with 'zip' is unparseable."""

    model_id = "scripted"

    def __init__(self):
        self.prompts: list[str] = []

    def reply(self, prompt: str) -> str:
        if "zip" in prompt.lower():
            return "I cannot judge this extract."
        if "cookie" in prompt.lower() or "Home |" in prompt:
            return "Navigation and ads only.\nEducational score: 0"
        return "Explains a library function clearly.\nEducational score: 4"

    def generate(self, chats, params, on_completion=None):
        self.prompts += [chat[0]["content"] for chat in chats]
        return [[Completion(self.reply(chat[0]["content"]), "stop", 9)] for chat in chats]


def annotator(seed: int = 3, **params) -> AnnotateStage:
    stage = AnnotateStage(AnnotateParams(**params), seed=seed)
    stage.rubric = load_rubric(stage.params.template)
    stage.generator = ScriptedGenerator()
    return stage


def test_annotate_stage_samples_prompts_and_flags_unparsed(tmp_path: Path) -> None:
    texts = stdlib_docstrings(60) + boilerplate(40) + ["Use zip to pair two lists element by element " * 3]
    batch = pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts})
    stage = annotator(sample=0.5, max_chars=200)
    out = stage.process(batch)
    sampled = out.filter(pl.col("annotate_model").is_not_null())
    assert 35 <= sampled.height <= 65 and len(stage.generator.prompts) == sampled.height
    # FineWeb-Edu's rubric with the first max_chars characters of the text
    assert all("additive 5-point scoring system" in p and "Educational score: <total points>" in p
               for p in stage.generator.prompts)
    assert stage.generator.prompts[0].count(texts[int(sampled["id"][0][1:])][:200]) == 1
    assert out.filter(pl.col("annotate_model").is_null())["annotate_score"].null_count() == out.height - sampled.height
    unparsed = sampled.filter(pl.col("annotate_score").is_null())
    assert set(unparsed["_drop_reason"]) <= {"annotate_unparsed"} and set(sampled["annotate_score"].drop_nulls()) <= {0, 4}
    assert out.filter(pl.col("annotate_model").is_null())["_drop_reason"].null_count() == out.height - sampled.height
    # the sample depends on the id only: another batching picks the same rows
    halves = pl.concat([stage.process(batch.slice(0, 37)), stage.process(batch.slice(37))])
    assert halves.filter(pl.col("annotate_model").is_not_null())["id"].to_list() == sampled["id"].to_list()
    # a template of your own
    (tmp_path / "mine.txt").write_text("Rate the following from 0 to 10, answer [[N]].\n$text")
    mine = annotator(template=str(tmp_path / "mine.txt"), pattern=r"\[\[(\d+)\]\]", max_score=10)
    mine.process(batch.head(3))
    assert all(p.startswith("Rate the following") for p in mine.generator.prompts)
    (tmp_path / "bad.txt").write_text("no placeholder")
    with pytest.raises(ValueError, match=r"no \$text placeholder"):
        load_rubric(str(tmp_path / "bad.txt"))
    with pytest.raises(FileNotFoundError, match="not a built-in"):
        load_rubric("nope")
    with pytest.raises(RecipeError, match="capture group"):
        validate_recipe({"name": "x", "sources": [{"type": "jsonl", "path": "x"}], "output": {"dir": "o"},
                         "stages": [{"type": "annotate", "pattern": "no group"}]})


def test_quality_classifier_recipe_annotate_train_classify(tmp_path: Path) -> None:
    """The shipped recipe's chain on docstrings and boilerplate, with the LLM's replies written into the
    generation cache first (the chain is what is tested, not a 135M model's judgement: the generator
    is an OpenAI-compatible server that is never reached, every reply is a cache hit) and a fastText
    classifier of the 0/4 labels instead of the recipe's embedding regressor (fast)."""
    from datamill.synth.cache import GenerationCache, entry_key
    from datamill.synth.factory import make_generator

    texts = stdlib_docstrings(60) + boilerplate(60) + ["Use zip to pair two lists element by element. " * 3]
    write_jsonl(tmp_path / "raw.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    raw = yaml.safe_load(resources.files("datamill.recipes").joinpath("quality_classifier.yaml").read_text())
    cache = tmp_path / "cache"
    raw["sources"] = [{"type": "jsonl", "path": str(tmp_path / "raw.jsonl"), "name": "web", "id_field": "id"}]
    raw["stages"] = [s for s in raw["stages"] if s["type"] in ("annotate", "classifier")]
    annotate, classify = raw["stages"]
    annotate.update(sample=0.5, template="fineweb_edu", generator={"backend": "openai", "model": "scripted", "base_url": "http://127.0.0.1:9/v1",
                                           "cache_dir": str(cache)})
    classify["train"] = {**classify["train"], "kind": "fasttext", "task": "classification", "positive_label": "4",
                         "fasttext": {"bucket": 20_000, "dim": 16, "epoch": 20, "lr": 0.5},
                         "out": str(tmp_path / "model")}
    classify.update(min_score=0.5, action="drop")
    raw["output"]["dir"] = str(tmp_path / "run")
    recipe = validate_recipe(raw, where="quality_classifier")
    # the replies, cached under the keys the stage will ask for
    stage = annotator(seed=0, **{k: v for k, v in annotate.items() if k not in ("type", "name")})  # stage 0's seed
    params = stage.params.sampling.model_copy(update={"n": 1})
    model_id = make_generator(stage.params.generator.model_copy(update={"cache_dir": None})).model_id
    store = GenerationCache(cache)
    sampled = pl.DataFrame({"id": [f"d{i}" for i in range(len(texts))]}).select(
        stage.sampled().alias("s"))["s"]
    assert sampled[-1], "the unparseable row must be in the sample"
    for text in texts:
        prompt = stage.prompt(text)
        store.put(entry_key(model_id, [{"role": "user", "content": prompt}], params, 0),
                  Completion(stage.generator.reply(prompt), "stop", 9))
    stats = run_recipe(recipe, workers=1)
    kept = pl.read_parquet(sorted((tmp_path / "run" / "shards").glob("*.parquet")))
    steps = {s["name"]: s for s in stats["stages"]}
    labelled = steps["llm"]["records_in"] - kept["llm_score"].null_count() + steps["edu"]["records_in"] - kept.height
    assert steps["llm"]["flagged"] == {"llm_unparsed": 1}  # the zip text
    card = yaml.safe_load((tmp_path / "model" / "card.json").read_text())
    assert card["data"]["label_column"] == "llm_score" and card["labels"] == ["0", "4"]
    assert card["counts"]["rows"] >= 40 and card["metrics"]["accuracy"] >= 0.8
    # every document was scored by the trained model, and boilerplate is what the threshold dropped
    assert kept.height >= 50 and kept["edu_score"].min() >= 0.5 and (kept["edu_label"] == "4").all()
    assert steps["edu"]["dropped"]["edu_below_min_score"] >= 50 and labelled > 0
    assert not any("cookie" in t.lower() for t in kept["text"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Classifier: edu" in report and "Annotation: llm" in report
