"""The judge's `method: logprobs` (G-Eval-style expected scores from answer-token probabilities):
the arithmetic on a scripted scorer, the pairwise swap rule, up-front refusal of generators that
cannot score, the cache, the transformers backend's trie scoring against brute force on a tiny
random model, the openai backend's top_logprobs reading against a stub server, and one real
SmolLM2-135M smoke run."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import polars as pl
import pytest
import torch

from datamill.synth.backends.choice_scoring import deepest_nodes, exact_logps, score_choices
from datamill.synth.backends.openai import BackendCapabilityError, OpenAIGenerator
from datamill.synth.cache import CachedGenerator
from datamill.synth.generation import GeneratorSpec, SamplingParams
from datamill.synth.judge import JudgeParams, JudgeStage, check_choice_scoring, compare, rate

from scripted_generator import ScriptedGenerator, one_torch_thread  # noqa: F401


class ScriptedScorer(ScriptedGenerator):
    """A ScriptedGenerator that also answers `score_choices` with `probs(prompt, choices, prefix)` (probabilities)."""

    def __init__(self, probs, model_id: str = "scripted-scorer"):
        super().__init__(lambda text, k, params: "unused", model_id)
        self.probs = probs
        self.scored: list[tuple[str, tuple[str, ...], str]] = []

    def score_choices(self, chats, choices, prefix=""):
        out = []
        for chat in chats:
            self.scored.append((chat[-1]["content"], tuple(choices), prefix))
            out.append([math.log(p) if p > 0 else -math.inf for p in self.probs(chat[-1]["content"], choices, prefix)])
        return out


def response_of(text: str) -> str:
    return text.split("[Response]\n")[1].split("\n\nReply with")[0]


def rating_probs(text, choices, prefix):
    """Half the mass spread evenly; the other half on 8 for long answers, on 2 for short ones; none for 'blank'."""
    response = response_of(text)
    if response == "blank":
        return [0.0] * len(choices)
    peak = 8 if len(response.split()) > 3 else 2
    return [0.5 / len(choices) + (0.5 if k == peak else 0.0) for k in range(1, len(choices) + 1)]


def test_expected_rating_is_the_probability_weighted_mean_and_every_reply_gets_one():
    scorer = ScriptedScorer(rating_probs)
    table = rate(scorer, ["Say hi.", "Describe rain.", "Describe snow."],
                 ["Hi.", "Water falls from clouds in drops.", "blank"], ["helpfulness", "honesty"], 10,
                 SamplingParams(), method="logprobs")
    # half the mass uniform over 1..10 (mean 5.5), half on the peak
    assert table["judge_helpfulness"].to_list() == pytest.approx([0.5 * 5.5 + 0.5 * 2, 0.5 * 5.5 + 0.5 * 8, None])
    assert table["judge_score"].to_list()[:2] == pytest.approx([3.75, 6.75])
    assert table["judge_failures"].to_list() == [0, 0, 2]  # no probability on any rating: a failure
    assert table["judge_rating_mass"].to_list() == pytest.approx([1.0, 1.0, 0.0])
    assert {(c, p) for _, c, p in scorer.scored} == {(tuple(f" {k}" for k in range(1, 11)), "Rating:")}
    assert len(scorer.asked) == 0  # nothing was generated


def test_judge_stage_with_logprobs_drops_only_replies_without_any_rating_probability():
    stage = JudgeStage(JudgeParams(method="logprobs", aspects=["helpfulness"], scale=5))
    stage.generator = ScriptedScorer(rating_probs)
    batch = pl.DataFrame({"id": ["a", "b", "c"], "prompt": ["Say hi.", "Describe rain.", "Describe snow."],
                          "completion": ["Hi.", "Water falls from clouds in drops.", "blank"]})
    out = stage.process(batch)
    assert out["_drop_reason"].to_list() == [None, None, "judge_unparsed"]
    assert out["judge_score"].to_list()[:2] == pytest.approx([0.5 * 3 + 0.5 * 2, 0.5 * 3 + 0.1 * 1 + 0.1 * 2
                                                               + 0.1 * 3 + 0.1 * 4 + 0.1 * 5 + 0 * 8])


def verdict_probs(bias: float):
    """P(A), P(B), P(C): the longer answer wins by 0.4, plus `bias` towards whichever sits in slot A."""
    def probs(text, choices, prefix):
        assert prefix == "[[" and list(choices) == ["A", "B", "C"] and "Output your verdict first" in text
        a = text.split("Assistant A's Answer]\n")[1].split("\n[The End")[0]
        b = text.split("Assistant B's Answer]\n")[1].split("\n[The End")[0]
        p_a = 0.45 + (0.2 if len(a) > len(b) else -0.2) + bias
        return [p_a, 0.9 - p_a, 0.1]
    return probs


@pytest.mark.parametrize("bias,verdicts", [(0.0, ["b", "a"]), (0.25, ["inconsistent", "inconsistent"])])
def test_pairwise_logprob_verdicts_must_survive_the_swap(bias, verdicts):
    table = compare(ScriptedScorer(verdict_probs(bias)), ["Describe rain.", "Say hi."],
                    ["Rain.", "Hello there, nice to meet you!"], ["Water falls from clouds in drops.", "Hi."],
                    SamplingParams(), method="logprobs")
    assert table["judge_verdict"].to_list() == verdicts
    # P(response_a wins), averaged over both orders: the slot bias cancels out
    assert table["judge_p_a"].to_list() == pytest.approx([0.25, 0.65])


def test_a_generator_that_cannot_score_is_refused_up_front(tmp_path):
    with pytest.raises(ValueError, match="method logprobs needs a generator .* or method: generate"):
        check_choice_scoring(ScriptedGenerator(lambda *a: "Rating: 5"), "judge")
    cached = CachedGenerator(ScriptedGenerator(lambda *a: "x"), tmp_path)
    assert not hasattr(cached, "score_choices")  # the cache passes on only what its backend can do


def test_scores_are_cached_like_generations(tmp_path):
    scorer = ScriptedScorer(rating_probs)
    cached = CachedGenerator(scorer, tmp_path)
    chats = [[{"role": "user", "content": f"[Response]\n{r}\n\nReply with"}] for r in ("Hi.", "blank")]
    first = cached.score_choices(chats, ["1", "2", "3"], "Rating:")
    again = cached.score_choices(chats, ["1", "2", "3"], "Rating:")
    assert first == again and first[1] == [-math.inf] * 3
    assert len(scorer.scored) == 2 and cached.tally.cache_hits == 2
    cached.score_choices(chats[:1], ["1", "2"], "Rating:")  # other choices: another entry
    assert len(scorer.scored) == 3


def test_preference_pairs_ranks_samples_by_logprob_ratings():
    from datamill.synth.preference import PreferencePairsParams, PreferencePairsStage

    samples = ["Rain.", "Water falls from clouds in drops.", "Wet.", "blank"]
    stage = PreferencePairsStage(PreferencePairsParams(scorer="judge", format="standard",
                                                       judge={"aspects": ["overall"], "method": "logprobs"}))
    stage.generator = ScriptedGenerator(lambda text, k, params: samples[k], "policy")
    stage.judge = ScriptedScorer(rating_probs)
    out = stage.process(pl.DataFrame({"id": ["r0"], "prompt": ["Describe rain."]}))
    row = out.row(0, named=True)
    assert row["chosen"] == samples[1] and row["rejected"] == "Rain."  # ties broken by sample order
    assert row["chosen_score"] == pytest.approx(6.75) and row["n_scored"] == 3  # "blank" got no rating


# ---------------------------------------------------------------------------------------------
# the transformers backend: trie scoring against brute force


def test_choice_trie_needs_one_row_per_deepest_node_and_takes_longer_choices_out():
    paths = [(5, 1), (5, 2), (5, 1, 0)]  # " 1", " 2", " 10" as SmolLM2 splits them
    assert deepest_nodes(paths) == [(5, 1)]
    lp = lambda d: torch.log(torch.tensor(d))  # noqa: E731
    dist = {(): lp([0.1, 0.1, 0.1, 0.1, 0.1, 0.5]), (5,): lp([0.2, 0.5, 0.3]), (5, 1): lp([0.4, 0.6])}
    got = exact_logps(paths, dist)
    assert got == pytest.approx([math.log(0.5 * 0.5 * 0.6), math.log(0.5 * 0.3), math.log(0.5 * 0.5 * 0.4)])


def test_transformers_choice_scores_equal_brute_force_and_do_not_depend_on_batching():
    from transformers import AutoModelForCausalLM

    from datamill.train.model import load_tokenizer
    from datamill.train.presets import llama_config

    tokenizer = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    config = llama_config("llama-20m", len(tokenizer), {"hidden_size": 32, "intermediate_size": 64,
                                                         "num_hidden_layers": 1, "num_attention_heads": 2,
                                                         "num_key_value_heads": 1}, {})
    model = AutoModelForCausalLM.from_config(config).eval()
    prompts = ["Question: is the sky blue?\nRating:", "Rate it.\nRating:"]
    choices = [f" {k}" for k in range(1, 11)]
    batched = score_choices(model, tokenizer, prompts, choices, batch_size=8, device="cpu")
    alone = [score_choices(model, tokenizer, [p], choices, batch_size=1, device="cpu")[0] for p in prompts]
    np.testing.assert_allclose(batched, alone, atol=1e-4)
    for prompt, row in zip(prompts, batched):
        base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            def logp(ids):  # Σ log P(ids after the context) by a plain full forward
                logits = model(torch.tensor([ids])).logits[0].log_softmax(-1)
                return sum(float(logits[t - 1, ids[t]]) for t in range(len(base), len(ids))), logits[-1]
            one, after_one = logp(tokenizer(prompt + " 1", add_special_tokens=False)["input_ids"])
            ten, _ = logp(tokenizer(prompt + " 10", add_special_tokens=False)["input_ids"])
            seven, _ = logp(tokenizer(prompt + " 7", add_special_tokens=False)["input_ids"])
        zero = tokenizer("0", add_special_tokens=False)["input_ids"][0]
        assert row[9] == pytest.approx(ten, abs=1e-4) and row[6] == pytest.approx(seven, abs=1e-4)
        assert row[0] == pytest.approx(one + math.log(1 - math.exp(float(after_one[zero]))), abs=1e-4)


# ---------------------------------------------------------------------------------------------
# the openai backend: top_logprobs of one token


class LogprobServer(ThreadingHTTPServer):
    """Answers every chat completion with one token and fixed top_logprobs (or none)."""

    def __init__(self, top: list[dict] | None):
        super().__init__(("127.0.0.1", 0), LogprobHandler)
        self.top = top
        self.bodies: list[dict] = []


class LogprobHandler(BaseHTTPRequestHandler):
    server: LogprobServer

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)
        choice = {"index": 0, "message": {"role": "assistant", "content": "7"}, "finish_reason": "length"}
        if self.server.top is not None:
            choice["logprobs"] = {"content": [{"token": "7", "logprob": -0.5, "top_logprobs": self.server.top}]}
        data = json.dumps({"choices": [choice]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def logprob_server():
    servers = []

    def start(top):
        server = LogprobServer(top)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server, OpenAIGenerator(GeneratorSpec(backend="openai", model="m", max_retries=0,
                                                     base_url=f"http://127.0.0.1:{server.server_port}/v1"))
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_openai_backend_reads_top_logprobs_and_refuses_what_it_cannot_tell_apart(logprob_server):
    top = [{"token": "7", "logprob": math.log(0.5)}, {"token": " 7", "logprob": math.log(0.2)},
           {"token": "8", "logprob": math.log(0.1)}, {"token": "Great", "logprob": math.log(0.1)}]
    server, backend = logprob_server(top)
    chat = [{"role": "user", "content": "Rate it."}]
    [row] = backend.score_choices([chat], [f" {k}" for k in range(1, 10)], "Rating:")
    assert row[6] == pytest.approx(math.log(0.7)) and row[7] == pytest.approx(math.log(0.1))
    assert row[0] == -math.inf
    body = server.bodies[-1]
    assert body["messages"][-1] == {"role": "assistant", "content": "Rating:"} and body["continue_final_message"]
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
    with pytest.raises(BackendCapabilityError, match="'1' and '10' start alike.*scale up to 9"):
        backend.score_choices([chat], [f" {k}" for k in range(1, 11)], "Rating:")
    stage = JudgeStage(JudgeParams(method="logprobs", aspects=["helpfulness"], scale=9))
    check_choice_scoring(backend, stage.name, "absolute", 9)  # what setup runs: passes here

    _, silent = logprob_server(None)  # a server that returns no logprobs: refused at setup
    with pytest.raises(BackendCapabilityError, match="returned no top_logprobs.*method: generate"):
        check_choice_scoring(silent, "judge", "pairwise")


# ---------------------------------------------------------------------------------------------
# the real built-in model


@pytest.mark.usefixtures("one_torch_thread")
def test_smoke_smollm2_logprob_judge_scores_every_answer():
    """SmolLM2-135M never writes a parsable "Rating: N"; by log-probs every answer gets a finite
    score in [1, 10]. It is no judge, though: on obvious pairs its expected ratings are at chance
    or worse (bench/RESULTS.md), and it does not rate the right answer first here, which the test
    reports as an expected failure (and passes once a model or template fixes it)."""
    from datamill.synth.backends.hf import TransformersGenerator

    generator = TransformersGenerator(GeneratorSpec(model="smollm2-135m", batch_size=4))
    question = "What is the capital of France?"
    answers = ["The capital of France is Paris.", "I cannot answer that.", " ".join(["the"] * 30)]
    table = rate(generator, [question] * 3, answers, ["helpfulness"], 10, SamplingParams(), method="logprobs")
    scores, mass = table["judge_score"].to_list(), table["judge_rating_mass"].to_list()
    assert all(s is not None and math.isfinite(s) and 1 <= s <= 10 for s in scores)
    assert all(0.01 < m <= 1 for m in mass)  # it does put probability on the ratings
    assert table["judge_failures"].to_list() == [0, 0, 0] and len(set(scores)) == 3
    if scores[0] != max(scores):
        pytest.xfail(f"SmolLM2-135M rates the right answer {scores[0]:.2f}, below a refusal ({scores[1]:.2f}) or "
                     f"a run of 'the' ({scores[2]:.2f}): a 135M model does not judge")
