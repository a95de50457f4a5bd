"""Read a fastText model file (`.bin`, or `.ftz` with product-quantized rows) into numpy arrays.

The layout is fastText's own (`FastText::saveModel`): a magic number and version (int32 each);
the arguments (12 int32 — dim, ws, epoch, minCount, neg, wordNgrams, loss, model, bucket, minn,
maxn, lrUpdateRate — and the double t); the dictionary (size, nwords, nlabels as int32, ntokens
and pruneidx_size as int64, then per entry its bytes, a NUL, the int64 count and an int8 type;
then pruneidx_size (bucket, row) int32 pairs); a bool `quant`; the input matrix; a bool `qout`;
the output matrix. A dense matrix is m, n (int64) and m × n float32. A quantized one is a bool
qnorm, m, n (int64), the int32 code size and the codes (one byte per sub-vector of each row),
then the product quantizer (dim, nsubq, dsub, lastdsub as int32 and dim × 256 float32
centroids), and with qnorm one norm code per row and a one-dimensional quantizer for the norms.

Quantized input rows are decoded to float32 as fastText adds them to a vector (each element
`norm × centroid`, computed in float32), so summing the decoded rows gives fastText's sums.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = 793712314
VERSION = 12
LOSSES = {1: "hs", 2: "ns", 3: "softmax", 4: "ova"}
MODELS = {1: "cbow", 2: "skipgram", 3: "supervised"}
CENTROIDS_PER_SUBQUANTIZER = 256
ENTRY_LABEL = 1


@dataclass
class FastTextFile:
    """What prediction needs from a model file."""

    dim: int
    word_ngrams: int
    loss: str
    model: str
    bucket: int
    minn: int
    maxn: int
    words: list[bytes]
    """Dictionary entries in id order (words, then labels), as bytes."""
    nwords: int
    counts: np.ndarray
    """int64 count of every entry (labels' counts build the hierarchical-softmax tree)."""
    pruneidx_size: int
    """-1: every n-gram bucket has a row; 0: none has; > 0: only those in `pruneidx`."""
    pruneidx: dict[int, int]
    input_rows: np.ndarray
    """float32 (rows × dim), decoded if quantized."""
    output_rows: np.ndarray | None
    """float32 (labels × dim); None when the output matrix is quantized (qout)."""

    @property
    def labels(self) -> list[str]:
        return [w.decode("utf-8", "replace") for w in self.words[self.nwords:]]


class UnsupportedFormat(ValueError):
    """Not a fastText model file of the format version this reader knows (fastText itself may load it)."""


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.at, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.at + size > len(self.data):
            raise ValueError(f"{self.path}: truncated fastText model (wanted {size} bytes at offset {self.at})")
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += size
        return values if len(values) > 1 else values[0]

    def array(self, dtype, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if self.at + size > len(self.data):
            raise ValueError(f"{self.path}: truncated fastText model (wanted {size} bytes at offset {self.at})")
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.at)
        self.at += size
        return out

    def word(self) -> bytes:
        end = self.data.index(b"\0", self.at)
        word = self.data[self.at:end]
        self.at = end + 1
        return word


def _quantizer(reader: _Reader) -> tuple[int, int, int, int, np.ndarray]:
    dim, nsubq, dsub, lastdsub = reader.take("<4i")
    centroids = reader.array("<f4", dim * CENTROIDS_PER_SUBQUANTIZER)
    return dim, nsubq, dsub, lastdsub, centroids


def _decode(codes: np.ndarray, rows: int, quantizer, norms: np.ndarray | None) -> np.ndarray:
    """Every row as fastText's `addcode` adds it to a zero vector: norm × centroid, in float32."""
    dim, nsubq, dsub, lastdsub, centroids = quantizer
    codes = codes.reshape(rows, nsubq).astype(np.int64)
    out = np.empty((rows, dim), dtype=np.float32)
    for sub in range(nsubq):
        width = lastdsub if sub == nsubq - 1 else dsub
        base = sub * CENTROIDS_PER_SUBQUANTIZER * dsub
        index = base + codes[:, sub:sub + 1] * width + np.arange(width)
        values = centroids[index]
        out[:, sub * dsub: sub * dsub + width] = values if norms is None else norms[:, None] * values
    return out


def _matrix(reader: _Reader, quantized: bool) -> tuple[np.ndarray | None, bool]:
    """(float32 rows, was quantized); quantized rows decoded."""
    if not quantized:
        m, n = reader.take("<2q")
        return reader.array("<f4", m * n).reshape(m, n), False
    qnorm = reader.take("<?")
    m, n = reader.take("<2q")
    codesize = reader.take("<i")
    codes = reader.array("<u1", codesize)
    quantizer = _quantizer(reader)
    norms = None
    if qnorm:
        norm_codes = reader.array("<u1", m).astype(np.int64)
        norm_quantizer = _quantizer(reader)
        norms = norm_quantizer[4][norm_codes].astype(np.float32)
    return _decode(codes, m, quantizer, norms), True


def read_fasttext_file(path: str | Path) -> FastTextFile:
    """The arrays of a fastText model file; errors name the file."""
    path = Path(path)
    reader = _Reader(path.read_bytes(), path)
    magic, version = reader.take("<2i")
    if magic != MAGIC or version != VERSION:
        raise UnsupportedFormat(f"{path}: not a fastText model of format version {VERSION} "
                         f"(magic {magic}, version {version})")
    dim, _ws, _epoch, _min_count, _neg, word_ngrams, loss, model, bucket, minn, maxn, _lr_rate = reader.take("<12i")
    reader.take("<d")
    size, nwords, _nlabels = reader.take("<3i")
    _ntokens, pruneidx_size = reader.take("<2q")
    words, counts = [], np.empty(size, dtype=np.int64)
    for i in range(size):
        words.append(reader.word())
        counts[i] = reader.take("<q")
        reader.take("<b")
    pruneidx = {}
    for _ in range(max(pruneidx_size, 0)):
        bucket_id, row = reader.take("<2i")
        pruneidx[bucket_id] = row
    quantized = reader.take("<?")
    input_rows, _ = _matrix(reader, quantized)
    qout = reader.take("<?")
    output_rows, output_quantized = _matrix(reader, quantized and qout)
    return FastTextFile(dim=dim, word_ngrams=word_ngrams, loss=LOSSES.get(loss, str(loss)),
                        model=MODELS.get(model, str(model)), bucket=bucket, minn=minn, maxn=maxn, words=words,
                        nwords=nwords, counts=counts, pruneidx_size=pruneidx_size, pruneidx=pruneidx,
                        input_rows=np.ascontiguousarray(input_rows),
                        output_rows=None if output_quantized else np.ascontiguousarray(output_rows))
