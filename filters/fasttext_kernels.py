"""Score a whole batch with a fastText supervised model in one numba call, bit for bit as fastText's `predict` does.

fastText's own `predict` spends ~0.7–1.4 µs per word in C++ stream reading, string building and
dictionary probing around very little arithmetic, so on long documents it is almost all of a
classifier or language stage's time. These kernels run the same computation over the batch's
UTF-8 buffer, with the arrays `fasttext_file.py` reads from the model file:

1. tokens are runs of bytes other than space, \\n, \\r, \\t, \\v, \\f and \\0; the line ends with the
   end-of-sentence token `</s>` (fastText reads the `\\n` that `predict` appends as one), or at a
   `</s>` typed in the text;
2. each token's hash is 32-bit FNV-1a over its bytes, each byte sign-extended first (the quirk
   fastText kept for compatibility); the token is looked up in the model's dictionary; a token
   starting with the label prefix is a label and is skipped;
3. the input rows, in fastText's order: per token its word id (when in the vocabulary), then its
   character n-grams of minn…maxn UTF-8 characters of `<token>` (n = 1 not at either end; none for
   `</s>`), each the bucket `FNV(n-gram) mod bucket`; after the last token the word n-grams of
   2…wordNgrams consecutive tokens (unknown ones included), `h = h * 116049371 + hash(next)` in
   64-bit arithmetic over sign-extended 32-bit hashes, bucket `h mod bucket`. A bucket is row
   `nwords + bucket`, or, in a pruned (.ftz) model, the row its prune table names (or none);
4. hidden = the float32 sum of those rows in that order, times float32(1 / count);
5. softmax: each label's logit a float32 dot product accumulated in order, softmax with the max
   subtracted (`exp` in double, stored as float32); hierarchical softmax (`hs`, e.g. lid.176):
   fastText's depth-first walk of its Huffman tree over label counts, sigmoid per inner node,
   log-scores summed in float32, the best leaf kept; the probability fastText returns is
   `expf(score)` with score = float(log(p + 1e-5)).

Supported: supervised models with softmax or hs loss and a dense output matrix, quantized (.ftz)
or not, with or without subwords — e.g. DCLM-style bigram classifiers, what `datamill classifier
train` writes, and fastText's lid.176.ftz. `FastTextKernel.from_file` answers None for the rest
(ova/ns losses, a quantized output matrix, other format versions), which fastText itself scores.
The tests compare every supported kind with fastText's predict, bit for bit.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
from numba import njit

from datamill.curate.engine.utf8_buffer import utf8_buffer
from datamill.filters.fasttext_file import FastTextFile, UnsupportedFormat, read_fasttext_file

EOS = b"</s>"
LABEL_PREFIX = b"__label__"
_FNV_OFFSET = np.uint64(2166136261)
_FNV_PRIME = np.uint64(16777619)
_LOW32 = np.uint64(0xFFFFFFFF)
_HIGH32 = np.uint64(0xFFFFFFFF00000000)
_NGRAM_FACTOR = np.uint64(116049371)
_SOFTMAX, _HS = 0, 1
_LOSS_CODES = {"softmax": _SOFTMAX, "hs": _HS}
_THRESHOLD_LOG = np.float32(math.log(0.0 + 1e-5))
"""fastText's std_log(threshold) for the default threshold 0."""


@njit(cache=True, inline="always")
def _fnv_step(h, byte):
    extended = np.uint64(np.int64(np.int8(byte))) & _LOW32  # the byte as a signed char, widened
    return ((h ^ extended) * _FNV_PRIME) & _LOW32


@njit(cache=True)
def _fnv1a(data, start, end):
    """fastText's 32-bit FNV-1a (bytes sign-extended), as a uint64 below 2**32."""
    h = _FNV_OFFSET
    for i in range(start, end):
        h = _fnv_step(h, data[i])
    return h


@njit(cache=True, inline="always")
def _sign_extend(h32):
    """A 32-bit hash stored in an int32 and read back as uint64, as fastText's n-gram loop does."""
    return h32 | _HIGH32 if h32 >= np.uint64(0x80000000) else h32


@njit(cache=True, inline="always")
def _same_bytes(data, start, token):
    for k in range(len(token)):
        if data[start + k] != token[k]:
            return False
    return True


@njit(cache=True, inline="always")
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
        if vocab_offsets[entry + 1] - begin == length and _same_bytes(data, start, vocab[begin:begin + length]):
            return entry
        slot = (slot + np.uint64(1)) & mask


@njit(cache=True, inline="always")
def _is_space(byte):
    return byte == 32 or byte == 10 or byte == 13 or byte == 9 or byte == 11 or byte == 12 or byte == 0


@njit(cache=True, inline="always")
def _add_row(hidden, wi, row):
    for j in range(len(hidden)):
        hidden[j] += wi[row, j]


@njit(cache=True, inline="always")
def _bucket_row(bucket_id, nwords, prune_mode, prune_map, prune_bits):
    """The input row of n-gram bucket `bucket_id` (fastText's pushHash), or -1 for none. A pruned
    model's table is open addressing over (bucket, row) pairs, small enough to stay in cache."""
    if prune_mode == 0 or bucket_id < 0:
        return -1
    if prune_mode > 0:
        if not (prune_bits[bucket_id >> 3] >> (bucket_id & 7)) & 1:
            return -1  # most buckets are pruned: one bit (the bitmap stays in cache) says so
        mask = len(prune_map) - 1
        slot = (bucket_id * 2654435761) & mask
        while True:
            key = prune_map[slot, 0]
            if key == bucket_id:
                return nwords + prune_map[slot, 1]
            if key < 0:
                return -1
            slot = (slot + 1) & mask
    return nwords + bucket_id


@njit(cache=True, inline="always")
def _add_subwords(data, start, end, minn, maxn, bucket, nwords, prune_mode, prune_map, prune_bits, wi, hidden,
                  word, char_starts):
    """Add the rows of the character n-grams of `<token>` (fastText's computeSubwords) to `hidden`;
    returns how many. `word` and `char_starts` are scratch buffers longer than any token + 2."""
    size = end - start + 2
    word[0] = 60  # "<"
    word[1:size - 1] = data[start:end]
    word[size - 1] = 62  # ">"
    n_chars = 0
    for p in range(size):
        if (word[p] & 0xC0) != 0x80:
            char_starts[n_chars] = p
            n_chars += 1
    char_starts[n_chars] = size
    added = 0
    for first in range(n_chars):
        h = _FNV_OFFSET
        for n in range(1, min(maxn, n_chars - first) + 1):
            for p in range(char_starts[first + n - 1], char_starts[first + n]):
                h = _fnv_step(h, word[p])
            if n >= minn and not (n == 1 and (first == 0 or first + n == n_chars)):
                row = _bucket_row(np.int64(h % np.uint64(bucket)), nwords, prune_mode, prune_map, prune_bits)
                if row >= 0:
                    _add_row(hidden, wi, row)
                    added += 1
    return added


@njit(cache=True, inline="always")
def _line_hidden(data, start_doc, end_doc, table, vocab, vocab_offsets, nwords, label_prefix, eos, eos_id, eos_hash,
                 word_ngrams, bucket, minn, maxn, prune_mode, prune_map, prune_bits, wi, hidden, hashes, word,
                 char_starts):
    """fastText's hidden vector of one line: the float32 sum of its input rows in fastText's order,
    added as they are found, then scaled by 1 / count. Returns (count, `hashes`, grown if needed)."""
    hidden[:] = 0
    n_rows = 0
    n_hashes = 0
    i = start_doc
    line_ended = False
    while not line_ended:
        while i < end_doc and _is_space(data[i]):
            i += 1
        if i < end_doc:
            start = i
            while i < end_doc and not _is_space(data[i]):
                i += 1
            h_token = _fnv1a(data, start, i)
            wid = _lookup(data, start, i, h_token, table, vocab, vocab_offsets)
            if wid >= nwords:
                continue  # a label of the dictionary
            is_eos = i - start == len(eos) and _same_bytes(data, start, eos)
            if wid < 0 and i - start >= len(label_prefix) and _same_bytes(data, start, label_prefix):
                continue  # an unknown label
            if is_eos:
                line_ended = True  # a typed-out `</s>` ends the line for fastText too
        else:  # the end of the line: fastText's `</s>` token
            start = i
            wid = eos_id
            h_token = eos_hash
            is_eos = True
            line_ended = True
        if n_hashes == len(hashes):
            hashes = np.concatenate((hashes, np.empty(len(hashes), dtype=np.uint64)))
        hashes[n_hashes] = h_token
        n_hashes += 1
        if wid >= 0:
            _add_row(hidden, wi, wid)
            n_rows += 1
        if maxn > 0 and not is_eos:
            n_rows += _add_subwords(data, start, i, minn, maxn, bucket, nwords, prune_mode, prune_map, prune_bits,
                                    wi, hidden, word, char_starts)
    for a in range(n_hashes):
        h = _sign_extend(hashes[a])
        for b in range(a + 1, min(n_hashes, a + word_ngrams)):
            h = h * _NGRAM_FACTOR + _sign_extend(hashes[b])
            row = _bucket_row(np.int64(h % np.uint64(bucket)), nwords, prune_mode, prune_map, prune_bits)
            if row >= 0:
                _add_row(hidden, wi, row)
                n_rows += 1
    if n_rows > 0:
        scale = np.float32(1.0 / n_rows)
        for j in range(len(hidden)):
            hidden[j] *= scale
    return n_rows, hashes


@njit(cache=True)
def _longest_token(data):
    longest = 0
    run = 0
    for i in range(len(data)):
        if _is_space(data[i]):
            run = 0
        else:
            run += 1
            longest = max(longest, run)
    return longest


@njit(cache=True, inline="always")
def _dot(wo, label, hidden):
    d = np.float32(0.0)
    for j in range(len(hidden)):
        d += wo[label, j] * hidden[j]
    return d


@njit(cache=True, inline="always")
def _std_log(x):
    """fastText's std_log: float(log(x + 1e-5)), the sum in double."""
    return np.float32(math.log(np.float64(x) + 1e-5))


@njit(cache=True)
def _softmax(wo, hidden, out):
    for label in range(len(out)):
        out[label] = _dot(wo, label, hidden)
    top = out[0]
    for label in range(len(out)):
        top = max(out[label], top)
    z = np.float32(0.0)
    for label in range(len(out)):
        out[label] = np.float32(math.exp(np.float64(out[label] - top)))
        z += out[label]
    for label in range(len(out)):
        out[label] = out[label] / z


@njit(cache=True)
def _hs_best(wo, hidden, left, right, n_labels, stack_nodes, stack_scores):
    """fastText's depth-first walk for k = 1: (best leaf, its float32 log-score)."""
    best_node = -1
    best_score = np.float32(0.0)
    stack_nodes[0] = 2 * n_labels - 2
    stack_scores[0] = np.float32(0.0)
    depth = 1
    while depth > 0:
        depth -= 1
        node = stack_nodes[depth]
        score = stack_scores[depth]
        if score < _THRESHOLD_LOG:
            continue
        if best_node >= 0 and score < best_score:
            continue
        if left[node] == -1 and right[node] == -1:
            best_node = node
            best_score = score
            continue
        f = _dot(wo, node - n_labels, hidden)
        f = np.float32(1.0 / np.float64(np.float32(1.0) + np.exp(-f)))
        stack_nodes[depth] = right[node]  # pushed first: the left subtree is walked first
        stack_scores[depth] = score + _std_log(f)
        stack_nodes[depth + 1] = left[node]
        stack_scores[depth + 1] = score + _std_log(np.float32(1.0 - np.float64(f)))
        depth += 2
    return best_node, best_score


@njit(cache=True)
def _predict(data, offsets, table, vocab, vocab_offsets, nwords, label_prefix, eos, eos_id, eos_hash, word_ngrams,
             bucket, minn, maxn, prune_mode, prune_map, prune_bits, wi, wo, loss, left, right, top_only):
    """Per text: every label's probability (softmax, `top_only` false), or the best label id and its
    probability (label -1, NaN when fastText predicts nothing)."""
    n_docs = len(offsets) - 1
    n_labels = wo.shape[0]
    probabilities = np.full((n_docs, 1 if top_only else n_labels), np.nan, dtype=np.float32)
    best = np.full(n_docs, -1, dtype=np.int64)
    hidden = np.zeros(wi.shape[1], dtype=np.float32)
    out = np.zeros(n_labels, dtype=np.float32)
    hashes = np.empty(64, dtype=np.uint64)
    longest = _longest_token(data) + 3 if maxn > 0 else 1
    word = np.empty(longest, dtype=np.uint8)
    char_starts = np.empty(longest, dtype=np.int64)
    stack_nodes = np.empty(2 * n_labels + 2, dtype=np.int64)
    stack_scores = np.empty(2 * n_labels + 2, dtype=np.float32)
    for doc in range(n_docs):
        n_rows, hashes = _line_hidden(
            data, offsets[doc], offsets[doc + 1], table, vocab, vocab_offsets, nwords, label_prefix, eos, eos_id,
            eos_hash, word_ngrams, bucket, minn, maxn, prune_mode, prune_map, prune_bits, wi, hidden, hashes, word,
            char_starts)
        if n_rows == 0:
            continue
        if loss == _HS:
            node, score = _hs_best(wo, hidden, left, right, n_labels, stack_nodes, stack_scores)
            if node >= 0:
                best[doc] = node
                probabilities[doc, 0] = np.exp(score)
            continue
        _softmax(wo, hidden, out)
        if not top_only:
            for label in range(n_labels):
                probabilities[doc, label] = np.exp(_std_log(out[label]))
            continue
        top_score = _std_log(out[0])
        top_label = 0
        for label in range(1, n_labels):  # fastText's heap keeps the later of equal scores
            score = _std_log(out[label])
            if score >= top_score:
                top_score = score
                top_label = label
        best[doc] = top_label
        probabilities[doc, 0] = np.exp(top_score)
    return best, probabilities


def huffman_tree(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fastText's hierarchical-softmax tree over label counts (sorted, most frequent first): the
    left and right child of every node (-1 for leaves; leaves are the label ids)."""
    n = len(counts)
    count = np.full(2 * n - 1, 1e15)
    count[:n] = counts
    left = np.full(2 * n - 1, -1, dtype=np.int64)
    right = np.full(2 * n - 1, -1, dtype=np.int64)
    leaf, node = n - 1, n
    for i in range(n, 2 * n - 1):
        smallest = [0, 0]
        for j in range(2):
            if leaf >= 0 and count[leaf] < count[node]:
                smallest[j], leaf = leaf, leaf - 1
            else:
                smallest[j], node = node, node + 1
        left[i], right[i] = smallest
        count[i] = count[smallest[0]] + count[smallest[1]]
    return left, right


class FastTextKernel:
    """The arrays of one fastText model that `_predict` needs, and batch predictions."""

    def __init__(self, model: FastTextFile, label_prefix: bytes = LABEL_PREFIX):
        self.labels = model.labels
        self.vocab, self.vocab_offsets = _entry_bytes(model.words)
        self.nwords = model.nwords
        self.table = np.full(1 << max(4, int(2 * len(model.words)).bit_length()), -1, dtype=np.int64)
        for entry in range(len(model.words)):
            h = _fnv1a(self.vocab, self.vocab_offsets[entry], self.vocab_offsets[entry + 1])
            slot = int(h) & (len(self.table) - 1)
            while self.table[slot] >= 0:
                slot = (slot + 1) & (len(self.table) - 1)
            self.table[slot] = entry
        self.eos = np.frombuffer(EOS, dtype=np.uint8).copy()
        self.eos_hash = _fnv1a(self.eos, 0, len(self.eos))
        self.eos_id = int(_lookup(self.eos, 0, len(self.eos), self.eos_hash, self.table, self.vocab,
                                  self.vocab_offsets))
        self.label_prefix = np.frombuffer(label_prefix, dtype=np.uint8).copy()
        self.word_ngrams, self.bucket, self.minn, self.maxn = model.word_ngrams, model.bucket, model.minn, model.maxn
        self.prune_mode = int(np.sign(model.pruneidx_size))
        size = 1 << max(1, int(2 * len(model.pruneidx)).bit_length())
        self.prune_map = np.full((size, 2), -1, dtype=np.int64)
        for bucket_id, row in model.pruneidx.items():
            slot = (bucket_id * 2654435761) & (size - 1)
            while self.prune_map[slot, 0] >= 0:
                slot = (slot + 1) & (size - 1)
            self.prune_map[slot] = bucket_id, row
        self.prune_bits = np.zeros(self.bucket // 8 + 1 if self.prune_mode > 0 else 1, dtype=np.uint8)
        for bucket_id in model.pruneidx:
            self.prune_bits[bucket_id >> 3] |= np.uint8(1 << (bucket_id & 7))
        self.wi, self.wo = model.input_rows, model.output_rows
        self.loss = _LOSS_CODES[model.loss]
        if self.loss == _HS:
            self.left, self.right = huffman_tree(model.counts[model.nwords:])
        else:
            self.left = self.right = np.zeros(1, dtype=np.int64)

    @classmethod
    def from_file(cls, path: str | Path) -> "FastTextKernel | None":
        """A kernel for the model file, or None when it is a kind these kernels do not reproduce
        (another format version, ova/ns loss, a quantized output matrix)."""
        try:
            model = read_fasttext_file(path)
        except UnsupportedFormat:
            return None
        if model.model != "supervised" or model.loss not in _LOSS_CODES or model.output_rows is None:
            return None
        return cls(model)

    @property
    def scores_every_label(self) -> bool:
        """Whether `predict_all` works (softmax models; hs walks only towards the best labels)."""
        return self.loss == _SOFTMAX

    def _run(self, texts: pl.Series, top_only: bool) -> tuple[np.ndarray, np.ndarray]:
        data, offsets = utf8_buffer(texts)
        return _predict(data, offsets, self.table, self.vocab, self.vocab_offsets, self.nwords, self.label_prefix,
                        self.eos, self.eos_id, self.eos_hash, self.word_ngrams, self.bucket, self.minn, self.maxn,
                        self.prune_mode, self.prune_map, self.prune_bits, self.wi, self.wo, self.loss, self.left,
                        self.right, top_only)

    def predict_all(self, texts: pl.Series) -> np.ndarray:
        """float32 (texts × labels) probabilities in label-id order, as fastText returns them for
        `predict(text, k=-1)`; NaN rows where fastText predicts nothing. Softmax models only.
        Texts must not hold a newline (fastText predicts one line at a time)."""
        if not self.scores_every_label:
            raise ValueError("hierarchical-softmax models give the best labels only: use predict_top")
        return self._run(texts, top_only=False)[1]

    def predict_top(self, texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """Per text the best label id (-1: none) and its float32 probability, as fastText's
        `predict(text, k=1)`. Texts must not hold a newline."""
        best, probabilities = self._run(texts, top_only=True)
        return best, probabilities[:, 0]


def _entry_bytes(words: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Dictionary entries back to back as uint8, with n + 1 offsets."""
    offsets = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum([len(w) for w in words], out=offsets[1:])
    return np.frombuffer(b"".join(words), dtype=np.uint8).copy(), offsets
