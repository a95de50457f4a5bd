"""Knowledge distillation in the trainer: the top-k KL is zero when the student is the teacher,
it falls while training on stored teacher top-k log-probs, and teacher data from another
tokenizer is refused with a clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from datamill.train import train
from datamill.train.loss import topk_kd_loss
from datamill.train.metrics import read_run_log
from datamill.train.model import load_tokenizer
from datamill.train.presets import llama_config

TINY = {"preset": "llama-20m", "overrides": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                            "num_attention_heads": 4, "num_key_value_heads": 2}}
PROMPTS = [f"Question {i}: what do farmers do before a storm near the river?" if i % 2 else
           f"Task {i}: describe the old mill by the river in one sentence." for i in range(16)]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def tiny_lm(tokenizer, seed: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = llama_config("llama-20m", len(tokenizer), TINY["overrides"],
                          {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id})
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def test_kd_loss_is_zero_for_the_teacher_itself_and_positive_otherwise(tokenizer):
    model = tiny_lm(tokenizer, 0)
    ids = torch.tensor([tokenizer("The baker starts work at four so that the bread is warm.")["input_ids"]])
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids).last_hidden_state[0]
        logprobs = torch.log_softmax(model.lm_head(hidden), -1)
    top = logprobs.topk(8, dim=-1)
    head = model.get_output_embeddings().weight
    weights = torch.ones(ids.shape[1])
    same = topk_kd_loss(hidden, head, top.indices, top.values, weights)
    assert abs(same.item()) < 1e-5
    flipped = topk_kd_loss(hidden, head, top.indices, top.values.flip(-1) * 50, weights)
    assert float(flipped) > 0.1
    unused = top.values.clone()
    unused[:, 4:] = float("-inf")  # padded slots: renormalized over the 4 real ones, still zero
    assert abs(float(topk_kd_loss(hidden, head, top.indices, unused, weights))) < 1e-5


def teacher_corpus(tokenizer, folder: Path, k: int = 5) -> Path:
    """Prompt/completion records whose completions a teacher wrote greedily, with its top-k log-probs
    of every completion token and of its end-of-sequence token (what `distill` stores)."""
    teacher = tiny_lm(tokenizer, 7)
    rows = []
    for prompt in PROMPTS:
        prompt_ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            out = teacher.generate(torch.tensor([prompt_ids]), max_new_tokens=10, do_sample=False,
                                   pad_token_id=tokenizer.eos_token_id)
        generated = out[0, len(prompt_ids):].tolist()
        completion = tokenizer.decode(generated, skip_special_tokens=True)
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        full = torch.tensor([prompt_ids + completion_ids + [tokenizer.eos_token_id]])
        with torch.no_grad():
            # a confident teacher: its logits sharpened (temperature 0.2), as a larger model's would be
            logprobs = torch.log_softmax(teacher(full).logits[0, len(prompt_ids) - 1:-1] / 0.2, -1)
        top = logprobs.topk(k, dim=-1)
        rows.append({"prompt": prompt, "completion": completion, "teacher_model": "tiny-teacher",
                     "teacher_topk_ids": top.indices.tolist(), "teacher_topk_logprobs": top.values.tolist()})
    (folder / "shards").mkdir(parents=True)
    pl.DataFrame(rows).write_parquet(folder / "shards" / "part-00000.parquet")
    return folder


@pytest.fixture(scope="module")
def shared_corpus(tokenizer, tmp_path_factory) -> Path:
    """The teacher corpus, built once for the module (tests that change it work on a copy)."""
    return teacher_corpus(tokenizer, tmp_path_factory.mktemp("kd") / "corpus")


def test_kd_loss_falls_while_training(shared_corpus, tmp_path):
    corpus = shared_corpus
    out = tmp_path / "run"
    result = train({"data": {"path": str(corpus), "eval_holdout": 0.1}, "model": TINY, "out_dir": str(out),
                    "seq_len": 32, "micro_batch_size": 4, "max_steps": 10, "log_every": 1, "eval_every": 0,
                    "progress": False, "save_final": False, "tensorboard": False, "kd_weight": 0.8,
                    "optim": {"lr": 5e-3, "warmup_steps": 1}})
    log = read_run_log(out)
    kd = [r["kd_loss"] for r in log if r["kind"] == "train"]
    assert len(kd) == 10 and kd[0] > 0.05
    assert np.mean(kd[-3:]) < 0.7 * np.mean(kd[:3])
    assert result.steps == 10


def test_teacher_from_another_tokenizer_is_refused(shared_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(shared_corpus / "shards", corpus / "shards")
    frame = pl.read_parquet(corpus / "shards" / "part-00000.parquet")
    rng = np.random.default_rng(0)  # ids from another vocabulary: right shape, wrong tokens
    frame = frame.with_columns(pl.Series("teacher_topk_ids", [
        rng.integers(0, 30000, size=(len(r), len(r[0]))).tolist() for r in frame["teacher_topk_ids"].to_list()]))
    frame.write_parquet(corpus / "shards" / "part-00000.parquet")
    config = {"data": {"path": str(corpus)}, "model": TINY, "out_dir": str(tmp_path / "run"), "seq_len": 64,
              "micro_batch_size": 2, "max_steps": 1, "progress": False, "kd_weight": 0.5}
    with pytest.raises(ValueError, match="share one tokenizer"):
        train(config)
    bad = frame.with_columns(pl.col("teacher_topk_ids").list.eval(pl.element().list.eval(pl.element() + 60000)))
    bad.write_parquet(corpus / "shards" / "part-00000.parquet")
    with pytest.raises(ValueError, match="outside the student's vocabulary"):
        train(config)


def test_kd_needs_teacher_columns(tmp_path):
    (tmp_path / "shards").mkdir()
    pl.DataFrame({"prompt": ["Say hello."], "completion": ["Hello!"]}).write_parquet(tmp_path / "shards" / "p.parquet")
    with pytest.raises(ValueError, match="teacher_topk_ids"):
        train({"data": {"path": str(tmp_path)}, "model": TINY, "out_dir": str(tmp_path / "run"), "seq_len": 16,
               "micro_batch_size": 1, "max_steps": 1, "progress": False, "kd_weight": 0.5})


def test_kd_aligns_on_the_teachers_own_token_ids(tokenizer, tmp_path):
    """A completion whose text re-tokenizes differently from what the teacher generated (" river"
    generated as " riv" + "er") is learned as the teacher's ids, with each top-k row on its token."""
    prompt = "Name a place where water flows."
    generated = tokenizer(" riv", add_special_tokens=False)["input_ids"] + tokenizer("er", add_special_tokens=False)["input_ids"]
    text = tokenizer.decode(generated)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] != generated  # the re-tokenization differs
    k = 3
    topk_ids = [[t, t + 1, t + 2] for t in generated] + [[tokenizer.eos_token_id, 5, 6]]
    topk_lp = [[-0.1, -2.5, -3.0]] * len(topk_ids)
    (tmp_path / "shards").mkdir()
    frame = pl.DataFrame({"prompt": [prompt], "completion": [text], "teacher_topk_ids": [topk_ids],
                          "teacher_topk_logprobs": [topk_lp], "teacher_token_ids": [generated]})
    frame.write_parquet(tmp_path / "shards" / "part-00000.parquet")
    from datamill.train.data import tokenize_corpus

    split = tokenize_corpus(tmp_path, tokenizer, eval_holdout=0, kd=True, log=lambda *_: None)["train"]
    tail = len(generated) + 1
    assert split.tokens[-tail:].tolist() == generated + [tokenizer.eos_token_id]
    np.testing.assert_array_equal(split.teacher_ids[-tail:], np.array(topk_ids))
    assert np.isfinite(split.teacher_logprobs[-tail:]).all() and np.isinf(split.teacher_logprobs[:-tail]).all()
    # without the stored ids the text re-tokenizes to another length: that record gets no KD
    frame.drop("teacher_token_ids").write_parquet(tmp_path / "shards" / "part-00000.parquet")
    with pytest.raises(ValueError, match="share one tokenizer"):
        tokenize_corpus(tmp_path, tokenizer, eval_holdout=0, kd=True, log=lambda *_: None)


def confident_teacher_folder(tokenizer, folder: Path) -> Path:
    """A tiny chat model saved as a model folder (SmolLM2's tokenizer and chat template), its logits
    sharpened so that what it predicts depends clearly on the context it is given."""
    teacher = tiny_lm(tokenizer, 3)
    with torch.no_grad():
        teacher.model.norm.weight.mul_(40.0)
    teacher.generation_config.eos_token_id = tokenizer.eos_token_id
    teacher.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def kl_per_token(corpus: Path, tokenizer, model) -> float:
    """Mean top-k KL(teacher ‖ model) over the teacher positions, each predicted in the context the
    trainer's tokenized corpus gives it (`tokenize_corpus` with kd, then the trainer's KD loss)."""
    from datamill.train.data import tokenize_corpus

    split = tokenize_corpus(corpus, tokenizer, eval_holdout=0, kd=True, log=lambda *_: None)["train"]
    head = model.get_output_embeddings().weight
    total, count = 0.0, 0.0
    for a, b in zip(split.doc_offsets[:-1], split.doc_offsets[1:]):
        ids = torch.tensor(split.tokens[a:b].astype(np.int64))[None]
        logprobs = torch.from_numpy(np.array(split.teacher_logprobs[a + 1:b]))
        weights = torch.isfinite(logprobs).any(-1).float()
        with torch.no_grad():
            hidden = model.base_model(input_ids=ids).last_hidden_state[0, :-1]
            total += float(topk_kd_loss(hidden, head, torch.from_numpy(np.array(split.teacher_ids[a + 1:b])).long(),
                                        logprobs, weights))
        count += float(weights.sum())
    assert count > 0
    return total / count


def test_student_equal_to_teacher_has_zero_kl_in_the_context_distill_stored(tokenizer, tmp_path):
    """distill (rationale instruction, system message, the chat template) stores the teacher's
    context; the trainer conditions the student on exactly it, so student == teacher gives KL ≈ 0.
    The bare prompt text (what the trainer used before) gives a clearly positive KL."""
    from datamill.synth.distill import DistillParams, DistillStage
    from datamill.synth.generation import GeneratorSpec, SamplingParams

    teacher = confident_teacher_folder(tokenizer, tmp_path / "teacher")
    stage = DistillStage(DistillParams(
        generator=GeneratorSpec(model=str(teacher), device="cpu", batch_size=4), rationale=True,
        system="You answer questions about villages.", format="prompt_completion",
        sampling=SamplingParams(temperature=0, max_new_tokens=12, logprobs=5)))
    stage.setup()
    out = stage.score(pl.DataFrame({"id": [str(i) for i in range(8)], "source": ["t"] * 8, "text": PROMPTS[:8]}))
    assert out["teacher_prompt_ids"].list.len().min() > out["prompt"].str.len_chars().max() // 8
    assert out["teacher_messages"].list.len().to_list() == [2] * 8  # the system message and the asked turn
    (tmp_path / "stored" / "shards").mkdir(parents=True)
    out.write_parquet(tmp_path / "stored" / "shards" / "part-00000.parquet")
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    assert kl_per_token(tmp_path / "stored", tokenizer, student) < 1e-3
    # a backend that reports no prompt ids: the stored chat, rendered by the same template, is the same context
    (tmp_path / "rendered" / "shards").mkdir(parents=True)
    out.drop("teacher_prompt_ids").write_parquet(tmp_path / "rendered" / "shards" / "part-00000.parquet")
    assert kl_per_token(tmp_path / "rendered", tokenizer, student) < 1e-3
    # the bare prompt text as context: the student predicts in another context than the teacher scored
    (tmp_path / "bare" / "shards").mkdir(parents=True)
    out.drop("teacher_prompt_ids", "teacher_messages").write_parquet(tmp_path / "bare" / "shards" / "part-00000.parquet")
    assert kl_per_token(tmp_path / "bare", tokenizer, student) > 0.1
