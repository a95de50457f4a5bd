"""Benchmark: DSIR importance weights, datamill vs the `data-selection` package, on one core.

Raw documents: docstrings (at least --min-words words) of the standard library, then of
site-packages, parsed offline with `ast`; the target is a distinct slice: the docstrings of the
files under `numpy/` (left out of the raw set). Both sides fit on the same raw and target texts
(the package on all raw tokens: `num_tokens_to_fit="all"`) and weigh every raw document; the
timed part is fit + weights (the package's `fit_importance_estimator` + `compute_importance_weights`,
datamill's `fit_texts` + `compute_weights`), best of --repeat. Then both rank by plain top-k
(`resample(top_k=True)` in the package; Gumbel noise would make the sets random on both sides) over
documents with at least --min-words WordPunct tokens, and the overlap |A ∩ B| / k is printed.

Both hash n-grams with SHA-256 mod buckets after the same WordPunct tokenization (datamill in a
numba kernel), so the weights should agree to rounding; the largest difference is printed.

    python bench/bench_dsir.py [--docs 20000] [--top 0.1] [--repeat 1]
"""

from __future__ import annotations

import os

os.environ["POLARS_MAX_THREADS"] = "1"

import argparse
import json
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from data_selection import HashedNgramDSIR as PackageDSIR

from datamill.curate.selection.dsir import HashedNgramDSIR
from datamill.curate.selection.hashed_ngrams import bucket_counts, word_tokens
from datamill.curate.sources.installed_docs import docstrings, parse_python, stdlib_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import fastest  # noqa: E402


def installed_docstrings(min_words: int) -> tuple[list[str], list[str]]:
    """(raw, target): docstrings of stdlib then site-packages files; target = files under numpy/."""
    raw, target = [], []
    roots = [(Path(sysconfig.get_paths()["stdlib"]), False), (Path(sysconfig.get_paths()["purelib"]), True)]
    for root, site in roots:
        files = sorted(root.rglob("*.py")) if site else [root / p for p in stdlib_files(root, exclude=[])]
        for path in files:
            try:
                found = docstrings(parse_python(path.read_bytes(), str(path)), 1)
            except (OSError, SyntaxError, ValueError, RecursionError):
                continue
            texts = [d.text for d in found if len(d.text.split()) >= min_words]
            in_target = site and path.relative_to(root).parts[0] == "numpy"
            (target if in_target else raw).extend(texts)
    return raw, target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--top", type=float, default=0.1, help="fraction of eligible raw docs to select")
    ap.add_argument("--min-words", type=int, default=20, help="min WordPunct tokens (package: min_example_length)")
    ap.add_argument("--buckets", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    raw, target = installed_docstrings(min_words=8)
    raw = raw[: args.docs]
    print(f"raw docs: {len(raw)}, target docs (numpy docstrings): {len(target)}")
    if len(raw) < args.docs:
        print(f"warning: only {len(raw)} raw docstrings found")

    with tempfile.TemporaryDirectory() as tmp:
        raw_path, target_path = Path(tmp, "raw.jsonl"), Path(tmp, "target.jsonl")
        for path, texts in ((raw_path, raw), (target_path, target)):
            path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

        def package_run():
            dsir = PackageDSIR([str(raw_path)], [str(target_path)], cache_dir=str(Path(tmp, "cache")), num_proc=1,
                               num_buckets=args.buckets, min_example_length=args.min_words)
            dsir.fit_importance_estimator(num_tokens_to_fit="all")
            dsir.compute_importance_weights()
            return dsir

        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()):  # tqdm bars
            t_pkg, dsir = fastest(package_run, args.repeat)
        pkg_logw = np.load(Path(tmp, "cache", "log_importance_weights", "0.npy"))
        pkg_len = np.load(Path(tmp, "cache", "perexample_metadata", "0.npy"))

    raw_series, target_series = pl.Series(raw), pl.Series(target)

    def ours_run():
        # as the `dsir` stage does: hash every raw text once, fit from those buckets, weight them
        model = HashedNgramDSIR(num_buckets=args.buckets)
        raw_features = model.features(raw_series)
        model.fit(bucket_counts(raw_features, args.buckets), model.counts(target_series))
        return model.compute_weights(raw_features)

    HashedNgramDSIR().counts(["warm up the numba kernel"])  # compile (or load from cache) before timing
    t_ours, ours_logw = fastest(ours_run, args.repeat)
    words = word_tokens(raw_series).list.len().to_numpy()
    eligible = words >= args.min_words
    assert np.array_equal(eligible, pkg_len >= args.min_words), "eligibility differs (tokenizer mismatch)"
    k = int(args.top * eligible.sum())

    def top(logw: np.ndarray) -> set[int]:
        return set(HashedNgramDSIR.resample(logw, k, top_k=True, eligible=eligible).tolist())

    pkg_top, ours_top = top(pkg_logw), top(ours_logw)
    overlap = len(pkg_top & ours_top) / k
    corr = np.corrcoef(pkg_logw[eligible], ours_logw[eligible])[0, 1]

    print(f"data-selection fit+weights: {t_pkg:.2f} s  ({len(raw) / t_pkg:,.0f} docs/s)")
    print(f"datamill       fit+weights: {t_ours:.2f} s  ({len(raw) / t_ours:,.0f} docs/s)")
    print(f"speed-up: {t_pkg / t_ours:.1f}x")
    print(f"top-{k} overlap (of {eligible.sum()} eligible): {overlap:.1%}; Pearson r of log-weights: {corr:.4f}")
    print(f"max |logw(datamill) - logw(data-selection)|: {np.abs(ours_logw - pkg_logw).max():.2e}")

if __name__ == "__main__":
    main()
