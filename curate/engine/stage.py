"""The Stage protocol: the one interface every processor implements, on polars batches.

A recipe's `stages:` list is turned into Stage objects. The executor owns placement, batching,
statistics and error isolation; a stage only turns one `pl.DataFrame` into another.

Three shapes, all Stages:
- `Stage`: `process(batch) -> batch` (may add columns, may rewrite columns, may return fewer rows).
- `Filter`: scores first (`score` adds columns), then `drop_rules()` names a reason for each row
  it wants gone. The executor drops those rows (or only flags them with `action: flag`), counts
  them per reason and can keep them under `removed/<stage>/`. Scores stay as columns so a user can
  re-threshold later without recomputing.
- `BarrierStage`: needs the whole dataset (global dedup, rank/budget selection). The executor runs
  `summarize` on every shard, `reduce` once over all summaries, then `apply` on every shard.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

DROP_REASON = "_drop_reason"
"""Column a Filter's `process` writes: null keeps the row, a string names why it goes."""

POSITION = "_pos"
"""Column the executor adds for barrier stages: a dataset-wide, deterministic row order key."""


class StageParams(BaseModel):
    """Parameters every stage accepts; each stage type extends this with its own."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="Name in the report; defaults to the stage type.")

    def check_paths(self, base_dir: str) -> list[str]:
        """Files the stage needs (eval sets, lexicons, models) that do not exist, as `key: message`
        lines; checked before any work starts. Relative paths in a recipe are read from `base_dir`."""
        return []


class FilterParams(StageParams):
    """Parameters every filter accepts."""

    action: Literal["drop", "flag"] = Field(
        "drop",
        description="drop: remove rows that fail; flag: keep them and write the reason to "
        "column `<name>_reason` (score now, filter later).",
    )


class Resources(BaseModel):
    """What one instance of a stage needs; the executor decides placement from it."""

    model_config = ConfigDict(frozen=True)

    cpus: float = 1.0
    gpus: float = 0.0
    batch_rows: int | None = Field(None, description="Preferred batch size; None = executor's.")


class Stage:
    """Base class of every processor. Subclasses set the class attributes and `process`."""

    type_name: ClassVar[str] = ""
    """The `type:` that selects this stage in a recipe."""
    Params: ClassVar[type[StageParams]] = StageParams
    inputs: ClassVar[tuple[str, ...]] = ("text",)
    """Columns the stage reads."""
    outputs: ClassVar[tuple[str, ...]] = ()
    """Columns the stage adds or rewrites (numeric ones are histogrammed in the report)."""
    resources: ClassVar[Resources] = Resources()
    barrier: ClassVar[bool] = False

    def __init__(self, params: StageParams | None = None, *, seed: int = 0):
        self.params = params if params is not None else self.Params()
        self.name = self.params.name or self.type_name
        self.seed = seed
        self.base_dir = "."
        """Folder that relative paths in the params (eval sets, indexes, targets) are read from;
        the pipeline sets it to the recipe file's folder."""

    @property
    def modifies_text(self) -> bool:
        return "text" in self.outputs

    def setup(self) -> None:
        """Load models or tables; called once per worker process before the first batch."""

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        raise NotImplementedError(f"{type(self).__name__} must implement process()")

    def tallies(self, result: pl.DataFrame) -> dict[str, int]:
        """Counts to add up in the report besides drops and flags (e.g. PII matches masked, by
        type); `result` is what `process` returned for one batch. Default: none."""
        return {}

    def facts(self) -> dict[str, int]:
        """Counts that describe the stage's set-up, not its batches (e.g. rules of a list that cannot
        apply); the same in every shard, so the report shows them once. Default: none."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Filter(Stage):
    """A Stage that adds score columns and names a drop reason per row."""

    Params: ClassVar[type[StageParams]] = FilterParams

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Add score columns. Default: none (rules work on existing columns)."""
        return batch

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        """(reason, expression true for rows to drop). The first matching rule is the reason."""
        raise NotImplementedError(f"{type(self).__name__} must implement drop_rules()")

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        scored = self.score(batch)
        reason: pl.Expr = pl.lit(None, dtype=pl.String)
        for rule_name, condition in reversed(self.drop_rules()):
            reason = pl.when(condition.fill_null(False)).then(pl.lit(rule_name)).otherwise(reason)
        return scored.with_columns(reason.alias(DROP_REASON))


class BarrierStage(Stage):
    """A Stage that must see the whole dataset before it can decide about any row.

    Every batch the executor hands to `summarize` and `apply` carries the `_pos` column: a
    unique, deterministic position of the row in the dataset (same value in both phases), so
    "keep the first occurrence" means "smallest `_pos`".
    """

    barrier: ClassVar[bool] = True

    def summarize(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Map phase: a small table describing `batch` (e.g. hashes with `_pos`)."""
        raise NotImplementedError

    def reduce(self, summaries: pl.LazyFrame) -> pl.DataFrame:
        """Reduce phase: from all shards' summaries, the decision table `apply` uses."""
        raise NotImplementedError

    def apply(self, batch: pl.DataFrame, decision: pl.DataFrame) -> pl.DataFrame:
        """Filter phase: `batch` with decision columns added; may set `_drop_reason` like a Filter."""
        raise NotImplementedError

    def decision_for_shard(self, decision: pl.LazyFrame, first_pos: int, end_pos: int) -> pl.DataFrame:
        """The part of the decision table one shard needs; default: rows with `_pos` in range."""
        return decision.filter(pl.col(POSITION).is_between(first_pos, end_pos, closed="left")).collect()

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        raise TypeError(f"{self.name} is a barrier stage; the executor calls summarize/reduce/apply")


def describe_params(params_model: type[BaseModel]) -> list[dict[str, Any]]:
    """Rows (name, type, default, description) for `datamill stages` and the recipe reference."""
    rows = []
    for field_name, info in params_model.model_fields.items():
        annotation = info.annotation
        type_text = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        rows.append(
            {
                "name": field_name,
                "type": type_text,
                "default": None if info.is_required() else info.get_default(call_default_factory=True),
                "required": info.is_required(),
                "description": info.description or "",
            }
        )
    return rows
