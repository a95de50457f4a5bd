"""Ensemble-Instruct's instruction side: every generator proposes a new task per seed, checked for format and novelty.

Optionally, only the proposal the generators agree on is kept.

Lee et al. 2023 (and its code, IBM/ensemble-instruct) generate instructions and instances with
small LMs from simplified, categorized in-context templates: a seed task that has an input is
shown with other input tasks and a new instruction *with* an input is asked for (their type A), a
seed task without one with other no-input tasks (type B); new instructions must be novel (ROUGE-L
below 0.7 against the pool, the Self-Instruct rule), and the ensembling is on outputs (see
synth/ensemble.py). Here every generator of the ensemble proposes for the same seed, so the
mixture of models works on the instruction side too. A proposal is kept only when it parses (an
"Instruction:" line, and for type A a non-empty "Input:") and is novel: its ROUGE-L F1 with every
instruction already in the pool (the batch's seeds and the proposals kept before it) stays below
`novelty_rouge`. `instruction_consensus: rouge` (our extension, not in the paper) keeps per seed
only the proposal with the highest mean ROUGE-L F1 to the other generators' proposals, and none
when that agreement is below `instruction_min_agreement`.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from datamill.synth.generation import Generator, SamplingParams
from datamill.synth.rouge import RougePool, rouge_l_matrix, rouge_tokens
from datamill.synth.templates import render, user_turn

NO_INPUT = {"", "<noinput>", "<no input>", "none", "n/a", "no input", "-"}
TASK_LABEL = r"(?i)(?:^|\n)\s*(?:\*\*)?\s*instruction\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?"


def parse_task(reply: str) -> tuple[str, str] | None:
    """(instruction, input) of the first task in a reply ("Instruction: …" then an optional
    "Input: …"; an "Output:" line and any further task are cut off), or None."""
    found = re.search(TASK_LABEL, reply)
    if not found:
        return None
    body = reply[found.end():]
    following = re.search(TASK_LABEL, body)
    if following:
        body = body[:following.start()]
    cut = re.search(r"(?i)\n\s*(?:\*\*)?\s*(?:output|answer|response)\s*(?:\*\*)?\s*[:：]", body)
    if cut:
        body = body[:cut.start()]
    parts = re.split(r"(?i)\n\s*(?:\*\*)?\s*input\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?", body, maxsplit=1)
    instruction = parts[0].strip().strip("*").strip()
    given = parts[1].strip() if len(parts) > 1 else ""
    return (instruction, "" if given.lower() in NO_INPUT else given) if instruction else None


def example_block(tasks: list[tuple[str, str]], with_input: bool) -> str:
    return "\n\n".join(f"Instruction: {q}\nInput: {x}" if with_input else f"Instruction: {q}" for q, x in tasks)


def proposal_prompts(seeds: list[tuple[str, str]], ids: list[str], examples: int, seed: int) -> list[str]:
    """One prompt per seed task: the seed first, then up to `examples - 1` other seeds of its kind
    (with or without input) from the batch, picked by a seeded draw per record."""
    prompts = []
    for k, (instruction, given) in enumerate(seeds):
        with_input = bool(given)
        others = [j for j, (_, x) in enumerate(seeds) if j != k and bool(x) == with_input]
        digest = hashlib.sha256(f"{seed}:{ids[k]}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        picked = sorted(rng.choice(len(others), min(len(others), examples - 1), replace=False)) if others else []
        shown = [(instruction, given), *(seeds[others[j]] for j in picked)]
        prompts.append(render("ensemble_task_input" if with_input else "ensemble_task",
                              examples=example_block(shown, with_input)))
    return prompts


def propose_tasks(generators: list[Generator], seeds: list[tuple[str, str]], ids: list[str], examples: int,
                  sampling: SamplingParams, seed: int) -> list[list[str]]:
    """Every generator's raw reply for every seed: [seed][generator]."""
    asks = [user_turn(p) for p in proposal_prompts(seeds, ids, examples, seed)]
    replies = [[g[0].text for g in gen.generate(asks, sampling.model_copy(update={"n": 1}))] for gen in generators]
    return [list(row) for row in zip(*replies)]


def task_text(task: tuple[str, str]) -> str:
    return f"{task[0]}\n{task[1]}".strip()


def judge_proposals(seeds: list[tuple[str, str]], replies: list[list[str]], novelty_rouge: float,
                    consensus: str, min_agreement: float
                    ) -> tuple[list[list[tuple[str, str] | None]], list[list[str | None]], list[list[float | None]],
                               list[list[float | None]]]:
    """Per seed and generator: the parsed task, its status (None = kept, else
    `ensemble_instruction_unparsed` / `_disagree` / `_outvoted` / `_duplicate`), its agreement
    with the other generators' proposals (consensus rouge) and its highest ROUGE-L to the pool."""
    parsed = [[parse_task(r) for r in row] for row in replies]
    status: list[list[str | None]] = []
    agreement: list[list[float | None]] = []
    for (_, given), row in zip(seeds, parsed):
        marks: list[str | None] = [None if t is not None and (t[1] or not given) else "ensemble_instruction_unparsed"
                                   for t in row]
        scores: list[float | None] = [None] * len(row)
        if consensus == "rouge":
            live = [k for k, m in enumerate(marks) if m is None]
            if live:
                tokens = [rouge_tokens(task_text(row[k])) for k in live]  # type: ignore[arg-type]
                matrix = rouge_l_matrix(tokens, tokens, workers=1)
                mean = (matrix.sum(axis=1) - np.diag(matrix)) / max(len(live) - 1, 1)
                best = int(mean.argmax())
                for j, k in enumerate(live):
                    scores[k] = float(mean[j])
                    marks[k] = ("ensemble_instruction_disagree" if mean[best] < min_agreement or len(live) < 2
                                else None if j == best else "ensemble_instruction_outvoted")
        status.append(marks)
        agreement.append(scores)
    pool = RougePool([q for q, _ in seeds])
    order = [(i, k) for i, row in enumerate(parsed) for k in range(len(row)) if status[i][k] is None]
    novelty: list[list[float | None]] = [[None] * len(row) for row in parsed]
    if order:
        admitted, best, _ = pool.admit([parsed[i][k][0] for i, k in order], novelty_rouge)  # type: ignore[index]
        for (i, k), ok, score in zip(order, admitted, best):
            novelty[i][k] = float(score)
            if not ok:
                status[i][k] = "ensemble_instruction_duplicate"
    return parsed, status, agreement, novelty
