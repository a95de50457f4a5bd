"""DPO training speed: datamill `objective: dpo` vs TRL's DPOTrainer, same model, pairs, batch and steps.

Both start from the same randomly initialized small Llama (SmolLM2's 49k vocabulary, so the LM head
matters) saved as a folder, train `--steps` steps of `--batch` pairs on real text pairs (chosen: a
paragraph of a local document; rejected: the same words shuffled), with reference log-probs
precomputed in both (TRL: precompute_ref_log_probs=True). Printed: seconds per step after the
first (warm-up) step for each, and the ratio. CPU, fp32.

    python bench/bench_dpo.py --pairs 64 --steps 8 --batch 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch


def real_pairs(n: int, rng: np.random.Generator) -> pl.DataFrame:
    """Prompts/chosen from paragraphs of licence and changelog files under /usr/share; rejected: shuffled words."""
    paragraphs = []
    for path in sorted(Path("/usr/share/doc").glob("*/copyright"))[:400]:
        try:
            text = path.read_text(encoding="utf-8", errors="ignore")
        except OSError:
            continue
        paragraphs += [p.strip() for p in text.split("\n\n") if 200 < len(p.strip()) < 900]
    if len(paragraphs) < n:
        raise SystemExit(f"only {len(paragraphs)} paragraphs found under /usr/share/doc")
    picked = [paragraphs[i] for i in rng.choice(len(paragraphs), n, replace=False)]
    rows = []
    for text in picked:
        words = text.split()
        cut = max(8, len(words) // 4)
        rest = words[cut:]
        rows.append({"prompt": " ".join(words[:cut]), "chosen": " " + " ".join(rest),
                     "rejected": " " + " ".join(rest[i] for i in rng.permutation(len(rest)))})
    return pl.DataFrame(rows)


def make_model(folder: Path) -> None:
    from transformers import AutoModelForCausalLM

    from datamill.train.model import load_tokenizer
    from datamill.train.presets import llama_config

    tokenizer = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    config = llama_config("llama-20m", len(tokenizer), {"hidden_size": 256, "intermediate_size": 768,
                                                         "num_hidden_layers": 4, "num_attention_heads": 4,
                                                         "num_key_value_heads": 2},
                          {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id})
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def bench_datamill(data: Path, model: Path, out: Path, steps: int, batch: int, seq_len: int) -> float:
    from datamill.train import train
    from datamill.train.metrics import read_run_log

    started = time.perf_counter()
    train({"objective": "dpo", "data": {"path": str(data), "eval_holdout": 0}, "model": {"path": str(model)},
           "seq_len": seq_len, "micro_batch_size": batch, "max_steps": steps, "log_every": 1, "eval_every": 0,
           "progress": False, "tensorboard": False, "save_final": False, "out_dir": str(out),
           "optim": {"lr": 1e-5, "warmup_steps": 0}})
    total = time.perf_counter() - started
    log = [r for r in read_run_log(out) if r["kind"] == "train"]
    rate = log[-1]["pairs_per_s"]
    print(f"datamill: {total:.1f}s in all (tokenize, reference, {steps} steps); {rate:.2f} pairs/s after step 1")
    return batch / rate


def bench_trl(frame: pl.DataFrame, model: Path, out: Path, steps: int, batch: int, seq_len: int) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-5,
                     report_to=[], use_cpu=True, precompute_ref_log_probs=True, max_length=seq_len,
                     logging_steps=1000, save_strategy="no", bf16=False, dataloader_num_workers=0)
    started = time.perf_counter()
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model), args=args,
                         train_dataset=Dataset.from_polars(frame), processing_class=AutoTokenizer.from_pretrained(model),
                         callbacks=[Clock()])
    trainer.train()
    total = time.perf_counter() - started
    per_step = (times[-1] - times[0]) / (len(times) - 1)
    print(f"TRL:      {total:.1f}s in all (tokenize, reference, {steps} steps); {batch / per_step:.2f} pairs/s after step 1")
    return per_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    frame = real_pairs(args.pairs, np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        frame.write_parquet(root / "data" / "pairs.parquet")
        make_model(root / "model")
        ours = bench_datamill(root / "data", root / "model", root / "dm", args.steps, args.batch, args.seq_len)
        theirs = bench_trl(frame, root / "model", root / "trl", args.steps, args.batch, args.seq_len)
    print(json.dumps({"datamill_s_per_step": round(ours, 3), "trl_s_per_step": round(theirs, 3),
                      "speedup": round(theirs / ours, 2), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
