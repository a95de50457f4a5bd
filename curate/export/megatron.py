"""Megatron-LM indexed dataset (`<prefix>.bin` + `<prefix>.idx`, the "MMIDIDX" mmap format).

What Megatron-LM's `tools/preprocess_data.py --append-eod` writes and
`megatron.core.datasets.indexed_dataset.IndexedDataset` reads (train with `--data-path <prefix>`):

- `.bin`: every document's token ids (its text's tokens then EOS), back to back, little-endian,
  uint16 when the vocabulary has fewer than 65,500 ids, else int32 (Megatron's `optimal_dtype`).
- `.idx`: b"MMIDIDX\\x00\\x00", version uint64 = 1, dtype code uint8 (8 = uint16, 4 = int32),
  sequence count uint64 (N), document-index count uint64 (N + 1), then int32 length of every
  sequence, int64 byte offset of every sequence in `.bin`, and int64 document indices
  [0, 1, …, N]: one sequence per document, so every document boundary is kept.

Megatron's format has no loss mask: prompt/completion and chat records keep all their tokens.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from datamill.curate.export.tokens import TokenizedBatch, flat, lengths

HEADER = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def write_megatron(batches: Iterable[TokenizedBatch], prefix: Path, vocab_size: int) -> dict:
    """Write `<prefix>.bin` and `<prefix>.idx`; return what was written."""
    dtype = token_dtype(vocab_size)
    sizes = []
    with open(prefix.with_name(prefix.name + ".bin"), "wb") as data:
        for batch in batches:
            data.write(flat(batch.ids, dtype).tobytes())
            sizes.append(lengths(batch.ids))
    sizes_all = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    if sizes_all.size and sizes_all.max() > np.iinfo(np.int32).max:
        raise ValueError("a document has more than 2**31 tokens; Megatron's index stores lengths as int32")
    pointers = np.concatenate([[0], np.cumsum(sizes_all[:-1] * dtype.itemsize)]).astype(np.int64)[: sizes_all.size]
    documents = np.arange(sizes_all.size + 1, dtype=np.int64)
    with open(prefix.with_name(prefix.name + ".idx"), "wb") as index:
        index.write(HEADER + struct.pack("<QBQQ", VERSION, DTYPE_CODES[dtype], sizes_all.size, documents.size))
        index.write(sizes_all.astype("<i4").tobytes())
        index.write(pointers.astype("<i8").tobytes())
        index.write(documents.astype("<i8").tobytes())
    return {"documents": int(sizes_all.size), "tokens": int(sizes_all.sum()), "dtype": dtype.name,
            "files": [prefix.name + ".bin", prefix.name + ".idx"]}
