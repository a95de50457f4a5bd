"""Hashed n-gram bag-of-words features (DSIR's): every word n-gram of a text mapped to one of k buckets.

The text is lowercased and split like NLTK's `WordPunctTokenizer` (runs of word characters, and
runs of other non-space characters: `\\w+|[^\\w\\s]+`), which is what the `data-selection` package
does by default; unigrams and the space-joined bigrams (up to `ngrams`-grams) are each hashed into
one of `num_buckets` buckets exactly as the package does (`sha256(ngram) mod num_buckets`, see
`sha256_buckets.py`), so bucket ids match it and are stable across runs, machines and versions.
Tokenizing runs in polars, hashing in a numba kernel over the tokens' UTF-8 bytes (each distinct
n-gram once), sums in numpy: no Python code runs per n-gram.

A document's features are a `List[UInt16|UInt32]` of bucket ids, one per n-gram occurrence;
`bucket_counts` sums them into a histogram and `sum_by_document` scores them against a table.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from datamill.curate.engine.utf8_buffer import utf8_buffer

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
    """Per text, the bucket id of every 1..`ngrams`-gram of its WordPunct tokens (in text order per n).

    Words repeat (Zipf), so each distinct n-gram is hashed once: tokens get dense ids from a join
    with the distinct tokens, an n-gram's id comes from the pair (its (n-1)-gram's id, its last
    token's id) made dense by a hash table (`dense_ids`), and SHA-256 runs on one occurrence per id."""
    if num_buckets < 1 or ngrams < 1:
        raise ValueError(f"num_buckets and ngrams must be at least 1 (got {num_buckets}, {ngrams})")
    from datamill.curate.selection.sha256_buckets import dense_ids, documents_first, hash_ngrams

    tokens = word_tokens(texts)
    lengths = tokens.list.len().to_numpy().astype(np.int64)
    doc_offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = tokens.explode().drop_nulls() if len(tokens) else pl.Series([], dtype=pl.String)
    distinct = flat.unique()
    token_ids = (flat.to_frame("token").join(distinct.to_frame("token").with_row_index("id"), on="token",
                                               how="left", maintain_order="left")["id"].to_numpy().astype(np.int64))
    data, token_offsets = utf8_buffer(distinct)
    n_tokens = len(token_ids)
    levels = np.zeros((ngrams, n_tokens), np.uint32)  # [n - 1, s]: bucket of the n-gram starting at token s
    levels[0] = hash_ngrams(data, token_offsets, np.arange(len(distinct)), np.arange(len(distinct)), 1,
                            num_buckets)[token_ids]
    document = np.repeat(np.arange(len(lengths)), lengths)
    ngram_ids = token_ids  # dense id of the (n-1)-gram starting at each token
    for n in range(2, min(ngrams, int(lengths.max(initial=0))) + 1):
        starts = np.flatnonzero(document[: n_tokens - n + 1] == document[n - 1:])  # n-grams inside one document
        keys = ngram_ids[starts] * len(distinct) + token_ids[starts + n - 1]
        ids, first = dense_ids(keys)
        levels[n - 1, starts] = hash_ngrams(data, token_offsets, token_ids, starts[first], n, num_buckets)[ids]
        ngram_ids = np.zeros(n_tokens, np.int64)
        ngram_ids[starts] = ids
    flat_buckets, offsets = documents_first(levels, doc_offsets)
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(flat_buckets, pa.uint32()))
    return pl.Series("buckets", lists).cast(pl.List(bucket_dtype(num_buckets)))


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
