"""The training loop on CPU: loss goes down, eval loss/ppl logged, checkpoint → resume repeats the
uninterrupted loss curve, SIGTERM writes a checkpoint, the final model loads with from_pretrained."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from datamill.train import TrainConfigError, load_config, train
from datamill.train.cli import app
from datamill.train.data import PackedRows, tokenize_corpus
from datamill.train.metrics import read_run_log
from datamill.train.model import LossModel, attention_mask_for

from conftest import write_text_corpus

TINY = {"preset": "llama-20m", "overrides": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                            "num_attention_heads": 4, "num_key_value_heads": 2}}


def tiny_config(corpus: Path, out_dir: Path, **changes) -> dict:
    return {"data": {"path": str(corpus), "eval_holdout": 0.1}, "model": TINY, "out_dir": str(out_dir),
            "seq_len": 64, "micro_batch_size": 2, "grad_accum": 2, "max_steps": 6, "log_every": 1,
            "eval_every": 3, "eval_batches": 2, "checkpoint_every": 3, "keep_checkpoints": 2, "progress": False,
            "optim": {"lr": 3e-3, "warmup_steps": 2}, **changes}


def train_losses(out_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_run_log(out_dir) if r["kind"] == "train"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_text_corpus(tmp_path_factory.mktemp("corpus"), 80)


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("full")
    return train(tiny_config(corpus, out_dir)), out_dir


def test_training_lowers_the_loss_and_logs_held_out_loss_and_perplexity(full_run):
    result, out_dir = full_run
    losses = train_losses(out_dir)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert losses[6] < losses[1] - 1.0
    evals = [r for r in read_run_log(out_dir) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert all(r["eval_ppl"] == pytest.approx(math.exp(r["eval_loss"])) for r in evals)
    assert result.eval_loss == pytest.approx(evals[-1]["eval_loss"]) and result.steps == 6
    assert result.tokens_per_s > 0 and result.mfu is None  # no MFU without a known accelerator peak
    assert not result.interrupted


def test_resuming_from_a_checkpoint_repeats_the_uninterrupted_loss_curve(full_run, corpus, tmp_path):
    _, full_dir = full_run
    assert sorted(p.name for p in (full_dir / "checkpoints").iterdir()) == ["step-0000003.pt", "step-0000006.pt"]
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(full_dir / "checkpoints" / "step-0000003.pt", resumed_dir / "checkpoints")
    result = train(tiny_config(corpus, resumed_dir))
    resumed, full = train_losses(resumed_dir), train_losses(full_dir)
    assert sorted(resumed) == [4, 5, 6]  # it went on from step 3
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(full[step], rel=1e-6)
    assert result.eval_loss == pytest.approx(full_run[0].eval_loss, rel=1e-6)


def test_the_final_model_loads_with_from_pretrained_and_has_the_trained_eval_loss(full_run, corpus):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, _ = full_run
    lm = AutoModelForCausalLM.from_pretrained(result.final_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    assert len(tokenizer) == lm.config.vocab_size
    held_out = tokenize_corpus(corpus, tokenizer, eval_holdout=0.1, log=lambda *a: None)["eval"]
    rows = PackedRows(held_out, 64)
    batch = rows.batch(np.arange(min(rows.n_rows, 2 * 2))).to_torch("cpu")  # what eval_batches=2 × 2 rows saw
    with torch.no_grad():
        total = LossModel(lm.eval())(batch["input_ids"], batch["position_ids"],
                                     attention_mask_for(batch["doc_ids"], "sdpa"), batch["targets"], batch["learned"])
    assert (total / batch["learned"].sum()).item() == pytest.approx(result.eval_loss, rel=1e-4)


def test_sigterm_stops_training_with_a_checkpoint_of_the_step_reached(corpus, tmp_path):
    out_dir = tmp_path / "run"
    config = tiny_config(corpus, out_dir, max_steps=500, eval_every=0, checkpoint_every=0)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "datamill.train.cli", str(tmp_path / "train.yaml")],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((out_dir / "log.jsonl").exists() and (out_dir / "log.jsonl").read_text().count('"train"') >= 2):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "training never logged a step"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    summary = read_run_log(out_dir)[-1]
    assert summary["kind"] == "summary" and summary["interrupted"] is True
    stopped_at = summary["step"]
    assert 2 <= stopped_at < 500
    checkpoint = torch.load(out_dir / "checkpoints" / f"step-{stopped_at:07d}.pt", weights_only=False)
    assert checkpoint["step"] == stopped_at and "model" in checkpoint and "optimizer" in checkpoint
    assert "stopped by SIGTERM" in stderr
    assert not (out_dir / "final").exists()


def test_config_errors_name_the_key_path(tmp_path):
    with pytest.raises(TrainConfigError) as caught:
        load_config({"data": {"path": "x"}, "model": {"preset": "llama-20m"}, "max_steps": 5,
                     "optim": {"lr": -1, "betass": [0.9, 0.9]}})
    assert "optim.lr: Input should be greater than 0" in str(caught.value)
    assert "optim.betass: Extra inputs are not permitted" in str(caught.value)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "output": {"dir": "out/r"},
                                      "train": {"model": {"preset": "llama-20m"}, "tokens": 1000}}))
    assert load_config(recipe).data.path == "out/r"  # a recipe's train section reads its output
    recipe.write_text(yaml.safe_dump({"output": {"dir": "out/r"}, "train": {"model": {}, "tokens": 1000}}))
    with pytest.raises(TrainConfigError, match="train.model: Value error, give exactly one of model.preset"):
        load_config(recipe)


def test_cli_reports_an_invalid_config_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {path: corpus}\nmodel: {preset: llama-20m}\nmax_steps: 0\n")
    result = CliRunner().invoke(app, [str(bad)])
    assert result.exit_code == 2
    assert "max_steps: Input should be greater than or equal to 1" in result.output
