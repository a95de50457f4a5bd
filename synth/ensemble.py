"""Ensemble-Instruct (Lee et al. 2023): several generators answer the same prompt; the output they
agree on is kept, by consensus.

`generators` (two or more: different models or backends, the paper's heterogeneous small LMs)
each answer every record's prompt. `consensus: rouge` (the paper's output ensembling) keeps the
output with the highest mean ROUGE-L F1 to the other generators' outputs, and drops the record
(`ensemble_disagree`) when that agreement is below `min_agreement`; `consensus: majority` extracts
each output's final answer (an "Answer:" line, else the last number, as `distill` does) and keeps
the first output with the most common answer, dropping records whose majority share is below
`min_agreement` (`ensemble_disagree`) or where no output has an answer (`ensemble_no_answer`).
`consensus: greedy` is the paper's own rule (its code, generalized from three outputs to any
number): an output that exactly matches another after normalization (lowercase, no punctuation,
single spaces) is kept; else the one with the highest summed ROUGE-L to the others, and the record
is dropped (`ensemble_disagree`) unless the worst pair's ROUGE-L is above `min_agreement` (default
0.01 for greedy, as in the paper; `ensemble_agreement` is that worst pair, 1 on an exact match).
Empty outputs never win (`ensemble_empty` when all are). Columns: the SFT columns (`messages`
or `prompt`/`completion`), `ensemble_agreement`, `ensemble_model` (who wrote the kept output),
`ensemble_outputs` (every generator's output, in `generators` order).

`propose_instructions: true` runs the paper's instruction side first (synth/ensemble_tasks.py):
each record is a seed task (`instruction` + optional `input`, else its prompt), every generator
proposes a new task of the same kind for it from a few-shot prompt of `examples_per_prompt` seeds,
proposals that do not parse or are not novel (ROUGE-L ≥ `novelty_rouge` with the batch's seeds
or an earlier proposal) are dropped, and with `instruction_consensus: rouge` only the proposal the
generators agree on most is kept per seed. The kept tasks are then answered by every generator
and their outputs ensembled as above. One row per (seed, generator) proposal: `id`
(`<seed id>/ens<generator>`), `instruction`, `input`, `seed_id`, `seed_instruction`,
`ensemble_proposer`, `instruction_agreement`, `instruction_novelty_rouge`, `text` (task and kept
output; the raw proposal when dropped), plus the output columns; dropped proposals carry their
reason (`ensemble_instruction_unparsed`, `_duplicate`, `_disagree`, `_outvoted`). The novelty pool
is per batch (`batch_rows` seeds).

Fidelity note: the paper's code (IBM/ensemble-instruct, ensemble_output.py) keeps, for three
outputs, one that exactly matches another after normalization, else the one with the highest
summed ROUGE-L to the others and drops the example when the worst pair's ROUGE-L is ≤ 0.01
(`consensus: greedy`; its ROUGE-L stems words, ours does not, and on an o1 = o2 match it writes
the first output, where we keep the matching one). It ensembles outputs only:
`instruction_consensus: rouge` is our extension.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter, FilterParams, Resources
from datamill.synth.distill import extract_answer
from datamill.synth.ensemble_tasks import judge_proposals, propose_tasks
from datamill.synth.factory import make_generator
from datamill.synth.generation import GeneratorSpec, SamplingParams
from datamill.synth.rouge import rouge_l_matrix, rouge_tokens
from datamill.synth.templates import SFTFormat, chats_from_batch, instruction_prompt, user_turn

INSTRUCTION_REASONS = ("ensemble_instruction_unparsed", "ensemble_instruction_disagree", "ensemble_instruction_outvoted",
                       "ensemble_instruction_duplicate")
OUTPUT_REASONS = ("ensemble_empty", "ensemble_no_answer", "ensemble_disagree")


class EnsembleParams(FilterParams):
    generators: list[GeneratorSpec] = Field(description="Two or more generators (models/backends) that all answer.")
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.0, max_new_tokens=256))
    consensus: Literal["rouge", "majority", "greedy"] = "rouge"
    min_agreement: float | None = Field(None, ge=0, le=1, description="rouge: least mean ROUGE-L of the kept output "
                                        "to the others (default 0.2); majority: least share of outputs with the "
                                        "majority answer (default 0.2); greedy: the worst pair's ROUGE-L must be "
                                        "above it (default 0.01, the paper's).")
    number_fallback: bool = Field(True, description="majority: without an 'Answer:' line, the last number is the answer.")
    format: SFTFormat = "messages"
    propose_instructions: bool = Field(False, description="Instruction side: every generator proposes a new task "
                                       "per seed record; the kept ones are answered and ensembled.")
    instruction_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.7,
                                                                                        max_new_tokens=128))
    examples_per_prompt: int = Field(3, ge=1, le=24, description="Seed tasks shown per proposal prompt (the "
                                     "record's own first, then others of its kind from the batch).")
    novelty_rouge: float = Field(0.7, gt=0, le=1, description="Drop a proposal this similar (ROUGE-L F1) to a seed "
                                 "or an earlier proposal.")
    instruction_consensus: Literal["none", "rouge"] = Field(
        "none", description="none: every novel proposal is kept (the paper); rouge: per seed only the proposal "
                            "with the highest mean ROUGE-L to the others, if ≥ instruction_min_agreement.")
    instruction_min_agreement: float = Field(0.3, ge=0, le=1)

    @field_validator("generators")
    @classmethod
    def _several(cls, generators: list[GeneratorSpec]) -> list[GeneratorSpec]:
        if len(generators) < 2:
            raise ValueError("ensemble_instruct needs at least two generators")
        return generators


def rouge_consensus(outputs: list[list[str]]) -> tuple[list[int | None], list[float]]:
    """Per prompt: the non-empty output with the highest mean ROUGE-L F1 to the other outputs, and that mean."""
    picks, agreement = [], []
    for answers in outputs:
        tokens = [rouge_tokens(a) for a in answers]
        matrix = rouge_l_matrix(tokens, tokens, workers=1)
        mean = (matrix.sum(axis=1) - np.diag(matrix)) / max(len(answers) - 1, 1)
        mean = np.where([bool(a.strip()) for a in answers], mean, -1.0)
        best = int(mean.argmax())
        picks.append(best if mean[best] >= 0 else None)
        agreement.append(float(max(mean[best], 0.0)))
    return picks, agreement


def normalize_output(text: str) -> str:
    """Lowercase, punctuation removed, single spaces: what the paper compares for exact matches."""
    return " ".join(re.sub(r"[^\w\s]|_", "", text.lower()).split())


def greedy_consensus(outputs: list[list[str]]) -> tuple[list[int | None], list[float]]:
    """The paper's rule per prompt: the first output that exactly matches another (normalized),
    agreement 1; else the output with the highest summed ROUGE-L to the others, agreement = the
    worst pair's ROUGE-L. None where every output is empty."""
    picks: list[int | None] = []
    agreement: list[float] = []
    for answers in outputs:
        normal = [normalize_output(a) for a in answers]
        if not any(normal):
            picks.append(None)
            agreement.append(0.0)
            continue
        match = next((i for i in range(len(normal)) for j in range(len(normal))
                      if i != j and normal[i] and normal[i] == normal[j]), None)
        if match is not None:
            picks.append(match)
            agreement.append(1.0)
            continue
        tokens = [rouge_tokens(a) for a in normal]
        matrix = rouge_l_matrix(tokens, tokens, workers=1)
        sums = np.where([bool(a) for a in normal], matrix.sum(axis=1) - np.diag(matrix), -1.0)
        picks.append(int(sums.argmax()))
        agreement.append(float(matrix[~np.eye(len(normal), dtype=bool)].min()) if len(normal) > 1 else 0.0)
    return picks, agreement


def majority_consensus(outputs: list[list[str]], number_fallback: bool = True) -> tuple[list[int | None], list[float]]:
    """Per prompt: the first output with the most common final answer, and that answer's share."""
    picks, agreement = [], []
    for answers in outputs:
        parsed = pl.select(extract_answer(pl.Series(answers, dtype=pl.String), number_fallback).alias("a"))["a"].to_list()
        counts: dict[str, int] = {}
        for a in parsed:
            if a is not None:
                counts[a] = counts.get(a, 0) + 1
        if not counts:
            picks.append(None)
            agreement.append(0.0)
            continue
        top = max(counts.values())
        winner = next(a for a in parsed if a is not None and counts[a] == top)
        picks.append(parsed.index(winner))
        agreement.append(top / len(answers))
    return picks, agreement


@register_stage
class EnsembleInstructStage(Filter):
    """Several generators answer; the consensus output is kept (Ensemble-Instruct)."""

    type_name = "ensemble_instruct"
    Params = EnsembleParams
    inputs: ClassVar[tuple[str, ...]] = ("messages", "prompt", "instruction", "text")
    outputs: ClassVar[tuple[str, ...]] = ("ensemble_agreement",)
    resources = Resources(cpus=1.0, gpus=0.0, batch_rows=64)

    def setup(self) -> None:
        run_dir = getattr(self, "run_dir", None)
        self.generators = [make_generator(spec, run_dir, probe=self.params.sampling) for spec in self.params.generators]

    def answer(self, chats: list[list[dict[str, str]]]) -> pl.DataFrame:
        """Every generator answers every chat; the consensus columns and the kept reply (`reply`)."""
        p = self.params
        sampling = p.sampling.model_copy(update={"n": 1, "seed": p.sampling.seed + self.seed})
        per_model = [[g[0].text.strip() for g in gen.generate(chats, sampling)] for gen in self.generators] if chats \
            else [[] for _ in self.generators]
        outputs = [list(row) for row in zip(*per_model)]
        picks, agreement = (rouge_consensus(outputs) if p.consensus == "rouge"
                            else greedy_consensus(outputs) if p.consensus == "greedy"
                            else majority_consensus(outputs, p.number_fallback))
        threshold = p.min_agreement if p.min_agreement is not None else 0.01 if p.consensus == "greedy" else 0.2
        low = [a <= threshold if p.consensus == "greedy" else a < threshold for a in agreement]
        empty = [all(not o.strip() for o in row) for row in outputs]
        status = ["ensemble_empty" if e else "ensemble_no_answer" if k is None else
                  "ensemble_disagree" if too_low else None
                  for e, k, too_low in zip(empty, picks, low)]
        return pl.DataFrame({"ensemble_agreement": pl.Series(agreement, dtype=pl.Float64),
                             "ensemble_model": pl.Series([self.generators[k].model_id if k is not None else None
                                                          for k in picks], dtype=pl.String),
                             "ensemble_outputs": pl.Series(outputs, dtype=pl.List(pl.String)),
                             "ensemble_status": pl.Series(status, dtype=pl.String),
                             "reply": pl.Series([row[k] if k is not None else "" for row, k in zip(outputs, picks)],
                                                dtype=pl.String)})

    def with_sft(self, out: pl.DataFrame, chats: list[list[dict[str, str]]], reply: list[str]) -> pl.DataFrame:
        if self.params.format == "messages":
            conversations = [[*chat, {"role": "assistant", "content": r}] for chat, r in zip(chats, reply)]
            return out.with_columns(pl.Series("messages", conversations,
                                              dtype=pl.List(pl.Struct({"role": pl.String, "content": pl.String}))))
        if any(len(chat) > 1 for chat in chats):
            raise ValueError("format prompt_completion needs single-turn prompts; use format: messages")
        return out.with_columns(pl.Series("prompt", [c[-1]["content"] for c in chats], dtype=pl.String),
                                pl.Series("completion", reply, dtype=pl.String))

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        if self.params.propose_instructions:
            return self.score_proposals(batch)
        chats, _ = chats_from_batch(batch)
        answered = self.answer(chats)
        out = batch.drop([c for c in ("messages", "prompt", "completion") if c in batch.columns]).hstack(
            answered.drop("reply"))
        return self.with_sft(out, chats, answered["reply"].to_list())

    def score_proposals(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The instruction side: proposals per (seed, generator), judged, the kept ones answered."""
        p = self.params
        ids = batch["id"].cast(pl.String).to_list() if "id" in batch.columns else [str(i) for i in range(batch.height)]
        if "instruction" in batch.columns:
            given = batch["input"].fill_null("").to_list() if "input" in batch.columns else [""] * batch.height
            seeds = [(q or "", (x or "").strip()) for q, x in zip(batch["instruction"].to_list(), given)]
        else:
            seeds = [(chat[-1]["content"], "") for chat in chats_from_batch(batch)[0]]
        sampling = p.instruction_sampling.model_copy(update={"seed": p.instruction_sampling.seed + self.seed})
        replies = propose_tasks(self.generators, seeds, ids, p.examples_per_prompt, sampling, self.seed)
        parsed, status, agreement, novelty = judge_proposals(seeds, replies, p.novelty_rouge, p.instruction_consensus,
                                                             p.instruction_min_agreement)
        rows = []
        for i, row in enumerate(parsed):
            for k, task in enumerate(row):
                rows.append({"row": i, "id": f"{ids[i]}/ens{k}", "seed_id": ids[i], "seed_instruction": seeds[i][0],
                             "ensemble_proposer": self.generators[k].model_id,
                             "instruction": task[0] if task else None, "input": task[1] if task else None,
                             "proposal": replies[i][k], "instruction_agreement": agreement[i][k],
                             "instruction_novelty_rouge": novelty[i][k], "instruction_status": status[i][k]})
        table = pl.DataFrame(rows, schema={"row": pl.Int64, "id": pl.String, "seed_id": pl.String,
                                           "seed_instruction": pl.String, "ensemble_proposer": pl.String,
                                           "instruction": pl.String, "input": pl.String, "proposal": pl.String,
                                           "instruction_agreement": pl.Float64, "instruction_novelty_rouge": pl.Float64,
                                           "instruction_status": pl.String})
        live = table["instruction_status"].is_null()
        kept = table.filter(live)
        chats = [user_turn(t) for t in kept.select(instruction_prompt(pl.col("instruction"), pl.col("input")))
                 .to_series().to_list()]
        consensus = self.answer(chats)
        answered = self.with_sft(kept.hstack(consensus), chats, consensus["reply"].to_list())
        answered = answered.with_columns(
            (instruction_prompt(pl.col("instruction"), pl.col("input")) + pl.lit("\n\n") + pl.col("reply")).alias("text"))
        dropped = table.filter(~live).with_columns(pl.col("proposal").fill_null("").alias("text"))
        out = pl.concat([answered.drop("reply"), dropped], how="diagonal_relaxed").sort("row", "id")
        out = out.with_columns(pl.coalesce("instruction_status", "ensemble_status").alias("ensemble_status"))
        base = batch.drop([c for c in (*out.columns, "messages", "prompt", "completion", "text", "output")
                           if c in batch.columns]).with_row_index("row")
        return out.join(base.with_columns(pl.col("row").cast(pl.Int64)), on="row", how="left").drop(
            "row", "instruction_status")

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        reasons = (*INSTRUCTION_REASONS, *OUTPUT_REASONS) if self.params.propose_instructions else OUTPUT_REASONS
        return [(r, pl.col("ensemble_status") == r) for r in reasons]
