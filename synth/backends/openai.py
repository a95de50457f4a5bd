"""The openai generation backend: any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang, OpenAI…).

One request per chat (asking for all `n` samples at once), sent from a thread pool of
`max_concurrency` workers over one shared httpx client, spaced to at most `requests_per_second`.
429, 5xx and connection errors are retried up to `max_retries` times with exponential backoff
(honouring a `Retry-After` header); any other error fails at once, naming the chat.

Top-k logprobs (for distillation) need token ids, which the OpenAI API gives as strings; the
request asks for `return_tokens_as_token_ids` (a vLLM extension: tokens come back as
"token_id:<id>"), and a server that answers with plain token strings is reported as unsupported.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from datamill.synth.generation import Chat, Completion, GeneratorSpec, SamplingParams, cut_at_stop, validate_chats

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
TOKEN_ID_PREFIX = "token_id:"


class RateLimiter:
    """Spaces calls to `acquire` at least 1/rate seconds apart, across threads."""

    def __init__(self, per_second: float | None):
        self.interval = 1.0 / per_second if per_second else 0.0
        self.next_at = 0.0
        self.lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            wait = self.next_at - now
            self.next_at = max(now, self.next_at) + self.interval
        if wait > 0:
            time.sleep(wait)


class OpenAIGenerator:
    """Generator over an OpenAI-compatible chat-completions endpoint."""

    def __init__(self, spec: GeneratorSpec):
        import httpx

        self.spec = spec
        self.url = spec.base_url.rstrip("/") + "/chat/completions"  # type: ignore[union-attr]
        self.model_id = f"openai:{spec.model}@{spec.base_url}"
        key = os.environ.get(spec.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(600.0, connect=10.0),
                                   limits=httpx.Limits(max_connections=spec.max_concurrency))
        self.limiter = RateLimiter(spec.requests_per_second)

    def generate(self, chats: list[Chat], params: SamplingParams) -> list[list[Completion]]:
        chats = validate_chats(chats)
        with ThreadPoolExecutor(max_workers=self.spec.max_concurrency) as pool:
            return list(pool.map(lambda i: self._one(i, chats[i], params), range(len(chats))))

    def request_body(self, chat: Chat, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.spec.model, "messages": chat, "max_tokens": params.max_new_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "n": params.n, "seed": params.seed,
        }
        if params.stop:
            body["stop"] = params.stop
        if params.top_k is not None:
            body["top_k"] = params.top_k  # vLLM/SGLang extension
        if params.logprobs is not None:
            body.update(logprobs=True, top_logprobs=params.logprobs, return_tokens_as_token_ids=True)
        return body

    def _one(self, index: int, chat: Chat, params: SamplingParams) -> list[Completion]:
        reply = self._post(index, self.request_body(chat, params))
        choices = sorted(reply.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != params.n:
            raise RuntimeError(f"chat {index}: {self.url} returned {len(choices)} choices for n={params.n}")
        total = (reply.get("usage") or {}).get("completion_tokens")
        return [self._completion(index, choice, params, total) for choice in choices]

    def _post(self, index: int, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        for attempt in range(self.spec.max_retries + 1):
            self.limiter.acquire()
            retry_after = None
            try:
                response = self.client.post(self.url, json=body)
            except httpx.TransportError as error:
                problem = f"connection error: {error!r}"
            else:
                if response.status_code == 200:
                    return response.json()
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in RETRY_STATUS:
                    raise RuntimeError(f"chat {index}: {self.url} refused the request ({problem})")
                retry_after = _seconds(response.headers.get("retry-after"))
            if attempt == self.spec.max_retries:
                break
            time.sleep(retry_after if retry_after is not None else min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt))
        raise RuntimeError(f"chat {index}: {self.url} failed after {self.spec.max_retries + 1} attempts ({problem})")

    def _completion(self, index: int, choice: dict[str, Any], params: SamplingParams, total: int | None) -> Completion:
        text = (choice.get("message") or {}).get("content") or ""
        cut = cut_at_stop(text, params.stop)  # servers exclude stop strings already; this is a safety net
        finish = "length" if choice.get("finish_reason") == "length" and cut is None else "stop"
        text = text if cut is None else text[:cut]
        content = (choice.get("logprobs") or {}).get("content")
        if params.logprobs is None or content is None:
            if params.logprobs is not None:
                raise RuntimeError(f"chat {index}: {self.url} returned no logprobs although they were requested")
            num_tokens = len(content) if content is not None else (total or 0) // params.n
            return Completion(text, finish, num_tokens)
        ids = [[_token_id(index, alt["token"]) for alt in step["top_logprobs"]] for step in content]
        logprobs = [[float(alt["logprob"]) for alt in step["top_logprobs"]] for step in content]
        sampled = [step.get("token") for step in content]
        token_ids = [_token_id(index, t) for t in sampled] if all(isinstance(t, str) for t in sampled) else None
        if token_ids and choice.get("finish_reason") == "stop":
            # vLLM lists the end-of-sequence token too (stop_reason None); after a stop string
            # (stop_reason = the string) which ids make up the text is unknown
            ended_by_eos = choice.get("stop_reason") is None and cut is None
            token_ids = token_ids[:-1] if ended_by_eos else None
        return Completion(text, finish, len(content), ids, logprobs, token_ids)


def _token_id(index: int, token: str) -> int:
    if not token.startswith(TOKEN_ID_PREFIX):
        raise RuntimeError(
            f"chat {index}: the server returned logprob tokens as strings ({token!r}), not ids; top-k logprobs "
            "for distillation need a server that supports return_tokens_as_token_ids (e.g. vLLM)")
    return int(token[len(TOKEN_ID_PREFIX):])


def _seconds(value: str | None) -> float | None:
    try:
        return min(BACKOFF_MAX_S, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None
