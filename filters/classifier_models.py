"""Load a text classifier from a local path and score many texts at once: fastText, datamill folders, HF folders.

Three kinds of model, told apart by what the path holds:

- a fastText supervised model file (`.bin` / `.ftz`: DCLM's OH-2.5+ELI5 bigram model, Dolma's
  Jigsaw toxicity models, your own): softmax word(-n-gram) models are scored by one numba call per
  batch (`fasttext_kernels.py`, 2–3x faster than fastText's own predict, equal to it bit for bit),
  the rest (.ftz, subwords, other losses) with fastText's list `predict` (`k=-1`); either way the
  score is exactly what `model.predict(text, k=-1)` gives;
- a datamill classifier folder (written by `datamill classifier train`): `card.json` plus
  `model.bin` (fastText) or `head.safetensors` (a logistic or ridge head on sentence embeddings
  of an encoder the card names, e.g. the bundled all-MiniLM-L6-v2);
- a transformers `AutoModelForSequenceClassification` folder (`config.json`, e.g. a local copy of
  the FineWeb-Edu classifier): batches of length-sorted texts, GPU when there is one. One output
  (`num_labels == 1`) is a regressor whose raw logit is the score; more are classes (softmax).

Every model answers `predict(texts, label)` with a `Prediction`: per text the score (probability of
`label`, or of the top class when `label` is None; or the regression value) and the label (the
top class; for a regressor the score rounded to an int inside the card's range, FineWeb-Edu's
`int_score`). Texts are preprocessed by the caller (`preprocess`), so training and scoring see the
same text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from datamill.filters.fasttext_kernels import FastTextKernel

LABEL_PREFIX = "__label__"
CARD = "card.json"
FASTTEXT_FILE = "model.bin"
HEAD_FILE = "head.safetensors"

Preprocess = Literal["dclm", "lines", "none"]


def preprocess(texts: pl.Series, mode: Preprocess) -> pl.Series:
    """The text a model sees.

    `dclm`: lowercased, every whitespace run (newlines included) collapsed to one space, stripped
    (what `datamill classifier train` feeds fastText by default); `lines`: stripped, newlines
    replaced by spaces (fastText reads one line per prediction; DCLM's and datatrove's scorers do
    this); `none`: unchanged (transformers models take raw text).
    """
    texts = texts.fill_null("")
    if mode == "dclm":
        return texts.str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()
    if mode == "lines":
        return texts.str.strip_chars().str.replace_all("\n", " ", literal=True)
    return texts


@dataclass
class Prediction:
    score: np.ndarray
    """float64 per text; NaN where there is none (the chosen label absent from the output)."""
    label: pl.Series
    """The top class per text (String), or for a regressor the rounded score (Int64)."""


class FastTextClassifier:
    """A fastText supervised model: scored by the numba kernels, else by fastText's list API, once per batch."""

    kind = "fasttext"

    def __init__(self, path: Path):
        if not path.is_file():
            raise FileNotFoundError(f"fastText model file not found: {path}")
        self.path = path
        kernel = FastTextKernel.from_file(path)  # None: a kind fastText itself must score
        self.kernel = kernel if kernel is not None and kernel.scores_every_label else None
        self._fasttext = None
        names = self.kernel.labels if self.kernel is not None else self.fasttext_model().get_labels()
        self.labels = [label.removeprefix(LABEL_PREFIX) for label in names]
        self.regression = False
        self.default_preprocess: Preprocess = "lines"
        self.default_label: str | None = None

    def fasttext_model(self):
        """fastText's own model, loaded only where the kernel cannot score (the file held once)."""
        if self._fasttext is None:
            import fasttext

            self._fasttext = fasttext.load_model(str(self.path))
        return self._fasttext

    def check_label(self, label: str | None) -> None:
        if label is not None and label.removeprefix(LABEL_PREFIX) not in self.labels:
            raise ValueError(f"label {label!r} is not one of the model's labels {self.labels} ({self.path})")

    def predict(self, texts: list[str] | pl.Series, label: str | None) -> Prediction:
        if not len(texts):
            return Prediction(np.zeros(0), pl.Series([], dtype=pl.String))
        series = texts if isinstance(texts, pl.Series) else pl.Series(texts, dtype=pl.String)
        if self.kernel is not None and not series.str.contains("\n", literal=True).any():
            return self.kernel_prediction(series, label)
        texts = series.to_list()
        labels, probabilities = self.fasttext_model().predict(texts, k=-1)
        if labels and isinstance(labels[0], str):  # fasttext-predict's list API: top label only, no probabilities
            raise RuntimeError("the installed `fasttext` module is fasttext-predict, whose list predict has no "
                               "probabilities: pip install fasttext-community")
        n_labels = len(self.labels)
        if all(len(row) == n_labels for row in labels):  # k=-1: every label, most probable first
            return self.full_rows(labels, probabilities, label)
        top = [row[0].removeprefix(LABEL_PREFIX) if len(row) else None for row in labels]
        if label is None:
            score = np.array([float(p[0]) if len(p) else np.nan for p in probabilities], dtype=np.float64)
        else:
            wanted = LABEL_PREFIX + label.removeprefix(LABEL_PREFIX)
            score = np.array([_probability_of(wanted, row, p) for row, p in zip(labels, probabilities)],
                             dtype=np.float64)
        return Prediction(score, pl.Series(top, dtype=pl.String))

    def kernel_prediction(self, texts: pl.Series, label: str | None) -> Prediction:
        """The same numbers as fastText's predict, from one numba call over the batch (fasttext_kernels)."""
        probabilities = self.kernel.predict_all(texts).astype(np.float64)
        prediction = class_prediction(probabilities, self.labels, None if label is None else
                                      label.removeprefix(LABEL_PREFIX))
        unscored = np.isnan(probabilities[:, 0])  # fastText predicts nothing for these
        if unscored.any():
            prediction.label = prediction.label.scatter(np.flatnonzero(unscored), None)
        return prediction

    def full_rows(self, labels: list[list[str]], probabilities: list[np.ndarray], label: str | None) -> Prediction:
        """The common case without Python work per label: a (rows × labels) matrix and one index per row."""
        matrix = np.array(probabilities, dtype=np.float64)
        top = pl.Series([row[0] for row in labels], dtype=pl.String).str.strip_prefix(LABEL_PREFIX)
        if label is None:
            return Prediction(matrix[:, 0], top)
        wanted = LABEL_PREFIX + label.removeprefix(LABEL_PREFIX)
        column = np.fromiter((row.index(wanted) for row in labels), dtype=np.int64, count=len(labels))
        return Prediction(matrix[np.arange(len(labels)), column], top)


def _probability_of(wanted: str, labels: list[str], probabilities: np.ndarray) -> float:
    for name, probability in zip(labels, probabilities):
        if name == wanted:
            return float(probability)
    return np.nan


class SequenceClassifier:
    """A transformers `AutoModelForSequenceClassification` folder, in length-sorted batches."""

    kind = "transformers"

    def __init__(self, folder: Path, *, device: str | None = None, max_tokens: int = 512,
                 batch_tokens: int = 16384):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = folder
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
        self.model = self.model.to(self.device).eval()
        config = self.model.config
        limit = getattr(config, "max_position_embeddings", None) or max_tokens
        self.max_tokens = min(max_tokens, limit)
        self.batch_tokens = batch_tokens
        self.regression = config.num_labels == 1 or config.problem_type == "regression"
        self.labels = [str(config.id2label[i]) for i in range(config.num_labels)]
        self.default_preprocess: Preprocess = "none"
        self.default_label: str | None = None
        self.score_range = (0, 5)
        """A regressor's label is its score rounded and clipped to this (FineWeb-Edu's 0–5)."""

    def check_label(self, label: str | None) -> None:
        if label is not None and (self.regression or label not in self.labels):
            raise ValueError(f"label {label!r}: the model at {self.path} "
                             + ("is a regressor (no labels)" if self.regression else f"has labels {self.labels}"))

    def logits(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_labels) float32 logits, in input order."""
        import torch

        from datamill.curate.models.lm_scoring import MAX_CHARS_PER_TOKEN, length_sorted_batches

        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        clipped = [t[: self.max_tokens * MAX_CHARS_PER_TOKEN] for t in texts]
        ids = self.tokenizer(clipped, truncation=True, max_length=self.max_tokens)
        lengths = np.array([len(seq) for seq in ids["input_ids"]], dtype=np.int64)
        with torch.inference_mode():
            for rows in length_sorted_batches(lengths, self.batch_tokens):
                padded = self.tokenizer.pad({key: [ids[key][r] for r in rows] for key in ids.keys()},
                                            return_tensors="pt")
                padded = {k: v.to(self.device) for k, v in padded.items()}
                out[rows] = self.model(**padded).logits.float().cpu().numpy()
        return out

    def predict(self, texts: list[str] | pl.Series, label: str | None) -> Prediction:
        logits = self.logits(as_list(texts))
        if self.regression:
            return regression_prediction(logits[:, 0].astype(np.float64), self.score_range)
        return class_prediction(softmax(logits.astype(np.float64)), self.labels, label)


class EmbeddingHeadClassifier:
    """A datamill folder: sentence embeddings of the card's encoder, then a linear head."""

    kind = "embedding"

    def __init__(self, folder: Path, card: dict[str, Any], *, device: str | None = None,
                 max_tokens: int | None = None, batch_tokens: int = 16384, embedder: Any = None):
        from safetensors.numpy import load_file

        from datamill.curate.models.embeddings import SentenceEmbedder, resolve_embedding_model

        self.path = folder
        self.card = card
        head = load_file(str(folder / HEAD_FILE))
        self.weight, self.bias = head["weight"].astype(np.float64), head["bias"].astype(np.float64)
        self.embedder = embedder or SentenceEmbedder(
            resolve_embedding_model(card["encoder"]), device=device,
            max_tokens=max_tokens or card.get("max_tokens", 256), batch_tokens=batch_tokens)
        self.regression = card["task"] == "regression"
        self.labels = [str(x) for x in card.get("labels", [])]
        self.default_preprocess: Preprocess = card.get("preprocess", "none")
        self.default_label: str | None = card.get("positive")
        self.score_range = tuple(card.get("score_range", (0, 5)))

    def check_label(self, label: str | None) -> None:
        if label is not None and (self.regression or label not in self.labels):
            raise ValueError(f"label {label!r}: the classifier at {self.path} "
                             + ("is a regressor (no labels)" if self.regression else f"has labels {self.labels}"))

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def predict_embeddings(self, vectors: np.ndarray, label: str | None) -> Prediction:
        raw = vectors.astype(np.float64) @ self.weight.T + self.bias
        if self.regression:
            return regression_prediction(raw[:, 0], self.score_range)
        if raw.shape[1] == 1:  # binary logistic regression: one logit for labels[1]
            p1 = 1.0 / (1.0 + np.exp(-raw[:, 0]))
            probabilities = np.stack([1.0 - p1, p1], axis=1)
        else:
            probabilities = softmax(raw)
        return class_prediction(probabilities, self.labels, label)

    def predict(self, texts: list[str] | pl.Series, label: str | None) -> Prediction:
        return self.predict_embeddings(self.embed(as_list(texts)), label)


def as_list(texts: list[str] | pl.Series) -> list[str]:
    return texts.to_list() if isinstance(texts, pl.Series) else texts


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def class_prediction(probabilities: np.ndarray, labels: list[str], label: str | None) -> Prediction:
    top = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=np.int64)
    names = pl.Series([labels[i] for i in top], dtype=pl.String)
    if label is None:
        score = probabilities[np.arange(len(top)), top] if len(top) else np.zeros(0)
    else:
        score = probabilities[:, labels.index(label)]
    return Prediction(np.asarray(score, dtype=np.float64), names)


def regression_prediction(score: np.ndarray, score_range: tuple[float, float]) -> Prediction:
    low, high = score_range
    rounded = np.rint(np.clip(score, low, high)).astype(np.int64)
    return Prediction(score, pl.Series(rounded, dtype=pl.Int64))


def read_card(folder: Path) -> dict[str, Any]:
    return json.loads((folder / CARD).read_text(encoding="utf-8"))


def load_classifier(path: str | Path, *, device: str | None = None, max_tokens: int = 512,
                    batch_tokens: int = 16384):
    """The classifier at `path`: a fastText file, a datamill classifier folder or an HF folder."""
    path = Path(path).expanduser()
    if path.is_file():
        return FastTextClassifier(path)
    if not path.is_dir():
        raise FileNotFoundError(f"classifier model not found: {path} (a fastText .bin/.ftz file, a folder from "
                                "`datamill classifier train`, or a transformers sequence-classification folder)")
    if (path / CARD).is_file():
        card = read_card(path)
        if card.get("kind") == "fasttext":
            model = FastTextClassifier(path / FASTTEXT_FILE)
            model.default_preprocess = card.get("preprocess", "dclm")
            model.default_label = card.get("positive")
            return model
        if card.get("kind") == "embedding":
            return EmbeddingHeadClassifier(path, card, device=device, batch_tokens=batch_tokens)
        raise ValueError(f"{path / CARD}: unknown classifier kind {card.get('kind')!r} (fasttext or embedding)")
    if (path / "config.json").is_file():
        return SequenceClassifier(path, device=device, max_tokens=max_tokens, batch_tokens=batch_tokens)
    raise FileNotFoundError(f"{path} holds neither {CARD} (a datamill classifier) nor config.json "
                            "(a transformers sequence-classification model)")
