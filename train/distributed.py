"""Running under torchrun: process group setup, DDP / FSDP2 wrapping, full state dicts, sums.

Without torchrun (no WORLD_SIZE in the environment) everything here is a no-op on one process.
Backends: NCCL on CUDA, gloo on CPU (so DDP is tested for real on a laptop).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> Dist:
    """Join the torchrun process group (if launched by torchrun) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shutdown(env: Dist) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(value: torch.Tensor, env: Dist) -> torch.Tensor:
    """The sum of `value` over all processes (float64 on the wire for exact token counts)."""
    if not env.enabled:
        return value
    total = value.detach().to(torch.float64).clone()
    dist.all_reduce(total)
    return total.to(value.dtype)


def any_process(flag: bool, env: Dist) -> bool:
    """True on every process if it is True on any (e.g. one of them got SIGTERM)."""
    if not env.enabled:
        return flag
    value = torch.tensor([float(flag)], device=env.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(env: Dist) -> None:
    if env.enabled:
        dist.barrier()


def parallelize(model: nn.Module, strategy: str, env: Dist) -> nn.Module:
    """DDP(model), or FSDP2 (each decoder layer, then the whole) sharding parameters over ranks."""
    if not env.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in decoder_layers(model):
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks of a HF model (the ModuleList with the most parameters)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    if not lists:
        return []
    return list(max(lists, key=lambda m: sum(p.numel() for p in m.parameters())))


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on micro-batches before the last one of a step."""
    if hasattr(model, "no_sync") and not enabled:  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
        yield
    else:
        yield


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, strategy: str, env: Dist):
    """(model state, optimizer state) as full unsharded tensors on CPU; FSDP2 gathers them."""
    if env.enabled and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(model, options=options)
        optim_state = get_optimizer_state_dict(model, optimizer, options=options) if optimizer else None
        return model_state, optim_state
    return unwrap(model).state_dict(), optimizer.state_dict() if optimizer else None


def load_full_state(model: nn.Module, optimizer, model_state, optim_state, strategy: str, env: Dist) -> None:
    if env.enabled and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_state, options=options)
        set_optimizer_state_dict(model, optimizer, optim_state, options=options)
        return
    unwrap(model).load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner
