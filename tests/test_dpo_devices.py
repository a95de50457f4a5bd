"""DPO on the SFT trainer's device paths, on CPU: the same up-front refusals (flex attention, liger,
bf16), torch.compile steps equal to eager and a checkpoint written under compile resuming to the
uninterrupted run's curve, bf16 autocast close to fp32, and two processes with DDP over gloo
(forked, with torchrun's environment) equal to one process accumulating the same batch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from datamill.train import TrainConfigError, load_config, train
from datamill.train.config import DeviceCaps
from datamill.train.dpo import dpo_device_plan
from datamill.train.metrics import read_run_log

from scripted_generator import one_torch_thread  # noqa: F401
from dpo_data import config, toy_preferences

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = DeviceCaps("cpu", bf16=True, liger_installed=False)
GPU = DeviceCaps("cuda", bf16=True, liger_installed=True)
METRICS = ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen")


@pytest.fixture(scope="module")
def prefs(tmp_path_factory) -> Path:
    return toy_preferences(tmp_path_factory.mktemp("dpo-devices") / "prefs", n=16)


def run(prefs: Path, out: Path, **changes) -> dict:
    """A 4-step DPO config on the toy pairs (2 pairs per micro-batch, 2 micro-batches per step)."""
    cfg = config(prefs, out, micro_batch_size=2, grad_accum=2, max_steps=4, compile=False, resume=True)
    cfg["data"]["eval_holdout"] = 0.25
    cfg["model"]["overrides"] = {**cfg["model"]["overrides"], "num_hidden_layers": 1}  # less for dynamo to trace
    if "attention" in changes:
        cfg["model"]["attention"] = changes.pop("attention")
    return {**cfg, **changes}


def curve(out: Path) -> np.ndarray:
    """[steps, metrics] of the train records, and the final eval loss as one more row entry."""
    records = read_run_log(out)
    rows = [[r[m] for m in METRICS] for r in records if r["kind"] == "train"]
    return np.array(rows)


@pytest.fixture(scope="module")
def eager(prefs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eager")
    train(run(prefs, out))
    return out


def plan(caps: DeviceCaps, **changes):
    return dpo_device_plan(load_config(run(Path("prefs"), Path("out"), **changes)), caps)


def test_dpo_refuses_what_the_device_cannot_do_with_the_sft_messages(tmp_path):
    with pytest.raises(TrainConfigError) as err:
        plan(CPU, attention="flex_attention", liger=True)
    assert "model.attention: flex_attention needs a CUDA GPU (this process runs on cpu" in str(err.value)
    assert "liger: liger-kernel's fused cross-entropy needs a CUDA GPU" in str(err.value)
    with pytest.raises(TrainConfigError, match="precision: bf16 is not supported by this cuda device"):
        plan(DeviceCaps("cuda", bf16=False, liger_installed=True), precision="bf16")
    with pytest.raises(TrainConfigError, match="objective dpo .* does not use liger"):
        plan(GPU, liger=True)
    gpu = plan(GPU, compile=None)  # auto on CUDA: plain causal sdpa (no document masks), bf16, compiled
    assert (gpu.attention, gpu.bf16, gpu.compile, gpu.liger) == ("sdpa", True, True, False)
    cpu = plan(CPU, compile=None)
    assert (cpu.attention, cpu.bf16, cpu.compile, cpu.liger) == ("sdpa", False, False, False)
    assert plan(GPU, attention="flex_attention").attention == "flex_attention"

    data = toy_preferences(tmp_path / "prefs", n=4)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: flex attention is allowed")
    with pytest.raises(TrainConfigError, match="flex_attention needs a CUDA GPU"):
        train(run(data, tmp_path / "out", attention="flex_attention"))
    assert not (data / "tokens").exists() and not (tmp_path / "out").exists()  # refused before any work


def test_compiled_dpo_steps_and_their_checkpoint_resume_like_eager(prefs, eager, tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile

    def compile_fast(model, **kw):  # inductor's C++ codegen takes minutes on the shared 2-core box: dynamo's
        compiled.append(model)      # graph capture only here (inductor: the `cuda` test below, on the GPU kit)
        return real_compile(model, **{**kw, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", compile_fast)
    train(run(prefs, tmp_path, compile=True, max_steps=2, checkpoint_every=2))  # compiled, checkpoint at step 2
    assert len(compiled) == 1  # the loop really ran the compiled decoder
    resumed = train(run(prefs, tmp_path, checkpoint_every=2))  # the checkpoint's names are the eager model's
    assert resumed.steps == 4
    got, want = curve(tmp_path), curve(eager)
    assert got.shape == (4, len(METRICS))
    got[0, 2] = want[0, 2] = 0  # step 1: the policy is the reference, margins are rounding noise around 0
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    assert resumed.eval_loss == pytest.approx(next(r["eval_loss"] for r in read_run_log(eager)
                                                   if r["kind"] == "summary"), abs=1e-5)


def test_bf16_autocast_dpo_stays_close_to_fp32(prefs, eager, tmp_path):
    result = train(run(prefs, tmp_path, precision="bf16", max_steps=2))  # constant LR: the eager run's first 2 steps
    bf16, fp32 = curve(tmp_path), curve(eager)[:2]
    assert np.isfinite(bf16).all() and result.steps == 2
    loss_gap = np.abs(bf16[:, 0] - fp32[:, 0]).max()
    assert 0 < loss_gap < 0.02  # really bf16, and close: the losses are ~0.69 here
    assert np.abs(bf16[:, 1] - fp32[:, 1]).max() < 0.05  # margins
    assert len(list((prefs / "tokens").glob("ref-*.npz"))) >= 2  # bf16 reference log-probs are their own cache


def ddp_rank(rank: int, port: int, cfg: dict) -> None:
    """One of two processes, set up as torchrun sets up its workers (env:// rendezvous over gloo)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)  # no OpenMP pool in a forked child
    train(cfg)


def test_two_processes_with_ddp_equal_one_process(prefs, eager, tmp_path):
    """Forked, not torchrun-launched, so the workers need not import torch and transformers again;
    2 processes × 1 micro-batch of 2 pairs must equal 1 process × 2 micro-batches (the eager run)."""
    import multiprocessing
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = run(prefs, tmp_path / "ddp", grad_accum=1, distributed="ddp")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=ddp_rank, args=(rank, port, cfg)) for rank in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
    for worker in workers:
        if worker.is_alive():
            worker.kill()
    assert [w.exitcode for w in workers] == [0, 0]
    np.testing.assert_allclose(curve(tmp_path / "ddp"), curve(eager), rtol=1e-4, atol=1e-5)
    evals = [[r["eval_loss"] for r in read_run_log(d) if r["kind"] == "summary"] for d in (tmp_path / "ddp", eager)]
    assert evals[0] == pytest.approx(evals[1], rel=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bash bench/gpu/run.sh runs it)")
def test_cuda_compiled_bf16_dpo_matches_eager_fp32(prefs, tmp_path):
    """On the GPU itself: the auto plan (sdpa, bf16 autocast, inductor-compiled decoder) against fp32 eager."""
    tokenizer = {"tokenizer": os.environ.get("DATAMILL_TEST_TOKENIZER", "smollm2-135m")}
    fp32 = run(prefs, tmp_path / "fp32", precision="fp32", compile=False)
    auto = run(prefs, tmp_path / "auto", precision="auto", compile=None)
    for cfg in (fp32, auto):
        cfg["model"].update(tokenizer)
        train(cfg)
    got, want = curve(tmp_path / "auto"), curve(tmp_path / "fp32")
    assert np.isfinite(got).all() and np.abs(got[:, 0] - want[:, 0]).max() < 0.02
