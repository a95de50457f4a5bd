"""Self-Instruct / Alpaca bootstrapping as a source: seed tasks in, new instruction data out.

Each round samples `seeds_per_prompt` seed tasks (plus `machine_per_prompt` tasks generated
earlier, as Self-Instruct does) and asks the generator for one new task, `new_per_prompt` samples
per prompt (Self-Instruct asks for a numbered list to continue; a 135M model only copies the
examples back then, so we sample single tasks; a reply that is a numbered list is still split). They go through the published filters (Self-Instruct / Alpaca): word count
(3 < words ≤ 150), a keyword blacklist (image, graph, file, map, draw, plot, go to, video, audio,
music, flowchart, diagram…), "write a program", a leading punctuation mark or non-ASCII character,
and ROUGE-L F1 ≥ 0.7 with any instruction already in the pool (seeds and accepted ones, tokenized
once). Survivors get an input (when they come from with-input seeds) and an output; instances with
an empty output or output == input are dropped. With `ensemble`, several generators answer and the
output the models agree on most (mean pairwise ROUGE-L, Ensemble-Instruct) is kept.

This is a Source, not a Stage: it creates records from a seed file rather than transforming
records, and the growing pool makes the rounds sequential, so it plans one shard. Every dropped
candidate becomes a quarantine row with reason `self_instruct:<rule>` and the candidate as JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from datamill.curate.engine.records import QUARANTINE_SCHEMA, RECORD_SCHEMA
from datamill.curate.engine.registry import register_source
from datamill.curate.engine.source import ShardSpec, Source, SourceBatch, SourceParams
from datamill.synth.factory import make_generator
from datamill.synth.generation import GeneratorSpec, SamplingParams
from datamill.synth.rouge import RougePool, rouge_l_matrix, rouge_tokens
from datamill.synth.templates import SFTFormat, instruction_prompt, render, sft_columns, user_turn
from datamill.synth.json_lines import json_lines

BLACKLIST = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
             "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"]
"""Alpaca's keyword blacklist: tasks a text-only model cannot do."""

NUMBERED_ITEM = r"(?m)^[ \t]*\d{1,3}[ \t]*[.):][ \t]*(.*\S)[ \t]*$"


def shipped_seed_file() -> Path:
    return Path(str(resources.files("datamill.synth").joinpath("seed_tasks.jsonl")))


class SelfInstructParams(SourceParams):
    type: Literal["self_instruct"] = "self_instruct"
    seed_file: str | None = Field(None, description="jsonl of {instruction, input, output}; default: the shipped 30 tasks.")
    count: int = Field(20, ge=1, description="Instruction records to produce.")
    seeds_per_prompt: int = Field(3, ge=1, description="Seed tasks shown per prompt (Alpaca: 3, Self-Instruct: 6).")
    machine_per_prompt: int = Field(0, ge=0, description="Generated tasks also shown per prompt (Self-Instruct: 2).")
    new_per_prompt: int = Field(4, ge=1, description="Samples per prompt, one new task each (a small model copies "
                                "its examples when asked for a list, so each sample asks for a single task).")
    prompts_per_round: int = Field(4, ge=1, description="Prompts generated together per round.")
    max_rounds: int = Field(20, ge=1, description="Stop after this many rounds even if `count` is not reached.")
    input_mode: Literal["both", "with_input", "without_input"] = Field(
        "both", description="Separate pipelines: tasks with an input, without, or both (alternating).")
    min_words: int = Field(3, ge=0, description="Drop instructions with at most this many words.")
    max_words: int = Field(150, ge=1, description="Drop instructions with more words.")
    blacklist: list[str] = Field(default_factory=lambda: list(BLACKLIST))
    rouge_threshold: float = Field(0.7, gt=0, le=1, description="Drop when ROUGE-L F1 with the pool is ≥ this.")
    generator: GeneratorSpec = Field(default_factory=GeneratorSpec)
    instruction_sampling: SamplingParams = Field(
        default_factory=lambda: SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=256))
    output_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.7, max_new_tokens=256))
    ensemble: list[GeneratorSpec] = Field(
        default_factory=list, description="More generators that also answer (Ensemble-Instruct majority).")
    ensemble_min_rouge: float = Field(0.2, ge=0, le=1, description="Drop when the best output's mean ROUGE-L with the others is below.")
    format: SFTFormat = Field("messages", description="SFT columns: messages, or prompt + completion.")
    seed: int = 0


def read_seed_tasks(path: Path) -> pl.DataFrame:
    """id, instruction, input, output of every seed task (id defaults to `seed_<line>`); a bad line
    raises naming file, line and field."""
    rows = []
    for number, row in json_lines(path):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
            raise ValueError(f"{path}:{number}: field 'instruction' must be a non-empty string")
        for field in ("input", "output"):
            if not isinstance(row.get(field, ""), str):
                raise ValueError(f"{path}:{number}: field {field!r} must be a string")
        rows.append({"id": str(row.get("id", f"seed_{number}")), "instruction": row["instruction"].strip(),
                     "input": row.get("input", ""), "output": row.get("output", "")})
    if not rows:
        raise ValueError(f"{path}: no seed tasks")
    return pl.DataFrame(rows, schema={"id": pl.String, "instruction": pl.String, "input": pl.String, "output": pl.String})


def parse_numbered(completions: pl.DataFrame) -> pl.DataFrame:
    """Candidate instructions of each completion (`text`, `finish_reason`, …) → one row per
    candidate: its numbered-list items, or, for a reply without a list, its first line (bullets and
    "Task:" stripped). `cut_off` is true for a candidate that max_new_tokens cut mid-sentence: the
    last candidate of a completion that hit the limit, when it sits on the reply's final line and
    that line does not end a sentence (a complete first line followed by more text is not cut)."""
    first_line = pl.col("text").str.strip_chars().str.extract(r"^([^\n]*)").str.replace(r"^[-*•\s]+", "")
    items = (completions.with_row_index("completion")
             .with_columns(pl.col("text").str.extract_all(NUMBERED_ITEM).alias("instruction"))
             .with_columns(pl.when(pl.col("instruction").list.len() > 0).then(pl.col("instruction"))
                           .otherwise(pl.concat_list(first_line)).alias("instruction"))
             .explode("instruction").drop_nulls("instruction"))
    return items.with_columns(
        pl.col("instruction").str.replace(r"^[ \t]*\d{1,3}[ \t]*[.):][ \t]*", "")
        .str.replace(r"(?i)^(new\s+)?(instruction|task)\s*:\s*", "").str.replace_all(r"\s+", " ")
        .str.strip_chars().str.strip_chars_end(":").alias("instruction"),
        ((pl.col("finish_reason") == "length") & (pl.int_range(pl.len()).over("completion") == pl.len().over("completion") - 1)
         & cut_tail(pl.col("text"))).alias("cut_off"),
    ).filter(pl.col("instruction") != "")


def cut_tail(text: pl.Expr) -> pl.Expr:
    """Whether a reply that hit max_new_tokens ends in a cut sentence that a candidate was read from:
    its final line is its only line or a numbered item, and does not end with a sentence end."""
    last_line = text.str.extract(r"([^\n]*)$").fill_null("")
    only_line = ~text.str.strip_chars().str.contains("\n")
    item_line = last_line.str.contains(r"^[ \t]*\d{1,3}[ \t]*[.):]")
    ended = last_line.str.strip_chars().str.contains(r"[.!?…\"'”’)\]]$")
    return (only_line | item_line) & ~ended & (last_line.str.strip_chars() != "")


def instruction_rules(params: SelfInstructParams) -> list[tuple[str, pl.Expr]]:
    """(reason, expression true for instructions to drop), in order; the first match is the reason."""
    words = pl.col("instruction").str.count_matches(r"\S+")
    rules = [("truncated", pl.col("cut_off")),
             ("too_short", words <= params.min_words),
             ("too_long", words > params.max_words)]
    if params.blacklist:
        keywords = "|".join(w.replace(" ", r"\s+") for w in map(str.strip, params.blacklist) if w)
        rules.append(("blacklisted_keyword", pl.col("instruction").str.contains(rf"(?i)\b({keywords})\b")))
    rules += [("program_request", pl.col("instruction").str.contains(r"(?i)^write a program")),
              ("starts_with_punctuation", pl.col("instruction").str.contains(r"^[[:punct:]]")),
              ("starts_non_ascii", pl.col("instruction").str.contains(r"^[^\x00-\x7F]"))]
    return rules


def first_reason(rules: list[tuple[str, pl.Expr]]) -> pl.Expr:
    reason = pl.lit(None, dtype=pl.String)
    for name, condition in reversed(rules):
        reason = pl.when(condition.fill_null(False)).then(pl.lit(name)).otherwise(reason)
    return reason


def ensemble_pick(outputs: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Per instruction, the index of the model output with the highest mean ROUGE-L F1 to the other
    models' outputs, and that mean (Ensemble-Instruct's majority by agreement)."""
    picks, scores = np.zeros(len(outputs), dtype=np.int64), np.zeros(len(outputs))
    for i, answers in enumerate(outputs):
        tokens = [rouge_tokens(a) for a in answers]
        matrix = rouge_l_matrix(tokens, tokens, workers=1)
        agreement = (matrix.sum(axis=1) - np.diag(matrix)) / max(len(answers) - 1, 1)
        picks[i], scores[i] = int(agreement.argmax()), float(agreement.max())
    return picks, scores


@register_source
class SelfInstructSource(Source):
    """Generates `count` instruction records from seed tasks, Self-Instruct style."""

    type_name = "self_instruct"
    Params = SelfInstructParams

    def plan(self) -> list[ShardSpec]:
        return [ShardSpec(self.index, f"self_instruct: {self.params.count} tasks from {self.seed_path()}")]

    def seed_path(self) -> Path:
        if self.params.seed_file is None:
            return shipped_seed_file()
        path = Path(self.params.seed_file)
        return path if path.is_absolute() else Path(self.base_dir) / path

    def read(self, shard: ShardSpec, batch_rows: int) -> Iterator[SourceBatch]:
        p = self.params
        seeds = read_seed_tasks(self.seed_path())
        has_input = seeds["input"].str.strip_chars() != ""
        kinds = {"with_input": seeds.filter(has_input), "without_input": seeds.filter(~has_input)}
        wanted = ["with_input", "without_input"] if p.input_mode == "both" else [p.input_mode]
        wanted = [k for k in wanted if kinds[k].height]
        if not wanted:
            raise ValueError(f"{self.seed_path()}: no seed tasks {p.input_mode.replace('_', ' ')}")
        run_dir = getattr(self, "run_dir", None)
        probe = p.instruction_sampling.model_copy(update={"n": p.new_per_prompt})
        generator = make_generator(p.generator, run_dir, probe=probe, label=self.name)
        ensemble = [generator] + [make_generator(spec, run_dir, probe=p.output_sampling, label=f"{self.name}.ensemble{i}")
                                  for i, spec in enumerate(p.ensemble, start=1)]
        pool = RougePool(seeds["instruction"].to_list())
        machine: dict[str, list[str]] = {k: [] for k in wanted}
        rng = np.random.default_rng(p.seed)
        made = 0
        for round_index in range(p.max_rounds):
            if made >= p.count:
                break
            prompt_kinds = [wanted[(round_index * p.prompts_per_round + j) % len(wanted)] for j in range(p.prompts_per_round)]
            chats = [user_turn(self._task_prompt(k, kinds[k]["instruction"].to_list(), machine[k], rng)) for k in prompt_kinds]
            params = p.instruction_sampling.model_copy(update={"n": p.new_per_prompt, "seed": p.seed * 1_000_003 + round_index})
            replies = generator.generate(chats, params)
            candidates = parse_numbered(pl.DataFrame({
                "text": [c.text for group in replies for c in group],
                "finish_reason": [c.finish_reason for group in replies for c in group],
                "kind": [kind for kind, group in zip(prompt_kinds, replies) for _ in group]}))
            candidates = candidates.with_columns(first_reason(instruction_rules(p)).alias("reason"),
                                                 pl.lit(None, dtype=pl.Float64).alias("rouge"),
                                                 pl.lit(None, dtype=pl.String).alias("similar_to"))
            candidates = self._rouge_filter(candidates, pool, p.count - made)
            for kind, rows in candidates.filter(pl.col("reason").is_null()).group_by("kind"):
                machine[kind[0]].extend(rows["instruction"].to_list())
            records, dropped = self._instances(candidates, ensemble, round_index, made)
            made += records.height
            yield SourceBatch(records=records, quarantine=self._quarantine(dropped), lines_read=candidates.height)

    def _task_prompt(self, kind: str, seed_instructions: list[str], machine: list[str], rng: np.random.Generator) -> str:
        p = self.params
        shown = [seed_instructions[i] for i in rng.choice(len(seed_instructions), min(p.seeds_per_prompt, len(seed_instructions)), replace=False)]
        if machine and p.machine_per_prompt:
            shown += [machine[i] for i in rng.choice(len(machine), min(p.machine_per_prompt, len(machine)), replace=False)]
            shown = [shown[i] for i in rng.permutation(len(shown))]
        examples = "\n".join(f"- {text}" for text in shown)
        note = ", each working on a given input (a text, a list, a sentence)" if kind == "with_input" else ""
        return render("self_instruct_tasks", examples=examples, input_note=note)

    def _rouge_filter(self, candidates: pl.DataFrame, pool: RougePool, remaining: int) -> pl.DataFrame:
        """ROUGE-L against the pool for rule survivors; the first `remaining` admitted ones are kept."""
        alive = candidates["reason"].is_null().to_numpy()
        idx = np.flatnonzero(alive)
        if not idx.size:
            return candidates
        texts = candidates["instruction"].to_list()
        admitted, best, similar = pool.admit([texts[i] for i in idx], self.params.rouge_threshold)
        reasons = candidates["reason"].to_list()
        rouge = [None] * candidates.height
        similar_to: list[str | None] = [None] * candidates.height
        kept = 0
        for k, i in enumerate(idx):
            rouge[i], similar_to[i] = float(best[k]), similar[k]
            if not admitted[k]:
                reasons[i] = "similar_to_pool"
            elif kept >= remaining:
                reasons[i] = "count_reached"
            else:
                kept += 1
        return candidates.with_columns(pl.Series("reason", reasons, dtype=pl.String),
                                       pl.Series("rouge", rouge, dtype=pl.Float64),
                                       pl.Series("similar_to", similar_to, dtype=pl.String))

    def _instances(self, candidates: pl.DataFrame, generators: list, round_index: int, made: int):
        """Inputs and outputs for the kept instructions → (records, dropped candidates)."""
        p = self.params
        kept = candidates.filter(pl.col("reason").is_null()).with_columns(pl.lit("").alias("input"))
        dropped = candidates.filter(pl.col("reason").is_not_null()).with_columns(pl.lit("").alias("input"),
                                                                                 pl.lit("").alias("output"))
        if kept.height == 0:
            return self._records(kept.with_columns(pl.lit("").alias("output")), made), dropped
        params = p.output_sampling.model_copy(update={"n": 1, "seed": p.seed * 1_000_003 + round_index})
        needs_input = kept["kind"] == "with_input"
        if needs_input.any():
            asks = [user_turn(render("self_instruct_input", instruction=t)) for t in kept.filter(needs_input)["instruction"]]
            inputs = iter(c[0].text.strip() for c in generators[0].generate(asks, params))
            kept = kept.with_columns(pl.Series("input", [next(inputs) if n else "" for n in needs_input], dtype=pl.String))
        prompts = kept.select(instruction_prompt(pl.col("instruction"), pl.col("input")))
        chats = [user_turn(t) for t in prompts.to_series()]
        answers = [[c[0].text.strip() for c in g.generate(chats, params)] for g in generators]
        if len(generators) > 1:
            per_instruction = [list(column) for column in zip(*answers)]
            picks, agreement = ensemble_pick(per_instruction)
            kept = kept.with_columns(pl.Series("output", [a[k] for a, k in zip(per_instruction, picks)], dtype=pl.String),
                                     pl.Series("ensemble_rouge", agreement),
                                     pl.Series("output_model", [generators[k].model_id for k in picks], dtype=pl.String))
            ensemble_rule = [("ensemble_disagree", pl.col("ensemble_rouge") < p.ensemble_min_rouge)]
        else:
            kept = kept.with_columns(pl.Series("output", answers[0], dtype=pl.String),
                                     pl.lit(generators[0].model_id).alias("output_model"))
            ensemble_rule = []
        same = pl.col("input").str.strip_chars().str.to_lowercase() == pl.col("output").str.strip_chars().str.to_lowercase()
        rules = [("empty_output", pl.col("output").str.strip_chars() == ""),
                 ("empty_input", (pl.col("kind") == "with_input") & (pl.col("input").str.strip_chars() == "")),
                 ("input_equals_output", (pl.col("input").str.strip_chars() != "") & same)] + ensemble_rule
        kept = kept.with_columns(first_reason(rules).alias("reason"))
        dropped = pl.concat([dropped, kept.filter(pl.col("reason").is_not_null())], how="diagonal_relaxed")
        return self._records(kept.filter(pl.col("reason").is_null()), made), dropped

    def _records(self, kept: pl.DataFrame, made: int) -> pl.DataFrame:
        p = self.params
        if "output_model" not in kept.columns:
            kept = kept.with_columns(pl.lit(None, dtype=pl.String).alias("output_model"))
        prompt = instruction_prompt(pl.col("instruction"), pl.col("input"))
        records = kept.select(
            (pl.lit(f"{self.name}-{p.seed}-") + pl.int_range(made, made + pl.len()).cast(pl.String)).alias("id"),
            pl.lit(self.name).alias("source"),
            (prompt + pl.lit("\n\n") + pl.col("output")).alias("text"),
            pl.lit(None, dtype=pl.String).alias("meta"),
            pl.col("instruction"), pl.col("input"), pl.col("output"),
            pl.col("kind").alias("task_kind"), pl.col("rouge").alias("max_rouge_to_pool"), pl.col("output_model"),
            *sft_columns(prompt, pl.col("output"), p.format),
        )
        return records.cast({k: v for k, v in RECORD_SCHEMA.items()})

    def _quarantine(self, dropped: pl.DataFrame) -> pl.DataFrame:
        if dropped.height == 0:
            return pl.DataFrame(schema=QUARANTINE_SCHEMA)
        keep = [c for c in ("instruction", "input", "output", "kind", "rouge", "similar_to") if c in dropped.columns]
        detail = pl.lit("candidate instruction dropped by ") + pl.col("reason") + pl.when(pl.col("reason") == "similar_to_pool").then(
            pl.lit(": ROUGE-L ") + pl.col("rouge").round(3).cast(pl.String) + pl.lit(" with ") + pl.col("similar_to")
        ).otherwise(pl.lit(""))
        return dropped.select(
            pl.lit(self.name).alias("source"),
            pl.lit(str(self.seed_path())).alias("file"),
            pl.lit(None, dtype=pl.Int64).alias("line"),
            (pl.lit("self_instruct:") + pl.col("reason")).alias("reason"),
            detail.alias("detail"),
            pl.struct(keep).struct.json_encode().alias("raw"),
            pl.lit(None, dtype=pl.String).alias("raw_b64"),
        )


class SeedTasksParams(SourceParams):
    type: Literal["seed_tasks"] = "seed_tasks"
    seed_file: str | None = Field(None, description="jsonl of {instruction, input, output}; default: the shipped 30 tasks.")


@register_source
class SeedTasksSource(Source):
    """The seed tasks themselves as records (instruction, input, output): prompts for `distill` and
    `reflect` that need no file beside the recipe (the shipped set travels inside the package)."""

    type_name = "seed_tasks"
    Params = SeedTasksParams

    def seed_path(self) -> Path:
        if self.params.seed_file is None:
            return shipped_seed_file()
        path = Path(self.params.seed_file)
        return path if path.is_absolute() else Path(self.base_dir) / path

    def plan(self) -> list[ShardSpec]:
        return [ShardSpec(self.index, f"seed_tasks: {self.seed_path()}")]

    def read(self, shard: ShardSpec, batch_rows: int) -> Iterator[SourceBatch]:
        tasks = read_seed_tasks(self.seed_path())
        if self.params.limit is not None:
            tasks = tasks.head(self.params.limit)
        records = tasks.select(
            pl.col("id"), pl.lit(self.name).alias("source"),
            instruction_prompt(pl.col("instruction"), pl.col("input")).alias("text"),
            pl.lit(None, dtype=pl.String).alias("meta"), "instruction", "input", "output")
        for start in range(0, records.height, batch_rows):
            part = records.slice(start, batch_rows)
            yield SourceBatch(records=part, quarantine=pl.DataFrame(schema=QUARANTINE_SCHEMA), lines_read=part.height)
