"""Benchmark: MinHash signature throughput of datamill vs datasketch on one core.

Documents are the docstrings of the installed Python standard library (read offline with `ast`).
Both sides get the same shingles; datamill's time includes shingling the raw texts, datasketch's
does not (it is given the shingle bytes, and only `MinHash(...).update_batch` is timed). The
signatures are checked to be identical before any number is printed.

    python bench/bench_minhash.py [--docs 20000] [--kind word|char] [--ngram 5] [--num-perm 112]
"""

from __future__ import annotations

import os

os.environ["POLARS_MAX_THREADS"] = "1"  # one core, before polars starts its thread pool

import argparse
import ast
import pathlib
import sysconfig
import time

import numpy as np
import polars as pl
from datasketch import MinHash

from datamill.curate.dedup.minhash import MinHasher
from datamill.curate.dedup.minhash_stage import text_signatures
from datamill.curate.dedup.shingles import Shingler


def stdlib_docstrings(limit: int, min_words: int = 8) -> list[str]:
    """Module, class and function docstrings of the standard library, in a stable order."""
    docs: list[str] = []
    for path in sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= min_words:
                    docs.append(doc)
                    if len(docs) == limit:
                        return docs
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--kind", choices=["word", "char"], default="word")
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--num-perm", type=int, default=112)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    texts = pl.Series(stdlib_docstrings(args.docs))
    shingler = Shingler(args.kind, args.ngram)
    hasher = MinHasher(args.num_perm, args.seed)
    table = shingler.table(texts)
    per_doc = table.group_by("doc", maintain_order=True).agg(pl.col("shingle").cast(pl.Binary))
    shingle_lists: list[list[bytes]] = [[] for _ in range(texts.len())]
    for doc, shingles in per_doc.iter_rows():
        shingle_lists[doc] = shingles
    print(
        f"{texts.len()} stdlib docstrings, {texts.str.len_bytes().sum() / 1e6:.1f} MB, "
        f"{table.height} {args.kind} {args.ngram}-gram shingles "
        f"({table['shingle'].n_unique()} distinct), num_perm={args.num_perm}"
    )

    start = time.perf_counter()
    ours, _ = text_signatures(texts, shingler, hasher)
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    theirs = []
    for shingles in shingle_lists:
        sketch = MinHash(num_perm=args.num_perm, seed=args.seed)
        sketch.update_batch(shingles)
        theirs.append(sketch.hashvalues)
    theirs_s = time.perf_counter() - start

    if not np.array_equal(ours, np.stack(theirs)):
        raise SystemExit("signatures differ from datasketch")
    n = texts.len()
    print("signatures identical to datasketch: yes")
    print(f"datamill  text_signatures (incl. shingling): {ours_s:7.2f} s  {n / ours_s:9.0f} docs/s")
    print(f"datasketch MinHash.update_batch:             {theirs_s:7.2f} s  {n / theirs_s:9.0f} docs/s")
    print(f"speedup: {theirs_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
