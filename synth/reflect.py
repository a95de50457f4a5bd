"""Reflection-Tuning: a teacher rewrites each instruction and response; the rewrite is kept only
when an IFD score prefers it.

Li et al. 2023 ("Reflection-Tuning") let a strong model reflect on and rewrite a pair; Selective
Reflection-Tuning (2024) lets the student decide with Instruction-Following Difficulty,
IFD = loss(response | instruction) / loss(response).

Decision rule, and why. Higher IFD means the instruction helps the model LESS: a harder, more
informative pair (the instruction-reflection stage of Selective Reflection-Tuning keeps the
candidate with the higher IFD), up to the point where it does not help at all — IFD ≥ 1 marks a
misaligned pair, which both the IFD and the Reflection-Tuning papers drop. So "higher IFD" alone
also rewards drifting towards misalignment, and a small scorer rarely pushes an unrelated pair
all the way to 1 (SmolLM2-135M gives an instruction with an unrelated response IFD ≈ 0.93). The
paper's response-reflection stage therefore also checks the reverse direction, reversed IFD
r-IFD = loss(instruction | response) / loss(instruction): a response that does not tell you
anything about its instruction has r-IFD ≥ 1 (the same unrelated pair scores ≈ 1.7). A rewrite
replaces the original only when all hold:
  - it parsed (a "[New Instruction] … [New Response] …" reply),
  - IFD(rewrite) < `max_ifd` (default 1) and r-IFD(rewrite) < `max_rifd` (default 1): aligned,
  - IFD(rewrite) > IFD(original) (or the original has no IFD): harder, more informative.
Both scores come from the `ifd` selection stage's scoring (`IFDSelect.score`, chunked LM losses
on the trainer's tokens); r-IFD scores the response as the prompt and the instruction as the
completion. Columns: `ifd_original`, `ifd_rewrite`, `rifd_rewrite` (null when the reply could not
be parsed), `reflected`.
"""

from __future__ import annotations

from typing import ClassVar

import polars as pl
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Resources, Stage, StageParams
from datamill.synth.factory import make_generator
from datamill.synth.generation import GeneratorSpec, SamplingParams
from datamill.synth.templates import SFTFormat, chats_from_batch, render, sft_columns, user_turn

REWRITE = r"(?is)\[\s*new\s+instruction\s*\]\s*(?P<instruction>.*?)\s*\[\s*new\s+response\s*\]\s*(?P<response>.*\S)"


class ReflectParams(StageParams):
    generator: GeneratorSpec = Field(default_factory=GeneratorSpec, description="The teacher that rewrites.")
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.7, max_new_tokens=384))
    scorer: str = Field("smollm2-135m", description="The (student) model that scores IFD.")
    max_ifd: float = Field(1.0, gt=0, description="A rewrite at or above this IFD is never kept.")
    max_rifd: float = Field(1.0, gt=0, description="A rewrite at or above this reversed IFD "
                            "(loss(instruction | response) / loss(instruction)) is never kept: misaligned.")
    max_tokens: int = Field(512, ge=2, description="Score only the first this many tokens of a pair.")
    format: SFTFormat = Field("messages", description="SFT columns: messages, or prompt + completion.")


def parse_rewrites(replies: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(new instruction, new response) from "[New Instruction] … [New Response] …"; null when absent or empty."""
    def part(name: str) -> pl.Expr:
        return replies.str.extract(REWRITE, group_index=1 if name == "instruction" else 2).str.strip_chars().replace("", None)
    return part("instruction"), part("response")


@register_stage
class ReflectStage(Stage):
    """Teacher rewrites of instruction and response, kept where IFD prefers them."""

    type_name = "reflect"
    Params = ReflectParams
    inputs: ClassVar[tuple[str, ...]] = ("messages", "prompt", "completion", "instruction", "output")
    outputs: ClassVar[tuple[str, ...]] = ("ifd_original", "ifd_rewrite", "rifd_rewrite", "text")
    resources = Resources(cpus=1.0, gpus=0.0, batch_rows=64)

    def setup(self) -> None:
        from datamill.curate.selection.ifd import IFDParams, IFDSelect

        self.generator = make_generator(self.params.generator, getattr(self, "run_dir", None),
                                        probe=self.params.sampling, label=self.name)
        self.ifd = IFDSelect(IFDParams(model=self.params.scorer, format="prompt_completion",
                                       max_tokens=self.params.max_tokens))
        self.ifd.setup()

    def ifd_scores(self, prompts: pl.Series, completions: pl.Series) -> pl.Series:
        scored = self.ifd.score(pl.DataFrame({"prompt": prompts, "completion": completions}))
        return scored["ifd"]

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        chats, answers = chats_from_batch(batch)
        if any(len(c) != 1 for c in chats) or any(a is None for a in answers):
            raise ValueError(f"{self.name}: reflect needs single-turn instruction/response pairs "
                             "(prompt+completion, instruction+output or a user and an assistant message)")
        original = pl.DataFrame({"prompt": [c[0]["content"] for c in chats], "completion": answers},
                                schema={"prompt": pl.String, "completion": pl.String})
        asks = [user_turn(render("reflect", instruction=q, response=a)) for q, a in original.iter_rows()]
        replies = [c[0].text for c in self.generator.generate(asks, p.sampling.model_copy(
            update={"n": 1, "seed": p.sampling.seed + self.seed}))]
        new_q, new_a = parse_rewrites(pl.lit(pl.Series(replies, dtype=pl.String)))
        rewrites = original.select(new_q.alias("new_prompt"), new_a.alias("new_completion"))
        parsed = rewrites["new_prompt"].is_not_null() & rewrites["new_completion"].is_not_null()
        ifd_original = self.ifd_scores(original["prompt"], original["completion"])
        ifd_rewrite = pl.Series("ifd_rewrite", [None] * batch.height, dtype=pl.Float64)
        rifd_rewrite = pl.Series("rifd_rewrite", [None] * batch.height, dtype=pl.Float64)
        if parsed.any():
            kept = rewrites.filter(parsed)
            where = parsed.arg_true()
            ifd_rewrite = ifd_rewrite.scatter(where, self.ifd_scores(kept["new_prompt"], kept["new_completion"]))
            rifd_rewrite = rifd_rewrite.scatter(where, self.ifd_scores(kept["new_completion"], kept["new_prompt"]))
        table = pl.DataFrame([original["prompt"], original["completion"], rewrites["new_prompt"],
                              rewrites["new_completion"], ifd_original.alias("ifd_original"), ifd_rewrite,
                              rifd_rewrite])
        better = (pl.col("ifd_rewrite").is_not_null() & (pl.col("ifd_rewrite") < p.max_ifd)
                  & pl.col("rifd_rewrite").is_not_null() & (pl.col("rifd_rewrite") < p.max_rifd)
                  & (pl.col("ifd_original").is_null() | (pl.col("ifd_rewrite") > pl.col("ifd_original"))))
        table = table.with_columns(better.fill_null(False).alias("reflected"))
        prompt = pl.when("reflected").then("new_prompt").otherwise("prompt")
        completion = pl.when("reflected").then("new_completion").otherwise("completion")
        chosen = table.select(*sft_columns(prompt, completion, p.format), "ifd_original", "ifd_rewrite", "rifd_rewrite",
                              "reflected",
                              pl.lit(self.generator.model_id).alias("reflect_model"),
                              (prompt + pl.lit("\n\n") + completion).alias("text"))
        return batch.drop([c for c in chosen.columns if c in batch.columns] + [
            c for c in ("messages", "prompt", "completion") if c in batch.columns], strict=False).hstack(chosen)
