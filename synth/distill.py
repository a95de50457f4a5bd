"""Teacher distillation: a teacher model answers each record's prompt; the answer becomes SFT data.

Options, all from the literature the recipes cite:
- `rationale: true` (Distilling Step-by-Step): the teacher reasons step by step and ends with
  "Answer: …"; the reasoning goes to `rationale`, the final answer to `label`.
- `sampling.n > 1` with `vote: true` (self-consistency): extract each sample's final answer ("Answer:"
  line, else the last number), keep a sample with the majority answer; `agreement` is the share of
  samples that agree, and `min_agreement` drops records below it (reason `low_agreement`).
- `sampling.logprobs: k`: store the teacher's top-k log-probabilities of every generated token
  (`teacher_topk_ids`, `teacher_topk_logprobs`, aligned with the teacher's tokens of the completion
  plus its end-of-sequence token) for knowledge distillation with `train.kd_weight`, and the
  generated token ids themselves (`teacher_token_ids`, null where the backend does not report
  them): the trainer learns exactly those tokens, so the top-k rows line up with them even where
  the stored (stripped) `completion` text would re-tokenize differently. The context the teacher
  scored them in is stored too: `teacher_prompt_ids` (the chat as the teacher's template rendered
  it, null where the backend does not report it) and `teacher_messages` (the chat asked, system
  message and rationale instruction included); the trainer conditions the student on exactly that.
A completion cut by `max_new_tokens` (finish_reason `length`) gives no label and no vote and its
record is dropped with reason `truncated`; answers are read only from the declared "Answer: …" line
(the last number of a reply only with `number_fallback: true`).
Every record gets `teacher_model`; the output columns are `messages` or `prompt`/`completion`.
"""

from __future__ import annotations

from typing import ClassVar

import polars as pl
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter, FilterParams, Resources
from datamill.synth.factory import make_generator
from datamill.synth.generation import GeneratorSpec, SamplingParams
from datamill.synth.templates import SFTFormat, chats_from_batch, render

ANSWER_LINE = r"(?im)^[ \t*#]*(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*[:：][ \t]*(.*\S)[ \t]*$"
NUMBER = r"-?\d[\d,]*(?:\.\d+)?"


class DistillParams(FilterParams):
    generator: GeneratorSpec = Field(default_factory=GeneratorSpec, description="The teacher.")
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(max_new_tokens=256))
    system: str | None = Field(None, description="A system message put before every chat.")
    rationale: bool = Field(False, description="Step-by-step rationale + label (Distilling Step-by-Step).")
    vote: bool = Field(False, description="Self-consistency: majority answer over sampling.n samples.")
    min_agreement: float = Field(0.0, ge=0, le=1, description="Drop records whose majority share is lower.")
    number_fallback: bool = Field(False, description="Without an 'Answer:' line, the last number is the answer "
                                  "(off: a reasoning step's number is not an answer).")
    format: SFTFormat = Field("messages", description="SFT columns: messages, or prompt + completion.")


def extract_answer(text: pl.Expr, number_fallback: bool = False) -> pl.Expr:
    """The final answer of a reply: its last "Answer: …" line, else (optionally) its last number;
    normalized (lowercase, no trailing period, no thousands commas) so equal answers compare equal."""
    answer = text.str.extract_all(ANSWER_LINE).list.last().str.replace(ANSWER_LINE, "${1}")
    if number_fallback:
        answer = answer.fill_null(text.str.extract_all(NUMBER).list.last())
    return (answer.str.strip_chars().str.strip_chars_end(".").str.strip_chars().str.to_lowercase()
            .str.replace_all(r"(\d),(\d)", "${1}${2}").replace("", None))


def split_rationale(text: pl.Expr) -> pl.Expr:
    """Everything before the last "Answer:" line (the whole reply when it has none)."""
    return text.str.replace(r"(?is)(?:\n|^)[ \t*#]*(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*[:：][^\n]*\s*$", "").str.strip_chars()


def majority(samples: pl.DataFrame, n: int) -> pl.DataFrame:
    """From (row, sample, answer), per row: the first sample with the most common answer and the
    share of samples that gave it (`agreement`); rows with no answer at all get a null answer."""
    counts = (samples.drop_nulls("answer").group_by("row", "answer")
              .agg(pl.len().alias("votes"), pl.col("sample").min().alias("sample")))
    best = counts.sort(["row", "votes", "sample"], descending=[False, True, False]).unique("row", keep="first")
    rows = samples.select("row").unique()
    return (rows.join(best, on="row", how="left")
            .with_columns((pl.col("votes").fill_null(0) / n).alias("agreement"), pl.col("sample").fill_null(0))
            .sort("row"))


@register_stage
class DistillStage(Filter):
    """Teacher answers (with rationale, votes and top-k logprobs as asked) for every record."""

    type_name = "distill"
    Params = DistillParams
    inputs: ClassVar[tuple[str, ...]] = ("messages", "prompt", "instruction", "text")
    outputs: ClassVar[tuple[str, ...]] = ("agreement",)
    resources = Resources(cpus=1.0, gpus=0.0, batch_rows=64)

    def setup(self) -> None:
        self.generator = make_generator(self.params.generator, getattr(self, "run_dir", None), probe=self.params.sampling,
                                        label=self.name)

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        chats, _ = chats_from_batch(batch)
        asked = [[*m[:-1], {"role": "user", "content": render("distill_rationale", prompt=m[-1]["content"])}]
                 if p.rationale and m[-1]["role"] == "user" else m for m in chats]
        if p.system:
            asked = [[{"role": "system", "content": p.system}, *m] for m in asked]
        results = self.generator.generate(asked, p.sampling.model_copy(update={"seed": p.sampling.seed + self.seed}))
        n = p.sampling.n
        samples = pl.DataFrame({
            "row": [i for i, group in enumerate(results) for _ in group],
            "sample": [k for group in results for k in range(len(group))],
            "text": [c.text.strip() for group in results for c in group],
            "cut": [c.finish_reason == "length" for group in results for c in group],
        }, schema={"row": pl.Int64, "sample": pl.Int64, "text": pl.String, "cut": pl.Boolean}).with_columns(
            pl.when(~pl.col("cut")).then(extract_answer(pl.col("text"), p.number_fallback)).alias("answer"))
        chosen = majority(samples, n) if p.vote else samples.filter(pl.col("sample") == 0).with_columns(
            pl.lit(1.0).alias("agreement"))
        picked = [results[r][s] for r, s in zip(chosen["row"].to_list(), chosen["sample"].to_list())]
        reply = pl.Series("completion", [c.text.strip() for c in picked], dtype=pl.String)
        columns = [reply.alias("_reply"), pl.Series("agreement", chosen["agreement"], dtype=pl.Float64),
                   pl.lit(self.generator.model_id).alias("teacher_model"),
                   pl.Series("finish_reason", [c.finish_reason for c in picked], dtype=pl.String)]
        if p.sampling.logprobs:
            columns += [pl.Series("teacher_topk_ids", [c.topk_ids for c in picked], dtype=pl.List(pl.List(pl.Int32))),
                        pl.Series("teacher_topk_logprobs", [c.topk_logprobs for c in picked],
                                  dtype=pl.List(pl.List(pl.Float32))),
                        pl.Series("teacher_token_ids", [c.token_ids for c in picked], dtype=pl.List(pl.Int32)),
                        pl.Series("teacher_prompt_ids", [c.prompt_token_ids for c in picked], dtype=pl.List(pl.Int32)),
                        pl.Series("teacher_messages", [asked[r] for r in chosen["row"].to_list()],
                                  dtype=pl.List(pl.Struct({"role": pl.String, "content": pl.String})))]
        out = batch.with_columns(columns)
        out = out.with_columns(pl.when(pl.col("finish_reason") != "length")
                               .then(extract_answer(pl.col("_reply"), p.number_fallback)).alias("answer"))
        if p.rationale:
            out = out.with_columns(split_rationale(pl.col("_reply")).alias("rationale"), pl.col("answer").alias("label"))
        return self._sft(out, chats)

    def _sft(self, out: pl.DataFrame, chats: list[list[dict[str, str]]]) -> pl.DataFrame:
        replies = out["_reply"].to_list()
        out = out.drop("_reply", *[c for c in ("messages", "prompt", "completion") if c in out.columns])
        if self.params.format == "messages":
            conversations = [[*chat, {"role": "assistant", "content": reply}] for chat, reply in zip(chats, replies)]
            return out.with_columns(pl.Series("messages", conversations,
                                              dtype=pl.List(pl.Struct({"role": pl.String, "content": pl.String}))))
        if any(len(chat) > 1 for chat in chats):
            raise ValueError("format prompt_completion needs single-turn prompts; use format: messages for conversations")
        return out.with_columns(pl.Series("prompt", [chat[-1]["content"] for chat in chats], dtype=pl.String),
                                pl.Series("completion", replies, dtype=pl.String))

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        p = self.params
        reply = (pl.col("messages").list.last().struct.field("content") if p.format == "messages"
                 else pl.col("completion"))
        rules = [("truncated", pl.col("finish_reason") == "length"),
                 ("empty_completion", reply.str.strip_chars() == "")]
        if p.vote or p.rationale:
            rules.append(("no_answer", pl.col("answer").is_null()))
        if p.vote and p.min_agreement > 0:
            rules.append(("low_agreement", pl.col("agreement") < p.min_agreement))
        return rules
