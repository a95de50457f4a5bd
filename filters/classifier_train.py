"""Train a text classifier on labelled records: fastText (DCLM style) or sentence embeddings + a linear head.

`datamill classifier train CONFIG` (and the `classifier` stage's `train:` option) lands here:

    kind: fasttext                     # or embedding
    positive: [{type: jsonl, path: data/instructions.jsonl}]     # any datamill sources
    negative: [{run: out/web}]         # `run:` = a finished run's corpus (its shards/)
    # or: data: [{type: parquet, path: scored.parquet}]  +  label_column: edu_score
    out: out/quality-classifier

Steps: read the sources, preprocess (fastText: DCLM's lowercase + whitespace collapsed to single
spaces, so no newline reaches fastText), hold out a stratified `holdout` share (seeded), balance
the training classes (`downsample` the larger classes, `oversample` the smaller, `weight` the loss
(embedding heads), or `none`), train, score the held-out rows with the same code the `classifier`
stage uses, and write the folder: `model.bin` or `head.safetensors`, plus `card.json` (sources,
counts, settings, seed and the held-out metrics: accuracy, precision, recall, F1, ROC-AUC and the
confusion matrix; for a regressor MAE, RMSE and the rounded-score accuracy and confusion matrix).

fastText defaults are DCLM's (mlfoundations/dclm `baselines/train_fasttext_classifier.py`: lr 0.1,
dim 100, ws 5, epoch 5, minCount 1) with word bigrams (`wordNgrams: 2`), the setting of DCLM's
released `openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train.bin` classifier; `thread: 1` makes
training reproducible for a seed (raise it for speed). Embedding heads follow FineWeb-Edu's recipe
(frozen encoder, linear head; a 0–5 regression rounded to an int score): logistic regression for
classes, ridge regression for scores (scikit-learn), on L2-normalized embeddings computed in
batches (GPU when there is one).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from datamill.filters.classifier_models import (
    CARD, FASTTEXT_FILE, HEAD_FILE, LABEL_PREFIX, EmbeddingHeadClassifier, Prediction, Preprocess, load_classifier,
    preprocess,
)


class FastTextSettings(BaseModel):
    """fastText `train_supervised` arguments (names as fastText spells them)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(0.1, gt=0, description="DCLM default.")
    dim: int = Field(100, ge=1, description="DCLM default.")
    ws: int = Field(5, ge=1, description="DCLM default.")
    epoch: int = Field(5, ge=1, description="DCLM default.")
    minCount: int = Field(1, ge=1, description="DCLM default.")
    wordNgrams: int = Field(2, ge=1, description="2 = bigrams, as in DCLM's released classifier.")
    bucket: int = Field(2_000_000, ge=1, description="fastText default.")
    loss: Literal["softmax", "hs", "ova", "ns"] = "softmax"
    thread: int = Field(1, ge=1, description="1 keeps training reproducible for a seed.")


class EmbeddingSettings(BaseModel):
    """The encoder and the linear head."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = Field("all-minilm-l6-v2", description="Built-in all-minilm-l6-v2, or a local sentence-"
                         "transformers / transformers encoder folder.")
    max_tokens: int = Field(256, ge=8, description="Tokens of each text the encoder reads.")
    batch_tokens: int = Field(16384, ge=64, description="Rows × padded length per encoder batch.")
    C: float = Field(1.0, gt=0, description="Logistic regression: inverse regularization strength.")
    alpha: float = Field(1.0, ge=0, description="Ridge regression: regularization strength.")


class TrainSettings(BaseModel):
    """How to train, whatever the data comes from."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["fasttext", "embedding"] = Field("fasttext", description="fastText supervised, or "
                                                   "sentence embeddings + a linear head.")
    task: Literal["classification", "regression"] = Field(
        "classification", description="regression (embedding only): a score, e.g. FineWeb-Edu's 0–5.")
    holdout: float = Field(0.1, gt=0, lt=1, description="Share of the rows held out (stratified) for metrics.")
    balance: Literal["downsample", "oversample", "weight", "none"] = Field(
        "downsample", description="Even out the training classes (weight: embedding heads only).")
    preprocess: Preprocess | None = Field(None, description="Text the model sees; default: dclm for "
                                          "fastText, none for embeddings.")
    score_range: tuple[float, float] = Field((0, 5), description="Regression: the int label is the score "
                                             "rounded and clipped to this range.")
    positive_label: str | None = Field(None, description="Class whose probability is the score; default: the "
                                 "positive class of positive/negative data, else the last class in sorted order.")
    seed: int = 0
    fasttext: FastTextSettings = Field(default_factory=FastTextSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)

    @model_validator(mode="after")
    def _consistent(self):
        if self.task == "regression" and self.kind != "embedding":
            raise ValueError("task: regression needs kind: embedding (fastText only classifies)")
        if self.balance == "weight" and self.kind != "embedding":
            raise ValueError("balance: weight needs kind: embedding (fastText takes no sample weights); "
                             "use downsample or oversample")
        return self

    @property
    def text_preprocess(self) -> Preprocess:
        return self.preprocess or ("dclm" if self.kind == "fasttext" else "none")


class ClassifierTrainConfig(TrainSettings):
    """A `datamill classifier train` config file."""

    positive: list[dict[str, Any]] | None = Field(None, description="Sources whose records are positives.")
    negative: list[dict[str, Any]] | None = Field(None, description="Sources whose records are negatives.")
    data: list[dict[str, Any]] | None = Field(None, description="Sources with a label or score column.")
    label_column: str | None = Field(None, description="With `data`: the column (or `meta` field) holding "
                                     "the class or the score; rows where it is null are skipped.")
    labels: tuple[str, str] = Field(("positive", "negative"), description="Class names of positive/negative.")
    limit: int | None = Field(None, ge=1, description="Read at most this many records per source.")
    out: str = Field(description="Folder to write model.bin / head.safetensors and card.json to.")

    @model_validator(mode="after")
    def _one_data_layout(self):
        paired = self.positive is not None or self.negative is not None
        if paired and self.data is not None:
            raise ValueError("give either positive + negative, or data + label_column, not both")
        if paired and (not self.positive or not self.negative):
            raise ValueError("positive and negative both need at least one source")
        if not paired and (not self.data or not self.label_column):
            raise ValueError("give positive + negative sources, or data + label_column")
        if paired and self.task == "regression":
            raise ValueError("task: regression needs data + label_column with a numeric score")
        if any(" " in name or not name for name in self.labels):
            raise ValueError(f"labels {self.labels}: class names must be non-empty and contain no spaces")
        return self


# ---- reading the data ------------------------------------------------------------------------


def read_sources(entries: list[dict[str, Any]], base_dir: str, *, limit: int | None = None,
                 batch_rows: int = 10_000) -> tuple[pl.DataFrame, dict[str, int]]:
    """All good records of datamill sources (`run: DIR` reads a finished run's shards), and the
    quarantined count per reason."""
    from datamill.curate.engine.registry import source_types

    types = source_types()
    frames, quarantined = [], {}
    for index, entry in enumerate(entries):
        entry = run_corpus_source(entry, base_dir)
        if limit is not None and entry.get("limit") is None:
            entry = {**entry, "limit": limit}
        kind = entry.get("type")
        if kind not in types:
            raise ValueError(f"source {index}: unknown type {kind!r}; known: {', '.join(types)}")
        source = types[kind](types[kind].Params.model_validate(entry), index=index, base_dir=base_dir)
        for spec in source.plan():
            for part in source.read(spec, batch_rows):
                for reason, n in part.quarantine["reason"].value_counts().iter_rows() if part.quarantine.height else ():
                    quarantined[reason] = quarantined.get(reason, 0) + n
                if part.records.height:
                    frames.append(part.records)
    if not frames:
        raise ValueError(f"no records in sources {[e.get('path', e.get('run')) for e in entries]}")
    return pl.concat(frames, how="diagonal_relaxed"), quarantined


def run_corpus_source(entry: dict[str, Any], base_dir: str) -> dict[str, Any]:
    """`{run: DIR}` → a parquet or jsonl source over DIR/shards (the corpus of a finished run)."""
    if "run" not in entry:
        return entry
    folder = Path(entry["run"])
    folder = folder if folder.is_absolute() or folder.exists() else Path(base_dir) / folder
    shards = folder / "shards"
    rest = {k: v for k, v in entry.items() if k != "run"}
    if any(shards.glob("*.parquet")):
        return {"type": "parquet", "path": str(shards / "*.parquet"), "name": folder.name, **rest}
    for pattern in ("*.jsonl", "*.jsonl.zst"):
        if any(shards.glob(pattern)):
            return {"type": "jsonl", "path": str(shards / pattern), "name": folder.name, **rest}
    raise FileNotFoundError(f"run {entry['run']!r}: no corpus shards in {shards}")


def label_values(frame: pl.DataFrame, column: str) -> pl.Series:
    """A column, or a field of the JSON `meta` column when the source kept it there."""
    if column in frame.columns:
        return frame[column]
    if "meta" in frame.columns:
        return frame["meta"].str.json_path_match(f"$.{column}")
    raise ValueError(f"label column {column!r} not found; columns: {', '.join(frame.columns)}")


def labelled_records(config: ClassifierTrainConfig, base_dir: str) -> tuple[pl.DataFrame, dict[str, Any]]:
    """(text, label) rows to train on, and what was read (for the card)."""
    read: dict[str, Any] = {}
    if config.data is not None:
        frame, quarantined = read_sources(config.data, base_dir, limit=config.limit)
        values = label_values(frame, config.label_column)
        table = frame.select("text").with_columns(values.alias("label")).filter(pl.col("label").is_not_null())
        read = {"data": config.data, "label_column": config.label_column, "records": frame.height,
                "labelled": table.height, "quarantined": quarantined}
    else:
        parts = []
        for name, entries in zip(config.labels, (config.positive, config.negative)):
            frame, quarantined = read_sources(entries, base_dir, limit=config.limit)
            parts.append(frame.select("text", pl.lit(name).alias("label")))
            read[name] = {"sources": entries, "records": frame.height, "quarantined": quarantined}
        table = pl.concat(parts, how="vertical_relaxed")
    return table, read


# ---- splitting and balancing -------------------------------------------------------------------


def split_holdout(labels: np.ndarray, share: float, seed: int, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): every class keeps `share` of its rows out (at least one when
    it has two or more), chosen with a seeded permutation."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == value) for value in np.unique(labels)] if stratify else [np.arange(len(labels))]
    train, held = [], []
    for rows in groups:
        rows = rng.permutation(rows)
        n_out = int(round(len(rows) * share))
        n_out = min(max(n_out, 1 if len(rows) >= 2 else 0), len(rows) - 1) if len(rows) else 0
        held.append(rows[:n_out])
        train.append(rows[n_out:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def balance_rows(rows: np.ndarray, labels: np.ndarray, how: str, seed: int) -> np.ndarray:
    """Training rows after `downsample` (every class cut to the smallest) or `oversample` (every
    class repeated up to the largest); `weight` and `none` keep them as they are."""
    if how not in ("downsample", "oversample"):
        return rows
    rng = np.random.default_rng(seed + 1)
    groups = [rows[labels[rows] == value] for value in np.unique(labels[rows])]
    target = (min if how == "downsample" else max)(len(g) for g in groups)
    picked = []
    for group in groups:
        if how == "downsample":
            picked.append(rng.permutation(group)[:target])
        else:
            extra = rng.choice(group, size=target - len(group), replace=True) if target > len(group) else []
            picked.append(np.concatenate([group, np.asarray(extra, dtype=group.dtype)]))
    return rng.permutation(np.concatenate(picked))


# ---- training ---------------------------------------------------------------------------------


def train_classifier(table: pl.DataFrame, settings: TrainSettings, out: str | Path,
                     data_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on `table` (`text`, `label`), write the model folder, return its card (with metrics)."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    regression = settings.task == "regression"
    if regression:
        labels = table["label"].cast(pl.Float64, strict=False)
        bad = labels.is_null() & table["label"].is_not_null()
        if bad.any():
            raise ValueError(f"regression: {int(bad.sum())} label(s) are not numbers, e.g. {table['label'].filter(bad)[0]!r}")
        label_array = labels.to_numpy()
    else:
        label_array = table["label"].cast(pl.String).to_numpy()
        if len(np.unique(label_array)) < 2:
            raise ValueError(f"classification needs at least two classes; found {np.unique(label_array).tolist()}")
    texts = preprocess(table["text"], settings.text_preprocess)
    train_rows, held_rows = split_holdout(label_array, settings.holdout, settings.seed, stratify=not regression)
    fit_rows = train_rows if regression else balance_rows(train_rows, label_array, settings.balance, settings.seed)
    embedded = None
    if settings.kind == "fasttext":
        model_files = fit_fasttext(texts, label_array, fit_rows, settings, out)
    else:
        embedded = embed_rows(texts, np.concatenate([fit_rows, held_rows]), settings.embedding)
        model_files = fit_embedding_head(embedded, label_array, fit_rows, settings, out)
    card = {
        "kind": settings.kind,
        "task": settings.task,
        "preprocess": settings.text_preprocess,
        "seed": settings.seed,
        "settings": settings.model_dump(mode="json", include=set(TrainSettings.model_fields)),
        "data": data_info or {},
        "counts": {
            "rows": int(len(label_array)),
            "train": int(len(train_rows)),
            "fit": int(len(fit_rows)),
            "holdout": int(len(held_rows)),
            **({} if regression else {"per_class": class_counts(label_array, train_rows, fit_rows, held_rows)}),
        },
        "files": model_files,
        "out": str(out),
        **card_model_fields(settings, label_array),
    }
    write_card(out, card)
    chosen = None if regression else card.get("positive")
    if embedded is None:
        prediction = load_classifier(out).predict(texts.gather(held_rows).to_list(), chosen)
    else:  # the saved head on the embeddings already computed (the same numbers the stage computes)
        vectors, embedder = embedded
        model = EmbeddingHeadClassifier(out, card, embedder=embedder)
        prediction = model.predict_embeddings(np.stack([vectors[r] for r in held_rows]) if len(held_rows)
                                              else np.zeros((0, embedder.dim)), chosen)
    card["metrics"] = (regression_metrics(label_array[held_rows], prediction, settings.score_range) if regression
                       else classification_metrics(label_array[held_rows], prediction, card["labels"], card.get("positive")))
    card["seconds"] = round(time.perf_counter() - started, 2)
    write_card(out, card)
    return card


def card_model_fields(settings: TrainSettings, labels: np.ndarray) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if settings.task == "classification":
        classes = sorted(np.unique(labels).tolist())
        fields["labels"] = classes
        if settings.positive_label is not None and settings.positive_label not in classes:
            raise ValueError(f"positive_label {settings.positive_label!r} is not among the labels {classes}")
        fields["positive"] = settings.positive_label or (classes[-1] if len(classes) == 2 else None)
    else:
        fields["score_range"] = list(settings.score_range)
    if settings.kind == "embedding":
        fields["encoder"] = settings.embedding.encoder
        fields["max_tokens"] = settings.embedding.max_tokens
    return fields


def write_card(out: Path, card: dict[str, Any]) -> None:
    tmp = out / (CARD + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, out / CARD)


def class_counts(labels: np.ndarray, train: np.ndarray, fit: np.ndarray, held: np.ndarray) -> dict[str, dict[str, int]]:
    counts = {}
    for value in sorted(np.unique(labels).tolist()):
        counts[str(value)] = {"rows": int((labels == value).sum()), "train": int((labels[train] == value).sum()),
                              "fit": int((labels[fit] == value).sum()), "holdout": int((labels[held] == value).sum())}
    return counts


def fit_fasttext(texts: pl.Series, labels: np.ndarray, rows: np.ndarray, settings: TrainSettings, out: Path) -> list[str]:
    import fasttext

    spaced = sorted({str(x) for x in np.unique(labels) if not str(x) or any(c.isspace() for c in str(x))})
    if spaced:
        raise ValueError(f"fastText class names cannot be empty or contain whitespace: {spaced}")
    if not hasattr(fasttext, "train_supervised"):
        raise RuntimeError("the installed `fasttext` module cannot train (fasttext-predict only predicts): "
                           "pip install fasttext-community")
    lines = pl.DataFrame({"label": labels[rows], "text": texts.gather(rows)}).select(
        pl.lit(LABEL_PREFIX) + pl.col("label") + pl.lit(" ") + pl.col("text"))
    with tempfile.TemporaryDirectory(prefix="datamill-fasttext-") as tmp:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text("\n".join(lines.to_series().to_list()) + "\n", encoding="utf-8")
        model = fasttext.train_supervised(input=str(train_file), seed=settings.seed, verbose=0,
                                          **settings.fasttext.model_dump())
    model.save_model(str(out / FASTTEXT_FILE))
    return [FASTTEXT_FILE]


def embed_rows(texts: pl.Series, rows: np.ndarray, e: EmbeddingSettings) -> tuple[dict[int, np.ndarray], Any]:
    """Embeddings of the given rows (each distinct row once), by row, and the embedder."""
    from datamill.curate.models.embeddings import SentenceEmbedder, resolve_embedding_model

    embedder = SentenceEmbedder(resolve_embedding_model(e.encoder), max_tokens=e.max_tokens, batch_tokens=e.batch_tokens)
    unique = np.unique(rows)
    vectors = embedder.embed(texts.gather(unique).to_list())
    return dict(zip(unique.tolist(), vectors)), embedder


def fit_embedding_head(embedded: tuple[dict[int, np.ndarray], Any], labels: np.ndarray, rows: np.ndarray,
                       settings: TrainSettings, out: Path) -> list[str]:
    from safetensors.numpy import save_file

    e = settings.embedding
    vectors = np.stack([embedded[0][r] for r in rows.tolist()]).astype(np.float64)
    if settings.task == "regression":
        from sklearn.linear_model import Ridge

        head = Ridge(alpha=e.alpha).fit(vectors, labels[rows].astype(np.float64))
        weight, bias = head.coef_.reshape(1, -1), np.atleast_1d(head.intercept_)
    else:
        from sklearn.linear_model import LogisticRegression

        head = LogisticRegression(C=e.C, max_iter=2000, class_weight="balanced" if settings.balance == "weight" else None,
                                  random_state=settings.seed).fit(vectors, labels[rows])
        weight, bias = head.coef_, head.intercept_
        if head.classes_.tolist() != sorted(np.unique(labels).tolist()):
            raise ValueError(f"a class has no training row: trained on {head.classes_.tolist()}")
    save_file({"weight": np.ascontiguousarray(weight, dtype=np.float32),
               "bias": np.ascontiguousarray(bias, dtype=np.float32)}, str(out / HEAD_FILE))
    return [HEAD_FILE]


# ---- metrics ----------------------------------------------------------------------------------


def classification_metrics(truth: np.ndarray, prediction: Prediction, classes: list[str],
                           positive: str | None) -> dict[str, Any]:
    """Held-out accuracy, precision/recall/F1 (of `positive`, or macro over classes), ROC-AUC and
    the confusion matrix (rows: true class, columns: predicted, in `classes` order)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    predicted = prediction.label.to_numpy().astype(str)
    truth = truth.astype(str)
    metrics: dict[str, Any] = {"n": int(len(truth)), "accuracy": float((predicted == truth).mean()) if len(truth) else None}
    if positive is not None:
        p, r, f, _ = precision_recall_fscore_support(truth, predicted, labels=[positive], average=None, zero_division=0)
        metrics.update(precision=float(p[0]), recall=float(r[0]), f1=float(f[0]), positive=positive)
        scores = np.nan_to_num(prediction.score, nan=0.0)
        both = len(np.unique(truth == positive)) == 2
        metrics["roc_auc"] = float(roc_auc_score(truth == positive, scores)) if both else None
    else:
        p, r, f, _ = precision_recall_fscore_support(truth, predicted, labels=classes, average="macro", zero_division=0)
        metrics.update(precision=float(p), recall=float(r), f1=float(f), average="macro")
    metrics["confusion"] = {"labels": classes, "matrix": confusion_matrix(truth, predicted, labels=classes).tolist()}
    return metrics


def regression_metrics(truth: np.ndarray, prediction: Prediction, score_range: tuple[float, float]) -> dict[str, Any]:
    """Held-out MAE and RMSE of the score, and accuracy + confusion matrix of the rounded int score."""
    error = prediction.score - truth
    low, high = score_range
    true_int = np.rint(np.clip(truth, low, high)).astype(np.int64)
    ints = list(range(int(low), int(high) + 1))
    from sklearn.metrics import confusion_matrix

    return {
        "n": int(len(truth)),
        "mae": float(np.abs(error).mean()) if len(truth) else None,
        "rmse": float(np.sqrt((error**2).mean())) if len(truth) else None,
        "rounded_accuracy": float((prediction.label.to_numpy() == true_int).mean()) if len(truth) else None,
        "confusion": {"labels": ints, "matrix": confusion_matrix(true_int, prediction.label.to_numpy(), labels=ints).tolist()},
    }


def metrics_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows for printing a card's held-out metrics."""
    m = card.get("metrics", {})
    keys = ("n", "accuracy", "precision", "recall", "f1", "roc_auc") if card["task"] == "classification" else (
        "n", "mae", "rmse", "rounded_accuracy")
    rows = [(k, "—" if m.get(k) is None else (f"{m[k]:.4f}" if isinstance(m[k], float) else str(m[k]))) for k in keys]
    confusion = m.get("confusion")
    if confusion:
        rows.append(("confusion (rows true, cols predicted)", " ".join(str(x) for x in confusion["labels"])))
        rows += [(f"  {label}", " ".join(str(x) for x in row)) for label, row in zip(confusion["labels"], confusion["matrix"])]
    return rows


def load_train_config(path: str | Path) -> ClassifierTrainConfig:
    """Read and validate a `datamill classifier train` YAML file."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of training settings")
    return ClassifierTrainConfig.model_validate(raw)


def train_from_config(path: str | Path) -> dict[str, Any]:
    """`datamill classifier train CONFIG`: read the data, train, write the folder, return the card."""
    config = load_train_config(path)
    table, info = labelled_records(config, str(Path(path).resolve().parent))
    settings = TrainSettings.model_validate(config.model_dump(include=set(TrainSettings.model_fields)))
    if config.positive is not None and settings.positive_label is None:
        settings = settings.model_copy(update={"positive_label": config.labels[0]})
    return train_classifier(table, settings, config.out, {"config": str(path), **info})
