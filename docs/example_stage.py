"""An example plug-in stage: drop documents that shout (mostly upper-case letters)."""

from typing import ClassVar

import polars as pl
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter, FilterParams


class ShoutingParams(FilterParams):
    max_upper: float = Field(0.5, ge=0, le=1, description="Drop documents whose letters are more upper-case.")


@register_stage
class ShoutingFilter(Filter):
    """Drop documents whose letters are mostly upper-case; adds `upper_share`."""

    type_name = "shouting"
    Params: ClassVar = ShoutingParams
    outputs = ("upper_share",)

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        letters = pl.col("text").str.count_matches(r"\p{L}")
        upper = pl.col("text").str.count_matches(r"\p{Lu}")
        return batch.with_columns((upper / letters.clip(lower_bound=1)).alias("upper_share"))

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        return [("shouting", pl.col("upper_share") > self.params.max_upper)]
