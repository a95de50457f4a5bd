"""The training configuration: a validated pydantic model, loaded from YAML or a dict.

A config is either its own YAML file (the fields below at the top level) or a recipe with a
`train:` section, whose `data.path` defaults to the recipe's `output.dir`. Unknown keys are errors,
and every error names its key path (`optim.lr: Input should be greater than 0`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from datamill.train.dpo_config import DPOConfig


class TrainConfigError(ValueError):
    """A training config that does not validate; the message lists `key.path: problem` lines."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    path: str = Field(description="Corpus: a run dir (reads its shards/), or a folder of parquet/jsonl files.")
    format: Literal["auto", "text", "messages", "prompt_completion"] = Field(
        "auto", description="Which columns hold the examples; auto picks text, messages or prompt+completion.")
    train_on_prompt: bool = Field(False, description="Also learn prompt / user tokens, not only completions.")
    eval_holdout: float = Field(0.01, ge=0, lt=1, description="Fraction of documents held out for eval loss.")
    cache_dir: Optional[str] = Field(None, description="Where token shards go (default: <corpus>/tokens).")
    tokenize_batch: int = Field(1024, ge=1, description="Records per call to the (parallel) tokenizer.")


class ModelConfig(Strict):
    preset: Optional[str] = Field(None, description="Train from scratch: llama-20m, llama-135m, llama-1b.")
    path: Optional[str] = Field(None, description="Fine-tune: a local HF causal LM folder or a built-in name.")
    tokenizer: Optional[str] = Field(None, description="Tokenizer folder or name (default: the model's, else SmolLM2's).")
    overrides: dict[str, Any] = Field(default_factory=dict, description="LlamaConfig fields to change in a preset.")
    attention: Literal["auto", "sdpa", "flex_attention", "eager"] = Field(
        "auto", description="auto: flex_attention on CUDA (document masks as block-sparse), sdpa elsewhere.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")

    @model_validator(mode="after")
    def one_source(self) -> "ModelConfig":
        if (self.preset is None) == (self.path is None):
            raise ValueError("give exactly one of model.preset (train from scratch) or model.path (fine-tune)")
        return self


class OptimConfig(Strict):
    lr: float = Field(3e-4, gt=0, description="Peak learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decays to lr * min_lr_ratio.")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (not on norms and biases).")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = Field(1.0, ge=0, description="Clip the global grad norm to this (0: off).")


class TrainConfig(Strict):
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    out_dir: str = Field("out/train", description="Checkpoints, log.jsonl and the final model go here.")
    seq_len: int = Field(1024, ge=8, description="Tokens per packed row.")
    micro_batch_size: int = Field(8, ge=1, description="Rows per forward pass per process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step per process.")
    max_steps: Optional[int] = Field(None, ge=1, description="Optimizer steps (or give `tokens`).")
    tokens: Optional[int] = Field(None, ge=1, description="Train on this many tokens (sets max_steps).")
    seed: int = 0
    objective: Literal["sft", "dpo"] = Field("sft", description="sft: next-token loss; dpo: preference pairs "
                                             "(prompt/chosen/rejected columns), options under `dpo:` (train/dpo.py).")
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    kd_weight: float = Field(0.0, ge=0, le=1, description="Knowledge distillation: loss = (1-w)·CE + w·KL to the "
                             "teacher's stored top-k log-probs (columns teacher_topk_ids/_logprobs, from `distill`).")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU.")
    compile: Optional[bool] = Field(None, description="torch.compile the model (default: on for CUDA).")
    liger: Optional[bool] = Field(None, description="liger-kernel's fused linear cross-entropy (default: on CUDA "
                                  "when liger-kernel is installed; true refuses a device or install without it).")
    distributed: Literal["ddp", "fsdp"] = Field("ddp", description="Strategy under torchrun.")
    eval_every: int = Field(100, ge=0, description="Steps between held-out evals (0: only at the end).")
    eval_batches: int = Field(8, ge=1, description="Eval covers eval_batches × micro_batch_size held-out rows.")
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="Steps between checkpoints, the last step included (0: only on SIGTERM).")
    keep_checkpoints: int = Field(1, ge=1, description="How many of the newest checkpoints to keep.")
    resume: bool = Field(True, description="Continue from the latest checkpoint in out_dir if there is one.")
    save_final: bool = Field(True, description="save_pretrained the model (and tokenizer) to out_dir/final.")
    progress: bool = Field(True, description="Show a progress bar (rank 0).")
    tensorboard: bool = Field(True, description="Also log to out_dir/tb when tensorboard is installed.")

    @model_validator(mode="after")
    def length_given(self) -> "TrainConfig":
        if (self.max_steps is None) == (self.tokens is None):
            raise ValueError("give exactly one of max_steps or tokens")
        return self

    def steps_for(self, world_size: int) -> int:
        """Optimizer steps to run: max_steps, or the token budget over the tokens in one step."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, -(-self.tokens // self.tokens_per_step(world_size)))

    def tokens_per_step(self, world_size: int) -> int:
        return self.seq_len * self.micro_batch_size * self.grad_accum * world_size


@dataclass(frozen=True)
class DeviceCaps:
    """What this process's device can do, as far as the config cares."""

    type: str                # "cuda", "cpu", ...
    bf16: bool               # bfloat16 autocast runs natively (CUDA: compute capability >= 8.0; CPU: yes)
    liger_installed: bool    # liger-kernel imports (it needs triton, so effectively CUDA machines only)

    @classmethod
    def probe(cls, device: Any) -> "DeviceCaps":
        import torch

        from datamill.train.loss import has_liger

        device = torch.device(device)
        if device.type == "cuda":
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        else:
            bf16 = device.type == "cpu"  # CPU autocast has bf16 kernels on every x86/Arm build
        return cls(device.type, bf16, has_liger())


@dataclass(frozen=True)
class DevicePlan:
    """How a run uses its device, decided from the config before any work starts."""

    attention: str   # sdpa, eager or flex_attention
    bf16: bool       # bf16 autocast (float32 master weights)
    compile: bool    # torch.compile the model
    liger: bool      # liger's fused linear cross-entropy instead of the chunked one


def device_plan(cfg: "TrainConfig", caps: DeviceCaps) -> DevicePlan:
    """The settings `cfg` asks for on a device with `caps`, or TrainConfigError naming every setting
    the device cannot honour. Explicit requests are refused, never silently changed; `auto` (and
    unset compile/liger) pick what the device does best: flex attention, bf16, compile and liger on
    CUDA, sdpa and float32 elsewhere."""
    cuda = caps.type == "cuda"
    problems = []
    if cfg.model.attention == "flex_attention" and not cuda:
        problems.append(f"model.attention: flex_attention needs a CUDA GPU (this process runs on {caps.type}: "
                        "FlexAttention has no backward there); use attention: auto (sdpa with the same "
                        "document mask off CUDA) or sdpa")
    if cfg.precision == "bf16" and not caps.bf16:
        problems.append(f"precision: bf16 is not supported by this {caps.type} device (a CUDA GPU needs compute "
                        "capability 8.0 or newer); use precision: auto or fp32")
    if cfg.liger and not cuda:
        problems.append(f"liger: liger-kernel's fused cross-entropy needs a CUDA GPU (this process runs on "
                        f"{caps.type}); leave liger unset or false")
    elif cfg.liger and not caps.liger_installed:
        problems.append("liger: liger-kernel is not installed (pip install liger-kernel); leave liger unset to "
                        "use the chunked cross-entropy")
    if problems:
        raise TrainConfigError("\n".join(problems))
    attention = cfg.model.attention if cfg.model.attention != "auto" else ("flex_attention" if cuda else "sdpa")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and cuda and caps.bf16)
    compile_model = cfg.compile if cfg.compile is not None else cuda
    liger = cfg.liger if cfg.liger is not None else cuda and caps.liger_installed
    return DevicePlan(attention, bf16, compile_model, liger)


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for problem in err.errors():
        path = ".".join(str(part) for part in (prefix, *problem["loc"]) if part != "")
        lines.append(f"{path or '(top level)'}: {problem['msg']}")
    return "\n".join(lines)


def load_config(source: str | Path | dict) -> TrainConfig:
    """A TrainConfig from a YAML file (own config, or a recipe with a `train:` section) or a dict."""
    prefix = ""
    if isinstance(source, dict):
        doc = source
    else:
        path = Path(source)
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise TrainConfigError(f"{path}: {err}") from None
        if not isinstance(doc, dict):
            raise TrainConfigError(f"{path}: expected a mapping of training settings")
    if "train" in doc:  # a recipe: its train section, reading the corpus the recipe writes
        prefix = "train"
        section = dict(doc["train"] or {})
        output_dir = (doc.get("output") or {}).get("dir")
        data = dict(section.get("data") or {})
        if "path" not in data and output_dir:
            data["path"] = output_dir
            section["data"] = data
        doc = section
    try:
        return TrainConfig.model_validate(doc)
    except ValidationError as err:
        raise TrainConfigError(format_validation_error(err, prefix)) from None
