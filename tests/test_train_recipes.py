"""Training from recipes on CPU: pretraining a small model on the quickstart corpus, and SFT of the
built-in SmolLM2-135M on self-instruct style conversations; both from a recipe's `train:` section."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import yaml
from typer.testing import CliRunner

from conftest import write_text_corpus

from datamill.curate.cli import app
from datamill.curate.executors.run import run_recipe
from datamill.curate.engine.recipe import resolve_recipe_path, validate_recipe
from datamill.train import load_config, train
from datamill.train.data import PackedRows, tokenize_corpus
from datamill.train.metrics import read_run_log
from datamill.train.model import load_tokenizer


def train_curve(out_dir: Path) -> list[float]:
    return [r["loss"] for r in read_run_log(out_dir) if r["kind"] == "train"]


def test_pretraining_on_the_quickstart_corpus_from_the_recipe(tmp_path):
    recipe = yaml.safe_load(resolve_recipe_path("quickstart").read_text())
    recipe["sources"][0]["limit"] = 300
    recipe["output"]["dir"] = str(tmp_path / "out" / "quickstart")
    recipe["train"] = {"model": {"preset": "llama-20m", "overrides": {"num_hidden_layers": 2, "hidden_size": 128,
                                                                      "intermediate_size": 256}},
                       "out_dir": str(tmp_path / "train"), "seq_len": 128, "micro_batch_size": 4, "max_steps": 8,
                       "log_every": 1, "eval_every": 4, "progress": False, "save_final": False,
                       "optim": {"lr": 3e-3, "warmup_steps": 2}}
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_recipe(validate_recipe({k: v for k, v in recipe.items() if k != "train"}), workers=1)

    result = train(load_config(path))  # data.path defaults to the recipe's output dir
    losses = train_curve(tmp_path / "train")
    assert len(losses) == 8 and losses[-1] < losses[0] - 1.5
    assert result.eval_loss < 9.0  # from ~10.8 (uniform over 49k tokens)


def test_sft_of_smollm2_on_self_instruct_conversations_learns_them(tmp_path):
    pairs = [
        ("Give a short title for a note about a flooded mill.", "The River and the Old Mill"),
        ("Rewrite politely: move the cattle now.", "Could you please move the cattle to higher ground now?"),
        ("Summarize: the baker starts at four so the bread is warm by seven.",
         "The baker begins early so the bread is ready by seven."),
        ("List two things the village library lends.", "Books and seeds."),
        ("Why does the ferry stop running?", "It stops when thick fog covers the estuary."),
        ("What did the students plant along the playground?", "A row of oak trees."),
    ]
    conversations = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": q},
                      {"role": "assistant", "content": a}] for q, a in pairs[:2]]  # a 135M step on a CPU is slow
    run_dir = tmp_path / "out" / "self-instruct"
    (run_dir / "shards").mkdir(parents=True)
    pl.DataFrame({"messages": conversations}).write_parquet(run_dir / "shards" / "part-00000.parquet")
    tokenizer = load_tokenizer("smollm2-135m")
    split = tokenize_corpus(run_dir, tokenizer, eval_holdout=0, log=lambda *a: None)["train"]
    n_rows = PackedRows(split, 64).n_rows  # one step = the whole set, so the loss must fall every step

    recipe = {"name": "self-instruct", "output": {"dir": str(run_dir)},
              "train": {"data": {"eval_holdout": 0}, "model": {"path": "smollm2-135m"}, "out_dir": str(tmp_path / "sft"),
                        "seq_len": 64, "micro_batch_size": n_rows, "max_steps": 3, "log_every": 1,
                        "progress": False, "save_final": False, "optim": {"lr": 5e-5, "warmup_steps": 0}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = train(load_config(path))
    losses = train_curve(tmp_path / "sft")
    assert losses[0] < 6.0  # the pretrained model already knows English (from scratch: ~10.8)
    assert losses[0] > losses[1] > losses[2]
    assert result.steps == 3 and result.eval_loss is None  # nothing was held out


def test_datamill_train_command_trains_and_saves_a_loadable_model(tmp_path):
    corpus = write_text_corpus(tmp_path / "corpus", 60)
    config = {"data": {"path": str(corpus), "eval_holdout": 0.1},
              "model": {"preset": "llama-20m", "overrides": {"num_hidden_layers": 1, "hidden_size": 64,
                                                               "intermediate_size": 128}},
              "out_dir": str(tmp_path / "run"), "seq_len": 64, "micro_batch_size": 2, "max_steps": 50,
              "log_every": 1, "progress": False, "optim": {"lr": 1e-3, "warmup_steps": 1}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))

    result = CliRunner().invoke(app, ["train", str(tmp_path / "train.yaml"), "--max-steps", "3"])
    assert result.exit_code == 0, result.output
    assert len(train_curve(tmp_path / "run")) >= 1
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert model.config.num_hidden_layers == 1

    bad = CliRunner().invoke(app, ["train", str(tmp_path / "missing.yaml")])
    assert bad.exit_code != 0 and "missing.yaml" in bad.output
