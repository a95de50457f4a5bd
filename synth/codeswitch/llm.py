"""LLM code-switching through a synth generator: generate → review → rewrite (SwitchLingua-style).

The `codeswitch_llm` stage turns every input `text` (a sentence in the matrix language) into a
code-switched sentence with three prompt templates from `synth/codeswitch/prompts/`:
`generate` (language pair, topic, style: insertional or alternational), `review` (the model
judges its own output: PASS / FAIL with a reason) and `rewrite` (failed outputs are rewritten
with the review in the prompt, up to `max_rewrites` rounds). Generation goes through
`datamill.synth.factory.make_generator`, so results are cached and any backend works.

Outputs: `text` (the final sentence), `source_text` (the input), `cs_review` (the last review),
`cs_rewrites` (rounds used) and `cs_model`. A small model (the default SmolLM2-135M) mostly fails
to mix languages; put `codeswitch_verify` after this stage: it drops outputs that are not mixed.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import ClassVar, Literal

import polars as pl
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Stage, StageParams
from datamill.synth.factory import make_generator
from datamill.synth.generation import GeneratorSpec, SamplingParams

LANGUAGE_NAMES = {"en": "English", "es": "Spanish", "de": "German", "fr": "French", "it": "Italian",
                  "pt": "Portuguese", "mt": "Maltese", "hi": "Hindi", "zh": "Chinese", "ar": "Arabic"}
PROMPTS = ("generate", "review", "rewrite")


@cache
def prompt_template(name: str) -> str:
    """The text of `synth/codeswitch/prompts/<name>.txt` (placeholders written `$name`)."""
    path = resources.files("datamill.synth.codeswitch").joinpath("prompts", f"{name}.txt")
    if not path.is_file():
        raise FileNotFoundError(f"no code-switching prompt template {name!r} (looked for {path})")
    return path.read_text(encoding="utf-8").strip()


def render(name: str, **fields: pl.Expr) -> pl.Expr:
    """Fill a template for every row: the text between `$field` placeholders, concatenated with the
    fields' values (a `$` inside a value is never read as a placeholder)."""
    parts = re.split(r"\$([A-Za-z_]+)", prompt_template(name))
    missing = sorted(set(parts[1::2]) - set(fields))
    if missing:
        raise KeyError(f"prompt template {name!r} needs field(s) {missing}")
    pieces = [pl.lit(part) if i % 2 == 0 else fields[part].cast(pl.String) for i, part in enumerate(parts)]
    return pl.concat_str(pieces)


def is_pass(review: pl.Expr) -> pl.Expr:
    """A review passes when its first word is PASS (case-insensitive)."""
    return review.str.strip_chars().str.to_uppercase().str.starts_with("PASS")


class LLMSwitchParams(StageParams):
    generator: GeneratorSpec = Field(default_factory=GeneratorSpec, description="The model that writes and reviews.")
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(max_new_tokens=96, stop=["\n\n"]))
    matrix_lang: str = Field("en", description="The main language (and the language of the input).")
    embedded_lang: str = Field("es", description="The language switched into.")
    style: Literal["insertional", "alternational"] = "insertional"
    topic: str = Field("everyday life", description="Topic given to the model (overridden by a `topic` column).")
    review: bool = Field(True, description="Run the reviewer and rewrite what it fails.")
    max_rewrites: int = Field(1, ge=0, le=5, description="Rewrite rounds for failed outputs.")


@register_stage
class LLMCodeSwitch(Stage):
    """Generate code-switched sentences with an LLM, review them and rewrite the failures."""

    type_name: ClassVar[str] = "codeswitch_llm"
    Params: ClassVar[type[LLMSwitchParams]] = LLMSwitchParams
    outputs: ClassVar[tuple[str, ...]] = ("text", "source_text", "cs_review", "cs_rewrites", "cs_model")
    params: LLMSwitchParams

    def __init__(self, params: LLMSwitchParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        self.generator = None

    def setup(self) -> None:
        self.generator = make_generator(self.params.generator, getattr(self, "run_dir", None),
                                        probe=self.params.sampling, label=self.name)

    def complete(self, prompts: pl.Series) -> pl.Series:
        """One completion (stripped) per prompt, as single user turns."""
        chats = [[{"role": "user", "content": content}] for content in prompts.to_list()]
        params = self.params.sampling.model_copy(update={"n": 1, "seed": self.seed + self.params.sampling.seed})
        replies = self.generator.generate(chats, params) if chats else []
        return pl.Series([reply[0].text.strip() for reply in replies], dtype=pl.String)

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        if self.generator is None:
            raise RuntimeError(f"stage {self.name!r}: call setup() before process()")
        p = self.params
        fields = {
            "matrix_name": pl.lit(LANGUAGE_NAMES.get(p.matrix_lang, p.matrix_lang)),
            "embedded_name": pl.lit(LANGUAGE_NAMES.get(p.embedded_lang, p.embedded_lang)),
            "style": pl.lit(p.style),
            "topic": pl.col("topic").cast(pl.String).fill_null(p.topic) if "topic" in batch.columns else pl.lit(p.topic),
        }
        work = batch.select(pl.col("text").fill_null("").alias("source")).with_columns(**fields)
        work = work.with_columns(self.complete(work.select(render("generate", text=pl.col("source"), **fields))
                                               .to_series()).alias("text"),
                                 pl.lit(None, pl.String).alias("review"), pl.lit(0, pl.UInt32).alias("rewrites"))
        rounds = p.max_rewrites + 1 if p.review else 0
        for round_ in range(rounds):
            todo = work.with_row_index("row").filter(~is_pass(pl.col("review").fill_null("")))
            if todo.is_empty():
                break
            reviews = self.complete(todo.select(render("review", text=pl.col("text"), source=pl.col("source"),
                                                       **fields)).to_series())
            todo = todo.with_columns(reviews.alias("review"))
            work = work.with_row_index("row").update(todo.select("row", "review"), on="row").drop("row")
            failed = todo.filter(~is_pass(pl.col("review")))
            if round_ == rounds - 1 or failed.is_empty():
                break
            rewritten = self.complete(failed.select(render("rewrite", text=pl.col("text"), source=pl.col("source"),
                                                           review=pl.col("review"), **fields)).to_series())
            failed = failed.with_columns(rewritten.alias("text"), pl.lit(None, pl.String).alias("review"),
                                         (pl.col("rewrites") + 1).alias("rewrites"))
            work = work.with_row_index("row").update(failed.select("row", "text", "review", "rewrites"),
                                                     on="row", include_nulls=True).drop("row")
        return batch.with_columns(
            work["text"].alias("text"), work["source"].alias("source_text"), work["review"].alias("cs_review"),
            work["rewrites"].alias("cs_rewrites"), pl.lit(self.generator.model_id).alias("cs_model"))
