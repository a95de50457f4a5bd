"""The closed loop on CPU, CI-sized: curate → target → select → train → eval chain and resume, and
`datamill ablate` writes its report for every arm × seed with a target disjoint from all training data."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from datamill.curate.loop import loop as loop_module
from datamill.curate.cli import app
from datamill.curate.loop.loop import LoopError, assert_disjoint, run_loop, text_key
from datamill.curate.engine.recipe import RecipeError, load_recipe, resolve_recipe_path, validate_recipe
from datamill.train.metrics import read_run_log

TINY_MODEL = {"preset": "llama-20m", "overrides": {"num_hidden_layers": 1, "hidden_size": 64,
                                                   "intermediate_size": 128, "num_attention_heads": 2,
                                                   "num_key_value_heads": 1}}


def tiny_recipe(tmp_path: Path, **sections) -> dict:
    """The CPU loop recipe, shrunk: 400 stdlib docstrings, a 1-layer model, 6 steps of 4 × 64 tokens."""
    recipe = yaml.safe_load(resolve_recipe_path("loop_cpu").read_text())
    out = tmp_path / "out" / "loop"
    recipe["output"]["dir"] = str(out)
    recipe["sources"][0].update(limit=400, include=["stdlib"])
    recipe["executor"] = {"workers": 1}
    recipe["eval"] = {"target_fraction": 0.1, "max_target_docs": 30, "points": 2, "batch_rows": 8}
    recipe["select"]["stages"][0]["target"]["path"] = str(out / "phases" / "target" / "target.parquet")
    recipe["train"] = {"model": TINY_MODEL, "seq_len": 64, "micro_batch_size": 4, "max_steps": 6, "log_every": 1,
                       "eval_every": 0, "progress": False, "save_final": False, "tensorboard": False,
                       "optim": {"lr": 3e-3, "warmup_steps": 1}}
    recipe.update(sections)
    return recipe


def test_existing_recipes_keep_their_fingerprint_and_loop_sections_are_validated(tmp_path):
    assert load_recipe("quickstart").fingerprint() == "0c4942c23f980c6c"  # value before the loop sections existed
    recipe = tiny_recipe(tmp_path)
    with_loop, plain = validate_recipe(recipe), validate_recipe({k: v for k, v in recipe.items() if k not in
                                                                 ("select", "train", "eval", "ablate")})
    assert with_loop.fingerprint() == plain.fingerprint()
    recipe["train"]["optim"]["lr"] = -1
    recipe["select"]["stages"][0]["budget"] = {"fraction": 3}
    recipe["eval"]["points"] = 0
    with pytest.raises(RecipeError) as err:
        validate_recipe(recipe)
    message = str(err.value)
    assert "train.optim.lr" in message and "select.stages[0].budget" in message and "eval.points" in message


def test_phases_chain_an_interrupted_training_resumes_and_a_rerun_skips_everything(tmp_path, monkeypatch):
    from datamill.train import train

    recipe = validate_recipe(tiny_recipe(tmp_path))
    layout = loop_module.LoopLayout(recipe)
    # a first attempt that stopped after the step-3 checkpoint, like a killed run
    done = loop_module.data_phases(recipe, log=lambda *_: None)
    loop_module.without_target(layout.phase("select"), layout.target, layout.phase("train_data"))
    cfg = loop_module.train_config(recipe.section("train"), layout.phase("train_data"), layout.phase("train"),
                                     recipe.section("eval"))
    train(cfg.model_copy(update={"max_steps": 3}))

    done = run_loop(recipe, log=lambda *_: None)
    assert list(done) == ["curate", "target", "select", "last", "train_data", "train", "eval"]
    log = read_run_log(layout.phase("train"))
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]  # steps 1-3 were not redone

    curated = pl.read_parquet(Path(recipe.output.dir) / "shards" / "*.parquet")
    selected = pl.read_parquet(layout.phase("select") / "shards" / "*.parquet")
    target = pl.read_parquet(layout.target / "target.parquet")
    training = pl.read_parquet(layout.phase("train_data") / "*.parquet")
    # each phase feeds the next: select keeps a subset of curated ids, training is select minus target
    assert 0 < selected.height < curated.height and selected["id"].is_in(curated["id"].implode()).all()
    assert 0 < target.height <= 30 and target["id"].is_in(curated["id"].implode()).all()
    assert set(training["id"]) == set(selected["id"]) - set(target["id"])
    assert not training.select(text_key()).to_series().is_in(target.select(text_key()).to_series().implode()).any()
    assert done["train"]["steps"] == 6 and done["train"]["tokens"] == 6 * 4 * 64
    curve = done["eval"]["curve"]
    assert [p["step"] for p in curve] == [3, 6] and curve[-1]["target_tokens"] > 500
    assert curve[-1]["loss"] < curve[0]["loss"] < 11.5  # learning, from ~ln(49152) = 10.8

    # a re-run does nothing: no curation shard, no training step, no evaluation
    def refuse(*args, **kwargs):
        raise AssertionError("a finished phase ran again")

    monkeypatch.setattr("datamill.curate.executors.run.run_recipe", refuse)
    monkeypatch.setattr("datamill.train.train", refuse)
    monkeypatch.setattr(loop_module, "target_eval", refuse)
    again = run_loop(recipe, log=lambda *_: None)
    assert again["eval"]["final"] == done["eval"]["final"]

    # changing the training settings is refused rather than silently mixing runs
    changed = validate_recipe({**tiny_recipe(tmp_path), "train": {**tiny_recipe(tmp_path)["train"], "max_steps": 7}})
    with pytest.raises(LoopError, match="different settings"):
        run_loop(changed, log=lambda *_: None)


def test_training_on_target_text_is_caught(tmp_path):
    target_dir, train_dir = tmp_path / "target", tmp_path / "train"
    target_dir.mkdir()
    train_dir.mkdir()
    pl.DataFrame({"id": ["a"], "text": ["The ferry does not run when the fog is thick."]}).write_parquet(
        target_dir / "target.parquet")
    pl.DataFrame({"id": ["b", "c"], "text": ["Bees make honey.", "the ferry does  not run when the fog is THICK."]}
                 ).write_parquet(train_dir / "part-00000.parquet")
    with pytest.raises(LoopError, match="1 target texts"):
        assert_disjoint(train_dir, target_dir)


def test_ablate_command_writes_report_for_every_arm_and_seed(tmp_path, monkeypatch):
    recipe = tiny_recipe(tmp_path, select=None, ablate={"seeds": [3, 4], "select_budget": 0.5, "select_min_words": 5})
    recipe["train"]["max_steps"] = 4
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["ablate", str(path)])
    assert result.exit_code == 0, result.output
    root = Path(recipe["output"]["dir"]) / "ablate"
    report = json.loads((root / "ablation.json").read_text())
    assert [(r["arm"], r["seed"]) for r in report["runs"]] == [(a, s) for a in ("raw", "curated", "selected")
                                                               for s in (3, 4)]
    assert len({r["tokens"] for r in report["runs"]}) == 1  # the same budget for every run
    target = Path(report["target"]["dir"])
    for arm in ("raw", "curated", "selected"):
        assert_disjoint(root / arm / "data", target)
        assert not list((root / arm).glob("seed-*/checkpoints/*.pt"))  # scored, then deleted
    arms = {a["arm"]: a for a in report["arms"]}
    assert arms["raw"]["records"] > arms["curated"]["records"] > arms["selected"]["records"]
    assert report["verdict"]["winner"] in arms
    md = (root / "report.md").read_text()
    assert report["verdict"]["text"].split(":")[0] in md and "seed" in md and "3, 4" in md
    for arm in ("raw", "curated", "selected"):
        assert f"{arms[arm]['ppl_mean']:.2f}" in md
    assert "data:image/png;base64," in (root / "report.html").read_text()


def test_rest_em_and_llm2llm_sections_run_as_loop_phases_after_curation(tmp_path, monkeypatch):
    (tmp_path / "problems.jsonl").write_text('{"id": "p1", "question": "2+2?", "answer": "4"}\n')
    calls = []

    def recorder(name):
        def run_phase(cfg, base_dir, log):
            assert (Path(tmp_path / "out" / "loop" / "shards")).is_dir()  # curation ran first
            calls.append((name, cfg.out_dir, str(base_dir)))
            return {"pass_at_1": [0.5]}
        return run_phase

    monkeypatch.setattr(loop_module, "run_rest_em", recorder("rest_em"))
    monkeypatch.setattr(loop_module, "run_llm2llm", recorder("llm2llm"))
    raw = tiny_recipe(tmp_path, rest_em={"problems": "problems.jsonl", "iterations": 1},
                      llm2llm={"seed_data": "problems.jsonl", "out_dir": str(tmp_path / "mine")})
    for key in ("train", "eval", "select"):
        raw.pop(key)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    recipe = load_recipe(path)
    done = run_loop(recipe, log=lambda *a: None)
    assert calls == [("rest_em", str(tmp_path / "out" / "loop" / "phases" / "rest_em"), str(tmp_path)),
                     ("llm2llm", str(tmp_path / "mine"), str(tmp_path))]
    assert done["rest_em"] == {"pass_at_1": [0.5]}
    bad = {**raw, "rest_em": {"problems": "problems.jsonl", "samples": 0}}
    with pytest.raises(RecipeError, match=r"rest_em\.samples: 0 is not in \[1, inf\)"):
        validate_recipe(bad)
