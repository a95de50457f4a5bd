"""Numba kernel: SHA-256 of every word n-gram, reduced modulo a bucket count (DSIR's bucket hash).

The `data-selection` package buckets an n-gram as `int(sha256(ngram.encode()).hexdigest(), 16)
% num_buckets`, the n-gram being its tokens joined by single spaces. This kernel computes the
same numbers from the tokens' UTF-8 bytes (back to back, with offsets) without Python per
n-gram: the digest is built in a scratch buffer and reduced by Horner's rule over its eight
big-endian 32-bit words. Compiled on first use and cached by numba. The caller hashes each
distinct n-gram once (`hashed_ngrams.py`); `documents_first` lays the results out per document.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_K = np.array([
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4, 0xAB1C5ED5,
    0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE, 0x9BDC06A7, 0xC19BF174,
    0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F, 0x4A7484AA, 0x5CB0A9DC, 0x76F988DA,
    0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7, 0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967,
    0x27B70A85, 0x2E1B2138, 0x4D2C6DFC, 0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85,
    0xA2BFE8A1, 0xA81A664B, 0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070,
    0x19A4C116, 0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7, 0xC67178F2,
], dtype=np.uint64)
_H0 = np.array([0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19],
               dtype=np.uint64)
_M32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, inline="always")
def _rotr(x, n):
    return ((x >> np.uint64(n)) | (x << np.uint64(32 - n))) & _M32


@njit(cache=True)
def _sha256_mod(msg, length, num_buckets, w, h):
    """SHA-256 of msg[:length] as a big integer, modulo num_buckets (msg has room for the padding)."""
    total = ((length + 9 + 63) // 64) * 64
    msg[length] = 0x80
    for i in range(length + 1, total - 8):
        msg[i] = 0
    bits = np.uint64(length) * np.uint64(8)
    for i in range(8):
        msg[total - 1 - i] = (bits >> np.uint64(8 * i)) & np.uint64(0xFF)
    for i in range(8):
        h[i] = _H0[i]
    for block in range(0, total, 64):
        for t in range(16):
            j = block + 4 * t
            w[t] = (np.uint64(msg[j]) << np.uint64(24)) | (np.uint64(msg[j + 1]) << np.uint64(16)) | (
                np.uint64(msg[j + 2]) << np.uint64(8)) | np.uint64(msg[j + 3])
        for t in range(16, 64):
            s0 = _rotr(w[t - 15], 7) ^ _rotr(w[t - 15], 18) ^ (w[t - 15] >> np.uint64(3))
            s1 = _rotr(w[t - 2], 17) ^ _rotr(w[t - 2], 19) ^ (w[t - 2] >> np.uint64(10))
            w[t] = (w[t - 16] + s0 + w[t - 7] + s1) & _M32
        a, b, c, d, e, f, g, hh = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
        for t in range(64):
            s1 = _rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)
            ch = (e & f) ^ ((~e & _M32) & g)
            t1 = (hh + s1 + ch + _K[t] + w[t]) & _M32
            s0 = _rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)
            maj = (a & b) ^ (a & c) ^ (b & c)
            t2 = (s0 + maj) & _M32
            hh, g, f, e, d, c, b, a = g, f, e, (d + t1) & _M32, c, b, a, (t1 + t2) & _M32
        h[0] = (h[0] + a) & _M32
        h[1] = (h[1] + b) & _M32
        h[2] = (h[2] + c) & _M32
        h[3] = (h[3] + d) & _M32
        h[4] = (h[4] + e) & _M32
        h[5] = (h[5] + f) & _M32
        h[6] = (h[6] + g) & _M32
        h[7] = (h[7] + hh) & _M32
    r = np.uint64(0)
    k = np.uint64(num_buckets)
    for i in range(8):
        r = ((r << np.uint64(32)) | h[i]) % k  # r < k < 2**32: no overflow
    return r


@njit(cache=True)
def hash_ngrams(data, token_offsets, token_ids, starts, n, num_buckets):
    """The bucket of each n-gram token_ids[s], …, token_ids[s + n - 1] for s in `starts`: the UTF-8
    bytes of those tokens (token t is data[token_offsets[t]:token_offsets[t + 1]]) joined by single
    spaces, SHA-256, mod num_buckets."""
    longest = 0
    for t in range(len(token_offsets) - 1):
        longest = max(longest, token_offsets[t + 1] - token_offsets[t])
    msg = np.zeros(n * (longest + 1) + 72, dtype=np.uint8)
    w = np.zeros(64, dtype=np.uint64)
    h = np.zeros(8, dtype=np.uint64)
    out = np.empty(len(starts), dtype=np.uint32)
    for i in range(len(starts)):
        length = 0
        for j in range(starts[i], starts[i] + n):
            if j > starts[i]:
                msg[length] = 32
                length += 1
            token = token_ids[j]
            for b in range(token_offsets[token], token_offsets[token + 1]):
                msg[length] = data[b]
                length += 1
        out[i] = _sha256_mod(msg, length, num_buckets, w, h)
    return out


@njit(cache=True)
def dense_ids(keys):
    """(ids, first): each non-negative int64 key's dense id (0, 1, … in order of first appearance)
    and, per id, the index of its first occurrence. One pass over an open-addressing table."""
    bits = 4
    while (1 << bits) < 2 * len(keys):
        bits += 1
    mask = (1 << bits) - 1
    slot_keys = np.full(1 << bits, -1, dtype=np.int64)
    slot_ids = np.zeros(1 << bits, dtype=np.int64)
    ids = np.empty(len(keys), dtype=np.int64)
    first = np.empty(len(keys), dtype=np.int64)
    n = 0
    for i in range(len(keys)):
        key = keys[i]
        slot = np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - bits))
        while slot_keys[slot] != -1 and slot_keys[slot] != key:
            slot = (slot + 1) & mask
        if slot_keys[slot] == -1:
            slot_keys[slot] = key
            slot_ids[slot] = n
            first[n] = i
            n += 1
        ids[i] = slot_ids[slot]
    return ids, first[:n]


@njit(cache=True)
def documents_first(levels, doc_offsets):
    """Regroup per-position buckets by document: levels[n - 1, s] is the bucket of the n-gram
    starting at token s. Per document, its 1-grams, then its 2-grams, … (in text order per n).
    Returns (flat bucket ids, per-document offsets into them)."""
    ngrams = levels.shape[0]
    n_docs = len(doc_offsets) - 1
    out_offsets = np.zeros(n_docs + 1, dtype=np.int64)
    for d in range(n_docs):
        t = doc_offsets[d + 1] - doc_offsets[d]
        count = 0
        for n in range(1, ngrams + 1):
            if t >= n:
                count += t - n + 1
        out_offsets[d + 1] = out_offsets[d] + count
    out = np.empty(out_offsets[-1], dtype=np.uint32)
    pos = 0
    for d in range(n_docs):
        for n in range(1, ngrams + 1):
            for s in range(doc_offsets[d], doc_offsets[d + 1] - n + 1):
                out[pos] = levels[n - 1, s]
                pos += 1
    return out, out_offsets
