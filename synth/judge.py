"""LLM-as-judge: absolute per-aspect ratings (UltraFeedback) and pairwise A/B verdicts with a position swap.

Absolute (`mode: absolute`): for every aspect the generator rates the response from 1 to `scale`
with a template in `synth/prompts/judge_<aspect>.txt` — UltraFeedback's four aspects (Cui et al.
2023: helpfulness, honesty, instruction_following, truthfulness, each with its own rubric) and an
`overall` one; any other name is a template you add there. The reply must contain "Rating: N"
(also read: "Score: N", "N/10", "N out of 10", a reply that is only a number); ratings outside
1..scale or missing are failures: the aspect is null and counted in `judge_failures`. Columns:
`judge_<aspect>`, `judge_score` (mean of the parsed aspects), `judge_failures`, `judge_model`.
Rows where no aspect parsed are dropped with reason `judge_unparsed` (or flagged), and
`min_score` drops low scorers (`judge_low_score`).

Pairwise (`mode: pairwise`): MT-Bench's judge prompt (Zheng et al. 2023) on `response_a` and
`response_b`, asked twice with the answers in both orders. A verdict counts only if it survives the
swap: A in the first order and B (the same answer) in the swapped one gives `a`; both ties give
`tie`; anything else is `inconsistent` (or `unparsed` when either reply has no "[[A]]/[[B]]/[[C]]").
Columns: `judge_verdict`, `judge_verdict_first`, `judge_verdict_swapped`; `drop_inconsistent`
drops rows without a consistent verdict.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import polars as pl
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter, FilterParams, Resources
from datamill.synth.factory import make_generator
from datamill.synth.generation import Generator, GeneratorSpec, SamplingParams
from datamill.synth.templates import chats_from_batch, render, user_turn

ULTRAFEEDBACK_ASPECTS = ["helpfulness", "honesty", "instruction_following", "truthfulness"]
RATING = r"(?i)(?:rating|score)\s*(?:\(\s*1\s*-\s*\d+\s*\))?\s*[:：=]?\s*\**\s*\[*\s*(\d+(?:\.\d+)?)"
OUT_OF = r"(?i)(\d+(?:\.\d+)?)\s*(?:/|out\s+of)\s*\d+"
BARE = r"^\s*\**\s*(\d+(?:\.\d+)?)\s*\**\s*\.?\s*$"
VERDICT = r"\[\[\s*([ABC])\s*\]\]"


def parse_ratings(replies: pl.Expr, scale: int) -> pl.Expr:
    """The rating in each judge reply as a float in [1, scale], else null."""
    value = (replies.str.extract(RATING, 1)
             .fill_null(replies.str.extract(OUT_OF, 1))
             .fill_null(replies.str.extract(BARE, 1))
             .cast(pl.Float64, strict=False))
    return pl.when(value.is_between(1, scale)).then(value).otherwise(None)


def parse_verdicts(replies: pl.Expr) -> pl.Expr:
    """"A", "B" or "C" (tie) from the last [[X]] in each reply, else null."""
    return replies.str.extract_all(VERDICT).list.last().str.extract(VERDICT, 1)


def rubric_fields(scale: int) -> dict[str, str]:
    points = [round(1 + (scale - 1) * q) for q in (0.25, 0.5, 0.75)]
    return {"max": str(scale), "low_mid": str(points[0]), "mid": str(points[1]), "high_mid": str(points[2])}


def rate(generator: Generator, instructions: list[str], responses: list[str], aspects: list[str], scale: int,
         sampling: SamplingParams) -> pl.DataFrame:
    """One row per response: `judge_<aspect>` ratings (null where unparsed), `judge_score`, `judge_failures`."""
    chats = [user_turn(render(f"judge_{aspect}", instruction=q, response=r, **rubric_fields(scale)))
             for aspect in aspects for q, r in zip(instructions, responses)]
    replies = [group[0].text for group in generator.generate(chats, sampling.model_copy(update={"n": 1}))] if chats else []
    n = len(responses)
    table = pl.DataFrame({f"judge_{a}": pl.Series(replies[k * n:(k + 1) * n], dtype=pl.String)
                          for k, a in enumerate(aspects)})
    names = [f"judge_{a}" for a in aspects]
    table = table.with_columns(parse_ratings(pl.col(c), scale).alias(c) for c in names)
    return table.with_columns(pl.mean_horizontal(names).alias("judge_score"),
                              pl.sum_horizontal(pl.col(c).is_null() for c in names).cast(pl.Int64).alias("judge_failures"))


def compare(generator: Generator, instructions: list[str], first: list[str], second: list[str],
            sampling: SamplingParams) -> pl.DataFrame:
    """Pairwise verdicts with a position swap: `judge_verdict` (a / b / tie / inconsistent / unparsed),
    and the raw verdicts of both orders, `judge_verdict_first` and `judge_verdict_swapped` (A/B/C)."""
    asks = [user_turn(render("judge_pairwise", instruction=q, response_a=a, response_b=b))
            for q, a, b in zip(instructions, first, second)]
    asks += [user_turn(render("judge_pairwise", instruction=q, response_a=b, response_b=a))
             for q, a, b in zip(instructions, first, second)]
    replies = [g[0].text for g in generator.generate(asks, sampling.model_copy(update={"n": 1}))] if asks else []
    n = len(first)
    table = pl.DataFrame({"judge_verdict_first": pl.Series(replies[:n], dtype=pl.String),
                          "judge_verdict_swapped": pl.Series(replies[n:], dtype=pl.String)})
    table = table.with_columns(parse_verdicts(pl.col(c)).alias(c) for c in table.columns)
    one, two = pl.col("judge_verdict_first"), pl.col("judge_verdict_swapped")
    verdict = (pl.when(one.is_null() | two.is_null()).then(pl.lit("unparsed"))
               .when((one == "A") & (two == "B")).then(pl.lit("a"))
               .when((one == "B") & (two == "A")).then(pl.lit("b"))
               .when((one == "C") & (two == "C")).then(pl.lit("tie"))
               .otherwise(pl.lit("inconsistent")))
    return table.with_columns(verdict.alias("judge_verdict"))


def instruction_text(chat: list[dict[str, str]]) -> str:
    """What the judge sees as the instruction: the user turn, or the whole conversation."""
    if len(chat) == 1:
        return chat[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in chat)


class JudgeParams(FilterParams):
    generator: GeneratorSpec = Field(default_factory=GeneratorSpec, description="The judge model.")
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.0, max_new_tokens=128))
    mode: Literal["absolute", "pairwise"] = "absolute"
    aspects: list[str] = Field(default_factory=lambda: list(ULTRAFEEDBACK_ASPECTS),
                               description="Templates synth/prompts/judge_<aspect>.txt (UltraFeedback's four, or overall).")
    scale: int = Field(10, ge=2, le=100, description="Ratings run from 1 to this.")
    response_column: str | None = Field(None, description="The response to rate (default: completion, output or "
                                        "the last assistant message).")
    a_column: str = Field("response_a", description="Pairwise: the first response.")
    b_column: str = Field("response_b", description="Pairwise: the second response.")
    min_score: float | None = Field(None, description="Absolute: drop rows whose judge_score is lower.")
    drop_unparsed: bool = Field(True, description="Absolute: drop rows where no aspect could be parsed.")
    drop_inconsistent: bool = Field(False, description="Pairwise: drop rows without a verdict that survives the swap.")


@register_stage
class JudgeStage(Filter):
    """LLM-as-judge ratings per aspect (UltraFeedback) or swap-checked pairwise verdicts (MT-Bench)."""

    type_name = "judge"
    Params = JudgeParams
    inputs: ClassVar[tuple[str, ...]] = ("messages", "prompt", "completion", "instruction", "output")
    outputs: ClassVar[tuple[str, ...]] = ("judge_score", "judge_failures")
    resources = Resources(cpus=1.0, gpus=0.0, batch_rows=64)

    def setup(self) -> None:
        self.generator = make_generator(self.params.generator, getattr(self, "run_dir", None), probe=self.params.sampling)

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        chats, answers = chats_from_batch(batch)
        instructions = [instruction_text(c) for c in chats]
        sampling = p.sampling.model_copy(update={"seed": p.sampling.seed + self.seed})
        if p.mode == "pairwise":
            for column in (p.a_column, p.b_column):
                if column not in batch.columns:
                    raise ValueError(f"{self.name}: pairwise judging needs column {column!r} (has {batch.columns})")
            table = compare(self.generator, instructions, batch[p.a_column].fill_null("").to_list(),
                            batch[p.b_column].fill_null("").to_list(), sampling)
        else:
            if p.response_column is not None:
                if p.response_column not in batch.columns:
                    raise ValueError(f"{self.name}: no column {p.response_column!r} (has {batch.columns})")
                answers = batch[p.response_column].to_list()
            missing = [i for i, a in enumerate(answers) if a is None]
            if missing:
                raise ValueError(f"{self.name}: record {batch['id'][missing[0]] if 'id' in batch.columns else missing[0]} "
                                 "has no response to rate (completion, output, an assistant message or response_column)")
            table = rate(self.generator, instructions, answers, p.aspects, p.scale, sampling)
        return batch.drop([c for c in table.columns if c in batch.columns]).hstack(table).with_columns(
            pl.lit(self.generator.model_id).alias("judge_model"))

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        p = self.params
        if p.mode == "pairwise":
            return [("judge_inconsistent", ~pl.col("judge_verdict").is_in(["a", "b", "tie"]))] if p.drop_inconsistent else []
        rules = [("judge_unparsed", pl.col("judge_score").is_null())] if p.drop_unparsed else []
        if p.min_score is not None:
            rules.append(("judge_low_score", pl.col("judge_score") < p.min_score))
        return rules
