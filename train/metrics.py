"""What training reports: FLOPs per token, the device's bf16 peak (for MFU), and the run log
(one JSON object per line in log.jsonl, mirrored to tensorboard when it is installed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity), matched against torch.cuda.get_device_name().
# Longer names first: "H100 PCIe" before "H100".
BF16_PEAK_FLOPS = [
    ("GH200", 989e12), ("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
    ("H800", 989e12), ("B200", 2250e12), ("B100", 1750e12), ("A100", 312e12), ("A800", 312e12),
    ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12),
    ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("A6000", 155e12),
]


def device_bf16_peak(device: torch.device) -> float | None:
    """The bf16 peak of a CUDA device from its name, or None (CPU, or a GPU not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_FLOPS if key in name), None)


def flops_per_token(lm: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token, PaLM's formula: 6 × (weights used in matmuls, the LM head included)
    + 12 × layers × attention width × sequence length (full causal attention counted)."""
    matmul_params = sum(m.weight.numel() for m in lm.modules() if isinstance(m, nn.Linear))
    config = lm.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len
    return 6.0 * matmul_params + attention


def read_run_log(out_dir: str | Path) -> list[dict]:
    """The records `RunLog` appended to out_dir/log.jsonl, in order ([] before the first)."""
    path = Path(out_dir) / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class RunLog:
    """Appends records to out_dir/log.jsonl (and tensorboard scalars under out_dir/tb)."""

    def __init__(self, out_dir: Path, tensorboard: bool):
        self.path = out_dir / "log.jsonl"
        self.file = open(self.path, "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tb"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("step", "kind") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{record.get('kind', 'train')}/{key}", value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
