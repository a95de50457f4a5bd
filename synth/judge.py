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

Method. `method: generate` (the default, as distilabel's UltraFeedback and PrometheusEval tasks):
the judge writes its reply and the rating or verdict is parsed from the text. `method: logprobs`
(G-Eval, Liu et al. 2023) reads the probabilities of the answers at the answer position instead,
so every reply yields a score, even from a small model that never writes the format: the reply is
started with "Rating:" and the score is the expected rating Σ p(k)·k over k = 1..scale, p
renormalized over the valid ratings; `judge_rating_mass` is the mean probability the judge put on
a valid rating at all (low: it wanted to write something else). Pairwise, the reply is started
with "[[" after a prompt that asks for the verdict first (`judge_pairwise_verdict.txt`), each
order's verdict is the likeliest of A/B/C, the swap rule above applies, and `judge_p_a` is the
probability that response_a wins averaged over both orders (P(A) first, P(B) swapped). It needs a
generator with the `score_choices` capability: the transformers backend, or an OpenAI-compatible
server returning `top_logprobs` (the stage checks once at setup and refuses others).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import polars as pl
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter, FilterParams, Resources
from datamill.synth.factory import make_generator
from datamill.synth.generation import Generator, GeneratorSpec, SamplingParams, choice_scorer
from datamill.synth.templates import chats_from_batch, render, user_turn

ULTRAFEEDBACK_ASPECTS = ["helpfulness", "honesty", "instruction_following", "truthfulness"]
RATING = r"(?i)(?:rating|score)\s*(?:\(\s*1\s*-\s*\d+\s*\))?\s*[:：=]?\s*\**\s*\[*\s*(\d+(?:\.\d+)?)"
OUT_OF = r"(?i)(\d+(?:\.\d+)?)\s*(?:/|out\s+of)\s*\d+"
BARE = r"^\s*\**\s*(\d+(?:\.\d+)?)\s*\**\s*\.?\s*$"
VERDICT = r"\[\[\s*([ABC])\s*\]\]"
RATING_PREFIX = "Rating:"
VERDICT_PREFIX = "[["
VERDICTS = ["A", "B", "C"]
Method = Literal["generate", "logprobs"]


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


def choice_probabilities(logps: list[list[float]]) -> tuple[list[list[float] | None], list[float]]:
    """(probabilities renormalized over the choices, or None where none has any; total probability
    of the choices) per row of `score_choices` log-probabilities."""
    probs, mass = [], []
    for row in logps:
        finite = [v for v in row if math.isfinite(v)]
        if not finite:
            probs.append(None)
            mass.append(0.0)
            continue
        top = max(finite)
        weights = [math.exp(v - top) if math.isfinite(v) else 0.0 for v in row]
        total = sum(weights)
        probs.append([w / total for w in weights])
        mass.append(min(1.0, total * math.exp(top)))
    return probs, mass


def rating_choices(scale: int) -> list[str]:
    return [f" {k}" for k in range(1, scale + 1)]


def expected_ratings(scorer, chats: list[list[dict[str, str]]], scale: int) -> tuple[list[float | None], list[float]]:
    """G-Eval's Σ p(k)·k per chat (None where no rating has probability), and the mass on valid ratings."""
    probs, mass = choice_probabilities(scorer.score_choices(chats, rating_choices(scale), RATING_PREFIX)) if chats else ([], [])
    return [None if p is None else sum(q * k for k, q in enumerate(p, start=1)) for p in probs], mass


def rate(generator: Generator, instructions: list[str], responses: list[str], aspects: list[str], scale: int,
         sampling: SamplingParams, method: Method = "generate") -> pl.DataFrame:
    """One row per response: `judge_<aspect>` ratings (null where unparsed), `judge_score`, `judge_failures`
    (logprobs: expected ratings, and `judge_rating_mass`)."""
    chats = [user_turn(render(f"judge_{aspect}", instruction=q, response=r, **rubric_fields(scale)))
             for aspect in aspects for q, r in zip(instructions, responses)]
    n = len(responses)
    names = [f"judge_{a}" for a in aspects]
    if method == "logprobs":
        values, mass = expected_ratings(choice_scorer(generator, "judge"), chats, scale)
        table = pl.DataFrame({c: pl.Series(values[k * n:(k + 1) * n], dtype=pl.Float64) for k, c in enumerate(names)})
        mass_table = pl.DataFrame({f"m{k}": pl.Series(mass[k * n:(k + 1) * n], dtype=pl.Float64)
                                   for k in range(len(aspects))})
        table = table.with_columns(mass_table.select(pl.mean_horizontal(pl.all())).to_series().alias("judge_rating_mass"))
    else:
        replies = [group[0].text for group in generator.generate(chats, sampling.model_copy(update={"n": 1}))] if chats else []
        table = pl.DataFrame({c: pl.Series(replies[k * n:(k + 1) * n], dtype=pl.String) for k, c in enumerate(names)})
        table = table.with_columns(parse_ratings(pl.col(c), scale).alias(c) for c in names)
    return table.with_columns(pl.mean_horizontal(names).alias("judge_score"),
                              pl.sum_horizontal(pl.col(c).is_null() for c in names).cast(pl.Int64).alias("judge_failures"))


def compare(generator: Generator, instructions: list[str], first: list[str], second: list[str],
            sampling: SamplingParams, method: Method = "generate") -> pl.DataFrame:
    """Pairwise verdicts with a position swap: `judge_verdict` (a / b / tie / inconsistent / unparsed),
    and the raw verdicts of both orders, `judge_verdict_first` and `judge_verdict_swapped` (A/B/C);
    logprobs: each order's likeliest verdict, and `judge_p_a`."""
    template = "judge_pairwise_verdict" if method == "logprobs" else "judge_pairwise"
    asks = [user_turn(render(template, instruction=q, response_a=a, response_b=b))
            for q, a, b in zip(instructions, first, second)]
    asks += [user_turn(render(template, instruction=q, response_a=b, response_b=a))
             for q, a, b in zip(instructions, first, second)]
    n = len(first)
    if method == "logprobs":
        scorer = choice_scorer(generator, "judge")
        probs, _ = choice_probabilities(scorer.score_choices(asks, VERDICTS, VERDICT_PREFIX)) if asks else ([], [])
        picked = [None if p is None else VERDICTS[max(range(3), key=lambda k: (p[k], -k))] for p in probs]
        p_a = [None if p is None or q is None else (p[0] + q[1]) / 2 for p, q in zip(probs[:n], probs[n:])]
        table = pl.DataFrame({"judge_verdict_first": pl.Series(picked[:n], dtype=pl.String),
                              "judge_verdict_swapped": pl.Series(picked[n:], dtype=pl.String),
                              "judge_p_a": pl.Series(p_a, dtype=pl.Float64)})
    else:
        replies = [g[0].text for g in generator.generate(asks, sampling.model_copy(update={"n": 1}))] if asks else []
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


def check_choice_scoring(generator: Generator, who: str, mode: str = "absolute", scale: int = 10) -> None:
    """Refuse, before any record, a generator that cannot score answers (asks it once, on a tiny chat)."""
    scorer = choice_scorer(generator, who)
    probe = [user_turn("Rate this reply from 1 to 10: 'OK.'")]
    if mode == "pairwise":
        scorer.score_choices(probe, VERDICTS, VERDICT_PREFIX)
    else:
        scorer.score_choices(probe, rating_choices(scale), RATING_PREFIX)


def instruction_text(chat: list[dict[str, str]]) -> str:
    """What the judge sees as the instruction: the user turn, or the whole conversation."""
    if len(chat) == 1:
        return chat[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in chat)


class JudgeParams(FilterParams):
    generator: GeneratorSpec = Field(default_factory=GeneratorSpec, description="The judge model.")
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.0, max_new_tokens=128))
    mode: Literal["absolute", "pairwise"] = "absolute"
    method: Method = Field("generate", description="generate: parse the judge's written rating/verdict (distilabel's "
                           "way); logprobs: the expected rating / verdict from the answer tokens' probabilities "
                           "(G-Eval), a score from every reply; needs the transformers backend or a server with logprobs.")
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
        if self.params.method == "logprobs":
            check_choice_scoring(self.generator, self.name, self.params.mode, self.params.scale)

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
                            batch[p.b_column].fill_null("").to_list(), sampling, p.method)
        else:
            if p.response_column is not None:
                if p.response_column not in batch.columns:
                    raise ValueError(f"{self.name}: no column {p.response_column!r} (has {batch.columns})")
                answers = batch[p.response_column].to_list()
            missing = [i for i, a in enumerate(answers) if a is None]
            if missing:
                raise ValueError(f"{self.name}: record {batch['id'][missing[0]] if 'id' in batch.columns else missing[0]} "
                                 "has no response to rate (completion, output, an assistant message or response_column)")
            table = rate(self.generator, instructions, answers, p.aspects, p.scale, sampling, p.method)
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
