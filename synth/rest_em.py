"""ReST-EM (Singh et al. 2023, "Beyond Human Data"): sample k solutions per problem from the current
model, keep the verified ones, fine-tune the BASE model on them, repeat; report pass@1 per iteration.

Problems: a jsonl file of `{id, question, answer}` (checked by `numeric` — the final answer, an
"Answer:" line else the last number, equal within 1e-6 relative — or `exact`, the normalized final
answer string) or `{id, question, tests}` for `code`: the solution's code (its last ```python block,
else the whole reply) runs followed by the problem's `tests` (assert statements) in a fresh
`python -I` subprocess with a wall-clock limit (`code_timeout_s`), an address-space limit
(`code_memory_mb`, RLIMIT_AS), no stdin, an empty environment and socket creation disabled (a
guard against accidental network use, not a security sandbox).

Iteration i (E-step): sample `samples` solutions per problem from the current model (iteration
0: the base model), check each, pass@1 of iteration i = mean over problems of correct/samples
(the unbiased pass@1 estimate from k samples). M-step: the correct ones, at most
`max_per_problem` per problem (the paper's cap, against easy problems dominating), become SFT
conversations and `datamill train` fine-tunes the base model on them (not the previous
iteration's model, as in the paper); the result is the next iteration's model. After the last
iteration its model is sampled once more, so `iterations: 2` reports three pass@1 values (base,
after 1, after 2). Every iteration writes `<out_dir>/iter-<i>/` (samples.parquet, sft/, train/,
done.json) and is skipped when its done.json exists, so a killed run resumes.

This is a loop phase: `run_rest_em(config)` runs it whole; `datamill loop` can call it with the
recipe's `rest_em:` section.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from datamill.synth.distill import extract_answer
from datamill.synth.generation import Generator, GeneratorSpec, SamplingParams
from datamill.synth.templates import user_turn
from datamill.synth.json_lines import json_lines

CODE_BLOCK = r"```(?:python|py)?\s*\n(.*?)```"
NO_NETWORK = ("import socket as _s\n"
              "def _no_network(*a, **k):\n    raise OSError('network disabled for checked code')\n"
              "_s.socket = _no_network\n_s.create_connection = _no_network\n")


class RestEMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    problems: str = Field(description="jsonl: {id, question, answer} (numeric/exact) or {id, question, tests} (code).")
    model: str = Field("smollm2-135m", description="The base model (built-in name or folder).")
    out_dir: str = "out/rest_em"
    iterations: int = Field(2, ge=1)
    samples: int = Field(4, ge=1, description="Solutions sampled per problem per iteration (k).")
    max_per_problem: int = Field(2, ge=1, description="Most correct solutions kept per problem.")
    check: Literal["numeric", "exact", "code"] = "numeric"
    code_timeout_s: float = Field(5.0, gt=0)
    code_memory_mb: int = Field(512, ge=64)
    system: str | None = Field(None, description="A system message before each problem.")
    instruction_suffix: str = Field("\nEnd with a line 'Answer: <final answer>'.",
                                    description="Appended to each question (numeric/exact).")
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.8, max_new_tokens=256))
    generator: dict[str, Any] = Field(default_factory=dict, description="GeneratorSpec fields besides model "
                                      "(backend, batch_size, dtype…).")
    train: dict[str, Any] = Field(default_factory=lambda: {"max_steps": 20, "micro_batch_size": 4, "seq_len": 512,
                                                           "optim": {"lr": 1e-5, "warmup_steps": 2}},
                                  description="datamill.train fields for each fine-tune (data, model, out_dir are set).")


def read_problems(path: Path, check: str) -> pl.DataFrame:
    """id, question and answer (or tests) of each problem; a bad line raises naming file and line."""
    need = "tests" if check == "code" else "answer"
    rows = []
    for number, row in json_lines(path):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or row.get(need) is None:
            raise ValueError(f"{path}:{number}: needs a string 'question' and a {need!r}")
        rows.append({"id": str(row.get("id", number)), "question": row["question"], "target": str(row[need])})
    if not rows:
        raise ValueError(f"{path}: no problems")
    return pl.DataFrame(rows)


def numbers_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        x, y = float(a.replace(",", "")), float(b.replace(",", ""))
    except ValueError:
        return a.strip().lower() == b.strip().lower()
    return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)


def run_code(solution: str, tests: str, timeout_s: float, memory_mb: int) -> bool:
    """True when the solution's code followed by the tests exits 0 within the limits."""
    blocks = re.findall(CODE_BLOCK, solution, re.S)
    code = blocks[-1] if blocks else solution

    def limit() -> None:
        limit_bytes = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    try:
        done = subprocess.run([sys.executable, "-I", "-c", NO_NETWORK + code + "\n\n" + tests],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout_s, env={"PATH": os.environ.get("PATH", "")}, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def check_solutions(solutions: list[str], targets: list[str], check: str, timeout_s: float = 5.0,
                    memory_mb: int = 512) -> list[bool]:
    """Whether each solution is correct for its target (answer, or tests for code)."""
    if check == "code":
        return [run_code(s, t, timeout_s, memory_mb) for s, t in zip(solutions, targets)]
    answers = pl.select(extract_answer(pl.Series(solutions, dtype=pl.String), True).alias("a"))["a"].to_list()
    wanted = pl.select(extract_answer(pl.Series([f"Answer: {t}" for t in targets], dtype=pl.String)).alias("a"))["a"].to_list()
    if check == "numeric":
        return [numbers_equal(a, w) for a, w in zip(answers, wanted)]
    return [a is not None and a == w for a, w in zip(answers, wanted)]


def problem_chats(problems: pl.DataFrame, cfg: RestEMConfig) -> list[list[dict[str, str]]]:
    suffix = "" if cfg.check == "code" else cfg.instruction_suffix
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    return [system + user_turn(q + suffix) for q in problems["question"].to_list()]


def e_step(generator: Generator, problems: pl.DataFrame, cfg: RestEMConfig, iteration: int) -> pl.DataFrame:
    """One row per (problem, sample): id, sample, solution, correct."""
    chats = problem_chats(problems, cfg)
    params = cfg.sampling.model_copy(update={"n": cfg.samples, "seed": cfg.sampling.seed + iteration})
    results = generator.generate(chats, params)
    ids, targets = problems["id"].to_list(), problems["target"].to_list()
    rows = [(ids[i], k, c.text.strip(), targets[i]) for i, group in enumerate(results) for k, c in enumerate(group)]
    correct = check_solutions([r[2] for r in rows], [r[3] for r in rows], cfg.check, cfg.code_timeout_s,
                              cfg.code_memory_mb)
    return pl.DataFrame({"id": [r[0] for r in rows], "sample": [r[1] for r in rows],
                         "solution": [r[2] for r in rows], "correct": correct},
                        schema={"id": pl.String, "sample": pl.Int64, "solution": pl.String, "correct": pl.Boolean})


def pass_at_1(samples: pl.DataFrame) -> float:
    return float(samples.group_by("id").agg(pl.col("correct").mean())["correct"].mean())


def keep_correct(samples: pl.DataFrame, cap: int) -> pl.DataFrame:
    """The correct solutions, at most `cap` per problem (distinct texts, lowest sample index first)."""
    return (samples.filter(pl.col("correct")).unique(["id", "solution"], keep="first", maintain_order=True)
            .sort("id", "sample").group_by("id", maintain_order=True).head(cap))


def sft_records(kept: pl.DataFrame, problems: pl.DataFrame, cfg: RestEMConfig) -> pl.DataFrame:
    chats = dict(zip(problems["id"].to_list(), problem_chats(problems, cfg)))
    conversations = [[*chats[i], {"role": "assistant", "content": s}] for i, s in
                     zip(kept["id"].to_list(), kept["solution"].to_list())]
    return pl.DataFrame({"id": kept["id"], "messages": conversations},
                        schema={"id": pl.String, "messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String}))})


def fine_tune(records: pl.DataFrame, base_model: str, folder: Path, train_fields: dict[str, Any], log) -> Path:
    """SFT of the base model on `records` (messages); returns the saved model folder."""
    from datamill.train import train

    (folder / "sft").mkdir(parents=True, exist_ok=True)
    records.write_parquet(folder / "sft" / "part-00000.parquet")
    fields = {"progress": False, "tensorboard": False, "eval_every": 0, **train_fields,
              "data": {"eval_holdout": 0.0, **train_fields.get("data", {}), "path": str(folder / "sft")},
              "model": {**train_fields.get("model", {}), "path": base_model}, "out_dir": str(folder / "train")}
    result = train(fields)
    log(f"fine-tuned {base_model} on {records.height} verified solutions → {result.final_dir}")
    return Path(result.final_dir)


def generator_for(model: str, cfg: RestEMConfig, out_dir: Path) -> Generator:
    from datamill.synth.factory import make_generator

    spec = GeneratorSpec(**{**cfg.generator, "model": model})
    return make_generator(spec, out_dir)


def run_rest_em(config: RestEMConfig | dict, base_dir: str | Path = ".", log=print) -> dict:
    """All iterations (resuming finished ones); {"pass_at_1": [...], "iterations": [per-iteration dicts]}."""
    cfg = config if isinstance(config, RestEMConfig) else RestEMConfig.model_validate(config)
    problems_path = Path(cfg.problems) if Path(cfg.problems).is_absolute() else Path(base_dir) / cfg.problems
    problems = read_problems(problems_path, cfg.check)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, history = cfg.model, []
    for i in range(cfg.iterations + 1):
        folder = out_dir / f"iter-{i}"
        marker = folder / "done.json"
        if marker.is_file():
            record = json.loads(marker.read_text())
        else:
            folder.mkdir(parents=True, exist_ok=True)
            samples = e_step(generator_for(model, cfg, out_dir), problems, cfg, i)
            samples.write_parquet(folder / "samples.parquet")
            record = {"iteration": i, "model": model, "pass_at_1": pass_at_1(samples),
                      "problems_solved": int(samples.group_by("id").agg(pl.col("correct").any())["correct"].sum()),
                      "correct_samples": int(samples["correct"].sum()), "samples": samples.height}
            if i < cfg.iterations:
                kept = keep_correct(samples, cfg.max_per_problem)
                record["kept"] = kept.height
                record["next_model"] = str(fine_tune(sft_records(kept, problems, cfg), cfg.model, folder, cfg.train, log)
                                           ) if kept.height else cfg.model
            marker.write_text(json.dumps(record, indent=2))
        log(f"ReST-EM iteration {i}: pass@1 {record['pass_at_1']:.3f} ({record['problems_solved']} of "
            f"{problems.height} problems solved at least once)")
        history.append(record)
        model = record.get("next_model", model)
    summary = {"pass_at_1": [r["pass_at_1"] for r in history], "iterations": history}
    (out_dir / "rest_em.json").write_text(json.dumps(summary, indent=2))
    return summary
