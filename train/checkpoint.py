"""Training checkpoints: out_dir/checkpoints/step-NNNNNNN.pt, written atomically, the newest kept.

A checkpoint holds the full model and optimizer state and the step reached. The data order and the
learning rate are pure functions of (seed, step), so the step is all resuming needs to continue
exactly where the run stopped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

NAME = re.compile(r"^step-(\d{7})\.pt$")


def checkpoint_dir(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted(p for p in checkpoint_dir(out_dir).glob("step-*.pt") if NAME.match(p.name))
    return found[-1] if found else None


def save_checkpoint(out_dir: Path, step: int, model_state: dict, optim_state: dict, extra: dict,
                    keep: int = 1) -> Path:
    """Write step-NNNNNNN.pt via a temporary file and a rename, then delete all but the `keep` newest."""
    folder = checkpoint_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:07d}.pt"
    temporary = folder / f".{path.name}.tmp"
    torch.save({"step": step, "model": model_state, "optimizer": optim_state, **extra}, temporary)
    os.replace(temporary, path)
    found = sorted(p for p in folder.glob("step-*.pt") if NAME.match(p.name))
    for older in found[:-keep]:
        older.unlink()
    return path


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)
