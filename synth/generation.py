"""The one text-generation interface of datamill: sampling parameters, completions, generator specs.

Everything in `synth/` that needs a model to write text codes against `Generator.generate(chats,
params)`. A chat is an OpenAI-style message list (`[{"role": "user", "content": "..."}]`); the
result is one list of `params.n` completions per chat, in input order. Backends live in
`synth/backends/` (`transformers`, the embedded default; `vllm`; `openai` for any
OpenAI-compatible server) and are picked by name from a small table (`load_backend`). Wrapping a
backend in the content-addressed cache of `synth/cache.py` is done a layer above both modules, by
`synth/factory.py:make_generator`. Backends may also implement `score_choices` (the
`ChoiceScorer` capability): the log-probability of fixed answers at the start of the reply.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import pydantic

ROLES = ("system", "user", "assistant")


class SamplingParams(pydantic.BaseModel):
    """How to sample: the same fields mean the same thing on every backend."""

    model_config = pydantic.ConfigDict(extra="forbid")

    max_new_tokens: int = pydantic.Field(256, ge=1)
    temperature: float = pydantic.Field(0.7, ge=0.0, description="0 means greedy decoding.")
    top_p: float = pydantic.Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = pydantic.Field(None, ge=1)
    n: int = pydantic.Field(1, ge=1, description="Samples per chat.")
    seed: int = 0
    stop: list[str] = pydantic.Field(default_factory=list, description="Generation ends before any of these.")
    logprobs: int | None = pydantic.Field(
        None, ge=1, le=20, description="Return the top-k log-probabilities of every generated token (for KD).")

    @pydantic.field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, stop: list[str]) -> list[str]:
        if any(s == "" for s in stop):
            raise ValueError("stop strings must be non-empty")
        return stop


@dataclass(frozen=True)
class Completion:
    """One generated reply.

    `text` excludes the end-of-sequence token and any stop string (and what follows it).
    `num_tokens` counts the generated tokens that make up `text`, plus the end-of-sequence token
    when the model emitted one. With `logprobs`, `topk_ids[i]`/`topk_logprobs[i]` are the model's
    top-k next-token ids (its own vocabulary) and log-probabilities (of the untempered
    distribution) at generated position i, for i < num_tokens.
    `token_ids` are the generated token ids that make up `text` (without the end-of-sequence
    token; so `num_tokens` is `len(token_ids)`, plus 1 when the model emitted end-of-sequence),
    given with `logprobs` (like the top-k, for KD, which aligns on these instead of on a
    re-tokenization of the text) where the backend knows them, else None.
    `prompt_token_ids` are the token ids the model was conditioned on (the chat rendered by its
    chat template, generation prompt included), given with `logprobs` where the backend knows
    them: a KD student must be trained in exactly this context for the top-k to apply.
    """

    text: str
    finish_reason: str  # "stop" (end of sequence or a stop string) | "length" (max_new_tokens reached)
    num_tokens: int
    topk_ids: list[list[int]] | None = None
    topk_logprobs: list[list[float]] | None = None
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None


Chat = list[dict[str, str]]
OnCompletion = Callable[[int, int, "Completion"], None]
"""Called as `(chat index, sample index, completion)` as soon as a completion is done (the cache
writes it there, so a killed run keeps everything finished before the kill)."""


class Generator(Protocol):
    """Anything that turns chats into completions."""

    model_id: str
    """Stable identity of model + backend (+ dtype where it changes outputs): cache keys and output columns."""

    def generate(self, chats: list[Chat], params: SamplingParams,
                 on_completion: OnCompletion | None = None) -> list[list[Completion]]:
        """`params.n` completions per chat, in input order; deterministic for a fixed seed.
        `on_completion`, when given, is called for each completion as soon as it is done."""
        ...


class ChoiceScorer(Protocol):
    """A Generator that can also read how likely fixed answers are at the start of its reply (an
    optional capability: the transformers backend has it, the openai backend where the server
    returns logprobs). LLM judges use it to get a score from every reply (G-Eval's expected score)."""

    model_id: str

    def score_choices(self, chats: list[Chat], choices: list[str], prefix: str = "") -> list[list[float]]:
        """Per chat, log P(the assistant's reply, after `prefix`, is exactly each choice): one float
        per choice, -inf where the backend sees no probability for it. Deterministic."""
        ...


def choice_scorer(generator: Generator, who: str) -> ChoiceScorer:
    """`generator` if it can score choices, else a ValueError naming `who` and the way out."""
    if not callable(getattr(generator, "score_choices", None)):
        raise ValueError(f"{who}: method logprobs needs a generator that exposes answer log-probabilities "
                         f"({generator.model_id} does not); use the transformers backend, an OpenAI-compatible "
                         "server that returns logprobs, or method: generate")
    return generator  # type: ignore[return-value]


class GeneratorSpec(pydantic.BaseModel):
    """What recipes write under `generator:`."""

    model_config = pydantic.ConfigDict(extra="forbid")

    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str = pydantic.Field(
        "smollm2-135m",
        description="Built-in name, Hugging Face model folder or .gguf file; for openai the served model name.")
    batch_size: int = pydantic.Field(32, ge=1)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    device: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = pydantic.Field(8, ge=1)
    requests_per_second: float | None = pydantic.Field(None, gt=0)
    max_retries: int = pydantic.Field(5, ge=0)
    missing_token_ids: Literal["fail", "text_only"] = pydantic.Field(
        "fail", description="openai: a server that gives no token ids with logprobs (llama.cpp) stops the run "
                            "up front (fail), or is asked for text only, without KD logprobs (text_only).")
    cache_dir: str | None = pydantic.Field(
        None, description="A generation cache shared between runs (default: the run's own, "
                          "<run dir>/state/generation_cache, which --fresh discards).")

    @pydantic.model_validator(mode="after")
    def _openai_needs_url(self) -> GeneratorSpec:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("generator.base_url is required for the openai backend (e.g. http://localhost:8000/v1)")
        return self


BACKENDS: dict[str, str] = {
    "transformers": "datamill.synth.backends.hf:TransformersGenerator",
    "vllm": "datamill.synth.backends.vllm:VLLMGenerator",
    "openai": "datamill.synth.backends.openai:OpenAIGenerator",
}
"""Backend name → the class implementing it (imported only when picked: vllm is optional)."""


def load_backend(spec: GeneratorSpec) -> Generator:
    """The uncached generator `spec` names."""
    module_name, class_name = BACKENDS[spec.backend].split(":")
    return getattr(importlib.import_module(module_name), class_name)(spec)


def validate_chats(chats: Sequence[Any]) -> list[Chat]:
    """The chats as lists of {role, content} dicts; a clear error names the chat and message that is wrong."""
    if isinstance(chats, (str, dict)) or not isinstance(chats, Sequence):
        raise TypeError(f"chats must be a list of message lists, got {type(chats).__name__}")
    for i, chat in enumerate(chats):
        if isinstance(chat, (str, dict)) or not isinstance(chat, Sequence) or len(chat) == 0:
            raise ValueError(f"chat {i}: expected a non-empty list of messages, got {chat!r:.80}")
        for j, message in enumerate(chat):
            if not isinstance(message, dict):
                raise ValueError(f"chat {i} message {j}: expected a dict with role and content, got {message!r:.80}")
            if message.get("role") not in ROLES:
                raise ValueError(f"chat {i} message {j}: field 'role' must be one of {ROLES}, got {message.get('role')!r}")
            if not isinstance(message.get("content"), str):
                raise ValueError(f"chat {i} message {j}: field 'content' must be a string, "
                                 f"got {type(message.get('content')).__name__}")
    return [list(chat) for chat in chats]


def cut_at_stop(text: str, stop: Sequence[str]) -> int | None:
    """The index where the earliest stop string starts in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


def row_seed(chat: Chat, sample_index: int, seed: int) -> int:
    """64-bit seed of one sample: a hash of its chat, sample index and the run seed."""
    payload = json.dumps([chat, sample_index, seed], ensure_ascii=False, sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "little")
