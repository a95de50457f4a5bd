"""Hashed n-gram bag-of-words features (DSIR's): every word n-gram of a text mapped to one of k buckets.

The text is lowercased and split like NLTK's `WordPunctTokenizer` (runs of word characters, and
runs of other non-space characters: `\\w+|[^\\w\\s]+`), which is what the `data-selection` package
does by default; unigrams and the space-joined bigrams (up to `ngrams`-grams) are each hashed into
one of `num_buckets` buckets exactly as the package does (`sha256(ngram) mod num_buckets`, see
`sha256_buckets.py`), so bucket ids match it and are stable across runs, machines and versions.
Tokenizing runs in polars, hashing in a numba kernel over the tokens' UTF-8 bytes, sums in numpy:
no Python code runs per n-gram.

A document's features are a `List[UInt16|UInt32]` of bucket ids, one per n-gram occurrence;
`bucket_counts` sums them into a histogram and `sum_by_document` scores them against a table.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

WORD_PUNCT = r"\w+|[^\w\s]+"
"""NLTK's WordPunctTokenizer pattern."""
DEFAULT_BUCKETS = 10_000
"""data-selection's default `num_buckets`."""
DEFAULT_NGRAMS = 2
"""data-selection's default `ngrams`: unigrams and bigrams."""


def bucket_dtype(num_buckets: int) -> pl.DataType:
    return pl.UInt16() if num_buckets <= 1 << 16 else pl.UInt32()


def word_tokens(texts: pl.Series) -> pl.Series:
    """Lowercased WordPunct tokens of every text (null text: no tokens)."""
    return texts.cast(pl.String).str.to_lowercase().str.extract_all(WORD_PUNCT).fill_null([])


def ngram_buckets(texts: pl.Series, num_buckets: int = DEFAULT_BUCKETS, ngrams: int = DEFAULT_NGRAMS) -> pl.Series:
    """Per text, the bucket id of every 1..`ngrams`-gram of its WordPunct tokens (in text order per n)."""
    if num_buckets < 1 or ngrams < 1:
        raise ValueError(f"num_buckets and ngrams must be at least 1 (got {num_buckets}, {ngrams})")
    from datamill.curate.selection.sha256_buckets import ngram_bucket_kernel

    tokens = word_tokens(texts)
    doc_offsets = np.concatenate([[0], np.cumsum(tokens.list.len().to_numpy(), dtype=np.int64)])
    data, token_offsets = _utf8_buffer(tokens.explode().drop_nulls() if len(tokens) else pl.Series([], dtype=pl.String))
    flat, offsets = ngram_bucket_kernel(data, token_offsets, doc_offsets, ngrams, num_buckets)
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(flat, pa.uint32()))
    return pl.Series("buckets", lists).cast(pl.List(bucket_dtype(num_buckets)))


def _utf8_buffer(strings: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets): the strings' UTF-8 bytes back to back and n + 1 int64 offsets."""
    array = strings.to_arrow()
    if array.type != pa.large_string():
        array = array.cast(pa.large_string())
    if len(array) == 0:
        return np.empty(0, np.uint8), np.zeros(1, np.int64)
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    return data[offsets[0] : offsets[-1]], offsets - offsets[0]


def bucket_counts(buckets: pl.Series, num_buckets: int) -> np.ndarray:
    """Total n-gram count per bucket over all documents (int64, length `num_buckets`)."""
    flat = buckets.explode().drop_nulls().to_numpy()
    return np.bincount(flat.astype(np.int64, copy=False), minlength=num_buckets).astype(np.int64)


def sum_by_document(buckets: pl.Series, table: np.ndarray) -> np.ndarray:
    """Per document, the sum of `table[b]` over its n-gram buckets b (float64; 0 for no n-grams)."""
    lengths = buckets.list.len().fill_null(0).to_numpy()
    flat = buckets.explode().drop_nulls().to_numpy().astype(np.int64, copy=False)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    return np.bincount(rows, weights=table[flat], minlength=len(lengths))
