"""Selective transliteration: romanize only the tokens whose tag matches a rule (script or word origin).

Maltese mixes Semitic, Romance and English-origin words; writing one stratum differently (e.g.
English loans without Maltese diacritics: friġġ → frigg) is a form of code-switching. The
`transliterate_tokens` stage tags every word token by
- `scripts`: the Unicode script of its letters (e.g. Cyrillic, Greek, Arabic), and/or
- `word_list` + `origins`: an origin tag from a user word list (TSV `word<TAB>origin`, matched
  case-insensitively; `mt-origin.tsv` ships as an example),
and transliterates exactly the tagged tokens with `anyascii` (Unicode → ASCII, any script).

Text is cut into alternating word / non-word pieces with one regex, so rejoining the pieces gives
the text back exactly; only tagged pieces change. Adds `translit_spans` (list of {start, end, tag,
source_term}, offsets into the output text) and `translit_count`.
"""

from __future__ import annotations

from typing import ClassVar

import polars as pl
from pydantic import Field, model_validator

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Stage, StageParams
from datamill.filters.scripts import SCRIPTS
from datamill.synth.codeswitch.lexicon import read_table, resolve

PIECES = r"\w+|\W+"
SPAN_TYPE = pl.Struct({"start": pl.Int64, "end": pl.Int64, "tag": pl.String, "source_term": pl.String})


class TransliterateParams(StageParams):
    scripts: list[str] = Field(default_factory=list, description=f"Transliterate tokens in these scripts ({', '.join(SCRIPTS)}).")
    word_list: str | None = Field(None, description="TSV with columns word, origin (a path or a shipped name).")
    origins: list[str] = Field(default_factory=list, description="Transliterate words of the list with these origin tags.")

    def check_paths(self, base_dir: str) -> list[str]:
        try:
            if self.word_list:
                resolve(self.word_list)
        except FileNotFoundError as error:
            return [f"word_list: {error}"]
        return []

    @model_validator(mode="after")
    def _has_a_rule(self):
        unknown = sorted(set(self.scripts) - set(SCRIPTS))
        if unknown:
            raise ValueError(f"scripts: unknown script name(s) {unknown}; known: {', '.join(SCRIPTS)}")
        if bool(self.word_list) != bool(self.origins):
            raise ValueError("word_list and origins go together: the list tags words, origins picks the tags")
        if not self.scripts and not self.origins:
            raise ValueError("give at least one rule: scripts, or word_list with origins")
        return self


def transliterate(tokens: list[str]) -> list[str]:
    """ASCII transliteration of each token (anyascii)."""
    from anyascii import anyascii

    return [anyascii(token) for token in tokens]


@register_stage
class SelectiveTransliterate(Stage):
    """Transliterate only tokens tagged by script or word origin; adds `translit_spans`, `translit_count`."""

    type_name: ClassVar[str] = "transliterate_tokens"
    Params: ClassVar[type[TransliterateParams]] = TransliterateParams
    outputs: ClassVar[tuple[str, ...]] = ("text", "translit_spans", "translit_count")
    params: TransliterateParams

    def __init__(self, params: TransliterateParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        self._origins = pl.DataFrame(schema={"_lower": pl.String, "_origin": pl.String})

    def setup(self) -> None:
        p = self.params
        if p.word_list:
            path = resolve(p.word_list)
            table = read_table(path)
            missing = [c for c in ("word", "origin") if c not in table.columns]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; a word list needs word, origin")
            self._origins = (
                table.filter(pl.col("origin").is_in(p.origins))
                .select(pl.col("word").str.strip_chars().str.to_lowercase().alias("_lower"), pl.col("origin").alias("_origin"))
                .unique("_lower", keep="first", maintain_order=True)
            )

    def tag(self, token: pl.Expr) -> pl.Expr:
        """The rule that selects a token: its script name, else its origin tag, else null."""
        tag = pl.lit(None, pl.String)
        for script in reversed(self.params.scripts):
            tag = pl.when(token.str.contains(rf"^\w*\p{{{script}}}")).then(pl.lit(script)).otherwise(tag)
        return tag

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        pieces = (
            batch.select(pl.col("text").fill_null("").str.extract_all(PIECES).alias("piece"))
            .with_row_index("doc").explode("piece").with_row_index("order")
            .with_columns(pl.col("piece").fill_null(""))
            .with_columns(pl.col("piece").str.to_lowercase().alias("_lower"))
            .join(self._origins, on="_lower", how="left", maintain_order="left")
            .with_columns(pl.coalesce(self.tag(pl.col("piece")), pl.col("_origin")).alias("tag"))
        )
        selected = pieces.filter(pl.col("tag").is_not_null())["piece"].unique(maintain_order=True)
        mapping = pl.DataFrame({"piece": selected, "_new": transliterate(selected.to_list())},
                               schema={"piece": pl.String, "_new": pl.String})
        pieces = (
            pieces.join(mapping, on="piece", how="left", maintain_order="left")
            .with_columns(pl.when(pl.col("tag").is_not_null()).then(pl.col("_new")).otherwise(pl.col("piece")).alias("_out"))
            .with_columns(pl.col("_out").str.len_chars().cast(pl.Int64).alias("_len"))
            .with_columns((pl.col("_len").cum_sum().over("doc") - pl.col("_len")).alias("_start"))
        )
        span = pl.struct(start="_start", end=pl.col("_start") + pl.col("_len"), tag="tag", source_term="piece")
        out = pieces.sort("order").group_by("doc", maintain_order=True).agg(
            pl.col("_out").str.join("").alias("text"),
            span.filter(pl.col("tag").is_not_null()).alias("translit_spans"),
        )
        out = batch.select(pl.col("text").fill_null("")).with_row_index("doc").join(
            out, on="doc", how="left", suffix="_new", maintain_order="left").select(
            pl.coalesce("text_new", "text").alias("text"),
            pl.col("translit_spans").fill_null(pl.lit([], dtype=pl.List(SPAN_TYPE))))
        spans = out["translit_spans"].cast(pl.List(SPAN_TYPE))
        return batch.with_columns(out["text"].alias("text"), spans.alias("translit_spans"),
                                  spans.list.len().cast(pl.UInt32).alias("translit_count"))
