"""What every training objective's loop shares: the result record, the LR schedule, SIGTERM
handling, the optimizer, resuming from the last checkpoint and the final save_pretrained."""

from __future__ import annotations

import math
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from datamill.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from datamill.train.config import OptimConfig, TrainConfig
from datamill.train.distributed import Dist, barrier, full_state, load_full_state, unwrap


@dataclass
class TrainResult:
    out_dir: Path
    steps: int                   # optimizer steps completed (in total, across resumes)
    train_loss: float | None     # the last logged training loss
    eval_loss: float | None      # held-out loss at the end (None without held-out data)
    eval_ppl: float | None
    tokens_per_s: float | None   # this session's mean, the first step (compilation) excluded
    mfu: float | None            # model FLOPs utilization vs the device's bf16 peak (None on CPU)
    interrupted: bool            # stopped by SIGTERM after writing a checkpoint
    checkpoint: Path | None
    final_dir: Path | None       # the save_pretrained folder
    log_path: Path


def learning_rate(step: int, total_steps: int, optim: OptimConfig) -> float:
    """Linear warmup to optim.lr, then cosine decay to optim.lr × min_lr_ratio at the last step."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = (step - optim.warmup_steps) / max(1, total_steps - 1 - optim.warmup_steps)
    min_lr = optim.lr * optim.min_lr_ratio
    return min_lr + 0.5 * (optim.lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


class StopOnSigterm:
    """Notes a SIGTERM instead of dying, so the loop can checkpoint and return."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self.note)
        return self

    def note(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def adamw(parallel_model: torch.nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """Fused AdamW (one kernel per step on GPU; on CPU ~5x faster than the per-tensor default),
    no weight decay on norms and biases."""
    params = trained_parameters(parallel_model)
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps,
                             fused=device.type in ("cuda", "cpu"))


def resume(parallel_model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, env: Dist,
           out_dir: Path, console) -> tuple[int, Path | None]:
    """Load the latest checkpoint's weights and optimizer state (with `cfg.resume`); returns the
    step to start at and the checkpoint it came from."""
    checkpoint = latest_checkpoint(out_dir) if cfg.resume else None
    if checkpoint is None:
        return 0, None
    state = load_checkpoint(checkpoint)
    load_full_state(parallel_model, optimizer, state["model"], state["optimizer"], cfg.distributed, env)
    console.print(f"resuming from {checkpoint} (step {state['step']})")
    return state["step"], checkpoint


def save_state(parallel_model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, env: Dist,
               out_dir: Path, step: int) -> Path | None:
    """Checkpoint weights and optimizer state (gathered from every process); the path, on the main process."""
    model_state, optim_state = full_state(parallel_model, optimizer, cfg.distributed, env)
    path = None
    if env.is_main:
        path = save_checkpoint(out_dir, step, model_state, optim_state, {"config": cfg.model_dump()},
                               cfg.keep_checkpoints)
    barrier(env)
    return path


def trained_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters training updates, in the model's order (what the optimizer and gradient clipping see)."""
    return [p for p in model.parameters() if p.requires_grad]


def save_final(parallel_model, tokenizer, folder: Path, cfg: TrainConfig, env: Dist) -> Path:
    """save_pretrained the language model (gathered from its shards under FSDP) and the tokenizer."""
    model_state, _ = full_state(parallel_model, None, cfg.distributed, env)
    if env.is_main:
        lm = unwrap(parallel_model).lm
        lm.config.use_cache = True
        lm.generation_config.use_cache = True  # else generate() runs without a KV cache
        lm_state = {name.removeprefix("lm."): tensor for name, tensor in model_state.items()}
        lm.save_pretrained(folder, state_dict=lm_state)
        tokenizer.save_pretrained(folder)
    barrier(env)
    return folder
