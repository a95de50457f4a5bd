"""The `annotate` stage: an LLM scores a sample of the corpus 0–5 with a rubric prompt, the labels a classifier learns from.

FineWeb-Edu's recipe: an instruct model reads the start of a page with the educational-value
rubric (additive, one point per criterion met) and ends its reply with "Educational score: N";
a classifier trained on those labels then scores the whole corpus (`classifier` stage, `train:`).

    - type: annotate
      template: fineweb_edu          # built-in (synth/prompts/annotate_fineweb_edu.txt; fineweb_edu_fewshot
                                     # for small models), or your own template file with a $text placeholder
      sample: 0.1                    # which rows: a seeded hash of the id, same on any worker count
      generator: {backend: transformers, model: smollm2-135m}

Columns: `<name>_score` (Int64: the parsed score; null for rows outside the sample and for replies
that do not parse), `<name>_reply` (the raw reply of sampled rows, with `keep_reply`) and
`<name>_model`. Parsing is strict, never a guess: the last "Educational score: N" (any
"<words> score: N" of the template's own format, or `pattern:` with one capture group); else
"Score: N", "N/5" or "N out of 5"; else a reply that is just the number. The number must be a whole
number within [`min_score`, `max_score`]. A sampled row whose reply does not parse gets reason
`<name>_unparsed`, which the stage flags by default (`action: flag`: the row stays, the count is in
the report's stage table) or drops (`action: drop`).
"""

from __future__ import annotations

from pathlib import Path
from string import Template
from typing import ClassVar, Literal

import polars as pl
from pydantic import Field, model_validator

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter, FilterParams, Resources
from datamill.curate.selection.ranking import uniform_from_hash
from datamill.synth.generation import GeneratorSpec, SamplingParams

BUILTIN_TEMPLATES = {"fineweb_edu": "annotate_fineweb_edu", "fineweb_edu_fewshot": "annotate_fineweb_edu_fewshot"}
"""Built-in template name → file stem under synth/prompts/: FineWeb-Edu's additive rubric, and a short
two-example version of its scale for small models, which do not follow the long one (SmolLM2-135M
states a score in ~1 of 16 replies to the full rubric, ~1 in 5 to the short one)."""

NAMED_SCORE = r"(?i)[a-z]+\s+score\s*[:：=]\s*[*_\s\[(]*(-?\d+(?:[.,]\d+)?)"
"""`Educational score: 3`, `**Educational score:** 3`, `Quality score = [4]`."""
GENERIC = (
    r"(?i)\bscore\s*(?:is|of|[:：=])\s*[*_\s\[(]*(-?\d+(?:[.,]\d+)?)",
    r"(?i)(-?\d+(?:[.,]\d+)?)\s*(?:/|out\s+of)\s*5\b",
)
BARE = r"^[\s*_\[(]*(-?\d+(?:[.,]\d+)?)[\s*_\])\.]*$"


class AnnotateParams(FilterParams):
    action: Literal["drop", "flag"] = Field("flag", description="flag: keep rows whose reply did not parse "
                        "(reason `<name>_unparsed` in a column, counted); drop: remove them.")
    template: str = Field("fineweb_edu", description="Built-in rubric (fineweb_edu) or a template file with $text "
                          "(relative to the recipe).")
    sample: float = Field(1.0, gt=0, le=1, description="Share of rows annotated, chosen by a seeded hash of `id`.")
    max_chars: int = Field(1000, ge=50, description="Characters of each text put in the prompt (FineWeb-Edu: the "
                           "first 1000).")
    min_score: int = Field(0, description="Smallest valid score.")
    max_score: int = Field(5, description="Largest valid score.")
    pattern: str | None = Field(None, description="Regex with one capture group for the score, tried first "
                                "(for your own template's format).")
    keep_reply: bool = Field(True, description="Keep the raw reply in `<name>_reply`.")
    generator: GeneratorSpec = Field(default_factory=GeneratorSpec)
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.0, max_new_tokens=192))

    @model_validator(mode="after")
    def _consistent(self):
        if self.min_score >= self.max_score:
            raise ValueError(f"min_score ({self.min_score}) must be below max_score ({self.max_score})")
        if self.pattern is not None:
            import re

            if re.compile(self.pattern).groups != 1:
                raise ValueError(f"pattern {self.pattern!r} must have exactly one capture group")
        return self


def parse_scores(replies: pl.Expr, low: int, high: int, pattern: str | None = None) -> pl.Expr:
    """The score each reply states (Int64), null when none parses or it is not a whole number in [low, high]."""
    patterns = ([pattern] if pattern else []) + [NAMED_SCORE, *GENERIC]
    found: pl.Expr = pl.lit(None, dtype=pl.String)
    for regex in reversed(patterns):
        last = replies.str.extract_all(regex).list.last().str.extract(regex, 1)
        found = pl.coalesce(last, found)
    found = pl.coalesce(found, replies.str.extract(BARE, 1))
    number = found.str.replace(",", ".", literal=True).cast(pl.Float64, strict=False)
    whole = (number == number.floor()) & number.is_between(low, high)
    return pl.when(whole).then(number.cast(pl.Int64)).otherwise(None)


def load_rubric(template: str, base_dir: str = ".") -> Template:
    """The built-in rubric `template` names, or the template file at that path (needs $text)."""
    if template in BUILTIN_TEMPLATES:
        from datamill.synth.templates import load_template

        return load_template(BUILTIN_TEMPLATES[template])
    path = Path(template).expanduser()
    path = path if path.is_absolute() else Path(base_dir) / path
    if not path.is_file():
        raise FileNotFoundError(f"annotate template {template!r}: not a built-in ({', '.join(BUILTIN_TEMPLATES)}) "
                                f"and no such file: {path}")
    text = path.read_text(encoding="utf-8").strip()
    if "$text" not in text and "${text}" not in text:
        raise ValueError(f"annotate template {path}: has no $text placeholder for the document")
    return Template(text)


@register_stage
class AnnotateStage(Filter):
    """LLM rubric scores (0–5, FineWeb-Edu's educational value by default) for a seeded sample of rows."""

    type_name: ClassVar[str] = "annotate"
    Params: ClassVar[type[AnnotateParams]] = AnnotateParams
    resources: ClassVar[Resources] = Resources(cpus=1.0, gpus=0.0, batch_rows=64)
    params: AnnotateParams

    def __init__(self, params: AnnotateParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        self.score_column = f"{self.name}_score"
        self.outputs = (self.score_column,) + ((f"{self.name}_reply",) if self.params.keep_reply else ()) + (
            f"{self.name}_model",)
        self.generator = None
        self.rubric: Template | None = None

    def setup(self) -> None:
        from datamill.synth.factory import make_generator

        self.rubric = load_rubric(self.params.template, self.base_dir)
        self.generator = make_generator(self.params.generator, getattr(self, "run_dir", None))

    def prompt(self, text: str) -> str:
        return self.rubric.substitute(text=text[: self.params.max_chars])

    def sampled(self) -> pl.Expr:
        return uniform_from_hash("id", self.seed) < self.params.sample

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        from datamill.synth.templates import user_turn

        if self.generator is None:
            raise RuntimeError(f"stage {self.name!r}: setup() must load the generator before annotating")
        p = self.params
        chosen = batch.select(self.sampled().alias("s"))["s"]
        texts = batch["text"].filter(chosen).fill_null("").to_list()
        chats = [user_turn(self.prompt(t)) for t in texts]
        params = p.sampling.model_copy(update={"n": 1})
        replies = [c[0].text for c in self.generator.generate(chats, params)] if chats else []
        reply = pl.Series(f"{self.name}_reply", [None] * batch.height, dtype=pl.String)
        if chats:
            reply = reply.scatter(chosen.arg_true(), pl.Series(replies, dtype=pl.String))
        scored = batch.with_columns(reply).with_columns(
            parse_scores(pl.col(reply.name), p.min_score, p.max_score, p.pattern).alias(self.score_column),
            pl.when(chosen).then(pl.lit(self.generator.model_id)).otherwise(None).alias(f"{self.name}_model"),
            pl.Series("_annotated", chosen),
        )
        return scored if p.keep_reply else scored.drop(reply.name)

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        return [(f"{self.name}_unparsed", pl.col("_annotated") & pl.col(self.score_column).is_null())]

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        return super().process(batch).drop("_annotated")
