"""Toy preference data and a tiny DPO training config, shared by the DPO tests (and the GPU kit's cuda test,
so nothing here imports what the bare GPU image lacks)."""

from __future__ import annotations

import numpy as np
import polars as pl

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}
PAIRS = [
    ("What do farmers do before a storm?", " They move the cattle to higher ground.", " Storm storm the the the."),
    ("Why does the ferry stop?", " It does not run when the fog is thick over the estuary.", " Ferry."),
    ("When does the baker start work?", " At four, so the bread is warm by seven.", " Bread bread bread bread bread."),
    ("Describe the museum.", " It reopened with a new room about the history of printing.", " Museum room the of."),
]


def toy_preferences(folder, n: int = 24):
    """Chosen: a fluent answer; rejected: the same words shuffled into nonsense."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        prompt, chosen, _ = PAIRS[i % len(PAIRS)]
        words = chosen.split()
        rows.append({"prompt": f"{prompt} (case {i})", "chosen": chosen,
                     "rejected": " " + " ".join(words[j] for j in rng.permutation(len(words)))})
    folder.mkdir(parents=True)
    pl.DataFrame(rows).write_parquet(folder / "pairs.parquet")
    return folder


def config(data, out, **changes):
    cfg = {"objective": "dpo", "data": {"path": str(data), "eval_holdout": 0.15},
           "model": {"preset": "llama-20m", "overrides": TINY}, "seq_len": 64, "micro_batch_size": 4, "max_steps": 8,
           "optim": {"lr": 2e-3, "warmup_steps": 0, "min_lr_ratio": 1.0}, "log_every": 1, "eval_every": 0,
           "progress": False, "tensorboard": False, "save_final": False, "out_dir": str(out),
           "dpo": {"beta": 0.5}}
    cfg.update(changes)
    return cfg
