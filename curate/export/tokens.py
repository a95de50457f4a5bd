"""Tokenizing a corpus for the token exports, with the trainer's tokenizer loading and document rules.

A plain-text record becomes its tokens then EOS (`train.data.tokenize_text`); chat `messages`
and `prompt`+`completion` records go through the same code as `datamill train`, with a loss
mask that is 1 on the tokens a trainer should learn (assistant replies, completions).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamill.curate.export.corpus import columns_of, record_batches
from datamill.train.data import TOKENIZERS, detect_format


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def load_export_tokenizer(name_or_path: str | None):
    """The tokenizer of a built-in model name, a model folder (as `datamill train` loads it) or a
    tokenizer folder (default: SmolLM2's); never downloaded."""
    from datamill.train.model import DEFAULT_TOKENIZER, load_tokenizer

    folder = Path(name_or_path).expanduser() if name_or_path else None
    if folder is not None and any((folder / f).is_file() for f in TOKENIZER_FILES):
        from transformers import AutoTokenizer  # a tokenizer-only folder (no model config.json)

        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    else:
        tokenizer = load_tokenizer(name_or_path or DEFAULT_TOKENIZER)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {name_or_path!r} has no EOS token, so documents could not be separated")
    return tokenizer


@dataclass
class TokenizedBatch:
    file: Path               # the corpus file the records came from
    ids: list[list[int]]     # one token list per document, EOS included
    masks: list[list[int]]   # 1 = a trainer learns to predict this token


def tokenized_batches(files: list[Path], tokenizer, data_format: str = "auto",
                      batch_rows: int = 1024) -> tuple[str, Iterator[TokenizedBatch]]:
    """(the record format used, the tokenized documents in corpus order, batch by batch)."""
    fmt = detect_format(columns_of(files[0]), data_format)
    needs = {"text": ["text"], "messages": ["messages"], "prompt_completion": ["prompt", "completion"]}[fmt]

    def batches() -> Iterator[TokenizedBatch]:
        for file, frame in record_batches(files, batch_rows):
            missing = [c for c in needs if c not in frame.columns]
            if missing:
                raise ValueError(f"{file}: no column {missing[0]!r} (the corpus is {fmt}; this file has {frame.columns})")
            ids, masks = TOKENIZERS[fmt](tokenizer, frame, {"train_on_prompt": False})
            yield TokenizedBatch(file, ids, masks)

    return fmt, batches()


def flat(lists: list[list[int]], dtype) -> np.ndarray:
    """The lists joined into one array."""
    return np.fromiter((x for row in lists for x in row), dtype=dtype, count=sum(map(len, lists)))


def lengths(lists: list[list[int]]) -> np.ndarray:
    return np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
