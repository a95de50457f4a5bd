"""Check the openai backend against a real OpenAI-compatible server when one is running.

Not a CI test: CI uses the fake server of tests/test_openai_backend.py (llama.cpp's Python server
took about an hour to build here). Start a server (vLLM, SGLang, llama.cpp's `llama-server`,
llama-cpp-python's `python -m llama_cpp.server --model smollm2.gguf`), then:

    python bench/check_openai_server.py --base-url http://127.0.0.1:8000/v1 --model served-name

It probes the server as a run does (`OpenAIGenerator.probe`) and reports what it honours: `n`
(else single requests per sample), token ids with logprobs (else KD fails up front, or text only
with `missing_token_ids: text_only`); then generates n = 3 samples for a few chats, with and
without logprobs, and prints tokens/s, finish reasons and whether each fallback was taken.
Exits 1 when the server cannot be reached.
"""

from __future__ import annotations

import argparse
import sys
import time

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Give one tip for sleeping better."}],
    [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}],
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    from datamill.synth.backends.openai import BackendCapabilityError, OpenAIGenerator
    from datamill.synth.generation import GeneratorSpec, SamplingParams

    spec = GeneratorSpec(backend="openai", model=args.model, base_url=args.base_url, max_retries=1,
                         missing_token_ids="text_only")
    sampling = SamplingParams(n=3, temperature=0.8, max_new_tokens=args.max_new_tokens, seed=1)
    kd = sampling.model_copy(update={"logprobs": 5})
    generator = OpenAIGenerator(spec)
    try:
        generator.probe(kd)
    except RuntimeError as error:
        print(f"cannot use {args.base_url}: {error}")
        sys.exit(1)
    strict = OpenAIGenerator(spec.model_copy(update={"missing_token_ids": "fail"}))
    try:
        strict.probe(kd)
        token_ids = "yes"
    except BackendCapabilityError:
        token_ids = "no (a KD run stops up front; text_only gives text without logprobs)"
    print(f"server {args.base_url} model {args.model}: honours n: {not generator.single_requests}; "
          f"token ids with logprobs: {token_ids}")
    for name, params in (("text", sampling), ("logprobs", kd)):
        started = time.perf_counter()
        rows = generator.generate(CHATS, params)
        seconds = time.perf_counter() - started
        tokens = sum(c.num_tokens for row in rows for c in row)
        finishes = sorted({c.finish_reason for row in rows for c in row})
        with_topk = sum(c.topk_ids is not None for row in rows for c in row)
        print(f"{name}: {len(rows)} chats × {len(rows[0])} samples, {tokens} tokens in {seconds:.1f} s "
              f"({tokens / seconds:.1f} tok/s), finish {finishes}, completions with top-k: {with_topk}, "
              f"distinct samples of chat 0: {len({c.text for c in rows[0]})}")


if __name__ == "__main__":
    main()
