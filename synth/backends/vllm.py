"""The vllm generation backend: the whole list of chats in one `LLM.chat` call (vLLM schedules the batch).

vLLM is optional (`pip install datamill[vllm]`) and imported only when this backend is picked.
Each chat gets its own `SamplingParams` whose seed is derived from (chat, seed), so a chat's `n`
samples do not depend on the other chats in the call. Log-probabilities are vLLM's default
(untempered model distribution); the top `logprobs` entries by rank are kept per token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datamill.synth.generation import (
    Chat, Completion, GeneratorSpec, OnCompletion, SamplingParams, row_seed, validate_chats,
)


class VLLMGenerator:
    """Generator over a `vllm.LLM` engine on local GPUs."""

    def __init__(self, spec: GeneratorSpec):
        try:
            import vllm
        except ImportError as error:
            raise ImportError("the vllm generator backend needs vLLM: pip install 'datamill[vllm]'") from error
        from datamill.curate.models.resolve import MODEL_NAMES, resolve_model
        from datamill.synth.backends.hf import cached_gguf_conversion, model_name

        if spec.model.endswith(".gguf"):
            folder = cached_gguf_conversion(Path(spec.model))
        elif spec.model.strip().lower() in MODEL_NAMES:
            folder = resolve_model(spec.model)
        else:
            folder = Path(spec.model).expanduser()  # a local folder (or a name vLLM resolves itself)
        dtype = "bfloat16" if spec.dtype == "auto" else spec.dtype
        options: dict[str, Any] = {"model": str(folder), "dtype": dtype, "max_num_seqs": max(spec.batch_size, 1)}
        if spec.device:
            options["device"] = spec.device
        self.llm = vllm.LLM(**options)
        self.vllm = vllm
        self.model_id = f"vllm:{model_name(spec.model)}@{dtype}"

    def sampling_params(self, chat: Chat, params: SamplingParams) -> Any:
        options: dict[str, Any] = {
            "n": params.n, "max_tokens": params.max_new_tokens, "temperature": params.temperature,
            "top_p": params.top_p, "seed": row_seed(chat, 0, params.seed) & 0x7FFFFFFF,
            "stop": list(params.stop) or None, "logprobs": params.logprobs,
        }
        if params.top_k is not None:
            options["top_k"] = params.top_k
        return self.vllm.SamplingParams(**options)

    def generate(self, chats: list[Chat], params: SamplingParams,
                 on_completion: OnCompletion | None = None) -> list[list[Completion]]:
        chats = validate_chats(chats)
        outputs = self.llm.chat(chats, [self.sampling_params(c, params) for c in chats], use_tqdm=False)
        results = [[self._completion(out, params, request.prompt_token_ids)
                     for out in sorted(request.outputs, key=lambda o: o.index)] for request in outputs]
        for c, row in enumerate(results):  # vLLM returns the whole call at once
            for s, completion in enumerate(row):
                if on_completion is not None:
                    on_completion(c, s, completion)
        return results

    @staticmethod
    def _completion(out: Any, params: SamplingParams, prompt_ids: Any = None) -> Completion:
        finish = "length" if out.finish_reason == "length" else "stop"
        num_tokens = len(out.token_ids)
        token_ids = list(out.token_ids)
        if out.finish_reason == "stop" and out.stop_reason is None and token_ids:
            token_ids = token_ids[:-1]  # ended by end-of-sequence: that token is not part of the text
        if params.logprobs is None or out.logprobs is None:
            return Completion(out.text, finish, num_tokens)
        ids, logprobs = [], []
        for step in out.logprobs[:num_tokens]:
            best = sorted(step.items(), key=lambda item: item[1].rank)[: params.logprobs]
            ids.append([token for token, _ in best])
            logprobs.append([float(lp.logprob) for _, lp in best])
        return Completion(out.text, finish, num_tokens, ids, logprobs, token_ids,
                          list(prompt_ids) if prompt_ids is not None else None)
