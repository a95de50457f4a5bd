"""datatrove tokenized shards, as nanotron's datatrove dataloader (`DatatroveFolderDataset`) reads them.

One set per corpus file, named after it (`part-00000-000.ds` …), as datatrove's
`DocumentTokenizer` writes them:

- `<name>.ds`: the documents' token ids (tokens then EOS) back to back, little-endian uint16
  when the vocabulary has at most 65,536 ids, else uint32;
- `<name>.ds.index`: uint64 end offset (in tokens) of every document: the document boundaries;
- `<name>.ds.loss`: one byte per token, 1 = learn it (only for chat and prompt/completion
  records, whose prompts are masked);
- `<name>.ds.metadata`: "<tokenizer>|<token size>", the token count, the token count for people.

Documents stay in corpus order, as nanotron's `tools/preprocess_data.py` leaves them by default
(`--shuffle False`); every document ends with EOS, and its boundaries are in `.ds.index` either way.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from datamill.curate.export.tokens import TokenizedBatch, flat, lengths


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype("<u4")


def shard_name(file: Path) -> str:
    name = file.name
    for suffix in (".jsonl.zst", ".parquet", ".jsonl", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def human_tokens(count: int) -> str:
    for unit, size in (("GT", 1e9), ("MT", 1e6), ("kT", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} T"


class _ShardWriter:
    def __init__(self, out: Path, name: str, dtype: np.dtype, with_loss: bool):
        self.out, self.name, self.dtype = out, name, dtype
        self.tokens = open(out / f"{name}.ds", "wb")
        self.loss = open(out / f"{name}.ds.loss", "wb") if with_loss else None
        self.sizes: list[np.ndarray] = []

    def add(self, batch: TokenizedBatch) -> None:
        self.tokens.write(flat(batch.ids, self.dtype).tobytes())
        if self.loss is not None:
            self.loss.write(flat(batch.masks, np.uint8).tobytes())
        self.sizes.append(lengths(batch.ids))

    def close(self, tokenizer_name: str) -> tuple[int, int]:
        self.tokens.close()
        if self.loss is not None:
            self.loss.close()
        sizes = np.concatenate(self.sizes) if self.sizes else np.zeros(0, np.int64)
        ends = np.cumsum(sizes).astype("<u8")
        (self.out / f"{self.name}.ds.index").write_bytes(ends.tobytes())
        total = int(ends[-1]) if ends.size else 0
        (self.out / f"{self.name}.ds.metadata").write_text(
            f"{tokenizer_name}|{self.dtype.itemsize}\n{total}\n{human_tokens(total)}"
        )
        return int(sizes.size), total


def write_datatrove(batches: Iterable[TokenizedBatch], out: Path, vocab_size: int, tokenizer_name: str,
                    with_loss: bool) -> dict:
    """Write one `.ds` set per corpus file into `out`; return what was written."""
    dtype = token_dtype(vocab_size)
    writer: _ShardWriter | None = None
    documents = tokens = 0
    files = []

    def finish() -> None:
        nonlocal documents, tokens
        docs, toks = writer.close(tokenizer_name)
        documents, tokens = documents + docs, tokens + toks

    current: Path | None = None
    for batch in batches:
        if batch.file != current:
            if writer is not None:
                finish()
            current = batch.file
            writer = _ShardWriter(out, shard_name(batch.file), dtype, with_loss)
            files.append(f"{writer.name}.ds")
        writer.add(batch)
    if writer is not None:
        finish()
    return {"documents": documents, "tokens": tokens, "dtype": dtype.name, "token_size": dtype.itemsize,
            "files": files}
