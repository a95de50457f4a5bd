"""The training loop, one file, top to bottom: tokenize → build the model → optimizer → resume →
steps (accumulate, clip, step, log, eval, checkpoint) → final eval → save_pretrained.

Knowledge distillation (`kd_weight` w > 0): each learned target with a stored teacher top-k adds
w·KL(teacher ‖ student) over the teacher's top-k ids and the CE is scaled by 1 - w (loss.py).

Loss normalization: a step's loss is Σ weight·CE over every learned target of the global batch
(all micro-batches on all processes) divided by the number of learned targets in it. Each
micro-batch's backward uses that global denominator (times the world size, which DDP's gradient
averaging divides back out), so 2 processes × 1 micro-batch, 1 process × 2 micro-batches and one
big batch all compute the same gradient.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from datamill.train.config import DeviceCaps, TrainConfig, device_plan, load_config
from datamill.train.data import PackedRows, rows_for_step, tokenize_corpus
from datamill.train.distributed import (
    Dist, all_sum, any_process, barrier, gradient_sync, init_distributed, parallelize, shutdown,
)
from datamill.train.metrics import RunLog, device_bf16_peak, flops_per_token
from datamill.train.model import (
    DEFAULT_TOKENIZER, LossModel, attention_mask_for, build_model, load_tokenizer,
)
from datamill.train.runtime import (
    StopOnSigterm, TrainResult, adamw, learning_rate, resume, save_final, save_state, trained_parameters,
)


def train(config: TrainConfig | dict | str | Path) -> TrainResult:
    """Train as the config says (under torchrun: this process's part of it)."""
    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    env = init_distributed()
    try:
        if cfg.objective == "dpo":
            from datamill.train.dpo import run_dpo

            return run_dpo(cfg, env)
        return run(cfg, env)
    finally:
        shutdown(env)


def run(cfg: TrainConfig, env: Dist) -> TrainResult:
    out_dir = Path(cfg.out_dir)
    console = Console(stderr=True, quiet=not env.is_main)
    device = env.device
    plan = device_plan(cfg, DeviceCaps.probe(device))  # refuse what the device cannot do, before any work
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")

    # 1. data: tokenize once (rank 0 writes the cache, the others read it), then pack into rows
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path or DEFAULT_TOKENIZER)
    data_options = dict(format=cfg.data.format, train_on_prompt=cfg.data.train_on_prompt,
                        eval_holdout=cfg.data.eval_holdout, seed=cfg.seed, cache_dir=cfg.data.cache_dir,
                        batch_rows=cfg.data.tokenize_batch, kd=cfg.kd_weight > 0, log=console.print)
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        splits = tokenize_corpus(cfg.data.path, tokenizer, **data_options)
    barrier(env)
    if not env.is_main:
        splits = tokenize_corpus(cfg.data.path, tokenizer, **data_options)
    train_rows = PackedRows(splits["train"], cfg.seq_len)
    eval_rows = PackedRows(splits["eval"], cfg.seq_len)
    if train_rows.n_rows == 0:
        raise ValueError(f"{cfg.data.path}: no training tokens after holding out {cfg.data.eval_holdout:.0%} for eval")
    binary_weights = splits["train"].uniform_weights  # every loss weight is 0 or 1
    phase_starts = train_rows.phase_starts  # a staged mix: each epoch trains phase 0's rows, then phase 1's

    # 2. model: float32 master weights, bf16 autocast on GPU, documents masked apart in attention
    attention = plan.attention
    lm = build_model(cfg.model, tokenizer, attention, cfg.seed)
    lm.config.use_cache = False
    if cfg.model.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = LossModel(lm.to(device), use_liger=plan.liger).train()
    parallel_model = parallelize(model, cfg.distributed, env)
    use_bf16 = plan.bf16
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    # 3. optimizer: fused AdamW (one kernel per step on GPU; on CPU ~5x faster than the per-tensor
    #    default), no weight decay on norms and biases
    optimizer = adamw(parallel_model, cfg.optim, device)

    # 4. resume: weights and optimizer state; data order and LR follow from the step alone
    start_step, checkpoint = resume(parallel_model, optimizer, cfg, env, out_dir, console)
    params = trained_parameters(parallel_model)

    compile_model = plan.compile
    runner = torch.compile(parallel_model) if compile_model else parallel_model

    total_steps = cfg.steps_for(env.world_size)
    tokens_per_step = cfg.tokens_per_step(env.world_size)
    flops_token = flops_per_token(lm, cfg.seq_len)
    peak = device_bf16_peak(device)
    log = RunLog(out_dir, cfg.tensorboard) if env.is_main else None
    console.print(f"training {sum(p.numel() for p in lm.parameters()) / 1e6:.1f}M params on {env.world_size} "
                  f"× {device} ({attention}, {'bf16' if use_bf16 else 'fp32'}, compile={compile_model}, liger={plan.liger}): "
                  f"{total_steps} steps × {tokens_per_step:,} tokens, {train_rows.n_rows:,} rows of {cfg.seq_len}")

    def write(record: dict) -> None:
        if log is not None:
            log.write(record)

    def save(step: int) -> Path | None:
        return save_state(parallel_model, optimizer, cfg, env, out_dir, step)

    def evaluate(step: int) -> tuple[float, float] | None:
        """Held-out loss (plain mean CE over learned targets) and perplexity, on every process."""
        if eval_rows.n_rows == 0:
            return None
        n_rows = min(eval_rows.n_rows, cfg.eval_batches * cfg.micro_batch_size)  # the same rows on any world size
        mine = np.arange(n_rows)[env.rank::env.world_size]
        n_batches = math.ceil(math.ceil(n_rows / env.world_size) / cfg.micro_batch_size)
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        count = torch.zeros((), device=device, dtype=torch.float64)
        parallel_model.eval()
        with torch.no_grad(), autocast:
            for k in range(n_batches):  # every process runs as many batches (FSDP needs all of them)
                rows = mine[k * cfg.micro_batch_size:(k + 1) * cfg.micro_batch_size]
                batch = eval_rows.batch(rows if len(rows) else np.zeros(1, np.int64))
                if not len(rows):
                    batch.learned[:] = 0
                t = batch.to_torch(device)
                mask = attention_mask_for(t["doc_ids"], attention)
                loss_sum += parallel_model(t["input_ids"], t["position_ids"], mask, t["targets"], t["learned"], True)
                count += t["learned"].sum()
        parallel_model.train()
        loss = (all_sum(loss_sum, env) / all_sum(count, env).clamp(min=1)).item()
        write({"kind": "eval", "step": step, "eval_loss": loss, "eval_ppl": math.exp(min(loss, 50))})
        console.print(f"step {step}: eval loss {loss:.4f}, ppl {math.exp(min(loss, 50)):.2f}")
        return loss, math.exp(min(loss, 50))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # 5. the steps
    train_loss, interrupted, last_checkpoint = None, False, checkpoint
    timed_tokens, timed_seconds, interval_tokens, interval_seconds = 0, 0.0, 0, 0.0
    clock = None  # starts after this session's first step (which compiles)
    progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
                        TimeRemainingColumn(), console=console, disable=not (cfg.progress and env.is_main))
    with StopOnSigterm() as sigterm, progress:
        task = progress.add_task("train", total=total_steps, completed=start_step, loss="-", speed="-")
        for step in range(start_step, total_steps):
            lr = learning_rate(step, total_steps, cfg.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr

            batches = [train_rows.batch(rows_for_step(train_rows.n_rows, step, micro, env.rank, env.world_size,
                                                      cfg.micro_batch_size, cfg.grad_accum, cfg.seed,
                                                      phase_starts))
                       for micro in range(cfg.grad_accum)]
            learned_here = torch.tensor(sum(float(b.learned.sum()) for b in batches), dtype=torch.float64)
            learned = float(all_sum(learned_here.to(device), env))
            scale = env.world_size / max(learned, 1.0)
            loss_sum = torch.zeros((), device=device)
            ce_sum, kd_sum = torch.zeros((), device=device), torch.zeros((), device=device)
            for micro, batch in enumerate(batches):
                t = batch.to_torch(device)
                mask = attention_mask_for(t["doc_ids"], attention)
                with gradient_sync(parallel_model, micro == cfg.grad_accum - 1):
                    with autocast:
                        if cfg.kd_weight > 0:
                            ce, kd = runner(t["input_ids"], t["position_ids"], mask, t["targets"], t["weights"],
                                            binary_weights, t["teacher_ids"], t["teacher_logprobs"], t["kd_weights"])
                            part = (1 - cfg.kd_weight) * ce + cfg.kd_weight * kd
                            ce_sum += ce.detach()
                            kd_sum += kd.detach()
                        else:
                            part = runner(t["input_ids"], t["position_ids"], mask, t["targets"], t["weights"],
                                          binary_weights)
                    (part * scale).backward()
                loss_sum += part.detach()
            grad_norm = None
            if cfg.optim.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1

            if clock is None:
                sync()
                clock = time.perf_counter()
            else:
                interval_tokens += tokens_per_step
            if done % cfg.log_every == 0 or done == total_steps:
                train_loss = float(all_sum(loss_sum, env)) / max(learned, 1.0)
                sync()
                now = time.perf_counter()
                interval_seconds = now - clock
                clock = now
                timed_tokens += interval_tokens
                timed_seconds += interval_seconds
                speed = interval_tokens / interval_seconds if interval_tokens else None
                mfu = speed * flops_token / peak if speed and peak else None
                if grad_norm is not None and hasattr(grad_norm, "full_tensor"):
                    grad_norm = grad_norm.full_tensor()
                kd_parts = {"ce_loss": float(all_sum(ce_sum, env)) / max(learned, 1.0),
                            "kd_loss": float(all_sum(kd_sum, env)) / max(learned, 1.0)} if cfg.kd_weight > 0 else {}
                write({"kind": "train", "step": done, "loss": train_loss, "lr": lr,
                       "grad_norm": None if grad_norm is None else float(grad_norm),
                       "tokens": done * tokens_per_step, "tokens_per_s": speed, "mfu": mfu, **kd_parts})
                progress.update(task, loss=f"{train_loss:.4f}", speed=f"{speed:,.0f}" if speed else "-")
                interval_tokens = 0
            progress.update(task, completed=done)

            stop = any_process(sigterm.requested, env)
            pause = stop or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or (
                cfg.eval_every and done % cfg.eval_every == 0 and done < total_steps)
            if pause:  # eval and checkpoint time is not training time
                sync()
                timed_tokens += interval_tokens
                timed_seconds += time.perf_counter() - clock
                interval_tokens = 0
                if cfg.eval_every and done % cfg.eval_every == 0 and done < total_steps and not stop:
                    evaluate(done)
                if stop or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                    last_checkpoint = save(done)
                clock = time.perf_counter()
            if stop:
                console.print(f"SIGTERM: stopped after step {done}, checkpoint {last_checkpoint}")
                interrupted = True
                break

    # 6. the end: held-out eval, a last checkpoint, and the model as a transformers folder
    steps_done = done if total_steps > start_step else start_step
    final = None if interrupted else evaluate(steps_done)
    final_dir = None
    if not interrupted:
        if cfg.checkpoint_every and not (last_checkpoint and last_checkpoint.name.endswith(f"{steps_done:07d}.pt")):
            last_checkpoint = save(steps_done)
        if cfg.save_final:
            final_dir = save_final(parallel_model, tokenizer, out_dir / "final", cfg, env)
    speed = timed_tokens / timed_seconds if timed_seconds > 0 and timed_tokens else None
    result = TrainResult(
        out_dir=out_dir, steps=steps_done, train_loss=train_loss,
        eval_loss=final[0] if final else None, eval_ppl=final[1] if final else None,
        tokens_per_s=speed, mfu=speed * flops_token / peak if speed and peak else None,
        interrupted=interrupted, checkpoint=last_checkpoint, final_dir=final_dir, log_path=out_dir / "log.jsonl")
    write({"kind": "summary", "step": steps_done, "tokens_per_s": result.tokens_per_s, "mfu": result.mfu,
           "eval_loss": result.eval_loss, "eval_ppl": result.eval_ppl, "interrupted": interrupted})
    if log is not None:
        log.close()
    return result
