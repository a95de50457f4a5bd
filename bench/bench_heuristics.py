"""Compare datamill's heuristic filters with datatrove's on the same real documents: agreement and speed.

Corpus (offline, real text; `--corpus real`, the default): rendered man pages (English and
translated), Debian changelogs and copyright files, licences, READMEs and other docs under
/usr/share/doc, plus 17 kinds of synthetic junk made from them (see `real_text.py`; needs
`apt-get install -y man-db groff` where man is missing). `--corpus docstrings`: installed
distributions' long descriptions and the docstrings of the standard library and site-packages.
A seeded sample of `--docs` of them is scored by both implementations.

    pip install datatrove spacy   # datatrove's English word tokenizer is spacy.blank("en"), no download
    python bench/bench_heuristics.py --docs 12000

Prints, per family, how often both keep / both drop / only one drops, how often the first drop
reason agrees when both drop, the docs/s of each and their ratio, and for every class of
disagreement (datatrove reason vs ours) its count and one short example.
"""

from __future__ import annotations

import argparse
import ast
import random
import re
import sys
import sysconfig
import time
import warnings
from collections import Counter
from importlib import metadata
from pathlib import Path

import polars as pl

from datamill.filters.c4 import C4Quality
from datamill.filters.fineweb import FineWebQuality
from datamill.filters.gopher import GopherQuality, GopherRepetition

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_text  # noqa: E402

REASON_PREFIX = {"gopher_quality": "", "gopher_repetition": "gopher_", "c4": "c4_", "fineweb": "fineweb_"}
"""What we prepend to datatrove's reason names (ours are named per family)."""

REASON_ALIASES = {
    "gopher_below_avg_threshold": "gopher_below_avg_word_length",
    "gopher_above_avg_threshold": "gopher_above_avg_word_length",
    "gopher_enough_stop_words": "gopher_few_stop_words",
    "curly_bracket": "curly_brace",
}


def python_files() -> list[Path]:
    """The standard library's .py files, then the installed packages' (tests and IDLE left out)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    purelib = Path(sysconfig.get_paths()["purelib"])
    files = []
    for root in (stdlib, purelib):
        for path in sorted(root.rglob("*.py")):
            parts = set(path.relative_to(root).parts)
            if root == stdlib and "site-packages" in parts:
                continue
            if not parts & {"test", "tests", "testing", "idlelib"}:
                files.append(path)
    return files


def docstrings(path: Path) -> list[str]:
    """The module, class and function docstrings of one file, and all of them joined as one text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    texts = [
        doc
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and (doc := ast.get_docstring(node, clean=True))
        and doc.strip()
    ]
    return texts + (["\n\n".join(texts)] if len(texts) > 1 else [])


def package_descriptions() -> list[str]:
    """Installed distributions' long descriptions (READMEs) and their paragraphs."""
    texts = []
    for dist in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if body.strip():
            texts.append(body)
            texts.extend(p.strip() for p in body.split("\n\n") if len(p.strip()) > 40)
    return texts


def docstring_corpus(n_docs: int, seed: int) -> list[str]:
    """A seeded sample of n_docs distinct real texts (files are read until there are 2 x n_docs)."""
    texts = dict.fromkeys(package_descriptions())
    for path in python_files():
        if len(texts) >= 2 * n_docs:
            break
        texts.update(dict.fromkeys(docstrings(path)))
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    if len(texts) < n_docs:
        sys.exit(f"only {len(texts)} documents available, asked for {n_docs}")
    return texts[:n_docs]


def datatrove_filters():
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    return {
        "gopher_quality": GopherQualityFilter(),
        "gopher_repetition": GopherRepetitionFilter(),
        "c4": C4QualityFilter(),
        "fineweb": FineWebQualityFilter(),
    }


def our_filters():
    return {
        "gopher_quality": GopherQuality(),
        "gopher_repetition": GopherRepetition(),
        "c4": C4Quality(),
        "fineweb": FineWebQuality(),
    }


def run_datatrove(flt, texts: list[str]) -> tuple[list[str | None], list[str], float]:
    from datatrove.data import Document

    reasons, out_texts = [], []
    start = time.perf_counter()
    for i, text in enumerate(texts):
        doc = Document(text=text, id=str(i))
        result = flt.filter(doc)
        keep, reason = (result, None) if isinstance(result, bool) else result
        reasons.append(None if keep else (reason or "dropped"))
        out_texts.append(doc.text)
    return reasons, out_texts, time.perf_counter() - start


def run_ours(flt, texts: list[str], batch_rows: int) -> tuple[list[str | None], list[str], float]:
    frame = pl.DataFrame({"text": texts})
    flt.setup()
    start = time.perf_counter()
    parts = [flt.process(frame.slice(offset, batch_rows)) for offset in range(0, frame.height, batch_rows)]
    elapsed = time.perf_counter() - start
    result = pl.concat(parts)
    return result["_drop_reason"].to_list(), result["text"].to_list(), elapsed


def ours_name(family: str, reason: str | None) -> str | None:
    if reason is None:
        return None
    reason = REASON_ALIASES.get(reason, reason)
    reason = re.sub(r"^duplicated_(\d+)_n_grams$", r"dup_\1_gram", reason)
    prefix = REASON_PREFIX[family]
    return reason if reason.startswith(prefix) else prefix + reason


def compare(family: str, texts, kinds, theirs, ours, their_texts, our_texts, timing) -> None:
    n = len(texts)
    theirs = [ours_name(family, r) for r in theirs]
    both_keep = sum(a is None and b is None for a, b in zip(theirs, ours))
    both_drop = sum(a is not None and b is not None for a, b in zip(theirs, ours))
    same_reason = sum(a is not None and a == b for a, b in zip(theirs, ours))
    agree = both_keep + both_drop
    t_dt, t_ours = timing
    print(f"\n== {family}: {n} docs")
    print(
        f"keep/drop agreement {agree / n:.2%}  (both keep {both_keep}, both drop {both_drop}, "
        f"only datatrove drops {sum(a is not None and b is None for a, b in zip(theirs, ours))}, "
        f"only datamill drops {sum(a is None and b is not None for a, b in zip(theirs, ours))})"
    )
    print(f"same first reason when both drop: {same_reason}/{both_drop}")
    dt_rate, our_rate = sum(a is not None for a in theirs) / n, sum(b is not None for b in ours) / n
    print(f"datatrove drop rate {dt_rate:.2%}, datamill {our_rate:.2%}")
    print(f"speed: datatrove {n / t_dt:,.0f} docs/s, datamill {n / t_ours:,.0f} docs/s, x{t_dt / t_ours:.1f}")
    if family == "c4":
        kept_both = [i for i in range(n) if theirs[i] is None and ours[i] is None]
        same_text = sum(their_texts[i] == our_texts[i] for i in kept_both)
        print(f"rewritten text identical for {same_text}/{len(kept_both)} docs both keep")
    classes = Counter((a, b) for a, b in zip(theirs, ours) if a != b)
    examples = {}
    for i, (a, b) in enumerate(zip(theirs, ours)):
        examples.setdefault((a, b), i)
    for (a, b), count in classes.most_common():
        sample = texts[examples[(a, b)]][:100].replace("\n", "\\n")
        print(f"  {count:6d}  datatrove={a}  datamill={b}  e.g. {sample!r}")
    by_kind = Counter(kinds[i] for i in range(n) if theirs[i] != ours[i])
    if by_kind:
        total = Counter(kinds)
        print("  disagreements by kind: " + ", ".join(f"{k} {c}/{total[k]}" for k, c in by_kind.most_common()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=12_000)
    parser.add_argument("--corpus", choices=["real", "docstrings"], default="real")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-rows", type=int, default=5_000)
    parser.add_argument("--families", nargs="*", default=list(REASON_PREFIX))
    args = parser.parse_args()

    if args.corpus == "real":
        kinds, texts = map(list, zip(*real_text.corpus(args.docs, args.seed)))
    else:
        texts = docstring_corpus(args.docs, args.seed)
        kinds = ["docstring"] * len(texts)
    print(f"{len(texts)} documents, {sum(map(len, texts)):,} characters")
    theirs_all, ours_all = datatrove_filters(), our_filters()
    for family in args.families:
        dt_reasons, dt_texts, dt_time = run_datatrove(theirs_all[family], texts)
        our_reasons, our_texts, our_time = run_ours(ours_all[family], texts, args.batch_rows)
        compare(family, texts, kinds, dt_reasons, our_reasons, dt_texts, our_texts, (dt_time, our_time))


if __name__ == "__main__":
    main()
