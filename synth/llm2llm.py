"""LLM2LLM (Lee et al. 2024): fine-tune the student, find the SEED examples it still gets wrong, have
a teacher write targeted variants of exactly those, add them, retrain — N iterations.

Seed data: a jsonl of `{id, question, answer}` (optionally `solution`, the SFT target; default
"Answer: <answer>"). Iteration i:
  1. fine-tune the base student on the current pool (seed + everything added so far; from the
     base model each time, as in the paper);
  2. evaluate it on the seed set only (the paper augments only from seed examples, so generated
     data never spawns more generated data): `criterion: wrong` — greedy answer checked like
     ReST-EM (`numeric` / `exact`); `criterion: loss` — the examples whose answer loss under the
     student is in the top `loss_fraction` (the "high-loss" variant);
  3. the teacher writes `variants` new question/answer pairs for each of them
     (synth/prompts/llm2llm_augment.txt, "Question: … / Answer: …"); unparsable replies are
     counted (`unparsed`), and a variant whose question has ROUGE-L F1 ≥ `dedup_rouge` with any
     question already in the pool (or added before it) is dropped (`duplicate`);
  4. the survivors join the pool (`origin` = the seed id they came from, `iteration`).
After the last iteration the student is trained once more on the final pool. Each iteration
writes `<out_dir>/iter-<i>/` (pool.parquet, train/, done.json) and is skipped when done, so a
killed run resumes; `llm2llm.json` lists per iteration the seed accuracy (or mean loss), how many
examples were targeted and how many variants were added.

This is a loop phase: `run_llm2llm(config)` runs it whole; `datamill loop` can call it with the
recipe's `llm2llm:` section.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from datamill.synth.generation import Generator, GeneratorSpec, SamplingParams
from datamill.synth.rest_em import check_solutions, fine_tune
from datamill.synth.rouge import RougePool
from datamill.synth.templates import render, user_turn
from datamill.synth.json_lines import json_lines

VARIANT = r"(?is)question\s*[:：]\s*(?P<question>.+?)\s*\n\s*(?:correct\s+)?answer\s*[:：]\s*(?P<answer>.+?)\s*$"


class LLM2LLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed_data: str = Field(description="jsonl of {id, question, answer[, solution]}.")
    student: str = Field("smollm2-135m", description="The base student model (built-in name or folder).")
    teacher: dict[str, Any] = Field(default_factory=dict, description="GeneratorSpec of the teacher.")
    out_dir: str = "out/llm2llm"
    iterations: int = Field(2, ge=1)
    variants: int = Field(2, ge=1, description="New examples the teacher writes per targeted seed example.")
    criterion: Literal["wrong", "loss"] = "wrong"
    loss_fraction: float = Field(0.5, gt=0, le=1, description="criterion loss: the highest-loss share targeted.")
    check: Literal["numeric", "exact"] = "numeric"
    dedup_rouge: float = Field(0.7, gt=0, le=1, description="Drop a variant this similar (ROUGE-L F1) to the pool.")
    instruction_suffix: str = "\nEnd with a line 'Answer: <final answer>'."
    student_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.0, max_new_tokens=256))
    teacher_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.8, max_new_tokens=256))
    student_generator: dict[str, Any] = Field(default_factory=dict, description="GeneratorSpec fields for "
                                              "sampling the student, besides model.")
    train: dict[str, Any] = Field(default_factory=lambda: {"max_steps": 20, "micro_batch_size": 4, "seq_len": 512,
                                                           "optim": {"lr": 1e-5, "warmup_steps": 2}})


def read_seed(path: Path) -> pl.DataFrame:
    rows = []
    for number, row in json_lines(path):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or row.get("answer") is None:
            raise ValueError(f"{path}:{number}: needs a string 'question' and an 'answer'")
        answer = str(row["answer"])
        rows.append({"id": str(row.get("id", f"seed{number}")), "question": row["question"], "answer": answer,
                     "solution": str(row.get("solution") or f"Answer: {answer}"), "origin": None, "iteration": 0})
    if not rows:
        raise ValueError(f"{path}: no seed examples")
    return pl.DataFrame(rows, schema={"id": pl.String, "question": pl.String, "answer": pl.String,
                                      "solution": pl.String, "origin": pl.String, "iteration": pl.Int64})


def parse_variants(replies: list[str]) -> list[tuple[str, str] | None]:
    out = []
    for reply in replies:
        found = re.search(VARIANT, reply.strip())
        out.append((found.group("question").strip(), found.group("answer").strip()) if found else None)
    return out


def augment(teacher: Generator, targeted: pl.DataFrame, pool: RougePool, cfg: LLM2LLMConfig,
            iteration: int) -> tuple[pl.DataFrame, dict[str, int]]:
    """The teacher's deduplicated variants of the targeted seed examples, and drop counts."""
    asks = [user_turn(render("llm2llm_augment", question=q, answer=a))
            for q, a in zip(targeted["question"].to_list(), targeted["answer"].to_list())]
    results = teacher.generate(asks, cfg.teacher_sampling.model_copy(
        update={"n": cfg.variants, "seed": cfg.teacher_sampling.seed + iteration})) if asks else []
    rows, counts = [], {"unparsed": 0, "duplicate": 0}
    for origin, group in zip(targeted["id"].to_list(), results):
        for k, parsed in enumerate(parse_variants([c.text for c in group])):
            if parsed is None:
                counts["unparsed"] += 1
                continue
            rows.append({"id": f"{origin}/llm2llm{iteration}.{k}", "question": parsed[0], "answer": parsed[1],
                         "solution": f"Answer: {parsed[1]}", "origin": origin, "iteration": iteration + 1})
    if rows:
        admitted, _, _ = pool.admit([r["question"] for r in rows], cfg.dedup_rouge)
        counts["duplicate"] = int((~admitted).sum())
        rows = [r for r, ok in zip(rows, admitted) if ok]
    return pl.DataFrame(rows, schema={"id": pl.String, "question": pl.String, "answer": pl.String,
                                      "solution": pl.String, "origin": pl.String, "iteration": pl.Int64}), counts


def pool_records(pool: pl.DataFrame, cfg: LLM2LLMConfig) -> pl.DataFrame:
    conversations = [[{"role": "user", "content": q + cfg.instruction_suffix}, {"role": "assistant", "content": s}]
                     for q, s in zip(pool["question"].to_list(), pool["solution"].to_list())]
    return pl.DataFrame({"id": pool["id"], "messages": conversations},
                        schema={"id": pl.String, "messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String}))})


def student_generator(model: str, cfg: LLM2LLMConfig, out_dir: Path) -> Generator:
    from datamill.synth.factory import make_generator

    return make_generator(GeneratorSpec(**{**cfg.student_generator, "model": model}), out_dir)


def teacher_generator(cfg: LLM2LLMConfig, out_dir: Path) -> Generator:
    from datamill.synth.factory import make_generator

    return make_generator(GeneratorSpec(**cfg.teacher), out_dir)


def answer_losses(model: str, seed: pl.DataFrame, cfg: LLM2LLMConfig) -> np.ndarray:
    """Mean token loss of each seed solution given its question (chat template) under `model`."""
    from datamill.curate.models.lm_scoring import token_losses
    from datamill.curate.models.resolve import load_causal_lm

    lm, tokenizer = load_causal_lm(model)
    prompts = [tokenizer.apply_chat_template(user_turn(q + cfg.instruction_suffix), tokenize=False,
                                             add_generation_prompt=True) for q in seed["question"].to_list()]
    return token_losses(lm, tokenizer, seed["solution"].to_list(), prompts=prompts).mean_loss


def targets(model: str, seed: pl.DataFrame, cfg: LLM2LLMConfig, out_dir: Path, iteration: int
            ) -> tuple[pl.DataFrame, dict[str, float]]:
    """The seed examples the student fails (wrong, or highest loss), and the evaluation figures."""
    if cfg.criterion == "loss":
        losses = answer_losses(model, seed, cfg)
        cut = np.quantile(losses, 1 - cfg.loss_fraction)
        return seed.filter(pl.Series(losses >= cut)), {"seed_mean_loss": float(np.nanmean(losses))}
    chats = [user_turn(q + cfg.instruction_suffix) for q in seed["question"].to_list()]
    replies = student_generator(model, cfg, out_dir).generate(
        chats, cfg.student_sampling.model_copy(update={"n": 1, "seed": cfg.student_sampling.seed + iteration}))
    correct = check_solutions([g[0].text for g in replies], seed["answer"].to_list(), cfg.check)
    return seed.filter(~pl.Series(correct)), {"seed_accuracy": float(np.mean(correct))}


def run_llm2llm(config: LLM2LLMConfig | dict, base_dir: str | Path = ".", log=print) -> dict:
    """All iterations (resuming finished ones) and the final training; returns the summary."""
    cfg = config if isinstance(config, LLM2LLMConfig) else LLM2LLMConfig.model_validate(config)
    seed_path = Path(cfg.seed_data) if Path(cfg.seed_data).is_absolute() else Path(base_dir) / cfg.seed_data
    seed = read_seed(seed_path)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pool, history = seed, []
    for i in range(cfg.iterations):
        folder = out_dir / f"iter-{i}"
        marker = folder / "done.json"
        if marker.is_file():
            record = json.loads(marker.read_text())
            pool = pl.read_parquet(folder / "pool.parquet")
        else:
            folder.mkdir(parents=True, exist_ok=True)
            model = str(fine_tune(pool_records(pool, cfg), cfg.student, folder, cfg.train, log))
            targeted, figures = targets(model, seed, cfg, out_dir, i)
            rouge_pool = RougePool(pool["question"].to_list())
            added, dropped = augment(teacher_generator(cfg, out_dir), targeted, rouge_pool, cfg, i)
            pool = pl.concat([pool, added])
            pool.write_parquet(folder / "pool.parquet")
            record = {"iteration": i, "model": model, **figures, "targeted": targeted.height,
                      "targeted_ids": targeted["id"].to_list(), "added": added.height, "dropped": dropped,
                      "pool": pool.height}
            marker.write_text(json.dumps(record, indent=2))
        log(f"LLM2LLM iteration {i}: {record['targeted']} seed examples targeted, {record['added']} variants added "
            f"(pool {record['pool']})")
        history.append(record)
    final_dir = out_dir / "final"
    if not (final_dir / "done.json").is_file():
        final_dir.mkdir(parents=True, exist_ok=True)
        model = str(fine_tune(pool_records(pool, cfg), cfg.student, final_dir, cfg.train, log))
        (final_dir / "done.json").write_text(json.dumps({"model": model, "pool": pool.height}))
    summary = {"iterations": history, "final": json.loads((final_dir / "done.json").read_text())}
    (out_dir / "llm2llm.json").write_text(json.dumps(summary, indent=2))
    return summary
