"""Preference training (`objective: dpo`): DPO, IPO, Robust DPO, hinge and reference-free SimPO on
prompt/chosen/rejected pairs.

Data. A corpus of `prompt`, `chosen`, `rejected` columns in TRL's two preference formats: strings
(standard: the completion follows the prompt text directly and gets EOS appended) or lists of
`{role, content}` messages (conversational: rendered with the tokenizer's chat template, the
prompt with the generation prompt). As in TRL, the completion starts where the tokenized prompt and
the tokenized prompt+completion first differ, and prompt+completion is cut to `seq_len` keeping
its start; a pair whose prompt alone fills `seq_len`, or with an empty/missing field, is skipped
and counted. Tokenized pairs are cached beside the corpus (`<corpus>/tokens/dpo-<key>.npz`).

Batching is packing-free: a micro-batch of B pairs is 2B right-padded rows (B chosen, then B
rejected). Right padding needs no attention mask (causal attention never looks at the later pad
tokens), so sdpa/flex run their plain causal path. Per-token log-probabilities come from the
hidden states a chunk of positions at a time, each chunk checkpointed, so only one [chunk, vocab]
block of logits is ever alive.

Reference. Before the first step the initial model scores every pair once (no grad) and the
summed completion log-probs are stored beside the token cache (`ref-<key>.npy`, keyed by the
pairs, the model and the precision); training then holds only the policy. A resumed run reads the
file. SimPO needs no reference.

Losses, with d = (log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r)) summed over completion
tokens, ε = label_smoothing:
  sigmoid  −(1−ε)·log σ(βd) − ε·log σ(−βd)             (DPO; ε > 0 is conservative DPO)
  robust   (−(1−ε)·log σ(βd) + ε·log σ(−βd)) / (1−2ε)  (Robust DPO, TRL's form)
  hinge    max(0, 1 − βd)                              (SLiC)
  ipo      (d_c/|c| − d_r/|r| − 1/(2β))²               (IPO, per-token normalized as in TRL)
  simpo    −(1−ε)·log σ(β(m_c − m_r) − γ) − ε·log σ(−β(m_c − m_r) + γ), m = mean token log-prob
Devices: the SFT loop's up-front plan (`config.device_plan`: flex attention or liger off CUDA and
bf16 where the device lacks it are refused before any work, with the same messages), except that
`auto` attention is sdpa everywhere (right-padded rows need no document mask) and liger is refused
(no cross-entropy here). bf16 is autocast over float32 weights, the log-softmax in float32;
`compile` compiles the decoder in place with dynamic shapes (row widths vary per batch); under
torchrun, DDP or FSDP2 as in SFT, each process taking its share of every step's pairs.

A step's loss is the mean over its global batch of pairs. Logged per step: loss, rewards/chosen
(β·(log π(c) − log π_ref(c)); SimPO: β·m_c), rewards/rejected, rewards/margins,
rewards/accuracies (share of pairs with chosen reward > rejected), logps/chosen, logps/rejected;
the same on held-out pairs at each eval (kind "eval", `eval_loss`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from datamill.train.config import (
    DeviceCaps,
    DevicePlan,
    TrainConfig,
    TrainConfigError,
    device_plan,
)
from datamill.train.data import cache_key, corpus_files, rows_for_step, scan
from datamill.train.distributed import (
    Dist,
    all_sum,
    any_process,
    barrier,
    gradient_sync,
    parallelize,
)
from datamill.train.dpo_config import DPOConfig
from datamill.train.metrics import RunLog
from datamill.train.model import DEFAULT_TOKENIZER, build_model, load_tokenizer
from datamill.train.runtime import (
    StopOnSigterm,
    TrainResult,
    adamw,
    learning_rate,
    resume,
    save_final,
    save_state,
    trained_parameters,
)
from rich.console import Console
from torch import nn
from torch.utils.checkpoint import checkpoint

LOGP_CHUNK = 2048
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected")


# ---------------------------------------------------------------------------------------------
# pairs → tokens


def is_conversation(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def tokenize_pair(tokenizer, prompt, chosen, rejected) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, chosen ids, rejected ids) as TRL's DPOTrainer builds them."""
    if is_conversation(prompt):
        def render(messages, generation_prompt=False):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        p, pc, pr = render(prompt, True), render(prompt + chosen), render(prompt + rejected)
    else:
        eos = tokenizer.eos_token
        chosen = chosen if chosen.endswith(eos) else chosen + eos
        rejected = rejected if rejected.endswith(eos) else rejected + eos
        p, pc, pr = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (prompt, prompt + chosen, prompt + rejected))
    n = min(len(os.path.commonprefix([p, pc])), len(os.path.commonprefix([p, pr])))
    return p[:n], pc[n:], pr[n:]


def bad_pair_reason(prompt, chosen, rejected) -> str | None:
    for name, value in zip(PAIR_COLUMNS, (prompt, chosen, rejected)):
        if value is None:
            return f"missing {name}"
        if isinstance(value, str):
            if not value.strip():
                return f"empty {name}"
        elif not is_conversation(value) or not value:
            return f"{name} is neither a string nor a list of {{role, content}} messages"
    if isinstance(prompt, str) != isinstance(chosen, str) or isinstance(chosen, str) != isinstance(rejected, str):
        return "prompt, chosen and rejected mix strings and message lists"
    return None


@dataclass
class Pairs:
    """Tokenized pairs: pair i is prompt ids[p_off[i]:p_off[i+1]] etc., in one flat int32 array each."""

    prompt: list[np.ndarray]
    chosen: list[np.ndarray]
    rejected: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.prompt)

    def subset(self, index: np.ndarray) -> "Pairs":
        return Pairs([self.prompt[i] for i in index], [self.chosen[i] for i in index], [self.rejected[i] for i in index])

    def tokens(self) -> np.ndarray:
        """Tokens of each pair (prompt counted twice: it is run with both completions)."""
        return np.array([2 * len(p) + len(c) + len(r) for p, c, r in zip(self.prompt, self.chosen, self.rejected)])


def tokenize_pairs(tokenizer, frame: pl.DataFrame, seq_len: int, where: str = "") -> tuple[Pairs, dict[str, int]]:
    """The pairs of `frame`, cut to seq_len (keep start); skipped pairs counted by reason."""
    prompts, chosens, rejecteds, skipped = [], [], [], {}
    rows = frame.select(PAIR_COLUMNS).rows()
    for k, (prompt, chosen, rejected) in enumerate(rows):
        reason = bad_pair_reason(prompt, chosen, rejected)
        if reason is None:
            p, c, r = tokenize_pair(tokenizer, prompt, chosen, rejected)
            if len(p) >= seq_len:
                reason = "prompt fills seq_len"
            elif not c or not r:
                reason = "empty completion after tokenization"
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        room = seq_len - len(p)
        prompts.append(np.array(p, np.int32))
        chosens.append(np.array(c[:room], np.int32))
        rejecteds.append(np.array(r[:room], np.int32))
    return Pairs(prompts, chosens, rejecteds), skipped


def read_pairs(path: str | Path) -> pl.DataFrame:
    files = corpus_files(path)
    frames = []
    for file in files:
        names = scan(file).collect_schema().names()
        missing = [c for c in PAIR_COLUMNS if c not in names]
        if missing:
            raise ValueError(f"{file}: objective dpo needs columns prompt, chosen, rejected (missing {missing}; "
                             f"has {names}); make them with the preference_pairs stage")
        frames.append(scan(file).select(PAIR_COLUMNS).collect())
    return pl.concat(frames, how="vertical_relaxed") if len(frames) > 1 else frames[0]


def load_pairs(cfg: TrainConfig, tokenizer, log) -> tuple[Pairs, Pairs, str, Path]:
    """(train pairs, held-out pairs, cache key, cache folder), tokenizing on first use."""
    files = corpus_files(cfg.data.path)
    options = {"objective": "dpo", "seq_len": cfg.seq_len, "eval_holdout": cfg.data.eval_holdout, "seed": cfg.seed}
    key = cache_key(files, tokenizer, options)
    folder = Path(cfg.data.cache_dir) if cfg.data.cache_dir else Path(cfg.data.path) / "tokens"
    path = folder / f"dpo-{key}.npz"
    if not path.is_file():
        frame = read_pairs(cfg.data.path)
        pairs, skipped = tokenize_pairs(tokenizer, frame, cfg.seq_len)
        if len(pairs) == 0:
            raise ValueError(f"{cfg.data.path}: no usable preference pairs ({skipped or 'empty corpus'})")
        held = np.zeros(len(pairs), bool)
        if cfg.data.eval_holdout > 0 and len(pairs) > 1:
            n_eval = min(len(pairs) - 1, max(1, math.ceil(cfg.data.eval_holdout * len(pairs))))
            held[np.random.default_rng(cfg.seed).choice(len(pairs), n_eval, replace=False)] = True
        folder.mkdir(parents=True, exist_ok=True)
        flat = {name: np.concatenate(parts) if parts else np.zeros(0, np.int32)
                for name, parts in (("prompt", pairs.prompt), ("chosen", pairs.chosen), ("rejected", pairs.rejected))}
        offsets = {f"{name}_offsets": np.concatenate([[0], np.cumsum([len(x) for x in getattr(pairs, name)])])
                   for name in PAIR_COLUMNS}
        tmp = folder / f".dpo-{key}.tmp.npz"
        np.savez(tmp, held=held, **flat, **offsets)
        tmp.replace(path)
        log(f"tokenized {len(pairs)} preference pairs ({int(held.sum())} held out)"
            + (f", skipped {skipped}" if skipped else "") + f" → {path}")
    stored = np.load(path)
    parts = {name: np.split(stored[name], stored[f"{name}_offsets"][1:-1]) for name in PAIR_COLUMNS}
    pairs = Pairs(parts["prompt"], parts["chosen"], parts["rejected"])
    held = stored["held"]
    return pairs.subset(np.flatnonzero(~held)), pairs.subset(np.flatnonzero(held)), key, folder


# ---------------------------------------------------------------------------------------------
# batches and log-probs


def collate(pairs: Pairs, index, pad_id: int) -> dict[str, torch.Tensor]:
    """2B right-padded rows (chosen ones first): input_ids, targets, and `learned` (1 where the
    target is a completion token), all [2B, L]."""
    seqs, starts = [], []
    for i in index:
        seqs.append(np.concatenate([pairs.prompt[i], pairs.chosen[i]]))
        starts.append(len(pairs.prompt[i]))
    for i in index:
        seqs.append(np.concatenate([pairs.prompt[i], pairs.rejected[i]]))
        starts.append(len(pairs.prompt[i]))
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, np.int64)
    learned = np.zeros((len(seqs), width), np.float32)
    for k, (seq, start) in enumerate(zip(seqs, starts)):
        ids[k, :len(seq)] = seq
        learned[k, start - 1:len(seq) - 1] = 1.0  # position t predicts token t+1: the completion's tokens
    targets = np.concatenate([ids[:, 1:], np.full((len(seqs), 1), pad_id, np.int64)], axis=1)
    return {"input_ids": torch.from_numpy(ids), "targets": torch.from_numpy(targets),
            "learned": torch.from_numpy(learned)}


def chunk_logps(hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ head_weight.T).float()
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


class SequenceLogps(nn.Module):
    """A causal LM → (Σ completion-token log-probs, completion tokens) per row."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, targets, learned):
        hidden = self.lm.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
        head = self.lm.get_output_embeddings().weight
        where = learned.flatten().nonzero().squeeze(1)  # only completion positions reach the vocabulary
        completion_hidden, completion_targets = hidden.flatten(0, 1)[where], targets.flatten()[where]
        if head.dtype != completion_hidden.dtype:
            head = head.to(completion_hidden.dtype)
        parts = []
        for start in range(0, completion_hidden.shape[0], LOGP_CHUNK):
            end = start + LOGP_CHUNK
            if torch.is_grad_enabled():
                parts.append(checkpoint(chunk_logps, completion_hidden[start:end], head, completion_targets[start:end],
                                        use_reentrant=False))
            else:
                parts.append(chunk_logps(completion_hidden[start:end], head, completion_targets[start:end]))
        per_token = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
        sums = torch.zeros(learned.shape[0], device=learned.device, dtype=per_token.dtype)
        return sums.index_add(0, where // learned.shape[1], per_token), learned.sum(-1)


def preference_loss(cfg: DPOConfig, chosen_logps, rejected_logps, ref_chosen, ref_rejected, chosen_tokens,
                    rejected_tokens) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per pair, chosen reward, rejected reward) — the formulas in the module docstring."""
    beta, eps = cfg.beta, cfg.label_smoothing
    if cfg.loss == "simpo":
        mean_c, mean_r = chosen_logps / chosen_tokens.clamp(min=1), rejected_logps / rejected_tokens.clamp(min=1)
        logits = beta * (mean_c - mean_r) - cfg.simpo_gamma
        losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
        return losses, beta * mean_c.detach(), beta * mean_r.detach()
    chosen_ratio, rejected_ratio = chosen_logps - ref_chosen, rejected_logps - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if cfg.loss == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)
    elif cfg.loss == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
    elif cfg.loss == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif cfg.loss == "ipo":
        per_token = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (per_token - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown dpo.loss {cfg.loss!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def reference_logps(model: SequenceLogps, pairs: Pairs, batch_size: int, pad_id: int, device, autocast) -> np.ndarray:
    """[n_pairs, 2] float64: Σ completion log-probs of chosen and rejected under `model`."""
    out = np.zeros((len(pairs), 2), np.float64)
    model.eval()
    with torch.no_grad(), autocast:
        for start in range(0, len(pairs), batch_size):
            index = np.arange(start, min(start + batch_size, len(pairs)))
            t = {k: v.to(device) for k, v in collate(pairs, index, pad_id).items()}
            logps, _ = model(t["input_ids"], t["targets"], t["learned"])
            logps = logps.double().cpu().numpy()
            out[index, 0], out[index, 1] = logps[:len(index)], logps[len(index):]
    model.train()
    return out


def reference_key(cfg: TrainConfig, pairs_key: str, use_bf16: bool) -> str:
    blob = json.dumps({"pairs": pairs_key, "model": cfg.model.model_dump(), "seed": cfg.seed, "bf16": use_bf16},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# the loop


def dpo_device_plan(cfg: TrainConfig, caps: DeviceCaps) -> DevicePlan:
    """The SFT loop's device plan (the same up-front refusals: flex attention or liger off CUDA, bf16
    where the device lacks it), adapted to preference batches: `auto` attention is sdpa even on
    CUDA (right-padded rows need only the plain causal mask, no document mask), and liger is off
    (per-token log-probs are gathered chunk by chunk, not a cross-entropy); asking for it is refused."""
    plan = device_plan(cfg, caps)
    if cfg.liger:
        raise TrainConfigError("liger: objective dpo gathers per-token log-probs chunk by chunk and does not use "
                               "liger-kernel's fused cross-entropy; leave liger unset or false")
    attention = "sdpa" if cfg.model.attention == "auto" else plan.attention
    return DevicePlan(attention=attention, bf16=plan.bf16, compile=plan.compile, liger=False)


def run_dpo(cfg: TrainConfig, env: Dist):
    """Train on preference pairs; returns the same TrainResult as SFT (eval_loss: held-out DPO loss)."""
    if cfg.kd_weight > 0:
        raise ValueError("kd_weight > 0 works with objective: sft only")
    out_dir = Path(cfg.out_dir)
    console = Console(stderr=True, quiet=not env.is_main)
    device = env.device
    plan = dpo_device_plan(cfg, DeviceCaps.probe(device))  # refuse what the device cannot do, before any work
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path or DEFAULT_TOKENIZER)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        load_pairs(cfg, tokenizer, console.print)
    barrier(env)
    train_pairs, eval_pairs, pairs_key, cache_folder = load_pairs(cfg, tokenizer, console.print)
    if len(train_pairs) == 0:
        raise ValueError(f"{cfg.data.path}: no training pairs after holding out {cfg.data.eval_holdout:.0%}")

    lm = build_model(cfg.model, tokenizer, plan.attention, cfg.seed)
    lm.config.use_cache = False
    if cfg.model.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = SequenceLogps(lm.to(device)).train()
    use_bf16 = plan.bf16
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    # the reference: the initial model scores every pair once, before any weight changes
    needs_reference = cfg.dpo.loss != "simpo"
    ref_path = cache_folder / f"ref-{reference_key(cfg, pairs_key, use_bf16)}.npz"
    if needs_reference and env.is_main and not ref_path.is_file():
        started = time.perf_counter()
        batch = cfg.dpo.ref_batch_size or cfg.micro_batch_size
        ref = {"train": reference_logps(model, train_pairs, batch, pad_id, device, autocast),
               "eval": reference_logps(model, eval_pairs, batch, pad_id, device, autocast)}
        tmp = ref_path.with_name(f".{ref_path.stem}.tmp.npz")
        np.savez(tmp, **ref)
        tmp.replace(ref_path)
        console.print(f"reference log-probs of {len(train_pairs) + len(eval_pairs)} pairs in "
                      f"{time.perf_counter() - started:.1f}s → {ref_path}")
    barrier(env)
    if needs_reference:
        stored = np.load(ref_path)
        ref_train, ref_eval = stored["train"], stored["eval"]
    else:
        ref_train, ref_eval = np.zeros((len(train_pairs), 2)), np.zeros((len(eval_pairs), 2))

    parallel_model = parallelize(model, cfg.distributed, env)
    optimizer = adamw(parallel_model, cfg.optim, device)
    start_step, checkpoint_path = resume(parallel_model, optimizer, cfg, env, out_dir, console)
    params = trained_parameters(parallel_model)
    compile_model = plan.compile
    if compile_model:  # the decoder only, in place (state-dict names unchanged): the log-prob gather
        lm.base_model.compile(dynamic=True)  # is data-dependent and would split the graph anyway
    runner = parallel_model

    pairs_per_step = cfg.micro_batch_size * cfg.grad_accum * env.world_size
    if cfg.max_steps is not None:
        total_steps = cfg.max_steps
    else:
        total_steps = max(1, math.ceil(cfg.tokens / (pairs_per_step * float(train_pairs.tokens().mean()))))
    log = RunLog(out_dir, cfg.tensorboard) if env.is_main else None
    console.print(f"DPO ({cfg.dpo.loss}, β={cfg.dpo.beta}) on {len(train_pairs)} pairs: {total_steps} steps × "
                  f"{pairs_per_step} pairs, {sum(p.numel() for p in lm.parameters()) / 1e6:.1f}M params on "
                  f"{env.world_size} × {device} ({plan.attention}, {'bf16' if use_bf16 else 'fp32'}, "
                  f"compile={compile_model})")

    def write(record: dict) -> None:
        if log is not None:
            log.write(record)

    def forward_pairs(pairs: Pairs, ref: np.ndarray, index: np.ndarray, grad_scale: float | None) -> torch.Tensor:
        """[7] sums over the pairs: loss, rewards chosen/rejected/margin, accuracy, logps chosen/rejected."""
        t = {k: v.to(device, non_blocking=True) for k, v in collate(pairs, index, pad_id).items()}
        ref_t = torch.from_numpy(ref[index]).to(device, torch.float32)
        n = len(index)
        with autocast:
            logps, counts = runner(t["input_ids"], t["targets"], t["learned"])
        logps = logps.float()
        losses, chosen_rewards, rejected_rewards = preference_loss(
            cfg.dpo, logps[:n], logps[n:], ref_t[:, 0], ref_t[:, 1], counts[:n], counts[n:])
        if grad_scale is not None:
            (losses.sum() * grad_scale).backward()
        margins = chosen_rewards - rejected_rewards
        return torch.stack([losses.detach().sum(), chosen_rewards.sum(), rejected_rewards.sum(), margins.sum(),
                            (margins > 0).float().sum(), logps[:n].detach().sum(), logps[n:].detach().sum()])

    def metrics(sums: torch.Tensor, count: float) -> dict:
        values = (all_sum(sums, env) / max(count, 1.0)).tolist()
        return dict(zip(("loss",) + METRICS, values))

    def evaluate(step: int) -> float | None:
        if len(eval_pairs) == 0:
            return None
        mine = np.arange(len(eval_pairs))[env.rank::env.world_size]
        n_batches = math.ceil(math.ceil(len(eval_pairs) / env.world_size) / cfg.micro_batch_size)
        sums = torch.zeros(7, device=device)
        parallel_model.eval()
        with torch.no_grad():
            for k in range(n_batches):
                index = mine[k * cfg.micro_batch_size:(k + 1) * cfg.micro_batch_size]
                if len(index):
                    sums += forward_pairs(eval_pairs, ref_eval, index, None)
        parallel_model.train()
        values = metrics(sums, float(len(eval_pairs)))
        loss = values.pop("loss")
        write({"kind": "eval", "step": step, "eval_loss": loss, **values})
        console.print(f"step {step}: eval DPO loss {loss:.4f}, reward accuracy {values['rewards/accuracies']:.2f}, "
                      f"margin {values['rewards/margins']:.3f}")
        return loss

    def save(step: int) -> Path | None:
        return save_state(parallel_model, optimizer, cfg, env, out_dir, step)

    train_loss, interrupted, last_checkpoint, done = None, False, checkpoint_path, start_step
    seconds, timed_pairs, clock = 0.0, 0, None
    with StopOnSigterm() as sigterm:
        for step in range(start_step, total_steps):
            lr = learning_rate(step, total_steps, cfg.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sums = torch.zeros(7, device=device)
            for micro in range(cfg.grad_accum):
                index = rows_for_step(len(train_pairs), step, micro, env.rank, env.world_size, cfg.micro_batch_size,
                                      cfg.grad_accum, cfg.seed)
                with gradient_sync(parallel_model, micro == cfg.grad_accum - 1):
                    sums += forward_pairs(train_pairs, ref_train, index, env.world_size / pairs_per_step)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip) if cfg.optim.grad_clip > 0 else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            if clock is None:
                clock = time.perf_counter()
            else:
                timed_pairs += pairs_per_step
            if done % cfg.log_every == 0 or done == total_steps:
                values = metrics(sums, float(pairs_per_step))
                train_loss = values["loss"]
                if grad_norm is not None and hasattr(grad_norm, "full_tensor"):
                    grad_norm = grad_norm.full_tensor()
                elapsed = seconds + time.perf_counter() - clock
                write({"kind": "train", "step": done, "lr": lr, **values,
                       "grad_norm": None if grad_norm is None else float(grad_norm),
                       "pairs_per_s": timed_pairs / elapsed if timed_pairs and elapsed > 0 else None})
                console.print(f"step {done}/{total_steps}: loss {train_loss:.4f}, margin "
                              f"{values['rewards/margins']:.3f}, accuracy {values['rewards/accuracies']:.2f}")
            stop = any_process(sigterm.requested, env)
            if cfg.eval_every and done % cfg.eval_every == 0 and done < total_steps and not stop:
                evaluate(done)
            if stop or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                last_checkpoint = save(done)
            if stop:
                console.print(f"SIGTERM: stopped after step {done}, checkpoint {last_checkpoint}")
                interrupted = True
                break
    if clock is not None:
        seconds += time.perf_counter() - clock

    eval_loss = None if interrupted else evaluate(done)
    final_dir = None
    if not interrupted:
        if cfg.checkpoint_every and not (last_checkpoint and last_checkpoint.name.endswith(f"{done:07d}.pt")):
            last_checkpoint = save(done)
        if cfg.save_final:
            final_dir = save_final(parallel_model, tokenizer, out_dir / "final", cfg, env)
    write({"kind": "summary", "step": done, "eval_loss": eval_loss, "interrupted": interrupted,
           "pairs_per_s": timed_pairs / seconds if timed_pairs and seconds > 0 else None})
    if log is not None:
        log.close()
    return TrainResult(out_dir=out_dir, steps=done, train_loss=train_loss, eval_loss=eval_loss, eval_ppl=None,
                       tokens_per_s=None, mfu=None, interrupted=interrupted, checkpoint=last_checkpoint,
                       final_dir=final_dir, log_path=out_dir / "log.jsonl")
