"""Benchmark: precision and recall of near-duplicate removal at Jaccard 0.8, datamill vs datasketch.

Corpus (`build_corpus`, shared with the other dedup benchmarks): --docs real docstrings of at
least 8 words from the standard library, then site-packages (`bench_minhash.installed_docstrings`,
parsed with `ast` via `datamill.curate.sources.installed_docs`), plus --planted near-duplicates:
copies of random documents of at least 30 words with 0.5–4 % of their words substituted, inserted
or deleted (numpy RNG, --seed); everything is shuffled with the same RNG, so a copy may come
before its original. The corpus already holds natural duplicates (repeated docstrings).

Ground truth: a document is a *true duplicate* if some earlier document (smaller position) has
exact Jaccard similarity >= 0.8 with it over the same shingle sets the methods use (5-word
shingles, lowercased). Computing Jaccard for all ~n²/2 pairs is out of reach, so it is computed
for every *candidate* pair of a deliberately loose LSH: 256 permutations cut into 64 bands of 4
rows. A pair with Jaccard 0.8 shares no band with probability (1 - 0.8^4)^64 ≈ 2e-15 (0.7: 1e-7),
so every pair at or above the threshold is (practically) a candidate, while most pairs are
never compared. Shingles are compared by their 64-bit polars hash (a collision among a pair's
few hundred shingles has probability ~1e-15).

Methods, all with threshold 0.8 and 112 permutations (datasketch's optimal layout, 9 bands × 12):
- datamill `minhash_dedup` (clusters = connected components of band collisions; keeps the first
  of each cluster), with and without `verify_jaccard: 0.8`;
- datasketch `MinHashLSH`, the usual streaming loop: query each document, drop it if there is a
  candidate, insert it either way (datasketch computes its own MinHashes with `update_batch`;
  they are checked to equal datamill's before anything is printed);
- datamill `minhash_lsh_index` starting from an empty index (query, insert the kept ones only).
A removed document is a true positive if it is a true duplicate. Timings are for one process on
a shared machine (noisy); they are not the point of this benchmark.

    python bench/bench_dedup_quality.py [--docs 20000] [--planted 2000] [--seed 0] [--text debian]

`--text debian` uses Debian changelog entries and copyright paragraphs instead of docstrings:
real text whose near-duplicates (licence texts edited per package) are natural, not planted.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_minhash import installed_docstrings  # noqa: E402

from datamill.curate.dedup.lsh_index import MinHashLSHIndex, MinHashLSHIndexParams  # noqa: E402
from datamill.curate.dedup.minhash import MinHasher, band_hashes, text_signatures, warm_up  # noqa: E402
from datamill.curate.dedup.minhash_stage import MinHashDedup, MinHashDedupParams  # noqa: E402
from datamill.curate.dedup.shingles import DOC, SHINGLE, Shingler  # noqa: E402
from datamill.curate.engine.stage import DROP_REASON, POSITION  # noqa: E402

THRESHOLD = 0.8
NUM_PERM = 112
TRUTH_BANDS, TRUTH_ROWS = 64, 4
SHINGLER = Shingler("word", 5)


def perturb(text: str, rng: np.random.Generator, vocabulary: np.ndarray) -> str:
    """`text` with 0.5–4 % of its words (at least one) substituted, inserted or deleted."""
    words = text.split()
    edits = max(1, round(rng.uniform(0.005, 0.04) * len(words)))
    for op, at in zip(rng.integers(0, 3, edits), rng.random(edits)):
        i = int(at * len(words))
        if op == 0:
            words[i] = str(rng.choice(vocabulary))
        elif op == 1:
            words.insert(i, str(rng.choice(vocabulary)))
        elif len(words) > 1:
            del words[i]
    return " ".join(words)


def debian_texts(docs: int) -> list[str]:
    """Real near-duplicate-rich text: Debian changelog entries and copyright paragraphs (licence
    texts repeat across packages with small edits), at least 8 words each, in file order."""
    found = []
    for path in sorted(Path("/usr/share/doc").glob("*/changelog.Debian.gz")):
        text = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        found.extend(re.split(r"\n(?=\S[^\n]*\(\S+\)[^\n]*; urgency=)", text))
    for path in sorted(Path("/usr/share/doc").glob("*/copyright")):
        found.extend(re.split(r"\n\s*\n", path.read_text("utf-8", "replace")))
    texts = [t.strip() for t in found if len(t.split()) >= 8]
    return texts[:docs]


def build_corpus(docs: int = 20000, planted: int = 2000, seed: int = 0, text: str = "docstrings") -> pl.DataFrame:
    """`id`, `text`, `origin` ("real" or "planted"), shuffled; row order is dataset order."""
    real = installed_docstrings(docs) if text == "docstrings" else debian_texts(docs)
    rng = np.random.default_rng(seed)
    lengths = np.array([len(t.split()) for t in real])
    vocabulary = np.unique(np.concatenate([np.array(t.split()) for t in real[:2000]]))
    sources = rng.choice(np.flatnonzero(lengths >= 30), planted, replace=False)
    copies = [perturb(real[i], rng, vocabulary) for i in sources]
    texts = real + copies
    order = rng.permutation(len(texts))
    return pl.DataFrame(
        {
            "id": [f"doc-{i}" for i in range(len(texts))],
            "text": [texts[i] for i in order],
            "origin": ["real" if i < len(real) else "planted" for i in order],
        }
    )


def true_duplicates(texts: pl.Series) -> tuple[np.ndarray, int]:
    """(positions that have an earlier document with Jaccard >= THRESHOLD, candidate pairs checked)."""
    signatures, has = text_signatures(texts, SHINGLER, MinHasher(TRUTH_BANDS * TRUTH_ROWS, seed=7))
    hashes = band_hashes(signatures, TRUTH_BANDS, TRUTH_ROWS)
    position = np.arange(texts.len())
    pairs = []
    for band in range(TRUTH_BANDS):
        members = pl.DataFrame({"a": position[has], "_h": hashes[has, band]})
        crowded = members.filter(pl.len().over("_h") > 1)
        pairs.append(crowded.join(crowded.rename({"a": "b"}), on="_h").filter(pl.col("a") < pl.col("b")).select("a", "b"))
    pairs = pl.concat(pairs).unique()
    table = SHINGLER.table(texts)
    sets = table.select(pl.col(DOC).cast(pl.Int64).alias("a"), pl.col(SHINGLE).hash(seed=0).alias("_s")).unique()
    sizes = sets.group_by("a").len("_na")
    sized = pairs.join(sizes, on="a").join(sizes.rename({"a": "b", "_na": "_nb"}), on="b")
    chunk = (pl.col("_na").cum_sum() // (1 << 22)).alias("_chunk")
    similar = []
    for part in sized.with_columns(chunk).partition_by("_chunk"):
        shared = part.join(sets, on="a").join(sets.rename({"a": "b"}), on=["b", "_s"]).group_by("a", "b").len("_shared")
        scored = part.join(shared, on=["a", "b"], how="left").with_columns(pl.col("_shared").fill_null(0))
        jaccard = pl.col("_shared") / (pl.col("_na") + pl.col("_nb") - pl.col("_shared"))
        similar.append(scored.filter(jaccard >= THRESHOLD).select("b"))
    return np.unique(pl.concat(similar)["b"].to_numpy()), pairs.height


def run_barrier(stage, frame: pl.DataFrame) -> np.ndarray:
    """Positions a barrier stage drops (summarize → reduce → apply, as the executor does)."""
    decision = stage.reduce(stage.summarize(frame).lazy())
    applied = stage.apply(frame, decision)
    return applied.filter(pl.col(DROP_REASON).is_not_null())[POSITION].to_numpy().astype(np.int64)


def datasketch_removed(texts: pl.Series, expected: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(removed positions, MinHash seconds, LSH seconds) of the datasketch streaming loop."""
    from datasketch import MinHash, MinHashLSH

    table = SHINGLER.table(texts).unique(maintain_order=True)
    groups = table.group_by(DOC, maintain_order=True).agg(pl.col(SHINGLE).cast(pl.Binary))
    start = time.perf_counter()
    sketches = {}
    for doc, shingles in groups.iter_rows():
        sketch = MinHash(num_perm=NUM_PERM, seed=1)
        sketch.update_batch(shingles)
        sketches[doc] = sketch
    minhash_seconds = time.perf_counter() - start
    for doc, sketch in sketches.items():
        if not np.array_equal(sketch.hashvalues, expected[doc]):
            raise AssertionError(f"datasketch and datamill signatures differ for document {doc}")
    start = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    removed = []
    for doc in sorted(sketches):
        if lsh.query(sketches[doc]):
            removed.append(doc)
        lsh.insert(doc, sketches[doc], check_duplication=False)
    return np.array(removed, dtype=np.int64), minhash_seconds, time.perf_counter() - start


def score(name: str, removed: np.ndarray, truth: np.ndarray, seconds: float) -> dict:
    hits = np.intersect1d(removed, truth).size
    return {
        "method": name,
        "removed": removed.size,
        "true_pos": hits,
        "false_pos": removed.size - hits,
        "missed": truth.size - hits,
        "precision": round(hits / removed.size, 4) if removed.size else None,
        "recall": round(hits / truth.size, 4) if truth.size else None,
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--planted", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text", choices=("docstrings", "debian"), default="docstrings",
                        help="docstrings: stdlib/site-packages docstrings; debian: /usr/share/doc changelog "
                        "entries and copyright paragraphs")
    args = parser.parse_args()
    warm_up()
    corpus = build_corpus(args.docs, args.planted, args.seed, args.text)
    frame = corpus.with_columns(pl.int_range(0, pl.len(), dtype=pl.UInt64).alias(POSITION))
    print(f"corpus: {corpus.height} {args.text} documents ({args.planted} planted), threshold {THRESHOLD}, num_perm {NUM_PERM}")

    start = time.perf_counter()
    truth, candidates = true_duplicates(corpus["text"])
    print(f"ground truth: {truth.size} true duplicates from {candidates} candidate pairs "
          f"({TRUTH_BANDS}x{TRUTH_ROWS} LSH, exact Jaccard) in {time.perf_counter() - start:.1f} s")
    planted = np.flatnonzero(corpus["origin"].to_numpy() == "planted")
    print(f"  planted copies that are true duplicates of an earlier document: {np.intersect1d(planted, truth).size}")

    rows = []
    for name, update in (("datamill minhash_dedup", {}), ("datamill minhash_dedup verify_jaccard=0.8", {"verify_jaccard": THRESHOLD})):
        stage = MinHashDedup(MinHashDedupParams(threshold=THRESHOLD, num_perm=NUM_PERM, **update))
        start = time.perf_counter()
        removed = run_barrier(stage, frame)
        rows.append(score(name, removed, truth, time.perf_counter() - start))
    hasher = MinHasher(NUM_PERM, seed=1)
    signatures, _ = text_signatures(corpus["text"], SHINGLER, hasher)
    removed, minhash_seconds, lsh_seconds = datasketch_removed(corpus["text"], signatures)
    rows.append(score("datasketch MinHashLSH (query, insert all)", removed, truth, minhash_seconds + lsh_seconds))
    stage = MinHashLSHIndex(MinHashLSHIndexParams(threshold=THRESHOLD, num_perm=NUM_PERM))
    start = time.perf_counter()
    removed = run_barrier(stage, frame)
    rows.append(score("datamill minhash_lsh_index (empty index)", removed, truth, time.perf_counter() - start))

    with pl.Config(tbl_rows=20, tbl_cols=10, tbl_width_chars=160, fmt_str_lengths=60, tbl_hide_dataframe_shape=True):
        print(pl.DataFrame(rows))
    print(f"datasketch time: MinHash {minhash_seconds:.1f} s + LSH {lsh_seconds:.1f} s (shared machine: noisy)")


if __name__ == "__main__":
    main()
