"""MinHash signatures and LSH band hashes for whole batches, bit-identical to datasketch.

`MinHasher(num_perm, seed, scheme)` reproduces `datasketch.MinHash(num_perm, seed, scheme=...)`
(datasketch 2.x; default scheme "affine32") after `update(shingle.encode("utf-8"))` for every
shingle of a document. `text_signatures(texts, shingler, hasher)` gives that for a text column.

Two engines compute the same values:

- "numba" (used when numba imports): `minhash_kernels` hashes every shingle as a byte range of
  the normalized texts' UTF-8 buffer (taken from Arrow without copying per string), SHA-1 in
  SIMD across messages, and keeps each document's running minima in one `num_perm` row. No
  shingle string and no (n_shingles × num_perm) array is ever built.
- "numpy" (the fallback and the tests' reference), described below.

- shingle hash: the first 4 (8 for "affine64") bytes of SHA-1, little-endian — datasketch's
  `sha1_hash32` / `sha1_hash64`. SHA-1 has no vectorized route in numpy/polars/pyarrow, so it is
  one `hashlib.sha1` call per *distinct* shingle in a tight comprehension; the digests are joined
  into one buffer and read back with `np.frombuffer` (no per-item struct unpacking). This is the
  dominant cost; shingles are deduplicated first (`shingle_hashes`).
- permutations: drawn from `np.random.RandomState(seed)` exactly as datasketch draws them.
  "affine32"/"affine64": MurmurHash3 finalizer premix, then `a*h + b mod 2^w` (a odd).
  "legacy" (datasketch < 2.0): `((a*h + b) mod 2^64) mod (2^61 - 1)`, truncated to 32 bits.
- minimum: permuted values of a block of shingles form an (n_shingles × num_perm) matrix; the
  per-document minimum is `np.minimum.reduceat` over each document's row segment. Blocks are
  capped (`block_rows`), so memory stays ~16 MB (uint32) whatever the batch size.
- no shingles: every value is the scheme's max hash, as an untouched datasketch MinHash.

Band hashes: the signature is cut into `bands` runs of `rows` values; each run's little-endian
bytes are hashed with XXH64 (seed 0), implemented over numpy arrays so a whole batch is hashed
at once; equal to `xxhash.xxh64_intdigest(band_bytes)`.

`optimal_bands_rows` is datasketch's `_optimal_param` (minimize weighted false positive and false
negative probability over b×r ≤ num_perm) with exact Gauss–Legendre quadrature instead of scipy.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from types import ModuleType
from typing import Literal

import numpy as np
import polars as pl

from datamill.curate.dedup.shingles import DOC, SHINGLE, Shingler
from datamill.curate.engine.utf8_buffer import utf8_buffer

Scheme = Literal["affine32", "affine64", "legacy"]
Engine = Literal["auto", "numba", "numpy"]

CHUNK_SHINGLES = 1 << 20
"""The numpy engine shingles and hashes documents in chunks of at most this many shingles
(bounds its memory); the numba engine streams shingles and needs no chunks."""

MERSENNE_PRIME = np.uint64((1 << 61) - 1)
LEGACY_MAX_HASH = np.uint64((1 << 32) - 1)

_FMIX = {
    32: (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16),
    64: (33, 0xFF51AFD7ED558CCD, 33, 0xC4CEB9FE1A85EC53, 33),
}


def _fmix(values: np.ndarray, width: int) -> np.ndarray:
    """MurmurHash3 finalizer on an unsigned array (wrapping arithmetic), as datasketch premixes."""
    dtype = values.dtype.type
    s1, m1, s2, m2, s3 = (dtype(c) for c in _FMIX[width])
    values = values ^ (values >> s1)
    values = values * m1
    values = values ^ (values >> s2)
    values = values * m2
    return values ^ (values >> s3)


def sha1_hashes(shingles: Iterable[bytes], width: Literal[32, 64] = 32) -> np.ndarray:
    """datasketch's `sha1_hash32` / `sha1_hash64` of every item, as uint32 / uint64."""
    sha1 = hashlib.sha1
    digests = b"".join([h.digest() for h in map(sha1, shingles)])
    if not digests:
        return np.empty(0, dtype=np.uint32 if width == 32 else np.uint64)
    rows = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 20)
    lead = np.ascontiguousarray(rows[:, : width // 8])
    return lead.view("<u4" if width == 32 else "<u8").ravel().astype(np.uint32 if width == 32 else np.uint64)


class MinHasher:
    """Permutations of one (num_perm, seed, scheme); turns shingle hashes into signatures."""

    def __init__(self, num_perm: int = 128, seed: int = 1, scheme: Scheme = "affine32"):
        if num_perm < 1:
            raise ValueError("num_perm must be positive")
        self.num_perm, self.seed, self.scheme = num_perm, seed, scheme
        gen = np.random.RandomState(seed)
        if scheme == "legacy":
            pairs = [
                (gen.randint(1, MERSENNE_PRIME, dtype=np.uint64), gen.randint(0, MERSENNE_PRIME, dtype=np.uint64))
                for _ in range(num_perm)
            ]
            self.a, self.b = np.array(pairs, dtype=np.uint64).T
            self.dtype, self.max_hash, self.hash_width = np.dtype(np.uint64), LEGACY_MAX_HASH, 32
        elif scheme in ("affine32", "affine64"):
            width = 32 if scheme == "affine32" else 64
            dtype = np.uint32 if width == 32 else np.uint64
            self.a = gen.randint(0, 1 << (width - 1), num_perm, dtype=dtype) * dtype(2) + dtype(1)
            self.b = gen.randint(0, 1 << width, num_perm, dtype=dtype)
            self.dtype, self.max_hash, self.hash_width = np.dtype(dtype), dtype(np.iinfo(dtype).max), width
        else:
            raise ValueError(f"unknown MinHash scheme {scheme!r}")

    def hash_shingles(self, shingles: Iterable[bytes]) -> np.ndarray:
        """The datasketch default hash (SHA-1 prefix) of each shingle's bytes."""
        return sha1_hashes(shingles, 64 if self.scheme == "affine64" else 32)

    def _permuted(self, hashes: np.ndarray) -> np.ndarray:
        """(len(hashes) × num_perm) permuted values; `hashes` already premixed for affine schemes."""
        column = hashes.reshape(-1, 1)
        if self.scheme == "legacy":
            values = column * self.a
            values += self.b
            values %= MERSENNE_PRIME
            values &= LEGACY_MAX_HASH
            return values
        values = column * self.a
        values += self.b
        return values

    def signatures(self, hashes: np.ndarray, doc: np.ndarray, n_docs: int, block_rows: int | None = None) -> np.ndarray:
        """(n_docs × num_perm) signatures from shingle `hashes` and their document index `doc`.

        `doc` must be non-decreasing (each document's shingles contiguous). Documents with no
        shingle keep the max hash in every position.
        """
        signatures = np.full((n_docs, self.num_perm), self.max_hash, dtype=self.dtype)
        if hashes.size == 0:
            return signatures
        if hashes.size != doc.size:
            raise ValueError("hashes and doc must have the same length")
        if np.any(doc[1:] < doc[:-1]):
            raise ValueError("doc must be non-decreasing")
        if self.scheme == "legacy":
            mixed = hashes.astype(np.uint64)
        else:
            mixed = _fmix(hashes.astype(self.dtype), self.hash_width)
        block_rows = block_rows or max(1, (1 << 22) // self.num_perm)
        for start in range(0, mixed.size, block_rows):
            block_doc = doc[start : start + block_rows]
            segment_starts = np.flatnonzero(np.concatenate(([True], block_doc[1:] != block_doc[:-1])))
            minima = np.minimum.reduceat(self._permuted(mixed[start : start + block_rows]), segment_starts, axis=0)
            ids = block_doc[segment_starts]
            signatures[ids] = np.minimum(signatures[ids], minima)
        return signatures


@functools.cache
def numba_kernels() -> ModuleType | None:
    """`minhash_kernels`, or None where numba cannot be imported (imported on first use: numba
    adds about half a second to start-up)."""
    try:
        from datamill.curate.dedup import minhash_kernels
    except ImportError:
        return None
    return minhash_kernels


def shingle_hashes(shingles: pl.Series, hasher: MinHasher) -> np.ndarray:
    """`hasher.hash_shingles` of every shingle, computing SHA-1 once per distinct shingle.

    Distinct shingles are found by a 64-bit polars hash; the grouping is then checked against the
    strings themselves, and on a (practically impossible) collision every row is hashed directly,
    so the result is always exact.
    """
    keys = shingles.hash(seed=0).to_numpy()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    representatives = shingles.gather(first)
    if not (representatives.gather(inverse) == shingles).all():
        return hasher.hash_shingles(shingles.cast(pl.Binary).to_list())
    return hasher.hash_shingles(representatives.cast(pl.Binary).to_list())[inverse]


def _chunks(upper_counts: np.ndarray, chunk_shingles: int) -> Iterable[tuple[int, int]]:
    """[start, stop) document ranges whose summed `upper_counts` stay within `chunk_shingles`
    (a document over the limit is a chunk of its own)."""
    ends = np.cumsum(upper_counts)
    n, start = upper_counts.size, 0
    while start < n:
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + chunk_shingles, side="right")))
        yield start, stop
        start = stop


def _numba_signatures(texts: pl.Series, shingler: Shingler, hasher: MinHasher, kernels: ModuleType) -> tuple[np.ndarray, np.ndarray]:
    cased = pl.DataFrame({"_text": texts.cast(pl.String)}).select(shingler.cased(pl.col("_text")))["_text"]
    data, offsets = utf8_buffer(cased)
    if shingler.kind == "word" or shingler.whitespace:
        # words: split on any whitespace run and joined by one space; chars: `normalized`
        data, offsets = kernels.collapse_whitespace(data, offsets)
    signatures = np.full((texts.len(), hasher.num_perm), hasher.max_hash, dtype=hasher.dtype)
    scheme = {"affine32": kernels.AFFINE32, "affine64": kernels.AFFINE64, "legacy": kernels.LEGACY}[hasher.scheme]
    counts = kernels.signatures(
        data, kernels.big_endian_words(data), offsets, shingler.kind == "word", shingler.ngram,
        scheme, np.ascontiguousarray(hasher.a), np.ascontiguousarray(hasher.b), signatures,
    )
    return signatures, counts > 0


def _numpy_signatures(
    texts: pl.Series, shingler: Shingler, hasher: MinHasher, chunk_shingles: int
) -> tuple[np.ndarray, np.ndarray]:
    n = texts.len()
    signatures = np.full((n, hasher.num_perm), hasher.max_hash, dtype=hasher.dtype)
    has_shingles = np.zeros(n, dtype=bool)
    for start, stop in _chunks(shingler.max_counts(texts).to_numpy(), chunk_shingles):
        table = shingler.table(texts.slice(start, stop - start))
        doc = table[DOC].to_numpy()
        hashes = shingle_hashes(table[SHINGLE], hasher)
        signatures[start:stop] = hasher.signatures(hashes, doc, stop - start)
        has_shingles[start + np.unique(doc)] = True
    return signatures, has_shingles


def text_signatures(
    texts: pl.Series,
    shingler: Shingler,
    hasher: MinHasher,
    chunk_shingles: int = CHUNK_SHINGLES,
    engine: Engine = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """(signatures, has_shingles) for every text: its datasketch MinHash signature over the
    shingle set `shingler` cuts, and whether it has any shingle (one without keeps the max hash
    everywhere). The numpy engine works in chunks of at most `chunk_shingles` shingles; the
    numba engine's memory is a few times the text whatever the shingle count.
    `engine`: "auto" is "numba" where numba imports, else "numpy"; both give the same values."""
    if engine == "numpy":
        return _numpy_signatures(texts, shingler, hasher, chunk_shingles)
    kernels = numba_kernels()
    if kernels is None:
        if engine == "numba":
            raise ImportError("engine='numba' needs the numba package")
        return _numpy_signatures(texts, shingler, hasher, chunk_shingles)
    return _numba_signatures(texts, shingler, hasher, kernels)


@functools.cache
def warm_up() -> None:
    """Compile the numba kernels (or load them from numba's on-disk cache) for every argument
    type `text_signatures` uses, so that no batch pays for it; once per process. A no-op
    without numba."""
    if numba_kernels() is None:
        return
    texts = pl.Series(["Warm up the kernels.", "", "Hé", None])
    for kind in ("word", "char"):
        for scheme in ("affine32", "affine64", "legacy"):
            text_signatures(texts, Shingler(kind, 2), MinHasher(2, 1, scheme), engine="numba")


_P1, _P2, _P3, _P4, _P5 = (
    np.uint64(11400714785074694791),
    np.uint64(14029467366897019727),
    np.uint64(1609587929392839161),
    np.uint64(9650029242287828579),
    np.uint64(2870177450012600261),
)
_MASK64 = (1 << 64) - 1


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _xxh_round(acc: np.ndarray, lane: np.ndarray) -> np.ndarray:
    return _rotl(acc + lane * _P2, 31) * _P1


def xxh64_words(words: np.ndarray, seed: int = 0) -> np.ndarray:
    """XXH64 of each row of a (n × k) uint32 array, read as 4k little-endian bytes.

    Row i's value equals `xxhash.xxh64_intdigest(words[i].astype("<u4").tobytes(), seed)`.
    """
    words = np.asarray(words, dtype=np.uint32)
    n, k = words.shape
    length = 4 * k
    wide = words.astype(np.uint64)
    lanes = wide[:, 0 : 2 * (k // 2) : 2] | (wide[:, 1 : 2 * (k // 2) : 2] << np.uint64(32))
    n_lanes = lanes.shape[1]
    seed_u = int(seed) & _MASK64

    def full(value: int) -> np.ndarray:
        return np.full(n, value & _MASK64, dtype=np.uint64)

    lane = 0
    if length >= 32:
        v1, v2 = full(seed_u + int(_P1) + int(_P2)), full(seed_u + int(_P2))
        v3, v4 = full(seed_u), full(seed_u - int(_P1))
        stripes = length // 32
        for s in range(stripes):
            v1 = _xxh_round(v1, lanes[:, 4 * s])
            v2 = _xxh_round(v2, lanes[:, 4 * s + 1])
            v3 = _xxh_round(v3, lanes[:, 4 * s + 2])
            v4 = _xxh_round(v4, lanes[:, 4 * s + 3])
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        for v in (v1, v2, v3, v4):
            h = (h ^ _xxh_round(np.zeros(n, dtype=np.uint64), v)) * _P1 + _P4
        lane = 4 * stripes
    else:
        h = full(seed_u + int(_P5))
    h = h + np.uint64(length)
    for i in range(lane, n_lanes):
        h = h ^ _xxh_round(np.zeros(n, dtype=np.uint64), lanes[:, i])
        h = _rotl(h, 27) * _P1 + _P4
    if k % 2:
        h = h ^ (wide[:, k - 1] * _P1)
        h = _rotl(h, 23) * _P2 + _P3
    h = h ^ (h >> np.uint64(33))
    h = h * _P2
    h = h ^ (h >> np.uint64(29))
    h = h * _P3
    return h ^ (h >> np.uint64(32))


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n_docs × bands) uint64: XXH64 of each band's values as little-endian bytes.

    Values beyond `bands * rows` are unused, like datasketch's MinHashLSH.
    """
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"bands*rows = {bands * rows} exceeds num_perm = {signatures.shape[1]}")
    out = np.empty((signatures.shape[0], bands), dtype=np.uint64)
    for band in range(bands):
        values = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows])
        if values.dtype.itemsize == 8:
            words = values.astype("<u8").view("<u4")
        else:
            words = values.astype("<u4")
        out[:, band] = xxh64_words(words)
    return out


def band_layout(num_perm: int, bands: int | None, rows: int | None, threshold: float) -> tuple[int, int]:
    """(bands, rows) from whichever of them is given (the other fills num_perm), else tuned for
    `threshold` like datasketch's MinHashLSH."""
    if bands is not None and rows is not None:
        return bands, rows
    if bands is not None:
        return bands, max(1, num_perm // bands)
    if rows is not None:
        return max(1, num_perm // rows), rows
    return optimal_bands_rows(threshold, num_perm)


def optimal_bands_rows(
    threshold: float, num_perm: int, false_positive_weight: float = 0.5, false_negative_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) minimizing the weighted false positive + false negative probability of
    LSH at `threshold` — datasketch's `MinHashLSH` parameter choice.

    The integrands 1-(1-s^r)^b are polynomials of degree b·r ≤ num_perm, so Gauss–Legendre with
    num_perm//2 + 1 nodes integrates them exactly (up to rounding).
    """
    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=np.float64)
    b, r = pairs[:, :1], pairs[:, 1:]
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)

    def integral(lo: float, hi: float, collide: bool) -> np.ndarray:
        s = (hi - lo) / 2 * nodes + (hi + lo) / 2
        p_candidate = 1 - (1 - s**r) ** b
        return (hi - lo) / 2 * ((p_candidate if collide else 1 - p_candidate) @ weights)

    error = false_positive_weight * integral(0.0, threshold, True) + false_negative_weight * integral(
        threshold, 1.0, False
    )
    best = int(np.argmin(error))
    return int(pairs[best, 0]), int(pairs[best, 1])
