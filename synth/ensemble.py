"""Ensemble-Instruct (Lee et al. 2023): several generators answer the same prompt; the output they
agree on is kept, by consensus.

`generators` (two or more: different models or backends, the paper's heterogeneous small LMs)
each answer every record's prompt. `consensus: rouge` (the paper's output ensembling) keeps the
output with the highest mean ROUGE-L F1 to the other generators' outputs, and drops the record
(`ensemble_disagree`) when that agreement is below `min_agreement`; `consensus: majority` extracts
each output's final answer (an "Answer:" line, else the last number, as `distill` does) and keeps
the first output with the most common answer, dropping records whose majority share is below
`min_agreement` (`ensemble_disagree`) or where no output has an answer (`ensemble_no_answer`).
Empty outputs never win (`ensemble_empty` when all are). Columns: the SFT columns (`messages`
or `prompt`/`completion`), `ensemble_agreement`, `ensemble_model` (who wrote the kept output),
`ensemble_outputs` (every generator's output, in `generators` order).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter, FilterParams, Resources
from datamill.synth.distill import extract_answer
from datamill.synth.factory import make_generator
from datamill.synth.generation import GeneratorSpec, SamplingParams
from datamill.synth.rouge import rouge_l_matrix, rouge_tokens
from datamill.synth.templates import SFTFormat, chats_from_batch


class EnsembleParams(FilterParams):
    generators: list[GeneratorSpec] = Field(description="Two or more generators (models/backends) that all answer.")
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.0, max_new_tokens=256))
    consensus: Literal["rouge", "majority"] = "rouge"
    min_agreement: float = Field(0.2, ge=0, le=1, description="rouge: least mean ROUGE-L of the kept output to the "
                                 "others; majority: least share of outputs with the majority answer.")
    number_fallback: bool = Field(True, description="majority: without an 'Answer:' line, the last number is the answer.")
    format: SFTFormat = "messages"

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

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        chats, _ = chats_from_batch(batch)
        sampling = p.sampling.model_copy(update={"n": 1, "seed": p.sampling.seed + self.seed})
        per_model = [[g[0].text.strip() for g in gen.generate(chats, sampling)] for gen in self.generators]
        outputs = [list(row) for row in zip(*per_model)]
        picks, agreement = (rouge_consensus(outputs) if p.consensus == "rouge"
                            else majority_consensus(outputs, p.number_fallback))
        empty = [all(not o.strip() for o in row) for row in outputs]
        status = ["ensemble_empty" if e else "ensemble_no_answer" if k is None else
                  "ensemble_disagree" if a < p.min_agreement else None
                  for e, k, a in zip(empty, picks, agreement)]
        reply = [row[k] if k is not None else "" for row, k in zip(outputs, picks)]
        model = [self.generators[k].model_id if k is not None else None for k in picks]
        out = batch.drop([c for c in ("messages", "prompt", "completion") if c in batch.columns]).with_columns(
            pl.Series("ensemble_agreement", agreement, dtype=pl.Float64),
            pl.Series("ensemble_model", model, dtype=pl.String),
            pl.Series("ensemble_outputs", outputs, dtype=pl.List(pl.String)),
            pl.Series("ensemble_status", status, dtype=pl.String))
        if p.format == "messages":
            conversations = [[*chat, {"role": "assistant", "content": r}] for chat, r in zip(chats, reply)]
            return out.with_columns(pl.Series("messages", conversations,
                                              dtype=pl.List(pl.Struct({"role": pl.String, "content": pl.String}))))
        if any(len(chat) > 1 for chat in chats):
            raise ValueError("format prompt_completion needs single-turn prompts; use format: messages")
        return out.with_columns(pl.Series("prompt", [c[-1]["content"] for c in chats], dtype=pl.String),
                                pl.Series("completion", reply, dtype=pl.String))

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        return [(r, pl.col("ensemble_status") == r) for r in ("ensemble_empty", "ensemble_no_answer", "ensemble_disagree")]
