"""Score a whole batch with a fastText supervised model in one numba call, bit for bit as fastText's `predict` does.

fastText's own `predict` spends ~0.7–1.4 µs per word in C++ stream reading, string building and
dictionary probing around very little arithmetic, so on long documents it is almost all of a
classifier stage's time. This module runs the same computation over the batch's UTF-8 buffer:

1. tokens are runs of bytes other than space, \\n, \\r, \\t, \\v, \\f and \\0; the line ends with the
   end-of-sentence token `</s>` (fastText reads the `\\n` that `predict` appends as one), or at a
   `</s>` typed in the text;
2. each token's hash is 32-bit FNV-1a over its bytes, each byte sign-extended first (the quirk
   fastText kept for compatibility); the token is looked up in the model's dictionary;
3. the input rows are the in-vocabulary words in token order (a token starting with the label
   prefix is a label and is skipped; an unknown word adds no row), then, for word n-grams of
   2…wordNgrams consecutive word tokens (unknown ones included), the bucket
   `nwords + h mod bucket` with `h = h * 116049371 + hash(next)` in 64-bit arithmetic over the
   sign-extended 32-bit hashes;
4. hidden = the float32 sum of those rows in that order, times float32(1 / count); each label's
   logit a float32 dot product accumulated in order; softmax with the max subtracted (`exp` in
   double, stored as float32); the probability fastText returns is `expf(float(log(p + 1e-5)))`.

Supported: non-quantized models with softmax loss and no character n-grams (minn = maxn = 0),
e.g. DCLM-style word-bigram classifiers and what `datamill classifier train` writes.
`FastTextKernel.for_model` answers None for the rest (.ftz, subwords, hs/ova/ns losses), which
are scored by fastText itself. tests/test_classifier.py checks equality with fastText's predict.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from numba import njit

from datamill.curate.engine.utf8_buffer import utf8_buffer

EOS = "</s>"
_FNV_OFFSET = np.uint64(2166136261)
_FNV_PRIME = np.uint64(16777619)
_LOW32 = np.uint64(0xFFFFFFFF)
_HIGH32 = np.uint64(0xFFFFFFFF00000000)
_NGRAM_FACTOR = np.uint64(116049371)


@njit(cache=True)
def _fnv1a(data, start, end):
    """fastText's 32-bit FNV-1a (bytes sign-extended), as a uint64 below 2**32."""
    h = _FNV_OFFSET
    for i in range(start, end):
        byte = np.uint64(data[i])
        if byte >= 128:
            byte |= np.uint64(0xFFFFFF00)
        h = ((h ^ byte) * _FNV_PRIME) & _LOW32
    return h


@njit(cache=True)
def _sign_extend(h32):
    """A 32-bit hash stored in an int32 and read back as uint64, as fastText's n-gram loop does."""
    return h32 | _HIGH32 if h32 >= np.uint64(0x80000000) else h32


@njit(cache=True)
def _lookup(data, start, end, h, table, vocab, vocab_offsets):
    """Dictionary id of the token data[start:end] (hash h), or -1."""
    mask = np.uint64(len(table) - 1)
    slot = h & mask
    length = end - start
    while True:
        entry = table[slot]
        if entry < 0:
            return -1
        begin = vocab_offsets[entry]
        if vocab_offsets[entry + 1] - begin == length:
            same = True
            for k in range(length):
                if vocab[begin + k] != data[start + k]:
                    same = False
                    break
            if same:
                return entry
        slot = (slot + np.uint64(1)) & mask


@njit(cache=True)
def _same_bytes(data, start, token):
    for k in range(len(token)):
        if data[start + k] != token[k]:
            return False
    return True


@njit(cache=True)
def _is_space(byte):
    return byte == 32 or byte == 10 or byte == 13 or byte == 9 or byte == 11 or byte == 12 or byte == 0


@njit(cache=True)
def _predict(data, offsets, table, vocab, vocab_offsets, nwords, label_prefix, eos, eos_id, eos_hash,
             word_ngrams, bucket, wi, wo):
    n_docs = len(offsets) - 1
    dim = wi.shape[1]
    n_labels = wo.shape[0]
    probabilities = np.full((n_docs, n_labels), np.nan, dtype=np.float32)
    hidden = np.zeros(dim, dtype=np.float32)
    logits = np.zeros(n_labels, dtype=np.float32)
    rows = np.empty(64, dtype=np.int64)
    hashes = np.empty(64, dtype=np.uint64)
    for doc in range(n_docs):
        n_rows = 0
        n_hashes = 0
        i = offsets[doc]
        end = offsets[doc + 1]
        line_ended = False
        while not line_ended:
            while i < end and _is_space(data[i]):
                i += 1
            if i < end:
                start = i
                while i < end and not _is_space(data[i]):
                    i += 1
                h_token = _fnv1a(data, start, i)
                wid = _lookup(data, start, i, h_token, table, vocab, vocab_offsets)
                if wid >= nwords:
                    continue  # a label of the dictionary
                if i - start == len(eos) and _same_bytes(data, start, eos):
                    line_ended = True  # a typed-out `</s>` ends the line for fastText too
                if wid < 0 and i - start >= len(label_prefix) and _same_bytes(data, start, label_prefix):
                    continue  # an unknown label
            else:  # the end of the line: fastText's `</s>` token
                wid = eos_id
                h_token = eos_hash
                line_ended = True
            if n_hashes == len(hashes):
                hashes = np.concatenate((hashes, np.empty(len(hashes), dtype=np.uint64)))
            hashes[n_hashes] = h_token
            n_hashes += 1
            if wid >= 0:
                if n_rows == len(rows):
                    rows = np.concatenate((rows, np.empty(len(rows), dtype=np.int64)))
                rows[n_rows] = wid
                n_rows += 1
        for a in range(n_hashes):
            h = _sign_extend(hashes[a])
            for b in range(a + 1, min(n_hashes, a + word_ngrams)):
                h = h * _NGRAM_FACTOR + _sign_extend(hashes[b])
                if n_rows == len(rows):
                    rows = np.concatenate((rows, np.empty(len(rows), dtype=np.int64)))
                rows[n_rows] = nwords + np.int64(h % np.uint64(bucket))
                n_rows += 1
        if n_rows == 0:
            continue
        hidden[:] = 0
        for r in range(n_rows):
            row = rows[r]
            for j in range(dim):
                hidden[j] += wi[row, j]
        scale = np.float32(1.0 / n_rows)
        for j in range(dim):
            hidden[j] *= scale
        for label in range(n_labels):
            d = np.float32(0.0)
            for j in range(dim):
                d += wo[label, j] * hidden[j]
            logits[label] = d
        top = logits[0]
        for label in range(n_labels):
            top = max(logits[label], top)
        z = np.float32(0.0)
        for label in range(n_labels):
            logits[label] = np.float32(math.exp(np.float64(logits[label] - top)))
            z += logits[label]
        for label in range(n_labels):
            log_p = np.float32(math.log(np.float64(logits[label] / z) + 1e-5))
            probabilities[doc, label] = np.exp(log_p)
    return probabilities


class FastTextKernel:
    """The arrays of one fastText model that `_predict` needs, and a batch `predict`."""

    def __init__(self, model):
        args = model.f.getArgs()
        words = model.get_words(on_unicode_error="replace")
        labels = model.get_labels()
        entries = pl.Series(list(words) + list(labels), dtype=pl.String)
        self.vocab, self.vocab_offsets = utf8_buffer(entries)
        self.nwords = len(words)
        self.table = np.full(1 << max(4, int(2 * len(entries)).bit_length()), -1, dtype=np.int64)
        for entry in range(len(entries)):
            begin, end = self.vocab_offsets[entry], self.vocab_offsets[entry + 1]
            h = _fnv1a(self.vocab, begin, end)
            slot = int(h) & (len(self.table) - 1)
            while self.table[slot] >= 0:
                slot = (slot + 1) & (len(self.table) - 1)
            self.table[slot] = entry
        self.eos = np.frombuffer(EOS.encode(), dtype=np.uint8).copy()
        self.eos_hash = _fnv1a(self.eos, 0, len(self.eos))
        self.eos_id = int(_lookup(self.eos, 0, len(self.eos), self.eos_hash, self.table, self.vocab, self.vocab_offsets))
        self.label_prefix = np.frombuffer(args.label.encode(), dtype=np.uint8).copy()
        self.word_ngrams = int(args.wordNgrams)
        self.bucket = int(args.bucket)
        self.wi = np.ascontiguousarray(model.get_input_matrix(), dtype=np.float32)
        self.wo = np.ascontiguousarray(model.get_output_matrix(), dtype=np.float32)

    @classmethod
    def for_model(cls, model) -> "FastTextKernel | None":
        """A kernel for `model`, or None when it is a kind this module does not reproduce."""
        args = model.f.getArgs()
        if model.is_quantized() or args.maxn > 0 or str(args.loss).rsplit(".", 1)[-1] != "softmax":
            return None
        if str(args.model).rsplit(".", 1)[-1] != "supervised":
            return None
        return cls(model)

    def predict(self, texts: pl.Series) -> np.ndarray:
        """float32 (texts × labels) probabilities in label-id order, as fastText returns them for
        `predict(text, k=-1)`; a row of NaN where fastText predicts nothing. Texts must not hold
        a newline (fastText predicts one line at a time)."""
        data, offsets = utf8_buffer(texts)
        return _predict(data, offsets, self.table, self.vocab, self.vocab_offsets, self.nwords, self.label_prefix,
                        self.eos, self.eos_id, self.eos_hash, self.word_ngrams, self.bucket, self.wi, self.wo)
