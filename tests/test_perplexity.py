"""Batched LM scoring and the perplexity filter, with the real SmolLM2-135M on CPU."""

from __future__ import annotations

import random
import string

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from conftest import make_documents, recipe_dict, write_jsonl
from datamill.curate.executors.run import run_recipe
from datamill.curate.models.lm_scoring import length_sorted_batches, token_losses
from datamill.curate.models.resolve import load_causal_lm
from datamill.curate.engine.recipe import validate_recipe
from datamill.curate.engine.stage import DROP_REASON
from datamill.filters.perplexity import PerplexityFilter, PerplexityParams

FLUENT = (
    "The village library opens at nine every morning. Children come after school to borrow "
    "books, and older readers sit by the window with the newspapers."
)
SENTENCES = [
    "The river rose overnight and flooded the low fields near the old mill.",
    "Her grandmother kept bees and sold the honey at the Saturday market.",
    "Engineers measured the wind on the ridge for a whole year before building the turbines.",
    "Hello.",
]


def shuffled_words(text: str, seed: int = 0) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def junk_words(count: int, seed: int = 0) -> str:
    """Random lowercase letter strings of word length: what broken extraction or spam looks like."""
    rng = random.Random(seed)
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(count))


@pytest.fixture(scope="session")
def smollm():
    # one thread: on a machine whose cores are busy with other work, OpenMP threads waiting on
    # each other make a forward pass many times slower than a single thread
    torch.set_num_threads(1)
    return load_causal_lm("smollm2-135m", device="cpu")


def plain_loss(model, tokenizer, text: str) -> float:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        return model(ids, labels=ids).loss.item()


def test_chunked_batched_loss_equals_transformers_loss_per_document(smollm):
    model, tokenizer = smollm
    # batch_tokens=40 splits these four documents of different lengths over several padded batches;
    # chunk_tokens=5 pushes every batch through the output layer in several chunks
    scores = token_losses(model, tokenizer, SENTENCES, max_tokens=64, batch_tokens=40, chunk_tokens=5)
    expected = [plain_loss(model, tokenizer, text) for text in SENTENCES]
    np.testing.assert_allclose(scores.mean_loss, expected, atol=1e-4)
    assert scores.tokens.tolist() == [len(tokenizer(t).input_ids) - 1 for t in SENTENCES]
    one_batch = token_losses(model, tokenizer, SENTENCES, max_tokens=64)
    np.testing.assert_allclose(one_batch.mean_loss, scores.mean_loss, atol=1e-4)


def test_documents_are_cut_to_max_tokens(smollm):
    model, tokenizer = smollm
    long_text = " ".join(SENTENCES * 3)
    scores = token_losses(model, tokenizer, [long_text], max_tokens=16)
    assert scores.tokens.tolist() == [15]
    first_16 = tokenizer.decode(tokenizer(long_text).input_ids[:16])
    assert scores.mean_loss[0] == pytest.approx(plain_loss(model, tokenizer, first_16), abs=1e-4)


def test_prompt_tokens_are_masked_and_completion_loss_matches_manual(smollm):
    model, tokenizer = smollm
    prompt = "Question: What do bees make? Answer:"
    completion = " Bees make honey from the nectar of flowers."
    scores = token_losses(model, tokenizer, [completion], prompts=[prompt], per_token=True, chunk_tokens=3)
    prompt_ids = tokenizer(prompt).input_ids
    completion_ids = tokenizer(completion, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.inference_mode():
        logits = model(ids).logits[0].float()
    first = len(prompt_ids)
    manual = F.cross_entropy(logits[first - 1 : -1], ids[0, first:], reduction="none")
    assert scores.tokens.tolist() == [len(completion_ids)]
    np.testing.assert_allclose(scores.per_token[0], manual.numpy(), atol=1e-4)
    assert scores.mean_loss[0] == pytest.approx(manual.mean().item(), abs=1e-4)
    alone = token_losses(model, tokenizer, [completion]).mean_loss[0]
    assert abs(alone - scores.mean_loss[0]) > 0.1  # the prompt changes what the model expects


def test_fluent_text_has_far_lower_perplexity_than_shuffled_words_or_junk(smollm):
    model, tokenizer = smollm
    texts = [FLUENT, shuffled_words(FLUENT), junk_words(25)]
    fluent, shuffled, junk = token_losses(model, tokenizer, texts, max_tokens=64).perplexity
    assert fluent * 10 < shuffled
    assert fluent * 3 < junk


def test_unscorable_documents_get_nan_and_zero_tokens(smollm):
    model, tokenizer = smollm
    scores = token_losses(model, tokenizer, ["", "Hello", FLUENT], max_tokens=64)
    assert np.isnan(scores.mean_loss[:2]).all() and scores.tokens[:2].tolist() == [0, 0]
    assert np.isfinite(scores.mean_loss[2])


def test_length_sorted_batches_respect_the_token_budget_and_cover_every_row():
    lengths = np.array([5, 40, 12, 40, 3, 100, 7])
    batches = length_sorted_batches(lengths, batch_tokens=80)
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    assert [b.tolist() for b in batches] == [[5], [1, 3], [2, 6, 0, 4]]
    assert all(len(b) * lengths[b].max() <= 80 or len(b) == 1 for b in batches)


def scored_filter(smollm, **params) -> PerplexityFilter:
    stage = PerplexityFilter(PerplexityParams(max_tokens=64, **params))
    stage.model, stage.tokenizer = smollm  # what setup() loads, shared to keep the test fast
    return stage


def test_filter_drops_by_threshold_and_keeps_unscorable_rows(smollm):
    batch = pl.DataFrame({
        "id": ["fluent", "shuffled", "junk", "empty"],
        "text": [FLUENT, shuffled_words(FLUENT), junk_words(25), ""],
    })
    fluent_ppl = token_losses(*smollm, [FLUENT], max_tokens=64).perplexity[0]
    out = scored_filter(smollm, max_ppl=fluent_ppl * 3).process(batch)
    assert out["ppl"][0] == pytest.approx(fluent_ppl, rel=1e-4)
    assert out["ppl"][3] is None and out["ppl_tokens"].to_list()[3] == 0
    assert out[DROP_REASON].to_list() == [None, "perplexity_too_high", "perplexity_too_high", None]
    low = scored_filter(smollm, min_ppl=fluent_ppl * 3).process(batch)
    assert low[DROP_REASON].to_list() == ["perplexity_too_low", None, None, None]


def test_filter_needs_setup_and_ordered_bounds():
    with pytest.raises(RuntimeError, match="setup"):
        PerplexityFilter(PerplexityParams()).process(pl.DataFrame({"text": [FLUENT]}))
    with pytest.raises(ValueError, match="larger than"):
        PerplexityParams(min_ppl=50, max_ppl=10)


def test_recipe_with_perplexity_stage_drops_junk_documents(tmp_path):
    docs = make_documents(6)
    rows = [{"text": d} for d in docs] + [{"text": junk_words(30, seed=s)} for s in range(3)]
    write_jsonl(tmp_path / "raw" / "part0.jsonl", rows)
    stages = [{"type": "perplexity", "max_ppl": 300, "max_tokens": 64}]
    recipe = validate_recipe(recipe_dict(str(tmp_path / "raw" / "*.jsonl"), str(tmp_path / "out"), stages))
    stats = run_recipe(recipe, workers=1)
    corpus = pl.read_parquet(sorted((tmp_path / "out" / "shards").glob("*.parquet")))
    assert sorted(corpus["text"].to_list()) == sorted(docs)
    assert corpus["ppl"].max() < 300 and corpus["ppl_tokens"].min() > 10
    assert stats["stages"][0]["dropped"] == {"perplexity_too_high": 3}


def test_batch_tokens_default_follows_the_device_and_a_set_value_wins():
    from datamill.filters.perplexity import CPU_BATCH_TOKENS, PerplexityFilter, PerplexityParams

    assert PerplexityFilter().batch_tokens() == CPU_BATCH_TOKENS  # no model loaded: CPU
    assert PerplexityFilter(PerplexityParams(batch_tokens=100)).batch_tokens() == 100


def test_bfloat16_dtype_loads_the_model_in_bf16_and_scores_close_to_float32(smollm):
    model, tokenizer = smollm
    texts = [FLUENT, shuffled_words(FLUENT), junk_words(30)]
    stage = PerplexityFilter(PerplexityParams(dtype="bfloat16"))
    stage.setup()
    assert next(stage.model.parameters()).dtype == torch.bfloat16
    fast = stage.score(pl.DataFrame({"text": texts}))["ppl"].to_numpy()
    exact = np.exp(token_losses(model, tokenizer, texts, max_tokens=512).mean_loss)
    np.testing.assert_allclose(fast, exact, rtol=0.05)
    assert np.argsort(fast).tolist() == np.argsort(exact).tolist()  # the ranking a filter relies on is kept
    assert stage.facts() == {"scored_in_bfloat16": 1}  # the report says which precision scored
    from datamill.curate.models.resolve import cpu_has_native_bf16

    native = cpu_has_native_bf16() and not torch.cuda.is_available()  # auto: bf16 where the CPU computes it
    assert PerplexityParams().torch_dtype() == (torch.bfloat16 if native else None)
    assert PerplexityParams(dtype="float32").torch_dtype() == torch.float32
