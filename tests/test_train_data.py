"""Training data: tokenizing a corpus, packing documents into rows, loss masks, weights, data order,
and the chunked cross-entropy (CPU, a two-layer model, SmolLM2's tokenizer)."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
import torch

from datamill.train import loss as loss_module
from datamill.train.config import ModelConfig
from datamill.train.data import PackedRows, rows_for_step, tokenize_corpus
from datamill.train.loss import linear_cross_entropy
from datamill.train.model import LossModel, attention_mask_for, build_model, load_tokenizer

from conftest import make_documents

TINY = {"preset": "llama-20m", "overrides": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                            "num_attention_heads": 4, "num_key_value_heads": 2}}

QA = [
    ("What do farmers do before a storm?", "They move their cattle to higher ground.", 1.0),
    ("When does the baker start work?", "At four in the morning, so the bread is warm by seven.", 2.0),
    ("Why does the ferry stop?", "It does not run when the fog is thick over the estuary.", 0.5),
    ("What did the students plant?", "A row of oak trees along the edge of the playground.", 1.0),
    ("What opened at the museum?", "A new room about the history of printing.", 3.0),
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def tiny_lm(tokenizer):
    return build_model(ModelConfig(**TINY), tokenizer, "sdpa", seed=0).eval()


def write_shard(folder, frame: pl.DataFrame):
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    frame.write_parquet(folder / "shards" / "part-00000.parquet")
    return folder


def test_text_corpus_is_cached_as_uint16_tokens_with_eos_between_documents(tmp_path, tokenizer):
    docs = make_documents(30)
    corpus = write_shard(tmp_path / "run", pl.DataFrame({"text": docs}))
    splits = tokenize_corpus(corpus, tokenizer, eval_holdout=0.1, seed=3, log=lambda *a: None)
    train, held = splits["train"], splits["eval"]
    assert (train.n_docs, held.n_docs) == (27, 3)
    assert train.tokens.dtype == np.uint16  # SmolLM2's 49k vocabulary fits
    first = train.tokens[train.doc_offsets[0]:train.doc_offsets[1]].tolist()
    assert first[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(first[:-1]) in docs
    cache = next((corpus / "tokens").iterdir())
    stamp = (cache / "meta.json").stat().st_mtime_ns
    again = tokenize_corpus(corpus, tokenizer, eval_holdout=0.1, seed=3, log=lambda *a: None)
    assert (cache / "meta.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    assert np.array_equal(again["train"].tokens, train.tokens)
    tokenize_corpus(corpus, tokenizer, eval_holdout=0.2, seed=3, log=lambda *a: None)
    assert len(list((corpus / "tokens").iterdir())) == 2  # other options → another cache


def test_packed_rows_restart_positions_and_never_predict_across_documents(tmp_path, tokenizer):
    corpus = write_shard(tmp_path, pl.DataFrame({"text": make_documents(12)}))
    split = tokenize_corpus(corpus, tokenizer, eval_holdout=0, log=lambda *a: None)["train"]
    rows = PackedRows(split, seq_len=64)
    batch = rows.batch(np.arange(rows.n_rows))
    for r in range(rows.n_rows):
        start = r * 64
        for d in range(split.n_docs):
            doc_start = int(split.doc_offsets[d])
            if start < doc_start < start + 64:  # a document starting inside this row
                col = doc_start - start
                assert batch.position_ids[r, col] == 0
                assert batch.doc_ids[r, col] == batch.doc_ids[r, col - 1] + 1
                assert batch.learned[r, col - 1] == 0  # EOS of the previous document predicts nothing
        assert batch.position_ids[r, 0] == 0  # a row's first (partial) document restarts too
    # every target that is learned is the next token of the same document
    assert batch.learned.sum() == split.n_tokens - split.n_docs


def test_document_b_logits_do_not_change_when_document_a_is_perturbed(tiny_lm):
    torch.manual_seed(0)
    doc_a, doc_b = torch.randint(100, 40000, (20,)), torch.randint(100, 40000, (25,))
    input_ids = torch.cat([doc_a, doc_b])[None]
    doc_ids = torch.tensor([[0] * 20 + [1] * 25])
    position_ids = torch.cat([torch.arange(20), torch.arange(25)])[None]
    mask = attention_mask_for(doc_ids, "sdpa")

    def logits(ids):
        with torch.no_grad():
            return tiny_lm(input_ids=ids, position_ids=position_ids, attention_mask=mask).logits[0]

    before = logits(input_ids)
    perturbed = input_ids.clone()
    perturbed[0, 3:15] = torch.randint(100, 40000, (12,))
    after = logits(perturbed)
    assert not torch.allclose(before[:20], after[:20])  # the perturbation matters to A
    torch.testing.assert_close(before[20:], after[20:], rtol=0, atol=1e-5)  # and never reaches B
    alone = tiny_lm(input_ids=doc_b[None]).logits[0].detach()
    torch.testing.assert_close(before[20:], alone, rtol=1e-4, atol=1e-4)  # B packed = B on its own


def test_packed_completion_only_weighted_loss_equals_a_manual_per_document_computation(tmp_path, tokenizer, tiny_lm):
    frame = pl.DataFrame({"prompt": [q for q, _, _ in QA], "completion": [" " + a for _, a, _ in QA],
                          "weight": [w for _, _, w in QA]})
    split = tokenize_corpus(write_shard(tmp_path, frame), tokenizer, eval_holdout=0, log=lambda *a: None)["train"]
    rows = PackedRows(split, seq_len=256)
    assert rows.n_rows == 1  # all five examples share one row
    batch = rows.batch(np.array([0])).to_torch("cpu")
    mask = attention_mask_for(batch["doc_ids"], "sdpa")
    with torch.no_grad():
        packed = LossModel(tiny_lm)(batch["input_ids"], batch["position_ids"], mask, batch["targets"], batch["weights"])
    packed = packed / batch["learned"].sum()

    total, count = 0.0, 0
    for question, answer, weight in QA:  # each example alone, loss by hand on its completion + EOS
        prompt = tokenizer(question, add_special_tokens=False)["input_ids"]
        completion = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logits = tiny_lm(input_ids=ids).logits[0]
        first = len(prompt) - 1  # the position whose next token is the completion's first
        ce = torch.nn.functional.cross_entropy(logits[first:-1], ids[0, first + 1:], reduction="sum")
        total += weight * ce.item()
        count += len(completion)
    assert packed.item() == pytest.approx(total / count, rel=1e-4)


def test_train_on_prompt_learns_every_token_but_each_documents_first(tmp_path, tokenizer):
    frame = pl.DataFrame({"prompt": [q for q, _, _ in QA], "completion": [a for _, a, _ in QA]})
    corpus = write_shard(tmp_path, frame)
    only = tokenize_corpus(corpus, tokenizer, eval_holdout=0, log=lambda *a: None)["train"]
    both = tokenize_corpus(corpus, tokenizer, eval_holdout=0, train_on_prompt=True, log=lambda *a: None)["train"]
    assert np.array_equal(only.tokens, both.tokens)
    assert both.loss_mask.sum() == both.n_tokens > only.loss_mask.sum()
    assert PackedRows(both, 512).batch(np.array([0])).learned.sum() == both.n_tokens - both.n_docs


def test_chat_messages_learn_only_the_assistant_replies(tmp_path, tokenizer):
    conversation = [{"role": "user", "content": "Name a tree that grows by the playground."},
                    {"role": "assistant", "content": "An oak tree."},
                    {"role": "user", "content": "And what do bees make?"},
                    {"role": "assistant", "content": "Bees make honey."}]
    corpus = write_shard(tmp_path, pl.DataFrame({"messages": [conversation]}))
    split = tokenize_corpus(corpus, tokenizer, eval_holdout=0, log=lambda *a: None)["train"]
    tokens, learned = np.asarray(split.tokens), np.asarray(split.loss_mask).astype(bool)
    assert tokenizer.decode(tokens) == tokenizer.apply_chat_template(conversation, tokenize=False)
    assert tokenizer.decode(tokens[learned]) == "An oak tree.<|im_end|>\nBees make honey.<|im_end|>\n"


def test_token_keep_masks_tokens_and_must_match_the_tokenizer(tmp_path, tokenizer):
    text = "The river rose overnight and flooded the low fields near the old mill."
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    keep = [1] * (n // 2) + [0] * (n - n // 2)
    corpus = write_shard(tmp_path / "ok", pl.DataFrame({"text": [text, text], "token_keep": [keep, None]}))
    split = tokenize_corpus(corpus, tokenizer, eval_holdout=0, log=lambda *a: None)["train"]
    assert split.loss_mask[:n + 1].tolist() == keep + [1]  # the appended EOS stays learned
    assert split.loss_mask[n + 1:].tolist() == [1] * (n + 1)  # no mask: every token kept
    bad = write_shard(tmp_path / "bad", pl.DataFrame({"text": [text], "token_keep": [[1, 0, 1]]}))
    with pytest.raises(ValueError, match="record 0: token_keep has 3 entries"):
        tokenize_corpus(bad, tokenizer, eval_holdout=0, log=lambda *a: None)


def test_data_order_is_the_same_for_one_process_accumulating_and_two_processes():
    for step in range(4):
        one = np.concatenate([rows_for_step(10, step, m, 0, 1, 3, 2, seed=5) for m in range(2)])
        two = np.concatenate([rows_for_step(10, step, 0, r, 2, 3, 1, seed=5) for r in range(2)])
        assert one.tolist() == two.tolist()
    epoch = np.concatenate([rows_for_step(12, s, 0, 0, 1, 4, 1, seed=1) for s in range(3)])
    assert sorted(epoch.tolist()) == list(range(12))  # one epoch visits every row once


def test_a_staged_mix_trains_phase_zero_rows_before_the_annealing_rows(tmp_path, tokenizer):
    docs = make_documents(40)
    phases = [1 if i % 4 == 0 else 0 for i in range(40)]  # the annealing share is spread through the file
    corpus = tmp_path / "mixed"
    (corpus / "shards").mkdir(parents=True)
    pl.DataFrame({"text": docs[:20], "phase": phases[:20]}).write_parquet(corpus / "shards" / "part-00000.parquet")
    pl.DataFrame({"text": docs[20:]}).write_parquet(corpus / "shards" / "part-00001.parquet")  # no column: phase 0
    messages = []
    split = tokenize_corpus(corpus, tokenizer, eval_holdout=0, log=messages.append)["train"]
    assert "phases [0, 1]" in messages[0]
    annealing = {d for d, p in zip(docs[:20], phases[:20]) if p == 1}
    last = [tokenizer.decode(split.tokens[split.doc_offsets[d]:split.doc_offsets[d + 1] - 1])
            for d in range(split.n_docs - len(annealing), split.n_docs)]
    assert set(last) == annealing and split.doc_phases.tolist() == [0] * 35 + [1] * 5

    rows = PackedRows(split, seq_len=16)
    (boundary,) = rows.phase_starts[1:]
    for epoch in range(2):  # each epoch: every phase-0 row, shuffled, then every phase-1 row
        order = np.concatenate([rows_for_step(rows.n_rows, s, 0, 0, 1, 1, 1, seed=2, phase_starts=rows.phase_starts)
                                for s in range(epoch * rows.n_rows, (epoch + 1) * rows.n_rows)])
        assert sorted(order[:boundary].tolist()) == list(range(boundary))
        assert sorted(order[boundary:].tolist()) == list(range(boundary, rows.n_rows))
        assert order[:boundary].tolist() != list(range(boundary))  # shuffled within the phase
    tail = tokenizer.decode(rows.batch(np.arange(boundary, rows.n_rows)).input_ids.ravel())
    found = set(re.findall(r"Note (\d+)\.", tail))
    assert found <= {"0", "4", "8", "12", "16"} and len(found) >= 4  # phase-1 rows hold only annealing text

    bad = write_shard(tmp_path / "bad", pl.DataFrame({"text": docs[:2], "phase": ["late", "early"]}))
    with pytest.raises(ValueError, match="column 'phase' must hold whole numbers"):
        tokenize_corpus(bad, tokenizer, eval_holdout=0, log=lambda *a: None)


def test_chunked_cross_entropy_matches_autograd_on_full_logits(monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_TOKENS", 7)  # several chunks, the last one short
    torch.manual_seed(0)
    hidden = torch.randn(30, 16, dtype=torch.float64, requires_grad=True)
    head = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (30,))
    weights = torch.rand(30, dtype=torch.float64) * (torch.rand(30) > 0.3)
    ours = linear_cross_entropy(hidden, head, targets, weights)
    ours.backward()
    grads = hidden.grad.clone(), head.grad.clone()
    hidden.grad = head.grad = None
    reference = (torch.nn.functional.cross_entropy(hidden @ head.T, targets, reduction="none") * weights).sum()
    reference.backward()
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], head.grad)
