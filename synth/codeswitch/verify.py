"""Verify code-switched text with token-level language ID: `cs_ratio`, `switch_points`, `matrix_lang`.

The `codeswitch_verify` filter labels every word token (letters only, at least `min_token_chars`)
with one of the expected languages `langs`, using the fastText LID model of the `language` stage
(`filters/language.py`, same loading): each distinct token is predicted once per batch (top
`top_k` labels), only the probabilities of the expected languages are kept, and a token's score
per language is its own probability plus `context` × its neighbours' (single words are
ambiguous; a switched span is usually longer than one word). The label is the best language, or
none when no expected language is among any of those predictions.

Per record: `matrix_lang` (the language with most tokens: the frame language of Myers-Scotton's
matrix language model), `cs_ratio` (share of labelled tokens in other languages), `switch_points`
(neighbouring labelled tokens in different languages), `cs_langs` (languages seen). With a
`source_text` column (what `codeswitch_lexicon` and `codeswitch_llm` write), also
`cs_length_ratio` (output / source characters) and, with `min_similarity`, `cs_similarity` (cosine
of MiniLM sentence embeddings, `curate/models/embeddings.py`).

Where the switched spans are known (`cs_spans`, written by `codeswitch_lexicon`), `cs_ratio`,
`switch_points` and `matrix_lang` are computed from them exactly (`metrics.py`, text outside the
spans is `langs[0]`); the LID estimates stay beside them as `cs_ratio_lid` and
`switch_points_lid` (to validate the estimate where the truth is known), and `cs_metrics_from`
says which a record's values come from (`spans` or `lid`). `cs_cmi` (Das & Gambäck's Code-Mixing
Index, 100 × cs_ratio when only word tokens count) is given either way.

Drop reasons: `not_mixed` (too few tokens in a second language or too few switch points),
`length_drift` and `meaning_drift` (the text no longer says what the source said).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter
from datamill.curate.models.params import FastTextModelParams
from datamill.filters.language import LanguageFilter, LanguageParams
from datamill.synth.codeswitch.metrics import span_metrics

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
TOKEN = r"\p{L}+"


class VerifyParams(FastTextModelParams):
    langs: list[str] = Field(["en", "es"], min_length=2, description="Languages expected in the mix (LID labels).")
    top_k: int = Field(40, ge=2, description="Labels predicted per token; expected languages outside them score 0.")
    context: float = Field(0.0, ge=0.0, description="Weight of the two neighbouring tokens' scores (0: each token alone).")
    min_token_chars: int = Field(2, ge=1, description="Shorter tokens get no language.")
    min_cs_ratio: Probability = Field(0.1, description="Drop as not_mixed below this share of non-matrix tokens.")
    min_switch_points: int = Field(1, ge=0, description="Drop as not_mixed with fewer switch points.")
    source_column: str = Field("source_text", description="Column with the text before switching (drift checks).")
    length_ratio: tuple[float, float] = Field((0.5, 2.0), description="Allowed output/source length ratio.")
    min_similarity: Probability | None = Field(None, description="Drop below this embedding cosine with the source.")
    embedding_model: str = Field("all-minilm-l6-v2", description="Sentence-embedding model for `min_similarity`.")

    @model_validator(mode="after")
    def _checks(self):
        if len(set(self.langs)) != len(self.langs):
            raise ValueError(f"langs: {self.langs} repeats a language")
        low, high = self.length_ratio
        if not 0 < low <= high:
            raise ValueError(f"length_ratio: need 0 < low <= high, got {self.length_ratio}")
        return self


@register_stage
class CodeSwitchVerify(Filter):
    """Token-level LID of mixed text: `cs_ratio`, `switch_points`, `matrix_lang`; drops unmixed or drifted rows."""

    type_name: ClassVar[str] = "codeswitch_verify"
    Params: ClassVar[type[VerifyParams]] = VerifyParams
    outputs: ClassVar[tuple[str, ...]] = ("cs_ratio", "switch_points", "matrix_lang", "cs_langs", "cs_length_ratio",
                                          "cs_cmi", "cs_ratio_lid", "switch_points_lid", "cs_metrics_from")
    params: VerifyParams

    def __init__(self, params: VerifyParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        if self.params.min_similarity is not None:
            self.outputs = type(self).outputs + ("cs_similarity",)
        self._lid = LanguageFilter(LanguageParams(model=self.params.model, min_score=0.0), seed=seed)
        self._embedder = None

    def setup(self) -> None:
        self._lid.setup()
        if self.params.min_similarity is not None:
            from datamill.curate.models.embeddings import load_embedder

            self._embedder = load_embedder(self.params.embedding_model)

    def token_labels(self, texts: pl.Series) -> pl.DataFrame:
        """One row per word token: doc, position, token, lang (null: none of `langs`)."""
        p = self.params
        tokens = (
            pl.DataFrame({"text": texts.fill_null("")}).with_row_index("doc")
            .select("doc", pl.col("text").str.extract_all(TOKEN).alias("token"))
            .explode("token").drop_nulls("token")
            .filter(pl.col("token").str.len_chars() >= p.min_token_chars)
            .with_row_index("position")
            .with_columns(pl.col("token").str.to_lowercase().alias("lower"))
        )
        distinct = tokens["lower"].unique(maintain_order=True)
        predicted = self._lid.predict(distinct, k=p.top_k).with_columns(distinct.alias("lower"))
        scores = (
            predicted.explode(["langs", "scores"]).filter(pl.col("langs").is_in(p.langs))
            .pivot(on="langs", index="lower", values="scores", aggregate_function="max")
        )
        own = [pl.col(lang).fill_null(0.0) if lang in scores.columns else pl.lit(0.0) for lang in p.langs]
        tokens = tokens.join(scores, on="lower", how="left", maintain_order="left").with_columns(
            [o.alias(f"_s{i}") for i, o in enumerate(own)])
        smoothed = [
            pl.col(f"_s{i}") + p.context * (pl.col(f"_s{i}").shift(1).over("doc").fill_null(0.0)
                                            + pl.col(f"_s{i}").shift(-1).over("doc").fill_null(0.0))
            for i in range(len(p.langs))
        ]
        best = pl.concat_list(smoothed)
        lang = best.list.arg_max().replace_strict(range(len(p.langs)), p.langs, return_dtype=pl.String)
        return tokens.select("doc", "position", "token", pl.when(best.list.max() > 0).then(lang).alias("lang"))

    def mix_stats(self, texts: pl.Series) -> pl.DataFrame:
        """Per text: matrix_lang, cs_ratio, switch_points, cs_langs."""
        labels = self.token_labels(texts).drop_nulls("lang")
        order = {lang: i for i, lang in enumerate(self.params.langs)}
        counts = (
            labels.group_by("doc", "lang").agg(pl.len().alias("n"))
            .with_columns(pl.col("lang").replace_strict(order, return_dtype=pl.Int64).alias("_rank"))
            .sort(["doc", "n", "_rank"], descending=[False, True, False])
            .group_by("doc", maintain_order=True)
            .agg(pl.col("lang").first().alias("matrix_lang"),
                 (1 - pl.col("n").first() / pl.col("n").sum()).alias("cs_ratio"),
                 pl.col("lang").sort_by("_rank").alias("cs_langs"))
        )
        switches = labels.sort("position").group_by("doc").agg(
            (pl.col("lang") != pl.col("lang").shift(1)).sum().cast(pl.UInt32).alias("switch_points"))
        return (
            pl.DataFrame({"doc": pl.int_range(0, len(texts), eager=True, dtype=pl.UInt32)})
            .join(counts, on="doc", how="left", maintain_order="left")
            .join(switches, on="doc", how="left", maintain_order="left")
            .select(pl.col("cs_ratio").fill_null(0.0), pl.col("switch_points").fill_null(0),
                    "matrix_lang", pl.col("cs_langs").fill_null(pl.lit([], dtype=pl.List(pl.String))))
        )

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        if not self._lid.is_ready:
            raise RuntimeError(f"stage {self.name!r}: call setup() before scoring")
        p = self.params
        columns = self.exact_where_known(batch, self.mix_stats(batch["text"])).get_columns()
        has_source = p.source_column in batch.columns
        source = batch[p.source_column].cast(pl.String) if has_source else pl.Series(
            [None] * batch.height, dtype=pl.String)
        ratio = batch["text"].str.len_chars().cast(pl.Float64) / source.str.len_chars().cast(pl.Float64)
        columns.append(ratio.alias("cs_length_ratio"))
        if p.min_similarity is not None:
            columns.append(self.similarity(batch["text"], source).alias("cs_similarity"))
        return batch.with_columns(columns)

    def exact_where_known(self, batch: pl.DataFrame, lid: pl.DataFrame) -> pl.DataFrame:
        """The LID statistics, replaced by the exact ones from `cs_spans` for records that have them."""
        lid = lid.with_columns(pl.col("cs_ratio").alias("cs_ratio_lid"), pl.col("switch_points").alias("switch_points_lid"))
        if "cs_spans" not in batch.columns:
            return lid.with_columns((100 * pl.col("cs_ratio")).alias("cs_cmi"), pl.lit("lid").alias("cs_metrics_from"))
        exact = span_metrics(batch["text"], batch["cs_spans"], self.params.langs[0])
        known = batch["cs_spans"].is_not_null()
        def pick(name: str) -> pl.Expr:
            return pl.when(pl.lit(known)).then(exact[name]).otherwise(lid[name])

        return lid.with_columns(pick("cs_ratio").alias("cs_ratio"), pick("switch_points").alias("switch_points"),
                                pick("matrix_lang").alias("matrix_lang"),
                                (100 * pick("cs_ratio")).alias("cs_cmi"),
                                pl.when(pl.lit(known)).then(pl.lit("spans")).otherwise(pl.lit("lid")).alias("cs_metrics_from"))

    def similarity(self, texts: pl.Series, sources: pl.Series) -> pl.Series:
        """Cosine of the embeddings of each text and its source (null without a source)."""
        present = sources.is_not_null().to_numpy()
        values = np.full(len(texts), np.nan)
        if present.any():
            rows = np.flatnonzero(present)
            a = self._embedder.embed(texts.fill_null("").gather(rows).to_list())
            b = self._embedder.embed(sources.gather(rows).to_list())
            values[rows] = (a * b).sum(axis=1)
        return pl.Series(values).fill_nan(None)

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        p = self.params
        low, high = p.length_ratio
        rules = [
            ("not_mixed", (pl.col("cs_ratio") < p.min_cs_ratio) | (pl.col("switch_points") < p.min_switch_points)),
            ("length_drift", (pl.col("cs_length_ratio") < low) | (pl.col("cs_length_ratio") > high)),
        ]
        if p.min_similarity is not None:
            rules.append(("meaning_drift", pl.col("cs_similarity") < p.min_similarity))
        return rules
