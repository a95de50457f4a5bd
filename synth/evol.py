"""Evol-Instruct (WizardLM, Xu et al. 2023): evolve each instruction for N rounds, in depth and in
breadth, and eliminate failed evolutions by the paper's four rules.

Each round picks one method per instruction (seeded by record and round) from `methods`:
in-depth — `constraints` (add one more constraint or requirement), `deepen` (increase the depth and
breadth of the inquiry), `concretize` (replace general concepts with more specific ones),
`reasoning` (ask for multiple-step reasoning explicitly) — with WizardLM's "Prompt Rewriter"
template (synth/prompts/evol_depth.txt, "can only add 10 to 20 words"); `complicate_input`, the
paper's fifth in-depth operation (add structured input data the task must use: the paper's examples
add XML, SQL, JSON, HTML, shell, code or LaTeX data), with our own template
(synth/prompts/evol_input.txt) and one of `input_formats` picked per record and round, seeded; or
in-breadth `breadth` (a brand-new, rarer prompt in the same domain, evol_breadth.txt). The generator then answers the
evolved instruction. Section 3.3 of the paper eliminates an evolution when:
  1. it gives no information gain over its parent — here: the evolved text equals the parent or
     its ROUGE-L F1 with it is ≥ `max_rouge`; with `equality_check: llm` also the paper's own
     test, the generator answering "Equal" to evol_equal.txt  → `evol_no_information_gain`
  2. the response makes clear the model cannot answer: it contains "sorry" and is shorter than 80
     words → `evol_response_sorry`
  3. the response is only punctuation and stop words → `evol_response_degenerate`
  4. it copies words of the evolving prompt ("given prompt", "rewritten prompt", "#Rewritten
     Prompt#", "created prompt") → `evol_copied_prompt_words`
  (and an empty evolution → `evol_empty`).
As in the paper, a failed evolution is dropped and its parent stays in the pool for the next
round; a successful one replaces it. Output: the original record (`evol_round` 0, with
`keep_original`) and one row per round (`evol_round`, `evol_method`, `evol_input_format` for
complicate_input, `evolved_from`), failures
dropped with their reason (kept under removed/ with `output.keep_removed`). SFT columns as
`distill`: `messages` or `prompt`/`completion`, plus `instruction` and `output`.
"""

from __future__ import annotations

import hashlib
import re
from typing import ClassVar, Literal

import polars as pl
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter, FilterParams, Resources
from datamill.synth.factory import make_generator
from datamill.synth.generation import Generator, GeneratorSpec, SamplingParams
from datamill.synth.rouge import rouge_l_matrix, rouge_tokens
from datamill.synth.templates import SFTFormat, chats_from_batch, render, sft_columns, user_turn

DEPTH_METHODS = {
    "constraints": "Please add one more constraints/requirements into #The Given Prompt#'",
    "deepen": "If #The Given Prompt# contains inquiries about certain issues, the depth and breadth of the inquiry "
              "can be increased.",
    "concretize": "Please replace general concepts with more specific concepts.",
    "reasoning": "If #The Given Prompt# can be solved with just a few simple thinking processes, you can rewrite it "
                 "to explicitly request multiple-step reasoning.",
}
INPUT_FORMATS = ["JSON data", "XML data", "an SQL table (CREATE TABLE and INSERT statements)", "Python code",
                 "an HTML page", "a shell command and its output", "a LaTeX formula", "a Markdown table", "CSV data"]
METHODS = [*DEPTH_METHODS, "complicate_input", "breadth"]
Method = Literal["constraints", "deepen", "concretize", "reasoning", "complicate_input", "breadth"]
COPIED = r"(?i)#?\s*(?:the\s+)?(?:given|rewritten|created)\s+prompt\s*#?"
STOP_WORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he
her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
off on once only or other our ours ourselves out over own same she should so some such than that the their theirs
them themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves ok okay yes oh well""".split())
REASONS = ("evol_empty", "evol_copied_prompt_words", "evol_no_information_gain", "evol_response_sorry",
           "evol_response_degenerate")


class EvolParams(FilterParams):
    generator: GeneratorSpec = Field(default_factory=GeneratorSpec, description="Evolves and answers.")
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.7, max_new_tokens=256))
    response_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.7,
                                                                                     max_new_tokens=512))
    rounds: int = Field(4, ge=1, le=20, description="Evolution rounds (WizardLM: 4).")
    methods: list[Method] = Field(default_factory=lambda: list(METHODS))
    input_formats: list[str] = Field(default_factory=lambda: list(INPUT_FORMATS), min_length=1,
                                     description="complicate_input: the kinds of input data to add (one picked per "
                                     "record and round).")
    max_rouge: float = Field(0.9, gt=0, le=1, description="Rule 1: ROUGE-L F1 with the parent at or above this = "
                             "no information gain.")
    equality_check: Literal["rouge", "llm"] = Field("rouge", description="llm: also ask the generator the paper's "
                                                    "Equal / Not Equal question.")
    sorry_max_words: int = Field(80, ge=1, description="Rule 2: a response with 'sorry' and fewer words fails.")
    keep_original: bool = Field(True, description="Also output the record as it came in (evol_round 0).")
    format: SFTFormat = "messages"


def evolution_prompt(method: str, instruction: str, input_format: str = "JSON data") -> str:
    if method == "breadth":
        return render("evol_breadth", instruction=instruction)
    if method == "complicate_input":
        return render("evol_input", input_format=input_format, instruction=instruction)
    return render("evol_depth", method=DEPTH_METHODS[method], instruction=instruction)


def clean_evolution(text: str) -> str:
    """The evolved prompt without a leading "#Rewritten Prompt#:"-style label the model repeated."""
    return re.sub(r"(?i)^\s*#?\s*(?:rewritten|created)\s+prompt\s*#?\s*:?\s*", "", text).strip()


def elimination_reasons(parents: list[str], evolved: list[str], responses: list[str | None], params: EvolParams,
                        judged_equal: list[bool] | None = None) -> list[str | None]:
    """WizardLM's elimination rules for each (parent, evolved, response): the first failing rule or None."""
    rouge = [float(rouge_l_matrix([rouge_tokens(e)], [rouge_tokens(p)])[0, 0]) if e.strip() else 0.0
             for p, e in zip(parents, evolved)]
    reasons = []
    for k, (parent, new, response) in enumerate(zip(parents, evolved, responses)):
        words = re.findall(r"[A-Za-z0-9']+", (response or "").lower())
        if not new.strip():
            reasons.append("evol_empty")
        elif re.search(COPIED, new):
            reasons.append("evol_copied_prompt_words")
        elif (new.strip().lower() == parent.strip().lower() or rouge[k] >= params.max_rouge
              or (judged_equal is not None and judged_equal[k])):
            reasons.append("evol_no_information_gain")
        elif response is not None and "sorry" in response.lower() and len(words) < params.sorry_max_words:
            reasons.append("evol_response_sorry")
        elif response is not None and all(w in STOP_WORDS for w in words):
            reasons.append("evol_response_degenerate")
        else:
            reasons.append(None)
    return reasons


def pick_method(methods: list[str], record_id: str, round_index: int, seed: int) -> str:
    digest = hashlib.sha256(f"{seed}:{record_id}:{round_index}".encode()).digest()
    return methods[int.from_bytes(digest[:4], "little") % len(methods)]


def pick_input_format(formats: list[str], record_id: str, round_index: int, seed: int) -> str:
    """complicate_input's kind of data for one record and round (seeded, independent of the method pick)."""
    digest = hashlib.sha256(f"{seed}:{record_id}:{round_index}:input".encode()).digest()
    return formats[int.from_bytes(digest[:4], "little") % len(formats)]


def evolve(generator: Generator, ids: list[str], instructions: list[str], params: EvolParams,
           seed: int = 0) -> pl.DataFrame:
    """All rounds for a set of instructions: one row per (record, round) with the candidate, its
    response, the method, the parent and the elimination reason (null = kept)."""
    current = list(instructions)
    rows = []
    for r in range(1, params.rounds + 1):
        methods = [pick_method(params.methods, i, r, seed) for i in ids]
        formats = [pick_input_format(params.input_formats, i, r, seed) if m == "complicate_input" else None
                   for i, m in zip(ids, methods)]
        asks = [user_turn(evolution_prompt(m, q, f or "")) for m, q, f in zip(methods, current, formats)]
        sampling = params.sampling.model_copy(update={"n": 1, "seed": params.sampling.seed + seed + r})
        evolved = [clean_evolution(g[0].text) for g in generator.generate(asks, sampling)]
        pre = elimination_reasons(current, evolved, [None] * len(ids), params)
        live = [k for k, reason in enumerate(pre) if reason is None]
        responses: list[str | None] = [None] * len(ids)
        equal: list[bool] = [False] * len(ids)
        if live:
            answer = params.response_sampling.model_copy(update={"n": 1, "seed": params.response_sampling.seed + seed + r})
            replies = generator.generate([user_turn(evolved[k]) for k in live], answer)
            for k, g in zip(live, replies):
                responses[k] = g[0].text.strip()
            if params.equality_check == "llm":
                verdicts = generator.generate([user_turn(render("evol_equal", first=current[k], second=evolved[k]))
                                               for k in live], sampling.model_copy(update={"temperature": 0.0}))
                for k, g in zip(live, verdicts):
                    equal[k] = re.match(r"\s*equal\b", g[0].text, re.I) is not None
        reasons = [p or q for p, q in zip(pre, elimination_reasons(current, evolved, responses, params, equal))]
        for k in range(len(ids)):
            rows.append({"row": k, "evol_round": r, "evol_method": methods[k], "evol_input_format": formats[k],
                         "evolved_from": current[k], "instruction": evolved[k], "output": responses[k] or "", "evol_status": reasons[k]})
            if reasons[k] is None:
                current[k] = evolved[k]
    return pl.DataFrame(rows, schema={"row": pl.Int64, "evol_round": pl.Int64, "evol_method": pl.String,
                                      "evol_input_format": pl.String, "evolved_from": pl.String,
                                      "instruction": pl.String, "output": pl.String,
                                      "evol_status": pl.String})


@register_stage
class EvolInstructStage(Filter):
    """WizardLM Evol-Instruct: N rounds of in-depth/in-breadth evolution with the elimination rules."""

    type_name = "evol_instruct"
    Params = EvolParams
    inputs: ClassVar[tuple[str, ...]] = ("messages", "prompt", "instruction", "text")
    outputs: ClassVar[tuple[str, ...]] = ("evol_round", "text")
    resources = Resources(cpus=1.0, gpus=0.0, batch_rows=32)

    def setup(self) -> None:
        self.generator = make_generator(self.params.generator, getattr(self, "run_dir", None), probe=self.params.sampling)

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        chats, answers = chats_from_batch(batch)
        if any(len(c) != 1 for c in chats):
            raise ValueError(f"{self.name}: evol_instruct needs single-turn instructions")
        ids = batch["id"].cast(pl.String).to_list() if "id" in batch.columns else [str(i) for i in range(batch.height)]
        instructions = [c[0]["content"] for c in chats]
        table = evolve(self.generator, ids, instructions, p, self.seed)
        unanswered = [k for k, a in enumerate(answers) if not a] if p.keep_original else []
        if unanswered:  # originals without a response get one, like the evolved ones
            sampling = p.response_sampling.model_copy(update={"n": 1, "seed": p.response_sampling.seed + self.seed})
            replies = self.generator.generate([user_turn(instructions[k]) for k in unanswered], sampling)
            answers = list(answers)
            for k, g in zip(unanswered, replies):
                answers[k] = g[0].text.strip()
        originals = pl.DataFrame({"row": range(batch.height), "evol_round": 0, "evol_method": None,
                                  "evol_input_format": None, "evolved_from": None, "instruction": instructions,
                                  "output": [a or "" for a in answers], "evol_status": None},
                                 schema=table.schema)
        if p.keep_original:
            table = pl.concat([originals, table]).sort("row", "evol_round")
        base = batch.drop([c for c in (*table.columns, "messages", "prompt", "completion", "text", "input")
                           if c in batch.columns]).with_row_index("row")
        out = table.join(base.with_columns(pl.col("row").cast(pl.Int64)), on="row", how="left")
        if "id" in out.columns:
            out = out.with_columns(pl.when(pl.col("evol_round") == 0).then(pl.col("id"))
                                   .otherwise(pl.col("id") + pl.lit("/evol") + pl.col("evol_round").cast(pl.String))
                                   .alias("id"))
        return out.drop("row").with_columns(
            *sft_columns(pl.col("instruction"), pl.col("output"), p.format),
            (pl.col("instruction") + pl.lit("\n\n") + pl.col("output")).alias("text"),
            pl.lit(self.generator.model_id).alias("evol_model"))

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        return [(reason, pl.col("evol_status") == reason) for reason in REASONS]
