"""Benchmark: generation tokens/s of datamill's transformers backend vs plain `model.generate`.

Both run on the same model object, the same chat prompts (instructions built from stdlib
docstrings), the same batch size, greedy decoding and the same max_new_tokens, in one process.
The peer is the textbook loop: left-padded batches in input order, `model.generate` with the
default dynamic KV cache. datamill sorts prompts by length and, on CUDA, runs bfloat16 with a
static cache compiled by torch.compile. One untimed warm-up batch runs first for each (compile).

    python bench/bench_generate.py                      # CUDA: batch 64 and 256, 128 new tokens
    python bench/bench_generate.py --batch-sizes 4 --max-new-tokens 16 --batches 2   # small CPU run
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pathlib
import time

import torch

from datamill.synth.backends.hf import TransformersGenerator
from datamill.synth.generation import GeneratorSpec, SamplingParams

MODULES = ["json", "os", "re", "pathlib", "shutil", "string", "textwrap", "collections", "itertools",
           "functools", "statistics", "random", "heapq", "bisect", "difflib", "csv", "zipfile", "tarfile",
           "datetime", "calendar", "fractions", "decimal", "math", "hashlib", "base64", "argparse"]
TASKS = ["Explain in plain words what this Python function does: ", "Write one example of how to use this: ",
         "Summarize this documentation in one sentence: "]


def stdlib_chats(count: int) -> list[list[dict[str, str]]]:
    """`count` distinct chats asking about stdlib functions, from their docstrings."""
    docs = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) and not attr.startswith("_") else None
            if doc and len(doc) > 40:
                docs.append(f"{name}.{attr}: {doc.split(chr(10) + chr(10))[0][:400]}")
    chats = [[{"role": "user", "content": TASKS[i % len(TASKS)] + docs[i % len(docs)]}] for i in range(count)]
    if len(docs) < count:
        raise SystemExit(f"only {len(docs)} docstrings for {count} prompts")
    return chats


def plain_generate(model, tokenizer, chats, batch_size: int, max_new_tokens: int) -> int:
    """The peer: batches in input order, left padding, greedy, dynamic cache. Returns tokens generated."""
    tokenizer.padding_side = "left"
    eos = model.generation_config.eos_token_id
    eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos])
    total = 0
    for start in range(0, len(chats), batch_size):
        texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in chats[start:start + batch_size]]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:].cpu()
        ended = torch.isin(new, eos_ids)
        first_end = torch.where(ended.any(1), ended.int().argmax(1) + 1, torch.tensor(new.shape[1]))
        total += int(first_end.sum())  # tokens up to and including EOS, as Completion.num_tokens counts
    return total


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="64,256" if cuda else "4")
    parser.add_argument("--max-new-tokens", type=int, default=128 if cuda else 16)
    parser.add_argument("--batches", type=int, default=4 if cuda else 2, help="timed batches per batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--model", default="smollm2-135m", help="built-in name or model folder (with a chat template)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    figures = []
    print(f"device={'cuda:' + torch.cuda.get_device_name() if cuda else 'cpu'} torch={torch.__version__} "
          f"max_new_tokens={args.max_new_tokens} greedy")
    for size in sizes:
        backend = TransformersGenerator(GeneratorSpec(model=args.model, batch_size=size))
        model, tokenizer = backend.model, backend.tokenizer
        chats = stdlib_chats(size * (args.batches + 1))
        warm, timed_chats = chats[:size], chats[size:]
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0)
        _, warm_peer = timed(lambda: plain_generate(model, tokenizer, warm, size, args.max_new_tokens))
        _, warm_ours = timed(lambda: backend.generate(warm, params))
        peer_tokens, peer_s = timed(lambda: plain_generate(model, tokenizer, timed_chats, size, args.max_new_tokens))
        ours, ours_s = timed(lambda: backend.generate(timed_chats, params))
        ours_tokens = sum(c.num_tokens for row in ours for c in row)
        peer_rate, ours_rate = peer_tokens / peer_s, ours_tokens / ours_s
        print(f"batch={size} prompts={len(timed_chats)} dtype={model.dtype} | plain generate: {peer_tokens} tok "
              f"in {peer_s:.2f}s = {peer_rate:.0f} tok/s (warm-up {warm_peer:.1f}s) | datamill: {ours_tokens} tok in "
              f"{ours_s:.2f}s = {ours_rate:.0f} tok/s (warm-up {warm_ours:.1f}s) | ratio {ours_rate / peer_rate:.2f}x")
        figures.append({"batch": size, "prompts": len(timed_chats), "max_new_tokens": args.max_new_tokens,
                        "dtype": str(model.dtype), "static_cache": backend.static_cache, "plain_tokens": peer_tokens,
                        "plain_tokens_per_s": peer_rate, "ours_tokens": ours_tokens, "ours_tokens_per_s": ours_rate,
                        "ratio": ours_rate / peer_rate})
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(figures, indent=2))
        backend = model = None  # free this size's model (and static cache) before the next
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
