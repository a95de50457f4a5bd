"""Preference pairs from one policy: n samples per prompt, scored by an LLM judge or a reward model,
turned into TRL's preference format {prompt, chosen, rejected, chosen_score, rejected_score}.

- Sampling: `sampling.n` completions per prompt at `sampling.temperature` (UltraFeedback and RSO
  both start from several samples of the policy).
- Scoring: `scorer: judge` rates each sample with the `judge` stage's per-aspect templates
  (the mean over `judge.aspects`; `judge.method: logprobs` for the expected rating from the rating
  tokens' probabilities, which every sample gets), `scorer: reward` with a local sequence-classification reward
  model. An empty sample or one whose rating does not parse is unscored. `scorer: relevance` is an
  offline stand-in when no capable judge or reward model is at hand (a 135M judge does not write
  parsable ratings): the cosine of prompt and response embeddings (all-MiniLM-L6-v2, bundled)
  times the response's distinct-word share — on topic and not degenerate, nothing more.
- Selection: `best_worst` (UltraFeedback/Zephyr-style binarization: the highest-scored sample is
  chosen, the lowest rejected) or `rso` (Liu et al. 2023, "Statistical Rejection Sampling"):
  candidates are accepted with probability exp((r − max r) / rso_beta), in a seeded random order,
  until `rso_accept` are accepted, and the best and worst accepted form the pair — samples near the
  optimal policy's distribution rather than the extremes of the SFT policy's.
- Dropped (with the reason counted in the report, rows kept under removed/ with keep_removed):
  `pair_all_failed` (no sample scored), `pair_one_scored`, `pair_tie` (best and worst equal),
  `pair_small_margin` (margin below `min_margin`), `pair_rso_too_few` (fewer than 2 accepted).
- `ranked`: every scored sample with its score, best first (a LiPO-style listwise target), and
  `n_scored`, `score_margin`, `pair_policy`, `pair_scorer`.
`format: conversational` writes the prompt as a message list and chosen/rejected as one assistant
message each (TRL's conversational preference format, trained through the chat template);
`standard` writes strings.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter, FilterParams, Resources
from datamill.synth.factory import make_generator
from datamill.synth.generation import GeneratorSpec, SamplingParams
from datamill.synth.judge import Method, check_choice_scoring, instruction_text, rate
from datamill.synth.templates import chats_from_batch

REASONS = ("pair_all_failed", "pair_one_scored", "pair_rso_too_few", "pair_tie", "pair_small_margin")
MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
RANKED = pl.List(pl.Struct({"text": pl.String, "score": pl.Float64}))


class JudgeScorer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generator: GeneratorSpec = Field(default_factory=GeneratorSpec)
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.0, max_new_tokens=128))
    aspects: list[str] = Field(default_factory=lambda: ["helpfulness", "honesty", "instruction_following",
                                                        "truthfulness"])
    scale: int = Field(10, ge=2, le=100)
    method: Method = Field("generate", description="generate: parse written ratings; logprobs: expected rating "
                           "from the rating tokens' probabilities (G-Eval; a score from every sample).")


class RewardScorer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A local AutoModelForSequenceClassification folder.")
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(2048, ge=8)
    device: str | None = None


class PreferencePairsParams(FilterParams):
    generator: GeneratorSpec = Field(default_factory=GeneratorSpec, description="The policy that samples.")
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(n=4, temperature=0.8, max_new_tokens=256))
    scorer: Literal["judge", "reward", "relevance"] = Field(
        "judge", description="judge: LLM ratings; reward: a reward model; relevance: a cheap offline heuristic "
        "(prompt-response embedding cosine × distinct-word share), for when neither is available.")
    embedding_model: str = Field("all-minilm-l6-v2", description="relevance: the sentence-embedding model.")
    judge: JudgeScorer = Field(default_factory=JudgeScorer)
    reward: RewardScorer | None = None
    selection: Literal["best_worst", "rso"] = "best_worst"
    rso_beta: float = Field(0.5, gt=0, description="RSO's β: lower accepts only samples near the best reward.")
    rso_accept: int = Field(4, ge=2, description="RSO: candidates to accept before pairing.")
    min_margin: float = Field(0.0, ge=0, description="Drop pairs whose chosen-rejected score gap is smaller (ties "
                              "always go).")
    format: Literal["conversational", "standard"] = "conversational"


def rso_accept(scores: np.ndarray, beta: float, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices accepted by RSO's rejection sampler: sweep the candidates in random order, accepting
    each with probability exp((r - max r) / beta), until k are accepted or a sweep accepts none."""
    accepted: list[int] = []
    remaining = list(range(len(scores)))
    top = float(np.max(scores))
    while remaining and len(accepted) < k:
        taken = []
        for i in rng.permutation(remaining):
            if len(accepted) < k and rng.random() < np.exp((scores[i] - top) / beta):
                accepted.append(int(i))
                taken.append(int(i))
        if not taken:
            break
        remaining = [i for i in remaining if i not in taken]
    return np.array(accepted, dtype=np.int64)


def select_pair(texts: list[str], scores: list[float | None], params: PreferencePairsParams,
                rng: np.random.Generator) -> tuple[int | None, int | None, str | None]:
    """(chosen index, rejected index, drop reason) for one prompt's samples."""
    valid = [i for i, (t, s) in enumerate(zip(texts, scores)) if s is not None and t.strip()]
    if not valid:
        return None, None, "pair_all_failed"
    if len(valid) == 1:
        return None, None, "pair_one_scored"
    if params.selection == "rso":
        picked = rso_accept(np.array([scores[i] for i in valid]), params.rso_beta, params.rso_accept, rng)
        if len(picked) < 2:
            return None, None, "pair_rso_too_few"
        valid = [valid[i] for i in picked]
    best = max(valid, key=lambda i: (scores[i], -i))
    worst = min(valid, key=lambda i: (scores[i], i))
    margin = scores[best] - scores[worst]
    if margin <= 0:
        return best, worst, "pair_tie"
    if margin < params.min_margin:
        return best, worst, "pair_small_margin"
    return best, worst, None


@register_stage
class PreferencePairsStage(Filter):
    """n policy samples per prompt, scored by judge or reward model → chosen/rejected (TRL's format)."""

    type_name = "preference_pairs"
    Params = PreferencePairsParams
    inputs: ClassVar[tuple[str, ...]] = ("messages", "prompt", "instruction", "text")
    outputs: ClassVar[tuple[str, ...]] = ("chosen_score", "rejected_score", "score_margin", "n_scored")
    resources = Resources(cpus=1.0, gpus=0.0, batch_rows=32)

    def setup(self) -> None:
        p = self.params
        run_dir = getattr(self, "run_dir", None)
        self.generator = make_generator(p.generator, run_dir, probe=p.sampling)
        if p.scorer == "judge":
            self.judge = make_generator(p.judge.generator, run_dir, probe=p.judge.sampling)
            if p.judge.method == "logprobs":
                check_choice_scoring(self.judge, self.name, "absolute", p.judge.scale)
        elif p.scorer == "relevance":
            from datamill.curate.models.embeddings import load_embedder

            self.embedder = load_embedder(p.embedding_model)
        else:
            from datamill.synth.reward import RewardModel

            if p.reward is None:
                raise ValueError(f"{self.name}: scorer reward needs a `reward: {{model: PATH}}` section")
            self.reward_model = RewardModel(p.reward.model, p.reward.batch_size, p.reward.max_length, p.reward.device)

    def sample_scores(self, chats: list[list[dict[str, str]]], samples: list[list[str]]) -> list[list[float | None]]:
        p = self.params
        flat_chats = [chat for chat, group in zip(chats, samples) for _ in group]
        flat = [s for group in samples for s in group]
        if p.scorer == "judge":
            table = rate(self.judge, [instruction_text(c) for c in flat_chats], flat, p.judge.aspects, p.judge.scale,
                         p.judge.sampling.model_copy(update={"seed": p.judge.sampling.seed + self.seed}), p.judge.method)
            values = table["judge_score"].to_list()
        elif p.scorer == "relevance":
            values = relevance_scores(self.embedder, [instruction_text(c) for c in flat_chats], flat)
        else:
            values = [float(v) for v in self.reward_model.score(flat_chats, flat)]
        out, k = [], 0
        for group in samples:
            out.append(values[k:k + len(group)])
            k += len(group)
        return out

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        chats, _ = chats_from_batch(batch)
        results = self.generator.generate(chats, p.sampling.model_copy(update={"seed": p.sampling.seed + self.seed}))
        samples = [[c.text.strip() for c in group] for group in results]
        scores = self.sample_scores(chats, samples)
        rows = []
        for k, (chat, texts, values) in enumerate(zip(chats, samples, scores)):
            rng = np.random.default_rng([self.seed, p.sampling.seed, hash_text(instruction_text(chat))])
            best, worst, reason = select_pair(texts, values, p, rng)
            ranked = sorted(((t, v) for t, v in zip(texts, values) if v is not None and t),
                            key=lambda x: -x[1])
            rows.append({
                "chosen": texts[best] if best is not None else None,
                "rejected": texts[worst] if worst is not None else None,
                "chosen_score": values[best] if best is not None else None,
                "rejected_score": values[worst] if worst is not None else None,
                "ranked": [{"text": t, "score": v} for t, v in ranked],
                "n_scored": len(ranked), "pair_status": reason})
        table = pl.DataFrame(rows, schema={"chosen": pl.String, "rejected": pl.String, "chosen_score": pl.Float64,
                                           "rejected_score": pl.Float64, "ranked": RANKED, "n_scored": pl.Int64,
                                           "pair_status": pl.String})
        table = table.with_columns((pl.col("chosen_score") - pl.col("rejected_score")).alias("score_margin"))
        scorer_id = {"judge": lambda: self.judge.model_id, "reward": lambda: self.reward_model.model_id,
                     "relevance": lambda: f"relevance:{p.embedding_model}"}[p.scorer]()
        if p.format == "conversational":
            prompt = pl.Series("prompt", [[dict(m) for m in chat] for chat in chats], dtype=pl.List(MESSAGE))
            table = table.with_columns(
                *(pl.when(pl.col(c).is_not_null()).then(pl.concat_list(pl.struct(
                    pl.lit("assistant").alias("role"), pl.col(c).alias("content")))).alias(c)
                  for c in ("chosen", "rejected")))
        else:
            prompt = pl.Series("prompt", [instruction_text(chat) for chat in chats], dtype=pl.String)
        table = table.with_columns(prompt, pl.lit(self.generator.model_id).alias("pair_policy"),
                                   pl.lit(scorer_id).alias("pair_scorer"))
        return batch.drop([c for c in table.columns if c in batch.columns]).hstack(table)

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        return [(reason, pl.col("pair_status") == reason) for reason in REASONS]


def relevance_scores(embedder, prompts: list[str], responses: list[str]) -> list[float | None]:
    """cosine(prompt, response) × (distinct words / words) per response (null for an empty one): on
    topic and not repetitive. A heuristic, not a judgement of correctness."""
    vectors = embedder.embed(prompts + responses)
    cosine = (vectors[:len(prompts)] * vectors[len(prompts):]).sum(axis=1)
    out: list[float | None] = []
    for c, response in zip(cosine, responses):
        words = response.lower().split()
        out.append(float(c) * len(set(words)) / len(words) if words else None)
    return out


def hash_text(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
