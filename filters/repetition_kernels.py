"""numba kernels for Gopher's duplicated n-gram scan: concatenation hashes and datatrove's exact jump scan.

datatrove's `find_all_duplicate(words, n)` walks the token positions left to right keeping a set of
the n-grams it has visited, each n-gram keyed by its tokens joined with NO separator
("".join(words[i:i + n])); a visited position whose key is already in the set counts
len(key) characters and jumps n positions ahead (the jumped positions are neither counted nor
added), any other visited position adds its key. These kernels run the same walk on integer keys:

- `token_hashes`: every token's polynomial hash over its UTF-8 bytes modulo the Mersenne prime
  2^61 - 1 and base^(its byte length), so that the key of a concatenation is
  `key(a) * base^len(b) + key(b)`; equal joined strings give equal keys whatever the token
  boundaries ("ab" "c" and "a" "bc" are the same 2-gram, as in datatrove).
- `roll`: the keys of the (n)-grams from the keys of the (n-1)-grams.
- `duplicate_chars`: the scan itself, with an open-addressing table that links each n-gram to the
  previous occurrence of its key, so "is the key in the visited set" is one lookup.

A modular hash with a random-looking odd base cannot be defeated by the Thue-Morse strings that
break polynomial hashing modulo 2^64; two different strings share a key with probability about
(length / 2^61).
"""

from __future__ import annotations

import numpy as np
from numba import njit

MERSENNE = np.uint64((1 << 61) - 1)
BASE = np.uint64(0x1F3D5B79A3C2E4F)  # below 2^61
_MIX = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def _mulmod(a, b):
    """a * b mod 2^61 - 1 for a, b < 2^61, in 64-bit arithmetic."""
    mask31 = np.uint64((1 << 31) - 1)
    mask30 = np.uint64((1 << 30) - 1)
    au = a >> np.uint64(31)
    ad = a & mask31
    bu = b >> np.uint64(31)
    bd = b & mask31
    mid = ad * bu + au * bd
    midu = mid >> np.uint64(30)
    midd = mid & mask30
    r = au * bu * np.uint64(2) + midu + (midd << np.uint64(31)) + ad * bd
    r = (r >> np.uint64(61)) + (r & MERSENNE)
    if r >= MERSENNE:
        r -= MERSENNE
    return r


@njit(cache=True)
def token_hashes(data, offsets):
    """(key, base^byte length) of every string in a UTF-8 buffer (see `utf8_buffer`)."""
    n = offsets.size - 1
    keys = np.empty(n, np.uint64)
    powers = np.empty(n, np.uint64)
    for i in range(n):
        h = np.uint64(0)
        p = np.uint64(1)
        for j in range(offsets[i], offsets[i + 1]):
            h = _mulmod(h, BASE) + np.uint64(data[j]) + np.uint64(1)
            if h >= MERSENNE:
                h -= MERSENNE
            p = _mulmod(p, BASE)
        keys[i] = h
        powers[i] = p
    return keys, powers


@njit(cache=True)
def roll(gram_keys, gram_powers, token_keys, token_powers, n):
    """In place: the (n-1)-gram keys and powers at each start become the n-gram ones (starts
    whose n-gram would run past the array are left alone)."""
    for i in range(token_keys.size - n + 1):
        last = i + n - 1
        h = _mulmod(gram_keys[i], token_powers[last]) + token_keys[last]
        if h >= MERSENNE:
            h -= MERSENNE
        gram_keys[i] = h
        gram_powers[i] = _mulmod(gram_powers[i], token_powers[last])


@njit(cache=True)
def duplicate_chars(keys, docs, starts, n, before, token_len, n_docs):
    """Characters counted by datatrove's jump scan, per document.

    Rows are n-gram starts in document order: `keys` their concatenation keys, `docs` their
    document, `starts` the index of their first token in `before` (characters before each token)
    and `token_len` (each token's characters).
    """
    m = keys.size
    out = np.zeros(n_docs, np.int64)
    size = 1
    while size < 2 * m + 2:
        size *= 2
    shift = np.uint64(64 - int(np.log2(size)))
    table_keys = np.zeros(size, np.uint64)
    table_rows = np.full(size, -1, np.int64)
    in_set = np.zeros(m, np.bool_)  # some visited occurrence at or before this row has its key
    next_free = -1  # token index from which positions are visited again (after a jump)
    for r in range(m):
        key = keys[r] ^ (np.uint64(docs[r]) * _MIX)
        slot = (key * _MIX) >> shift
        while table_rows[slot] != -1 and table_keys[slot] != key:
            slot = (slot + np.uint64(1)) & np.uint64(size - 1)
        previous = table_rows[slot]
        table_keys[slot] = key
        table_rows[slot] = r
        seen = previous >= 0 and in_set[previous]
        start = starts[r]
        if start >= next_free:
            in_set[r] = True
            if seen:
                last = start + n - 1
                out[docs[r]] += before[last] + token_len[last] - before[start]
                next_free = start + n
        else:
            in_set[r] = seen
    return out
