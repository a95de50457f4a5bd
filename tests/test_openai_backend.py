"""The openai backend against a local OpenAI-compatible server answering with the real SmolLM2."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from datamill.synth.backends.hf import TransformersGenerator
from datamill.synth.backends.openai import BackendCapabilityError, OpenAIGenerator, RateLimiter
from datamill.synth.generation import GeneratorSpec, SamplingParams

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour of the sky."}],
    [{"role": "user", "content": "Why do bakers start work early in the morning?"}],
]


class ChatServer(ThreadingHTTPServer):
    """/v1/chat/completions backed by a TransformersGenerator; the first request gets a 503."""

    def __init__(self, backend: TransformersGenerator):
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.backend = backend
        self.lock = threading.Lock()
        self.statuses: list[int] = []
        self.bodies: list[dict] = []
        self.ignore_n = False  # as llama.cpp's server: one choice whatever n is
        self.token_strings = False  # as llama.cpp's server: logprob tokens as text, return_tokens_as_token_ids ignored


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            first = not self.server.statuses
            self.server.bodies.append(body)
            if first or self.path != "/v1/chat/completions" or body.get("model") != "smollm2":
                status = 503 if first else 404
                self.server.statuses.append(status)
                return self._send(status, {"error": {"message": "warming up" if first else "no such model"}})
            params = SamplingParams(
                max_new_tokens=body["max_tokens"], temperature=body["temperature"], top_p=body["top_p"],
                n=1 if self.server.ignore_n else body["n"], seed=body["seed"], stop=body.get("stop") or [],
                logprobs=body.get("top_logprobs") if body.get("logprobs") else None)
            [completions] = self.server.backend.generate([body["messages"]], params)
            self.server.statuses.append(200)
        choices = []
        for i, c in enumerate(completions):
            choice = {"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason}
            if c.topk_ids is not None:  # as vLLM: the sampled tokens, end-of-sequence included, as ids
                ended_by_eos = c.num_tokens > len(c.token_ids)
                sampled = c.token_ids + [self.server.backend.tokenizer.eos_token_id] * ended_by_eos
                choice["stop_reason"] = None if ended_by_eos or c.finish_reason == "length" else body["stop"][0]
                name = ((lambda t: self.server.backend.tokenizer.decode([t])) if self.server.token_strings
                        else (lambda t: f"token_id:{t}"))
                choice["logprobs"] = {"content": [
                    {"token": name(token), "logprob": dict(zip(ids, lps)).get(token, -9999.0),
                     "top_logprobs": [{"token": name(t), "logprob": lp} for t, lp in zip(ids, lps)]}
                    for token, ids, lps in zip(sampled, c.topk_ids, c.topk_logprobs)]}
            choices.append(choice)
        usage = {"completion_tokens": sum(c.num_tokens for c in completions)}
        self._send(200, {"object": "chat.completion", "choices": choices, "usage": usage})

    def _send(self, status: int, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def backend():
    torch.set_num_threads(1)
    return TransformersGenerator(GeneratorSpec(batch_size=4, device="cpu"))


@pytest.fixture
def server(backend):
    httpd = ChatServer(backend)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def client(server, **options) -> OpenAIGenerator:
    spec = {"backend": "openai", "model": "smollm2", "base_url": f"http://127.0.0.1:{server.server_port}/v1",
            "max_concurrency": 3, **options}
    return OpenAIGenerator(GeneratorSpec(**spec))


def test_completions_match_the_local_model_after_a_retried_503(server, backend, monkeypatch):
    monkeypatch.setattr("datamill.synth.backends.openai.BACKOFF_BASE_S", 0.05)
    params = SamplingParams(max_new_tokens=6, temperature=0, stop=["\n"])
    remote = client(server).generate(CHATS, params)
    assert remote == backend.generate(CHATS, params)  # in input order although requests ran concurrently
    assert server.statuses.count(503) == 1 and server.statuses.count(200) == len(CHATS)
    assert "Paris" in remote[0][0].text
    sent = server.bodies[-1]
    assert sent["max_tokens"] == 6 and sent["stop"] == ["\n"] and sent["seed"] == 0 and "logprobs" not in sent


def test_n_samples_seed_and_top_logprobs_as_token_ids(server, backend):
    params = SamplingParams(max_new_tokens=4, temperature=1.0, n=2, seed=11, logprobs=2)
    [[a, b]] = client(server, max_retries=2).generate(CHATS[:1], params)
    [[local_a, local_b]] = backend.generate(CHATS[:1], params)
    assert (a.text, b.text) == (local_a.text, local_b.text)
    assert a.topk_ids == local_a.topk_ids and len(a.topk_ids) == a.num_tokens
    assert (a.token_ids, b.token_ids) == (local_a.token_ids, local_b.token_ids)  # what was sampled, not the top-1
    assert all(len(row) == 2 for row in a.topk_logprobs)
    assert server.bodies[-1]["top_logprobs"] == 2 and server.bodies[-1]["return_tokens_as_token_ids"] is True


def test_generated_token_ids_come_back_without_the_end_of_sequence_token(server, backend):
    chat = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    params = SamplingParams(max_new_tokens=24, temperature=0.0, logprobs=2)
    [[remote]] = client(server, max_retries=2).generate([chat], params)
    [[local]] = backend.generate([chat], params)
    assert remote.finish_reason == "stop" and remote.num_tokens == len(remote.token_ids) + 1  # ended by EOS
    assert remote.token_ids == local.token_ids and backend.tokenizer.decode(remote.token_ids) == remote.text
    stop = SamplingParams(max_new_tokens=24, temperature=0.0, logprobs=2, stop=["Paris"])
    [[cut]] = client(server, max_retries=2).generate([chat], stop)
    assert cut.text == "The capital of France is " and cut.finish_reason == "stop"
    assert cut.token_ids is None  # after a stop string the server's ids run past the text


def test_client_errors_fail_at_once_naming_the_chat(server):
    server.statuses.append(200)  # skip the warm-up 503
    with pytest.raises(RuntimeError, match=r"chat 0: .* refused the request \(HTTP 404"):
        client(server, model="gpt-unknown").generate(CHATS[:1], SamplingParams(max_new_tokens=2))
    assert len(server.bodies) == 1  # no retries for a 404


def test_connection_errors_are_retried_then_reported(monkeypatch):
    monkeypatch.setattr("datamill.synth.backends.openai.BACKOFF_BASE_S", 0.01)
    spec = GeneratorSpec(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", max_retries=2)
    with pytest.raises(RuntimeError, match=r"chat 0: .* failed after 3 attempts \(connection error"):
        OpenAIGenerator(spec).generate(CHATS[:1], SamplingParams(max_new_tokens=2))


def test_rate_limiter_spaces_requests():
    limiter = RateLimiter(per_second=50)
    start = time.monotonic()
    threads = [threading.Thread(target=limiter.acquire) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start >= 5 / 50 - 0.005


def test_a_server_that_ignores_n_gets_single_requests_once_detected(server, backend, caplog):
    server.statuses.append(200)  # skip the warm-up 503
    server.ignore_n = True
    params = SamplingParams(max_new_tokens=3, temperature=1.0, n=3, seed=2)
    generator = client(server)
    with caplog.at_level("WARNING", logger="datamill.synth.backends.openai"):
        rows = generator.generate(CHATS[:1], params)  # detected on the first reply, without a probe
        again = generator.generate(CHATS[1:2], params)
    assert [len(r) for r in rows + again] == [3, 3] and generator.single_requests
    assert len({c.text for c in rows[0]}) > 1  # each sample its own seed, not three copies
    assert sum("single requests" in r.message for r in caplog.records) == 1  # logged once per run
    singles = [b for b in server.bodies if b["n"] == 1]
    assert len(singles) == 6 and len(server.bodies) == 6 + 1  # one n=3 request, then single ones
    assert client(server).generate(CHATS[:1], params) == rows[:1]  # deterministic


def test_probe_detects_both_gaps_up_front(server):
    server.statuses.append(200)
    server.ignore_n, server.token_strings = True, True
    kd = SamplingParams(max_new_tokens=8, temperature=0.7, n=2, logprobs=3)
    with pytest.raises(BackendCapabilityError, match="no token ids.*missing_token_ids: text_only"):
        client(server).probe(kd)
    assert len(server.bodies) == 1  # one request, not one per record
    text_only = client(server, missing_token_ids="text_only")
    text_only.probe(kd)
    assert text_only.single_requests and text_only.text_only_reason
    [[a, b]] = text_only.generate(CHATS[:1], kd)
    assert a.topk_ids is None and b.topk_ids is None and a.text and "logprobs" not in server.bodies[-1]


def test_distill_stops_at_setup_when_the_server_gives_no_token_ids(server):
    from datamill.synth.distill import DistillParams, DistillStage

    server.statuses.append(200)
    server.token_strings = True
    spec = GeneratorSpec(backend="openai", model="smollm2", base_url=f"http://127.0.0.1:{server.server_port}/v1")
    stage = DistillStage(DistillParams(generator=spec, sampling=SamplingParams(max_new_tokens=8, logprobs=3)))
    with pytest.raises(BackendCapabilityError, match="return_tokens_as_token_ids"):
        stage.setup()
    assert len(server.bodies) == 1
