"""Distributed training for real on CPU: `torchrun --nproc_per_node 2` (gloo) with DDP and FSDP2 gives
the loss curve of one process accumulating the same global batch."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from datamill.train import train
from datamill.train.metrics import read_run_log

from conftest import write_text_corpus

TINY = {"preset": "llama-20m", "overrides": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                            "num_attention_heads": 4, "num_key_value_heads": 2}}


def config(corpus: Path, out_dir: Path, **changes) -> dict:
    return {"data": {"path": str(corpus), "eval_holdout": 0.1}, "model": TINY, "out_dir": str(out_dir),
            "seq_len": 64, "micro_batch_size": 2, "max_steps": 4, "log_every": 1, "eval_every": 0,
            "eval_batches": 2, "progress": False, "save_final": False, "optim": {"lr": 3e-3, "warmup_steps": 1},
            **changes}


def curve(out_dir: Path) -> tuple[list[float], float]:
    records = read_run_log(out_dir)
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    return losses, next(r["eval_loss"] for r in records if r["kind"] == "eval")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_text_corpus(tmp_path_factory.mktemp("corpus"), 60)


@pytest.fixture(scope="module")
def single_process(corpus, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("single")
    train(config(corpus, out_dir, grad_accum=2))  # one process, two micro-batches per step
    return curve(out_dir)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_under_torchrun_match_one_process(strategy, corpus, single_process, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun is not installed"
    out_dir = tmp_path / strategy
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config(corpus, out_dir, grad_accum=1, distributed=strategy)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "datamill.train.cli", str(tmp_path / "train.yaml")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own process group, so a timeout ends the workers too
    try:
        _, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, stderr[-3000:]
    assert "2 × cpu" in stderr  # it really ran on two processes
    losses, eval_loss = curve(out_dir)
    expected_losses, expected_eval = single_process
    assert losses == pytest.approx(expected_losses, rel=1e-4)
    assert eval_loss == pytest.approx(expected_eval, rel=1e-4)
    assert losses[-1] < losses[0]
