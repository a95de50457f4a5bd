"""Benchmark: training tokens/s and MFU of datamill's loop vs a plain Hugging Face loop, one process.

Same data (the Python standard library's source, tokenized with SmolLM2's tokenizer), same model
(on a GPU the llama-135m preset = SmolLM2-135M's shape; on a CPU llama-20m; from scratch), same rows of `--seq-len` tokens, same
micro-batch. The baseline is the loop people write first: `model(input_ids, labels=input_ids)` with
full logits, sdpa attention, bf16 autocast on GPU, `torch.optim.AdamW` (default foreach), grad clipping,
no packing masks; run eager and under `torch.compile`. Ours is `datamill.train.train` as a user runs
it: packed rows with block-causal document masks (flex attention on CUDA), chunked fused
cross-entropy, fused AdamW, torch.compile (GPU). Ours does strictly more work per token (document masks),
and MFU counts the same PaLM FLOPs for both (full causal attention).

    python bench/bench_train.py                     # GPU: llama-135m, seq 2048 × 16, eager and compiled HF
    python bench/bench_train.py --device cpu        # CPU: llama-20m, seq 256 × 4, eager HF
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sysconfig
import tempfile
import time

import numpy as np
import polars as pl
import torch

from datamill.train import load_config, train
from datamill.train.data import PackedRows, tokenize_corpus
from datamill.train.config import DeviceCaps, device_plan
from datamill.train.metrics import device_bf16_peak, flops_per_token, read_run_log
from datamill.train.model import load_tokenizer
from datamill.train.presets import llama_config


def stdlib_corpus(folder: pathlib.Path, max_chars: int) -> pathlib.Path:
    """The standard library's .py files cut into ~4000-character documents, as one parquet shard."""
    docs, total = [], 0
    for path in sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for start in range(0, len(text), 4000):
            docs.append(text[start:start + 4000])
            total += len(docs[-1])
        if total >= max_chars:
            break
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"text": docs}).write_parquet(folder / "shards" / "part-00000.parquet")
    return folder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hf_baseline(rows: PackedRows, preset: str, overrides: dict, vocab: int, steps: int, warmup: int, micro_batch: int,
                compiled: bool, device: torch.device) -> float:
    """tokens/s of the plain HF loop over consecutive rows (timed after `warmup` steps)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(llama_config(preset, vocab, overrides), attn_implementation="sdpa",
                                          dtype=torch.float32).to(device)
    model = torch.compile(lm) if compiled else lm
    optimizer = torch.optim.AdamW(lm.parameters(), lr=3e-4, weight_decay=0.1)
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        picked = np.arange(step * micro_batch, (step + 1) * micro_batch) % rows.n_rows
        input_ids = torch.from_numpy(rows.batch(picked).input_ids).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    seconds = time.perf_counter() - start
    del model, lm, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return steps * micro_batch * rows.seq_len / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default=None, help="default: llama-135m on GPU, llama-20m on CPU")
    parser.add_argument("--seq-len", type=int, default=None, help="default: 2048 on GPU, 256 on CPU")
    parser.add_argument("--micro-batch", type=int, default=None, help="default: 16 on GPU, 4 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="default: 40 on GPU, 12 on CPU")
    parser.add_argument("--baseline-steps", type=int, default=None, help="default: 15 on GPU, 8 on CPU")
    parser.add_argument("--tokenizer", default="smollm2-135m", help="tokenizer folder or built-in name")
    parser.add_argument("--baselines", default=None, help="default: eager,compile on GPU, eager on CPU")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--overrides", default="{}", help="LlamaConfig fields to change in the preset (JSON)")
    parser.add_argument("--liger", choices=["auto", "on", "off"], default="auto",
                        help="liger's fused CE (auto: on CUDA when installed)")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    preset = args.preset or ("llama-135m" if gpu else "llama-20m")
    overrides = json.loads(args.overrides)
    args.seq_len = args.seq_len or (2048 if gpu else 256)
    args.micro_batch = args.micro_batch or (16 if gpu else 4)
    args.steps = args.steps or (40 if gpu else 12)
    args.baseline_steps = args.baseline_steps or (15 if gpu else 8)
    args.baselines = args.baselines if args.baselines is not None else ("eager,compile" if gpu else "eager")
    if gpu:
        torch.set_float32_matmul_precision("high")
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-train-"))
    tokens_needed = (args.steps + 5) * args.micro_batch * args.seq_len
    corpus = stdlib_corpus(work / "corpus", max_chars=5 * tokens_needed)

    t0 = time.perf_counter()
    tokenizer = load_tokenizer(args.tokenizer)
    splits = tokenize_corpus(corpus, tokenizer, eval_holdout=0.01, log=print)
    print(f"tokenized {splits['train'].n_tokens:,} tokens in {time.perf_counter() - t0:.1f}s")

    config = load_config({
        "data": {"path": str(corpus)}, "model": {"preset": preset, "tokenizer": args.tokenizer, "overrides": overrides},
        "out_dir": str(work / "run"), "seq_len": args.seq_len, "micro_batch_size": args.micro_batch,
        "max_steps": args.steps, "eval_every": 0, "eval_batches": 2, "save_final": False,
        "progress": False, "tensorboard": False, "optim": {"warmup_steps": 5}, "log_every": 2 if not gpu else 5,
        "liger": {"auto": None, "on": True, "off": False}[args.liger]})
    plan = device_plan(config, DeviceCaps.probe(device))  # what the loop will use on this device
    t0 = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - t0
    intervals = [r["tokens_per_s"] for r in read_run_log(config.out_dir) if r.get("kind") == "train"
                 and r.get("tokens_per_s")]
    ours = statistics.median(intervals[1:]) if len(intervals) > 2 else result.tokens_per_s
    print(f"ours: {wall:.0f}s wall (compile included), intervals tok/s {[round(x) for x in intervals]}, "
          f"final loss {result.train_loss:.3f}, eval loss {result.eval_loss:.3f}")

    rows = PackedRows(splits["train"], args.seq_len)
    baselines = {}
    for kind in [k for k in args.baselines.split(",") if k]:
        baselines[kind] = hf_baseline(rows, preset, overrides, len(tokenizer), args.baseline_steps,
                                      3 if kind == "eager" else 5, args.micro_batch, kind == "compile", device)

    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_config(llama_config(preset, len(tokenizer), overrides))
    flops = flops_per_token(lm, args.seq_len)
    peak = device_bf16_peak(device)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    mfu = (lambda speed: speed * flops / peak) if peak else (lambda speed: None)
    logged = [r for r in read_run_log(config.out_dir) if r.get("kind") == "train"]
    figures = {"device": name, "torch": torch.__version__, "preset": preset, "seq_len": args.seq_len,
               "micro_batch": args.micro_batch, "attention": plan.attention, "liger": plan.liger, "bf16": plan.bf16,
               "compile": plan.compile, "final_loss": logged[-1]["loss"] if logged else None,
               "flops_per_token": flops, "peak_flops": peak, "ours_tokens_per_s": ours, "ours_mfu": mfu(ours),
               **{f"hf_{k}_tokens_per_s": v for k, v in baselines.items()},
               **{f"hf_{k}_mfu": mfu(v) for k, v in baselines.items()}}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(figures, indent=2))
    print(f"\n{name}, {preset}, seq {args.seq_len} × micro-batch {args.micro_batch}, "
          f"{'bf16' if gpu else 'fp32'}, torch {torch.__version__}")
    print(f"{'loop':<32}{'tokens/s':>12}{'MFU':>8}{'ours ×':>9}")
    share = (lambda speed: f"{mfu(speed):.1%}") if peak else (lambda speed: "-")  # no bf16 peak known on CPU
    print(f"{'datamill (packed, doc masks)':<32}{ours:>12,.0f}{share(ours):>8}{1.0:>9.2f}")
    for kind, speed in baselines.items():
        print(f"{'HF naive ' + kind:<32}{speed:>12,.0f}{share(speed):>8}{ours / speed:>9.2f}")


if __name__ == "__main__":
    main()
