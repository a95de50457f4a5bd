"""The transformers generation backend: batched, seeded chat generation with any local causal LM.

Models: the built-in `smollm2-135m` (via `curate/models.py`), a transformers model folder, or a
`.gguf` file (dequantized once into `$DATAMILL_CACHE/models/gguf-<hash>/`). Chats are rendered
with the tokenizer's chat template, sorted by prompt length and generated `batch_size` rows at a
time with LEFT padding. float32 on CPU; bfloat16 with a static KV cache (which `generate`
compiles with torch.compile) on CUDA.

Determinism guarantee: sampling is not done by `generate`'s global-RNG multinomial but by a
Gumbel-max logits processor whose noise comes from a per-row `torch.Generator` seeded with a hash
of (row seed, step), where the row seed is derived from (chat, sample index, seed). The random stream of a sample
therefore depends only on its chat, its sample index and the seed, never on which other chats
share its batch or on batch size; tokens are identical across batch compositions as long as the
model's logits are (padding changes them only by floating-point rounding, which can flip a
near-tie). temperature == 0 is greedy decoding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from datamill.synth.generation import (
    Chat, Completion, GeneratorSpec, OnCompletion, SamplingParams, cut_at_stop, row_seed, validate_chats,
)

log = logging.getLogger(__name__)

PROMPT_LENGTH_MULTIPLE_CUDA = 64
"""On CUDA, prompts are left-padded to a multiple of this so the compiled static-cache step sees few shapes."""


class TransformersGenerator:
    """Generator over a local transformers causal LM."""

    def __init__(self, spec: GeneratorSpec):
        import torch

        from datamill.curate.models.resolve import default_device, load_causal_lm

        self.spec = spec
        self.device = spec.device or default_device()
        on_cuda = torch.device(self.device).type == "cuda"
        dtype_name = spec.dtype if spec.dtype != "auto" else ("bfloat16" if on_cuda else "float32")
        model_ref = str(cached_gguf_conversion(Path(spec.model))) if spec.model.endswith(".gguf") else spec.model
        self.model, self.tokenizer = load_causal_lm(model_ref, device=self.device, dtype=getattr(torch, dtype_name))
        self.tokenizer.padding_side = "left"
        if not self.tokenizer.chat_template:
            raise ValueError(f"generator model {spec.model!r} has no chat template; use an instruction-tuned model")
        self.static_cache = on_cuda
        self.model_id = f"transformers:{model_name(spec.model)}@{dtype_name}"
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])

    def generate(self, chats: list[Chat], params: SamplingParams,
                 on_completion: OnCompletion | None = None) -> list[list[Completion]]:
        chats = validate_chats(chats)
        prompts = [self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) for chat in chats]
        encoded = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        rows = [(c, s) for c in range(len(chats)) for s in range(params.n)]
        seeds = [row_seed(chats[c], s, params.seed) for c, s in rows]
        order = sorted(range(len(rows)), key=lambda r: (-len(encoded[rows[r][0]]), r))
        results: list[list[Completion | None]] = [[None] * params.n for _ in chats]
        for start in range(0, len(order), self.spec.batch_size):
            batch = order[start:start + self.spec.batch_size]
            outs = self._generate_batch([encoded[rows[r][0]] for r in batch], [seeds[r] for r in batch], params)
            for r, completion in zip(batch, outs):
                c, s = rows[r]
                if params.logprobs is not None:  # the exact context of the top-k, for KD
                    completion = dataclasses.replace(completion, prompt_token_ids=list(encoded[c]))
                results[c][s] = completion
                if on_completion is not None:
                    on_completion(c, s, completion)
        return results  # type: ignore[return-value]

    def score_choices(self, chats: list[Chat], choices: list[str], prefix: str = "") -> list[list[float]]:
        """log P(the reply, after `prefix`, is exactly each choice) per chat (see choice_scoring.py)."""
        from datamill.synth.backends.choice_scoring import score_choices

        chats = validate_chats(chats)
        prompts = [self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) + prefix
                   for chat in chats]
        return score_choices(self.model, self.tokenizer, prompts, choices, self.spec.batch_size, self.device)

    def _generate_batch(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Completion]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        rows = len(prompts)
        width = max(len(p) for p in prompts)
        if self.static_cache:  # fixed shapes for the compiled step: pad the batch and round the prompt width
            width = -(-width // PROMPT_LENGTH_MULTIPLE_CUDA) * PROMPT_LENGTH_MULTIPLE_CUDA
            prompts = prompts + [prompts[-1]] * (self.spec.batch_size - rows)
            seeds = seeds + [seeds[-1]] * (self.spec.batch_size - rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens, do_sample=False, num_beams=1,
            eos_token_id=sorted(self.eos_ids), pad_token_id=pad,
            stop_strings=params.stop or None, return_dict_in_generate=True,
            output_logits=params.logprobs is not None,
            cache_implementation="static" if self.static_cache else None,
        )
        if self.static_cache:
            config.max_cache_len = -(-(width + params.max_new_tokens) // 256) * 256
        processors = LogitsProcessorList()
        if params.temperature > 0:
            processors.append(SeededSampler(seeds, width, params.temperature, params.top_p, params.top_k, self.device))
        with torch.inference_mode():
            try:
                out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                          logits_processor=processors, tokenizer=self.tokenizer)
            except Exception as error:  # noqa: BLE001 - the compiled path is an optimization, not a requirement
                if config.cache_implementation != "static":
                    raise
                log.warning("static-cache compiled generation failed (%r); using the dynamic cache", error)
                self.static_cache = False
                config.cache_implementation = None
                out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                          logits_processor=processors, tokenizer=self.tokenizer)
        generated = out.sequences[:, width:].cpu().numpy()
        topk = None
        if params.logprobs is not None:
            steps = torch.stack(out.logits, dim=1).float().log_softmax(-1).topk(params.logprobs, dim=-1)
            topk = (steps.indices.cpu().numpy(), steps.values.cpu().numpy())
        return [self._completion(generated[i], topk, i, params) for i in range(rows)]

    def _completion(self, tokens: np.ndarray, topk: Any, row: int, params: SamplingParams) -> Completion:
        ends = np.flatnonzero(np.isin(tokens, list(self.eos_ids)))
        ended = ends.size > 0
        tokens = tokens[: ends[0]] if ended else tokens
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = cut_at_stop(text, params.stop)
        if cut is not None:
            text, ended = text[:cut], True
            tokens = tokens[: tokens_covering(self.tokenizer, tokens, cut)]
            num_tokens = len(tokens)
        else:
            num_tokens = len(tokens) + (1 if ends.size else 0)
        finish = "stop" if ended else "length"
        if topk is None:
            return Completion(text, finish, num_tokens)
        token_ids = tokens.astype(int).tolist()
        ids, logprobs = topk
        return Completion(text, finish, num_tokens, ids[row, :num_tokens].tolist(),
                          logprobs[row, :num_tokens].astype(float).round(6).tolist(), token_ids)


def tokens_covering(tokenizer: Any, tokens: np.ndarray, chars: int) -> int:
    """How many leading tokens it takes for the decoded text to reach `chars` characters (those
    that contribute to the text before a stop string)."""
    for k in range(1, len(tokens) + 1):
        if len(tokenizer.decode(tokens[:k], skip_special_tokens=True)) >= chars:
            return k
    return len(tokens)


class SeededSampler:
    """Logits processor that samples with per-row seeded Gumbel noise and returns a one-hot score
    row, so that `generate`'s greedy argmax picks the sampled token.

    Each row owns a `torch.Generator`, re-seeded every step from (row seed, step); its noise for the
    whole vocabulary is one `torch.rand` call. No RNG state is shared between rows, so a row's
    samples do not depend on its batch neighbours. Temperature, top-k and top-p (nucleus) are
    applied in that order, as in transformers and vLLM.
    """

    def __init__(self, seeds: list[int], prompt_width: int, temperature: float, top_p: float,
                 top_k: int | None, device: Any):
        import torch

        self.prompt_width = prompt_width
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.seeds = [int(s) & MASK64 for s in seeds]
        self.generators = [torch.Generator(device=device) for _ in seeds]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        step = input_ids.shape[1] - self.prompt_width
        logits = scores.float() / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            drop_sorted = probs.cumsum(-1) - probs > self.top_p  # keep the smallest prefix reaching top_p
            logits = logits.masked_fill(drop_sorted.scatter(-1, sorted_idx, drop_sorted), float("-inf"))
        uniform = torch.empty_like(logits)
        for row, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            generator.manual_seed(step_seed(seed, step))
            torch.rand(logits.shape[-1], generator=generator, device=logits.device, out=uniform[row])
        gumbel = -torch.log(-torch.log(uniform.clamp_(min=1e-12)))
        choice = (logits + gumbel).argmax(-1)
        onehot = torch.full_like(scores, float("-inf"))
        return onehot.scatter_(-1, choice[:, None], 0.0)


MASK64 = (1 << 64) - 1


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed for one (row seed, decoding step): the splitmix64 finalizer of their mix."""
    x = (seed + (step + 1) * 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return (x ^ (x >> 31)) >> 1


def model_name(model: str) -> str:
    """A stable short name: the built-in name, or the resolved path of a folder/.gguf file."""
    from datamill.curate.models.resolve import MODEL_NAMES

    builtin = MODEL_NAMES.get(model.strip().lower())
    return builtin if builtin is not None else str(Path(model).expanduser().resolve())


def cached_gguf_conversion(gguf: Path) -> Path:
    """A transformers folder converted from a .gguf file, once, under `$DATAMILL_CACHE/models/`.

    The folder is named by a hash of the file's path, size and mtime; the conversion is written to
    a temporary folder and renamed into place under a file lock, like the built-in model's.
    """
    from filelock import FileLock

    from datamill.curate.models.resolve import cache_dir, convert_gguf

    gguf = gguf.expanduser().resolve()
    if not gguf.is_file():
        raise FileNotFoundError(f"generator model {str(gguf)!r}: no such .gguf file")
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    models = cache_dir() / "models"
    target = models / f"gguf-{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    models.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=models))
        try:
            convert_gguf(gguf, staging)
            staging.chmod(0o755)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
