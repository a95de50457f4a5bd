"""The `classifier` stage: score every document with a model classifier, keep by threshold or corpus-wide rank.

    - {type: classifier, name: dclm, model: models/openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train.bin,
       label: hq, keep_top: 0.1}                                     # DCLM: the top 10 % by P(hq)
    - {type: classifier, name: edu, model: models/fineweb-edu-classifier, min_score: 3}   # FineWeb-Edu
    - {type: classifier, name: toxic, model: models/jigsaw_fasttext_bigrams_hatespeech_final.bin,
       label: hate, action: flag}                                    # Dolma-style tagging
    - {type: classifier, name: mine, model: out/my-classifier}       # from `datamill classifier train`

Columns `<name>_score` (probability of `label`, by default the datamill card's positive class or
else the top class; a regressor's raw score) and `<name>_label` (the top class; a regressor's
score rounded into its range, FineWeb-Edu's `int_score`). Which model a path is, and how it is
batched, is `classifier_models`' business. `preprocess: auto` uses what the model was trained
with (a datamill card says), `lines` for a bare fastText file, `none` for transformers.

Thresholds (`min_score`, `max_score`) are per-row rules. `keep_top: 0.1` keeps the best 10 % of
the whole corpus: the stage then runs as a ranking barrier (`summarize` scores each shard,
`reduce` ranks all scores with `selection.ranking.select_by_rank`, ties by dataset order,
`apply` joins the scores back), so the result does not depend on shards or workers.

With `train: {label_column: annotate_score, ...}` instead of `model:` the stage trains its model
inside the run (also a barrier): `summarize` keeps the text and label of the rows that have one
(e.g. the sample an `annotate` stage scored), `reduce` trains on all of them
(`classifier_train.train_classifier`, held-out metrics in its card.json), and `apply` scores every
row with the new model. That is annotate → train → classify in one recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import Field, model_validator

from datamill.curate.engine.paths import exists, is_dir, is_url, join, local_copy
from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import DROP_REASON, POSITION, Filter, FilterParams, Resources
from datamill.curate.selection.ranking import SELECTED, Budget, select_by_rank
from datamill.filters.classifier_models import preprocess
from datamill.filters.classifier_train import TrainSettings


class InlineTraining(TrainSettings):
    """Train the stage's model inside the run, on the rows that carry a label."""

    label_column: str = Field(description="Column with the class or score (rows where it is null are skipped).")
    out: str = Field(description="Folder the trained classifier is written to (relative to the working "
                     "directory, like output.dir).")
    min_rows: int = Field(10, ge=2, description="Fail the run when fewer labelled rows than this reach training.")


class ClassifierParams(FilterParams):
    model: str | None = Field(None, description="A fastText .bin/.ftz file, a `datamill classifier train` folder, "
                              "or a transformers sequence-classification folder (relative to the recipe).")
    train: InlineTraining | None = Field(None, description="Instead of `model`: train one in this run on rows "
                                         "with a label (see the stage's docs).")
    label: str | None = Field(None, description="Class whose probability is the score; default: the card's "
                              "positive class, else the top class.")
    preprocess: Literal["auto", "dclm", "lines", "none"] = Field(
        "auto", description="Text the model sees: auto = as trained (card), lines for fastText files, none for transformers.")
    min_score: float | None = Field(None, description="Drop rows scoring below this.")
    max_score: float | None = Field(None, description="Drop rows scoring above this.")
    keep_top: float | None = Field(None, gt=0, le=1, description="Keep this fraction of the whole corpus with the "
                                   "highest scores (a ranking barrier); rows without a score are never kept.")
    max_tokens: int = Field(512, ge=8, description="Transformers models: tokens of each text read.")
    batch_tokens: int = Field(16384, ge=64, description="Transformers models: rows × padded length per batch.")
    device: str | None = Field(None, description="torch device; default: cuda when visible, else cpu.")

    def check_paths(self, base_dir: str) -> list[str]:
        """The model file or folder exists (local, or a URL checked through fsspec)."""
        if self.model is None:
            return []
        where = self.model if is_url(self.model) else join(base_dir, self.model)
        if exists(where) or is_dir(where):
            return []
        return [f"model: no classifier file or folder {self.model!r}"
                + ("" if is_url(self.model) else f" (looked in {Path(base_dir).resolve()})")]

    @model_validator(mode="after")
    def _consistent(self):
        if (self.model is None) == (self.train is None):
            raise ValueError("give exactly one of `model` (a trained classifier) or `train` (train one in this run)")
        if self.train is not None and self.keep_top is not None:
            raise ValueError("keep_top cannot rank while the model is trained in the same step; add a "
                             "`budget` stage on `<name>_score` after this one")
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise ValueError(f"min_score={self.min_score} is larger than max_score={self.max_score}")
        return self


@register_stage
class ClassifierFilter(Filter):
    """Scores `<name>_score`/`<name>_label` with a fastText, datamill or transformers classifier; keeps by threshold or rank."""

    type_name: ClassVar[str] = "classifier"
    Params: ClassVar[type[ClassifierParams]] = ClassifierParams
    resources: ClassVar[Resources] = Resources(cpus=1, gpus=0)
    """Runs on CPU; transformer models use a GPU when the executor places the stage where one is visible."""
    params: ClassifierParams

    def __init__(self, params: ClassifierParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        self.score_column, self.label_column = f"{self.name}_score", f"{self.name}_label"
        self.outputs = (self.score_column, self.label_column)
        self.barrier = self.params.keep_top is not None or self.params.train is not None
        """A ranking barrier with `keep_top`, a training barrier with `train`; a plain filter otherwise."""
        self.model: Any = None

    # --- the model ----------------------------------------------------------------------
    def model_path(self) -> Path:
        if self.params.train is not None:
            return Path(self.params.train.out)
        if is_url(self.params.model):  # fastText and transformers read local files: downloaded once
            return Path(local_copy(self.params.model))
        path = Path(self.params.model).expanduser()
        return path if path.is_absolute() else Path(self.base_dir) / path

    def setup(self) -> None:
        if self.params.train is None:  # a model trained in the run exists only after its reduce
            self.load_model()

    def load_model(self) -> None:
        from datamill.filters.classifier_models import load_classifier

        p = self.params
        self.model = load_classifier(self.model_path(), device=p.device, max_tokens=p.max_tokens,
                                     batch_tokens=p.batch_tokens)
        self.model.check_label(self.chosen_label)

    @property
    def chosen_label(self) -> str | None:
        return self.params.label if self.params.label is not None else getattr(self.model, "default_label", None)

    def texts_for_model(self, texts: pl.Series) -> pl.Series:
        mode = self.params.preprocess
        if mode == "auto":
            mode = self.model.default_preprocess
        return preprocess(texts, mode)

    # --- scoring and rules ----------------------------------------------------------------
    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        if self.model is None:
            if self.params.train is None:
                raise RuntimeError(f"stage {self.name!r}: setup() must load the model before scoring")
            self.load_model()
        prediction = self.model.predict(self.texts_for_model(batch["text"]), self.chosen_label)
        return batch.with_columns(
            pl.Series(self.score_column, prediction.score, dtype=pl.Float64).fill_nan(None),
            prediction.label.alias(self.label_column),
        )

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        p, score = self.params, pl.col(self.score_column)
        rules = []
        if p.min_score is not None:
            rules.append((f"{self.name}_below_min_score", score < p.min_score))
        if p.max_score is not None:
            rules.append((f"{self.name}_above_max_score", score > p.max_score))
        return rules

    def reasons(self, extra: list[tuple[str, pl.Expr]] = ()) -> pl.Expr:
        reason: pl.Expr = pl.lit(None, dtype=pl.String)
        for rule_name, condition in reversed(self.drop_rules() + list(extra)):
            reason = pl.when(condition.fill_null(False)).then(pl.lit(rule_name)).otherwise(reason)
        return reason.alias(DROP_REASON)

    # --- barrier: keep_top ranking, or training in the run -----------------------------------
    def summarize(self, batch: pl.DataFrame) -> pl.DataFrame:
        if self.params.train is not None:
            column = self.params.train.label_column
            if column not in batch.columns:
                raise ValueError(f"stage {self.name!r}: train.label_column {column!r} not found; columns: "
                                 + ", ".join(c for c in batch.columns if not c.startswith("_")))
            return batch.filter(pl.col(column).is_not_null()).select(POSITION, "text", pl.col(column).alias("label"))
        return self.score(batch).select(POSITION, self.score_column, self.label_column)

    def reduce(self, summaries: pl.LazyFrame) -> pl.DataFrame:
        if self.params.train is not None:
            return self.train_in_run(summaries.sort(POSITION).collect())
        table = summaries.collect()
        ranked = select_by_rank(table, self.score_column, Budget(fraction=self.params.keep_top), descending=True)
        return ranked.select(POSITION, self.score_column, self.label_column, SELECTED).sort(POSITION)

    def train_in_run(self, table: pl.DataFrame) -> pl.DataFrame:
        from datamill.filters.classifier_train import train_classifier

        t = self.params.train
        if table.height < t.min_rows:
            raise ValueError(f"stage {self.name!r}: only {table.height} row(s) have a {t.label_column!r} value; "
                             f"training needs at least train.min_rows={t.min_rows}")
        settings = TrainSettings.model_validate(t.model_dump(include=set(TrainSettings.model_fields)))
        card = train_classifier(table.select("text", "label"), settings, t.out,
                                {"stage": self.name, "label_column": t.label_column})
        return pl.DataFrame({"model": [str(Path(t.out).resolve())], "labelled_rows": [table.height],
                             "metrics": [str(card.get("metrics", {}))]})

    def decision_for_shard(self, decision: pl.LazyFrame, first_pos: int, end_pos: int) -> pl.DataFrame:
        if self.params.train is not None:
            return decision.collect()  # one row: the trained model, the same for every shard
        return decision.filter(pl.col(POSITION).is_between(first_pos, end_pos, closed="left")).collect()

    def apply(self, batch: pl.DataFrame, decision: pl.DataFrame) -> pl.DataFrame:
        if self.params.train is not None:
            return self.score(batch).with_columns(self.reasons())
        joined = batch.join(decision, on=POSITION, how="left", maintain_order="left")
        not_top = (f"{self.name}_not_top", ~pl.col(SELECTED).fill_null(False))
        return joined.with_columns(self.reasons([not_top])).drop(SELECTED)
