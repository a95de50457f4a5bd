"""Model-based selection scores with the real SmolLM2-135M on CPU: scoring glue, rho, IFD, learnability."""

from __future__ import annotations

import inspect
import json
import textwrap

import numpy as np
import polars as pl
import pytest
import torch

from conftest import SENTENCES, make_documents, recipe_dict
from datamill.curate.executors.run import run_recipe
from datamill.curate.models.resolve import load_causal_lm
from datamill.curate.engine.recipe import validate_recipe
from datamill.curate.selection.ifd import IFDParams, IFDSelect
from datamill.curate.selection.lobass import Learnability, LearnabilityParams
from datamill.curate.selection.rho import RhoParams, RhoScore
from datamill.curate.selection.scoring import encode_records, record_losses
from datamill.curate.engine.stage import DROP_REASON, POSITION
from datamill.train import train
from datamill.train.data import tokenize_corpus

PAIRS = [  # (instruction, response): the instruction either determines the response or is unrelated to it
    ("Repeat this sentence exactly: The river rose overnight and flooded the low fields.",
     "The river rose overnight and flooded the low fields."),
    ("Repeat this sentence exactly: Her grandmother kept bees and sold the honey.",
     "Her grandmother kept bees and sold the honey."),
    ("What is the capital of France?", "The baker starts work at four so that the bread is warm by seven."),
    ("Name a prime number.", "Students planted a row of oak trees along the edge of the playground."),
]


@pytest.fixture(scope="module")
def smollm():
    torch.set_num_threads(1)
    return load_causal_lm("smollm2-135m", device="cpu")


def hf_loss(model, ids: list[int], first_learned: int) -> float:
    """Plain transformers loss of ids[first_learned:] given what comes before."""
    tensor = torch.tensor([ids])
    labels = tensor.clone()
    labels[0, :first_learned] = -100
    with torch.inference_mode():
        return model(tensor, labels=labels).loss.item()


def test_completion_loss_given_prompt_and_alone_match_a_plain_forward(smollm):
    model, tokenizer = smollm
    batch = pl.DataFrame({"prompt": [p for p, _ in PAIRS], "completion": [c for _, c in PAIRS]})
    encoded = encode_records(tokenizer, batch, "prompt_completion")
    given = record_losses(model, tokenizer, encoded, max_tokens=128, batch_tokens=64)
    alone = record_losses(model, tokenizer, encoded, max_tokens=128, batch_tokens=64, response_only=True)
    for i, (prompt, completion) in enumerate(PAIRS):
        p_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        c_ids = tokenizer(completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        assert given.tokens[i] == len(c_ids)
        assert given.mean_loss[i] == pytest.approx(hf_loss(model, p_ids + c_ids, len(p_ids)), abs=1e-4)
        assert alone.mean_loss[i] == pytest.approx(hf_loss(model, c_ids, 1), abs=1e-4)


def test_chat_scores_only_the_assistant_reply(smollm):
    model, tokenizer = smollm
    reply = "The ferry does not run when the fog is thick."
    chat = [{"role": "user", "content": "Does the ferry run in fog?"}, {"role": "assistant", "content": reply}]
    encoded = encode_records(tokenizer, pl.DataFrame({"messages": [chat]}), "messages")
    learned_text = tokenizer.decode(np.asarray(encoded.ids[0])[encoded.learned[0]])
    assert learned_text.startswith(reply) and "user" not in learned_text
    losses = record_losses(model, tokenizer, encoded, max_tokens=256, batch_tokens=256)
    assert losses.tokens[0] == encoded.learned[0].sum()


def test_ifd_ranks_helpful_instructions_low_and_drops_unhelpful_ones(smollm):
    stage = IFDSelect(IFDParams(budget={"count": 1}))
    stage.model, stage.tokenizer = smollm
    batch = pl.DataFrame({"prompt": [p for p, _ in PAIRS], "completion": [c for _, c in PAIRS]})
    batch = batch.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(POSITION))
    summary = stage.summarize(batch)
    ifd = summary["ifd"].to_numpy()
    assert ifd[:2].max() < 0.5  # the instruction spells the response out
    assert ifd[2:].min() > 0.8  # the instruction says nothing about the response
    assert np.allclose(ifd, summary["ifd_cond_loss"] / summary["ifd_direct_loss"])

    one_shard = stage.reduce(summary.lazy())
    shuffled = stage.reduce(pl.concat([summary[2:], summary[:1], summary[1:2]]).lazy())
    assert one_shard.equals(shuffled)  # the ranking depends on scores and positions, not on shard order
    reasons = dict(zip(one_shard[POSITION], one_shard[DROP_REASON]))
    kept = [pos for pos, reason in reasons.items() if reason is None]
    assert len(kept) == 1 and ifd[kept[0]] == max(v for v in ifd if v < 1)
    assert all(reasons[i] == "ifd_too_high" for i in range(4) if ifd[i] >= 1)


def test_ifd_refuses_plain_text_with_a_clear_error(smollm):
    stage = IFDSelect(IFDParams())
    stage.model, stage.tokenizer = smollm
    with pytest.raises(ValueError, match="stage 'ifd'.*none of the columns"):
        stage.summarize(pl.DataFrame({"text": ["Hello there."], POSITION: [0]}))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny llama trained from scratch on English notes (the target model), and a fine-tune sample of
    stdlib docstrings (a domain it has not seen)."""
    root = tmp_path_factory.mktemp("tiny")
    notes = root / "notes"
    notes.mkdir()
    pl.DataFrame({"text": make_documents(60)}).write_parquet(notes / "part-0.parquet")
    tiny = {"preset": "llama-20m", "overrides": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                                "num_attention_heads": 4, "num_key_value_heads": 2}}
    result = train({"data": {"path": str(notes), "eval_holdout": 0.0}, "model": tiny, "out_dir": str(root / "base"),
                    "seq_len": 64, "micro_batch_size": 4, "max_steps": 30, "eval_every": 0, "progress": False,
                    "tensorboard": False, "optim": {"lr": 3e-3, "warmup_steps": 3}})
    docs = [textwrap.dedent(inspect.getdoc(obj) or "")[:400] for obj in
            (json.dumps, json.loads, textwrap.dedent, textwrap.wrap, textwrap.fill, textwrap.indent,
             inspect.getdoc, inspect.signature, inspect.getsource, np.array, str.split, str.join)]
    sample = root / "sample"
    sample.mkdir()
    pl.DataFrame({"text": docs[:8]}).write_parquet(sample / "part-0.parquet")
    return result.final_dir, sample, docs[:8]


def test_learnability_is_higher_for_the_domain_the_short_finetune_covers(tiny_models, tmp_path, monkeypatch):
    base, sample, sample_docs = tiny_models
    monkeypatch.setenv("DATAMILL_CACHE", str(tmp_path / "cache"))
    params = LearnabilityParams(model=str(base), max_tokens=64,
                                finetune={"data": str(sample), "steps": 12, "lr": 3e-3, "seq_len": 64,
                                          "micro_batch_size": 4})
    stage = Learnability(params)
    stage.setup()
    notes = SENTENCES[:4]
    scored = stage.process(pl.DataFrame({"text": sample_docs + notes}))
    learn = scored["learnability"].to_numpy()
    assert learn[: len(sample_docs)].mean() > learn[len(sample_docs):].mean() + 0.1  # the data it was tuned on
    assert np.allclose(learn, (scored["loss_before"] - scored["loss_after"]) / scored["loss_before"])
    assert scored[DROP_REASON].null_count() == scored.height
    cached = list((tmp_path / "cache" / "learnability").glob("*/final/config.json"))
    assert len(cached) == 1  # a second worker reuses this fine-tune
    with pytest.raises(ValueError, match="exactly one of finetuned"):
        LearnabilityParams(model=str(base))


def test_rho1_token_keep_matches_the_trainer_tokens_and_keeps_the_top_fraction(tiny_models, smollm, tmp_path):
    base, _, _ = tiny_models
    stage = RhoScore(RhoParams(model=str(base), reference="smollm2-135m", token_fraction=0.25, max_tokens=64))
    stage.model, stage.tokenizer = load_causal_lm(str(base), device="cpu")
    stage.reference = smollm[0]
    texts = SENTENCES[:3] + ["Note 7. " + " ".join(SENTENCES[3:6])]
    scored = stage.process(pl.DataFrame({"text": texts}))
    tokenizer = stage.tokenizer
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        keep = scored["token_keep"][i].to_list()
        assert len(keep) == len(ids)
        scored_tokens = len(ids)  # every token after the first, plus the EOS the trainer appends
        assert scored["rho_tokens"][i] == scored_tokens
        body_scored = len(ids) - 1  # the appended EOS has no entry in token_keep: it is always learned
        assert sum(not k for k in keep) == body_scored - int(np.ceil(0.25 * body_scored))
        with_eos = ids + [tokenizer.eos_token_id]
        expected = hf_loss(stage.model, with_eos, 1) - hf_loss(stage.reference, with_eos, 1)
        assert scored["rho"][i] == pytest.approx(expected, abs=1e-4)
    assert (scored["rho"] > 0).all()  # a 2-layer model trained for seconds is worse than SmolLM2 everywhere

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    scored.select("text", "token_keep").write_parquet(corpus / "part-0.parquet")
    tokens = tokenize_corpus(corpus, tokenizer, eval_holdout=0.0, log=lambda *a: None)
    learned = int(np.asarray(tokens["train"].loss_mask).sum())
    assert learned == sum(sum(k) + 1 for k in scored["token_keep"].to_list())  # kept tokens + each EOS


def test_rho_recipe_runs_and_drops_below_min_rho(tmp_path):
    rows = [{"text": t} for t in SENTENCES[:4]]
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "part0.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    stages = [{"type": "rho", "model": "smollm2-135m", "reference": "smollm2-135m", "min_rho": 0.5, "max_tokens": 32}]
    recipe = validate_recipe(recipe_dict(str(tmp_path / "raw" / "*.jsonl"), str(tmp_path / "out"), stages))
    stats = run_recipe(recipe, workers=1)
    assert stats["stages"][0]["dropped"] == {"rho_too_low": 4}  # same model twice: zero excess loss everywhere
