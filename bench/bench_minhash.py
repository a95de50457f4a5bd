"""Benchmark: MinHash signature throughput of datamill vs datasketch on one core.

Documents are docstrings of at least 8 words from the installed Python standard library, then
from the running environment's site-packages when the standard library has fewer than --docs
(parsed offline with `ast`, never imported; read once and shared by every kind). Both sides get
the same shingles; datamill's time includes normalizing and shingling the raw texts, datasketch's
does not (it is given the shingle bytes, and only `MinHash(...).update_batch` is timed). Each
side runs --repeat times and the fastest run counts. The numba kernels are compiled (or loaded
from numba's cache) before any timing. The signatures are checked to be identical before any
number is printed.

    python bench/bench_minhash.py [--docs 20000] [--kind word char] [--ngram 5] [--num-perm 112]
"""

from __future__ import annotations

import os

# one core, before polars and numba start their thread pools
os.environ["POLARS_MAX_THREADS"] = "1"
os.environ["NUMBA_NUM_THREADS"] = "1"

import argparse
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
from datasketch import MinHash

from datamill.curate.dedup.minhash import MinHasher, numba_kernels, text_signatures, warm_up
from datamill.curate.dedup.shingles import Shingler
from datamill.curate.sources.installed_docs import docstrings, parse_python, stdlib_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import fastest  # noqa: E402


def python_files() -> Iterator[Path]:
    """Standard library files (sorted), then site-packages files (sorted)."""
    for key in ("stdlib", "purelib"):
        root = Path(sysconfig.get_paths()[key])
        if key == "purelib":
            yield from sorted(root.rglob("*.py"))
        else:
            yield from (root / path for path in stdlib_files(root, exclude=[]))


def installed_docstrings(limit: int, min_words: int = 8) -> list[str]:
    """The first `limit` docstrings of at least `min_words` words, in a stable order."""
    docs: list[str] = []
    for path in python_files():
        try:
            found = docstrings(parse_python(path.read_bytes(), str(path)), 1)
        except (OSError, SyntaxError, ValueError, RecursionError):
            continue
        docs.extend(doc.text for doc in found if len(doc.text.split()) >= min_words)
        if len(docs) >= limit:
            return docs[:limit]
    return docs


def datasketch_signatures(shingle_lists: list[list[bytes]], num_perm: int, seed: int) -> np.ndarray:
    signatures = []
    for shingles in shingle_lists:
        sketch = MinHash(num_perm=num_perm, seed=seed)
        sketch.update_batch(shingles)
        signatures.append(sketch.hashvalues)
    return np.stack(signatures)


def compare(texts: pl.Series, kind: str, args: argparse.Namespace) -> None:
    shingler = Shingler(kind, args.ngram)
    hasher = MinHasher(args.num_perm, args.seed)
    table = shingler.table(texts)
    per_doc = table.group_by("doc", maintain_order=True).agg(pl.col("shingle").cast(pl.Binary))
    shingle_lists: list[list[bytes]] = [[] for _ in range(texts.len())]
    for doc, shingles in per_doc.iter_rows():
        shingle_lists[doc] = shingles
    print(
        f"\n{kind} {args.ngram}-grams: {table.height} shingles ({table['shingle'].n_unique()} distinct), "
        f"num_perm={args.num_perm}"
    )

    theirs_s, theirs = fastest(lambda: datasketch_signatures(shingle_lists, args.num_perm, args.seed), args.repeat)
    engines = ["numba", "numpy"] if numba_kernels() is not None else ["numpy"]
    n = texts.len()
    print(f"  datasketch MinHash.update_batch (given shingles): {theirs_s:7.2f} s  {n / theirs_s:9.0f} docs/s")
    for engine in engines:
        ours_s, (ours, _) = fastest(lambda: text_signatures(texts, shingler, hasher, engine=engine), args.repeat)
        if not np.array_equal(ours, theirs):
            raise SystemExit(f"{engine}: signatures differ from datasketch")
        print(
            f"  datamill text_signatures engine={engine:5} (from raw text): {ours_s:7.2f} s  "
            f"{n / ours_s:9.0f} docs/s  {theirs_s / ours_s:6.1f}x datasketch  (signatures identical)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--kind", nargs="+", choices=["word", "char"], default=["word", "char"])
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--num-perm", type=int, default=112)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; the fastest counts")
    args = parser.parse_args()

    start = time.perf_counter()
    texts = pl.Series(installed_docstrings(args.docs))
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    warm_up()
    warm_s = time.perf_counter() - start
    print(
        f"{texts.len()} docstrings, {texts.str.len_bytes().sum() / 1e6:.1f} MB (read in {read_s:.0f} s); "
        f"POLARS_MAX_THREADS=1 NUMBA_NUM_THREADS=1; numba JIT warm-up {warm_s:.1f} s, not timed"
    )
    for kind in args.kind:
        compare(texts, kind, args)


if __name__ == "__main__":
    main()
