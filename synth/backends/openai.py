"""The openai generation backend: any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang, OpenAI…).

One request per chat (asking for all `n` samples at once), sent from a thread pool of
`max_concurrency` workers over one shared httpx client, spaced to at most `requests_per_second`.
429, 5xx and connection errors are retried up to `max_retries` times with exponential backoff
(honouring a `Retry-After` header); any other error fails at once, naming the chat.

Top-k logprobs (for distillation) need token ids, which the OpenAI API gives as strings; the
request asks for `return_tokens_as_token_ids` (a vLLM extension: tokens come back as
"token_id:<id>").

Servers differ in what they honour (llama.cpp's server returns one choice whatever `n` is, and
plain token strings). `probe(params)` asks once, before any record, with a two-token request: a
server that ignores `n` gets `n` single requests per chat from then on (seeded per sample; also
switched to, once and logged, when a later reply has too few choices); a server without token ids
either makes `probe` raise `BackendCapabilityError` (one clear message, the run stops) or, with
`generator.missing_token_ids: text_only`, is asked for text only (no top-k, logged, and
`text_only_reason` says why for the report).

`score_choices` (the judge's `method: logprobs`) reads one token's `top_logprobs`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from datamill.synth.generation import (
    Chat, Completion, GeneratorSpec, OnCompletion, SamplingParams, cut_at_stop, row_seed, validate_chats,
)

log = logging.getLogger(__name__)

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


class BackendCapabilityError(RuntimeError):
    """The server cannot do what the run asks (not a problem of one record): the run stops."""


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
        self.single_requests = False
        """True once the server was seen to ignore `n`: each sample is its own request."""
        self.text_only_reason: str | None = None
        """Why top-k logprobs are not asked for (the server gives no token ids), when so."""
        self.lock = threading.Lock()

    def probe(self, params: SamplingParams) -> None:
        """One two-token request with `params`' `n` and logprobs: switch to single requests when the
        server ignores `n`; when it returns no token ids, raise BackendCapabilityError, or (with
        `missing_token_ids: text_only`) ask for text only from then on."""
        chat = [{"role": "user", "content": "Say OK."}]
        small = params.model_copy(update={"max_new_tokens": 2, "stop": []})
        reply = self._post(-1, self.request_body(chat, small))
        choices = reply.get("choices") or []
        if params.n > 1 and len(choices) < params.n:
            self._go_single(len(choices), params.n)
        if params.logprobs is not None and choices and not _has_token_ids(choices[0]):
            message = (f"{self.url} returns no token ids with its logprobs (it ignores return_tokens_as_token_ids), "
                       "so its top-k log-probabilities cannot be used for distillation; serve the teacher with vLLM, "
                       "or set generator.missing_token_ids: text_only to generate text without KD logprobs")
            if self.spec.missing_token_ids != "text_only":
                raise BackendCapabilityError(message)
            self.text_only_reason = message
            log.warning("%s: generating text only", message)

    def _go_single(self, got: int, n: int) -> None:
        with self.lock:
            if not self.single_requests:
                self.single_requests = True
                log.warning("%s returned %d choice(s) for n=%d: sending %d single requests per chat from now on",
                            self.url, got, n, n)

    def generate(self, chats: list[Chat], params: SamplingParams,
                 on_completion: OnCompletion | None = None) -> list[list[Completion]]:
        chats = validate_chats(chats)
        if self.text_only_reason is not None:
            params = params.model_copy(update={"logprobs": None})

        def one(i: int) -> list[Completion]:
            row = self._one(i, chats[i], params)
            for s, completion in enumerate(row):
                if on_completion is not None:
                    on_completion(i, s, completion)
            return row

        with ThreadPoolExecutor(max_workers=self.spec.max_concurrency) as pool:
            return list(pool.map(one, range(len(chats))))

    def score_choices(self, chats: list[Chat], choices: list[str], prefix: str = "") -> list[list[float]]:
        """log P of each choice as the reply's next token after `prefix`, read from the server's
        `top_logprobs` (20) of one generated token; a choice outside them is -inf. Tokens are matched
        by their text without surrounding spaces, so choices must differ in their first token ("1" and
        "10" cannot be told apart: use a rating scale up to 9). A prefix is sent as the start of the
        assistant's reply with vLLM's `continue_final_message`. A server that returns no logprobs
        raises BackendCapabilityError."""
        chats = validate_chats(chats)
        wanted = [c.strip() for c in choices]
        clash = next(((a, b) for a in wanted for b in wanted if a != b and b.startswith(a)), None)
        if clash is not None:
            raise BackendCapabilityError(
                f"{self.url}: choices {clash[0]!r} and {clash[1]!r} start alike, and an OpenAI-compatible server "
                "only gives the first token's top_logprobs; use a rating scale up to 9 (judge scale: 9) or the "
                "transformers backend")

        def one(i: int) -> list[float]:
            messages = chats[i] + ([{"role": "assistant", "content": prefix}] if prefix else [])
            body: dict[str, Any] = {"model": self.spec.model, "messages": messages, "max_tokens": 1, "temperature": 0.0,
                                    "n": 1, "seed": 0, "logprobs": True, "top_logprobs": 20}
            if prefix:
                body.update(continue_final_message=True, add_generation_prompt=False)
            reply = self._post(i, body)
            content = (((reply.get("choices") or [{}])[0].get("logprobs")) or {}).get("content")
            if not content or not content[0].get("top_logprobs"):
                raise BackendCapabilityError(
                    f"{self.url} returned no top_logprobs, so answer probabilities cannot be read; use "
                    "method: generate, the transformers backend, or a server that returns logprobs (vLLM, OpenAI)")
            found: dict[str, float] = {}
            for alt in content[0]["top_logprobs"]:
                key = str(alt.get("token", "")).strip()
                found[key] = _logaddexp(found.get(key, -math.inf), float(alt["logprob"]))
            return [found.get(c, -math.inf) for c in wanted]

        with ThreadPoolExecutor(max_workers=self.spec.max_concurrency) as pool:
            return list(pool.map(one, range(len(chats))))

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
        if params.n > 1 and self.single_requests:
            return self._singles(index, chat, params)
        reply = self._post(index, self.request_body(chat, params))
        choices = sorted(reply.get("choices") or [], key=lambda c: c.get("index", 0))
        if 0 < len(choices) < params.n:
            self._go_single(len(choices), params.n)
            return self._singles(index, chat, params)
        if len(choices) != params.n:
            raise RuntimeError(f"chat {index}: {self.url} returned {len(choices)} choices for n={params.n}")
        total = (reply.get("usage") or {}).get("completion_tokens")
        return [self._completion(index, choice, params, total, reply) for choice in choices]

    def _singles(self, index: int, chat: Chat, params: SamplingParams) -> list[Completion]:
        """`n` requests of one sample each, sample s seeded from (chat, s, seed)."""
        out = []
        for s in range(params.n):
            single = params.model_copy(update={"n": 1, "seed": row_seed(chat, s, params.seed) & 0x7FFFFFFF})
            out += self._one(index, chat, single)
        return out

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

    def _completion(self, index: int, choice: dict[str, Any], params: SamplingParams, total: int | None,
                    reply: dict[str, Any]) -> Completion:
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
        prompt_ids = reply.get("prompt_token_ids")  # vLLM with return_token_ids
        return Completion(text, finish, len(content), ids, logprobs, token_ids,
                          [int(t) for t in prompt_ids] if isinstance(prompt_ids, list) else None)


def _logaddexp(a: float, b: float) -> float:
    top = max(a, b)
    return top if top == -math.inf else top + math.log(math.exp(a - top) + math.exp(b - top))


def _has_token_ids(choice: dict[str, Any]) -> bool:
    content = (choice.get("logprobs") or {}).get("content")
    return bool(content) and all(str(step.get("token", "")).startswith(TOKEN_ID_PREFIX) for step in content)


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
