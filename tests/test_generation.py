"""Generation with the transformers backend (real SmolLM2 on CPU) and the content-addressed cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from datamill.synth import cache as cache_module
from datamill.synth import generation
from datamill.synth.backends.hf import SeededSampler, TransformersGenerator
from datamill.synth.cache import CachedGenerator
from datamill.synth import factory
from datamill.synth.factory import make_generator
from datamill.synth.generation import GeneratorSpec, SamplingParams

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
CHATS = [
    FRANCE,
    [{"role": "user", "content": "Write one sentence about a lighthouse keeper."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour of the sky."}],
    [{"role": "user", "content": "Why do bakers start work early in the morning?"}],
]


@pytest.fixture(scope="module")
def backend():
    torch.set_num_threads(1)  # busy shared cores: OpenMP threads waiting on each other are slower than one
    return TransformersGenerator(GeneratorSpec(batch_size=4, device="cpu"))


class Counting:
    """Wraps a backend and records every chat it is asked to generate; can fail on a given call."""

    def __init__(self, inner, fail_on_call: int | None = None):
        self.inner, self.model_id = inner, inner.model_id
        self.calls: list[list] = []
        self.fail_on_call = fail_on_call

    def generate(self, chats, params):
        self.calls.append(chats)
        if self.fail_on_call == len(self.calls):
            raise KeyboardInterrupt("killed mid-run")
        return self.inner.generate(chats, params)

    @property
    def chats_generated(self) -> int:
        return sum(len(c) for c in self.calls)


def test_greedy_matches_plain_generate_and_answers(backend):
    params = SamplingParams(max_new_tokens=8, temperature=0)
    [[completion]] = backend.generate([FRANCE], params)
    tok, model = backend.tokenizer, backend.model
    prompt = tok.apply_chat_template(FRANCE, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        plain = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    expected = tok.decode(plain[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert completion.text == expected and "Paris" in completion.text
    assert backend.model_id == "transformers:smollm2-135m-instruct@float32"


def test_finish_reasons_stop_strings_and_token_counts(backend):
    [[short]] = backend.generate([FRANCE], SamplingParams(max_new_tokens=3, temperature=0))
    assert short.finish_reason == "length" and short.num_tokens == 3
    [[stopped]] = backend.generate([FRANCE], SamplingParams(max_new_tokens=8, temperature=0, stop=[" is"]))
    assert stopped.finish_reason == "stop" and " is" not in stopped.text
    assert stopped.text and "The capital of France is Paris".startswith(stopped.text)
    assert stopped.num_tokens < 8


def test_sampling_is_seeded_per_sample_and_independent_of_batch_neighbours(backend):
    params = SamplingParams(max_new_tokens=6, temperature=1.0, n=2, seed=7)
    together = backend.generate(CHATS, params)
    alone = backend.generate([CHATS[2]], params)
    assert alone[0] == together[2]  # same samples whether batched with 3 other chats or alone
    texts = [c.text for row in together for c in row]
    assert len(set(texts)) > len(CHATS)  # samples of one chat differ from each other
    other_seed = backend.generate(CHATS[2:], params.model_copy(update={"seed": 8}))
    assert other_seed[0] != together[2]


def test_top_k_logprobs_are_the_models_own_distribution(backend):
    params = SamplingParams(max_new_tokens=5, temperature=0, logprobs=3)
    [[c]] = backend.generate([FRANCE], params)
    assert len(c.topk_ids) == len(c.topk_logprobs) == c.num_tokens == 5
    ids = np.array(c.topk_ids)
    logprobs = np.array(c.topk_logprobs)
    assert ids.shape == (5, 3) and np.all(np.diff(logprobs, axis=1) <= 0) and np.all(logprobs <= 0)
    tok, model = backend.tokenizer, backend.model
    assert tok.decode(ids[:, 0].tolist(), skip_special_tokens=True) == c.text  # greedy = top-1 each step
    prompt = tok.apply_chat_template(FRANCE, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    full = torch.cat([prompt["input_ids"], torch.from_numpy(ids[:, 0].copy())[None]], dim=1)
    with torch.inference_mode():
        logits = model(full).logits[0, prompt["input_ids"].shape[1] - 1: -1].log_softmax(-1)
    top = logits.topk(3, dim=-1)
    assert np.array_equal(top.indices.numpy(), ids)
    np.testing.assert_allclose(top.values.numpy(), logprobs, atol=1e-3)


def test_seeded_sampler_draws_from_the_tempered_filtered_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    rows = 4000
    scores = probs.log().repeat(rows, 1)
    prompt = torch.zeros(rows, 3, dtype=torch.long)

    def frequencies(**options):
        sampler = SeededSampler(list(range(rows)), 3, device="cpu", **options)
        picked = sampler(prompt, scores.clone()).argmax(-1)
        return np.bincount(picked.numpy(), minlength=4) / rows

    np.testing.assert_allclose(frequencies(temperature=1.0, top_p=1.0, top_k=None), probs.numpy(), atol=0.03)
    np.testing.assert_allclose(frequencies(temperature=1.0, top_p=1.0, top_k=2), [0.625, 0.375, 0, 0], atol=0.03)
    np.testing.assert_allclose(frequencies(temperature=1.0, top_p=0.7, top_k=None), [0.625, 0.375, 0, 0], atol=0.03)
    sharp = probs.pow(2) / probs.pow(2).sum()  # temperature 0.5 squares the probabilities
    np.testing.assert_allclose(frequencies(temperature=0.5, top_p=1.0, top_k=None), sharp.numpy(), atol=0.03)


def test_bad_chats_and_params_fail_with_clear_messages(backend):
    with pytest.raises(ValueError, match=r"chat 1 message 0: field 'role'"):
        backend.generate([FRANCE, [{"role": "bot", "content": "hi"}]], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match=r"chat 0 message 0: field 'content'"):
        backend.generate([[{"role": "user", "content": None}]], SamplingParams(max_new_tokens=2))
    with pytest.raises(pydantic.ValidationError, match="beams"):
        SamplingParams(beams=2)
    with pytest.raises(pydantic.ValidationError, match="base_url"):
        GeneratorSpec(backend="openai", model="m")
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        TransformersGenerator(GeneratorSpec(model="/nonexistent/missing.gguf"))


def test_cache_rerun_calls_the_backend_zero_times(backend, tmp_path):
    params = SamplingParams(max_new_tokens=4, temperature=1.0, n=2, seed=3)
    first = Counting(backend)
    results = CachedGenerator(first, tmp_path, chunk_chats=2).generate(CHATS, params)
    assert first.chats_generated == len(CHATS)
    files = sorted(tmp_path.rglob("*.json"))
    assert len(files) == len(CHATS) * 2 and not list(tmp_path.rglob("*.tmp"))
    assert json.loads(files[0].read_text())["finish_reason"] in ("stop", "length")
    second = Counting(backend)
    assert CachedGenerator(second, tmp_path).generate(CHATS, params) == results
    assert second.calls == []
    changed = Counting(backend)
    CachedGenerator(changed, tmp_path).generate(CHATS[:1], params.model_copy(update={"max_new_tokens": 5}))
    assert changed.chats_generated == 1  # other params are other entries


def test_killed_run_resumes_with_only_the_rest(backend, tmp_path):
    params = SamplingParams(max_new_tokens=4, temperature=0.8, seed=1)
    killed = Counting(backend, fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        CachedGenerator(killed, tmp_path / "cache", chunk_chats=2).generate(CHATS, params)
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 2  # the first chunk was kept
    resumed = Counting(backend)
    results = CachedGenerator(resumed, tmp_path / "cache", chunk_chats=2).generate(CHATS, params)
    assert resumed.calls == [CHATS[2:]]
    assert results == CachedGenerator(backend, tmp_path / "fresh").generate(CHATS, params)


def test_cache_write_is_atomic_and_more_samples_reuse_the_first(backend, tmp_path, monkeypatch):
    params = SamplingParams(max_new_tokens=3, temperature=1.0, seed=5)
    [[one]] = CachedGenerator(backend, tmp_path).generate([FRANCE], params)
    two = Counting(backend)
    [[first, second]] = CachedGenerator(two, tmp_path).generate([FRANCE], params.model_copy(update={"n": 2}))
    assert first == one and two.chats_generated == 1
    assert len(list(tmp_path.rglob("*.json"))) == 2

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.json, "dump", crash)
    with pytest.raises(OSError, match="disk full"):
        CachedGenerator(backend, tmp_path).generate([FRANCE], params.model_copy(update={"seed": 6}))
    assert len(list(tmp_path.rglob("*.json"))) == 2 and not list(tmp_path.rglob("*.tmp"))


def test_make_generator_caches_in_the_run_dir_unless_a_shared_cache_is_asked_for(backend, tmp_path, monkeypatch):
    monkeypatch.setattr(factory, "load_backend", lambda spec: backend)
    made = make_generator(GeneratorSpec(), tmp_path / "run")
    assert isinstance(made, CachedGenerator) and made.model_id == backend.model_id
    assert made.cache.folder == tmp_path / "run" / "state" / "generation_cache"
    explicit = make_generator(GeneratorSpec(cache_dir=str(tmp_path / "mine")), tmp_path / "run")
    assert explicit.cache.folder == Path(tmp_path / "mine")
    monkeypatch.setenv("DATAMILL_CACHE", str(tmp_path / "home"))
    assert make_generator(GeneratorSpec()) is backend  # outside a run, nothing is cached behind the user's back
    assert not (tmp_path / "home").exists()


def test_generation_does_not_import_the_cache():
    import ast

    tree = ast.parse(Path(generation.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any("cache" in name for name in imported)


def test_gguf_file_is_converted_once_into_the_cache(tmp_path, monkeypatch):
    from datamill.curate.models import resolve as models
    from datamill.synth.backends import hf

    monkeypatch.setenv("DATAMILL_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    calls = []

    def fake_convert(path, out_dir):
        calls.append(path)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    first = hf.cached_gguf_conversion(gguf)
    assert hf.cached_gguf_conversion(gguf) == first and calls == [gguf.resolve()]
    assert first.parent == tmp_path / "cache" / "models" and first.name.startswith("gguf-tiny-")
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_vllm_backend_generates_the_interface():
    pytest.importorskip("vllm", reason="vLLM is optional (pip install 'datamill[vllm]') and needs a GPU")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    from datamill.synth.backends.vllm import VLLMGenerator

    generator = VLLMGenerator(GeneratorSpec(backend="vllm", batch_size=8))
    params = SamplingParams(max_new_tokens=8, temperature=0.8, n=2, seed=1, logprobs=2)
    results = generator.generate(CHATS, params)
    assert [len(row) for row in results] == [2] * len(CHATS)
    assert generator.generate(CHATS[:1], params)[0] == results[0]  # per-chat seeds: same alone as batched
    c = results[0][0]
    assert c.finish_reason in ("stop", "length") and 0 < c.num_tokens <= 8
    assert len(c.topk_ids) == c.num_tokens and all(len(row) == 2 for row in c.topk_logprobs)


class Streaming:
    """A backend that reports each completion as it is done and is killed after `die_after` of them."""

    def __init__(self, inner, die_after: int | None = None):
        self.inner, self.model_id, self.die_after, self.done = inner, inner.model_id, die_after, 0

    def generate(self, chats, params, on_completion=None):
        rows = []
        for i, chat in enumerate(chats):
            [row] = self.inner.generate([chat], params)
            for s, completion in enumerate(row):
                on_completion(i, s, completion)
                self.done += 1
                if self.done == self.die_after:
                    raise KeyboardInterrupt("killed mid-chunk")
            rows.append(row)
        return rows


def test_each_completion_is_cached_as_it_arrives(backend, tmp_path):
    params = SamplingParams(max_new_tokens=4, temperature=0.8, seed=3)
    with pytest.raises(KeyboardInterrupt):  # one chunk of all chats, killed after 3 completions
        CachedGenerator(Streaming(backend, die_after=3), tmp_path, chunk_chats=64).generate(CHATS, params)
    assert len(list(tmp_path.rglob("*.json"))) == 3
    resumed = Counting(backend)
    cached = CachedGenerator(resumed, tmp_path)
    results = cached.generate(CHATS, params)
    assert resumed.calls == [CHATS[3:]]
    assert cached.tally.cache_hits == 3 and cached.tally.generated == 1 and cached.tally.tokens > 0
    # the transformers backend reports each completion when its batch is done, in the result's order
    seen = []
    direct = backend.generate(CHATS, params, on_completion=lambda c, s, completion: seen.append((c, s, completion)))
    assert sorted(seen, key=lambda x: x[:2]) == [(c, 0, row[0]) for c, row in enumerate(direct)] and direct == results
