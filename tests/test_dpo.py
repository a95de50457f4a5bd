"""DPO in `datamill train`: the loss on a fixed batch equals TRL's (DPOTrainer for sigmoid, robust
and IPO; CPOTrainer's formula for SimPO), the chosen-vs-rejected margin rises on a toy preference
set, reference log-probs are computed once, and a resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import copy
import types

import numpy as np
import polars as pl
import pytest
import torch

from datamill.train import train
from datamill.train.dpo import SequenceLogps, collate, preference_loss, tokenize_pairs
from datamill.train.dpo_config import DPOConfig
from datamill.train.metrics import read_run_log
from datamill.train.model import load_tokenizer
from datamill.train.presets import llama_config

from dpo_data import PAIRS, TINY, config, toy_preferences
from scripted_generator import one_torch_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def tiny_lm(tokenizer, seed: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = llama_config("llama-20m", len(tokenizer), TINY, {"eos_token_id": tokenizer.eos_token_id,
                                                              "bos_token_id": tokenizer.bos_token_id})
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")


def ours(policy, reference, tokenizer, frame, cfg: DPOConfig) -> float:
    pairs, skipped = tokenize_pairs(tokenizer, frame, seq_len=512)
    assert not skipped and len(pairs) == frame.height
    batch = collate(pairs, np.arange(len(pairs)), tokenizer.eos_token_id)
    with torch.no_grad():
        logps, counts = SequenceLogps(policy).eval()(batch["input_ids"], batch["targets"], batch["learned"])
        ref, _ = SequenceLogps(reference).eval()(batch["input_ids"], batch["targets"], batch["learned"])
    n = len(pairs)
    losses, _, _ = preference_loss(cfg, logps[:n], logps[n:], ref[:n], ref[n:], counts[:n], counts[n:])
    return float(losses.mean())


def trl_losses(policy, reference, tokenizer, frame, cases, tmp_path) -> list[float]:
    """TRL's DPOTrainer loss on the whole frame as one batch, for each (loss_type, beta, label_smoothing)."""
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    args = TRLConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=["sigmoid"],
                     per_device_train_batch_size=frame.height, report_to=[], use_cpu=True, max_length=None,
                     precompute_ref_log_probs=False, bf16=False)
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args,
                         train_dataset=Dataset.from_polars(frame), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    out = []
    for loss_type, beta, smoothing in cases:  # the settings the trainer reads in its loss
        trainer.loss_types, trainer.loss_weights, trainer.beta, trainer.label_smoothing = [loss_type], [1.0], beta, smoothing
        with torch.no_grad():
            out.append(float(trainer.compute_loss(trainer.model, batch)))
    return out


@pytest.mark.parametrize("conversational", [False, True])
def test_loss_on_a_fixed_batch_equals_trl(tokenizer, tmp_path, conversational):
    reference = tiny_lm(tokenizer, 0).eval()
    policy = tiny_lm(tokenizer, 1).eval()  # a different model, so the log-ratios are far from 0
    if conversational:
        frame = pl.DataFrame({"prompt": [[{"role": "user", "content": p}] for p, _, _ in PAIRS],
                              "chosen": [[{"role": "assistant", "content": c.strip()}] for _, c, _ in PAIRS],
                              "rejected": [[{"role": "assistant", "content": r.strip()}] for _, _, r in PAIRS]})
        cases = [("sigmoid", 0.1, 0.0)]
    else:
        frame = pl.DataFrame({"prompt": [p for p, _, _ in PAIRS], "chosen": [c for _, c, _ in PAIRS],
                              "rejected": [r for _, _, r in PAIRS]})
        cases = [("sigmoid", 0.1, 0.0), ("robust", 0.5, 0.1), ("ipo", 0.1, 0.0), ("hinge", 0.1, 0.0)]
    expected = trl_losses(policy, reference, tokenizer, frame, cases, tmp_path)
    for (loss_type, beta, smoothing), want in zip(cases, expected):
        got = ours(policy, reference, tokenizer, frame, DPOConfig(loss=loss_type, beta=beta, label_smoothing=smoothing))
        assert abs(got - want) < 1e-4, (loss_type, got, want)
        assert want > 0.01  # not a degenerate batch


def test_simpo_matches_trl_cpo_formula():
    from trl.experimental.cpo import CPOTrainer

    chosen, rejected = torch.tensor([-12.0, -30.0, -8.0]), torch.tensor([-20.0, -25.0, -8.5])
    chosen_n, rejected_n = torch.tensor([4.0, 10.0, 2.0]), torch.tensor([5.0, 5.0, 1.0])
    cfg = DPOConfig(loss="simpo", beta=2.0, simpo_gamma=0.5, label_smoothing=0.05)
    losses, chosen_rewards, _ = preference_loss(cfg, chosen, rejected, None, None, chosen_n, rejected_n)
    fake = types.SimpleNamespace(alpha=0.0, loss_type="simpo", beta=2.0, simpo_gamma=0.5, label_smoothing=0.05,
                                 accelerator=types.SimpleNamespace(device="cpu"))
    expected, expected_chosen, _ = CPOTrainer.cpo_loss(fake, chosen / chosen_n, rejected / rejected_n)
    assert torch.allclose(losses, expected, atol=1e-6)
    assert torch.allclose(chosen_rewards, expected_chosen, atol=1e-6)


def test_margin_rises_on_a_toy_preference_set_and_resume_continues_exactly(tmp_path):
    data = toy_preferences(tmp_path / "prefs")
    result = train(config(data, tmp_path / "a"))
    log = [r for r in read_run_log(tmp_path / "a") if r["kind"] == "train"]
    assert len(log) == 8 and result.steps == 8
    first, last = log[0], log[-1]
    assert abs(first["rewards/margins"]) < 1e-3  # step 1: the policy is the reference
    assert last["rewards/margins"] > 0.5 and last["rewards/accuracies"] == 1.0
    assert last["loss"] < first["loss"]
    evals = [r for r in read_run_log(tmp_path / "a") if r["kind"] == "eval"]
    assert evals and evals[-1]["rewards/accuracies"] > 0.5 and result.eval_loss is not None
    refs = list((data / "tokens").glob("ref-*.npz"))
    assert len(refs) == 1
    stamp = refs[0].stat().st_mtime_ns

    # the same run in two halves: 4 steps with a checkpoint, then resumed to 8
    train(config(data, tmp_path / "b", max_steps=4, checkpoint_every=4))
    resumed = train(config(data, tmp_path / "b", checkpoint_every=4))
    assert resumed.steps == 8
    assert refs[0].stat().st_mtime_ns == stamp  # the reference log-probs were read, not recomputed
    both = [r for r in read_run_log(tmp_path / "b") if r["kind"] == "train"]
    assert [r["step"] for r in both] == list(range(1, 9))
    assert both[-1]["loss"] == pytest.approx(last["loss"], abs=1e-4)
    assert both[-1]["rewards/margins"] == pytest.approx(last["rewards/margins"], abs=1e-3)


def test_simpo_needs_no_reference_and_bad_corpora_are_named(tmp_path):
    data = toy_preferences(tmp_path / "prefs", n=8)
    result = train(config(data, tmp_path / "s", max_steps=3, dpo={"loss": "simpo", "beta": 2.0}))
    assert result.steps == 3 and not list((data / "tokens").glob("ref-*.npz"))
    bad = tmp_path / "bad"
    bad.mkdir()
    pl.DataFrame({"prompt": ["x"], "completion": ["y"]}).write_parquet(bad / "a.parquet")
    with pytest.raises(ValueError, match="prompt, chosen, rejected"):
        train(config(bad, tmp_path / "x"))
