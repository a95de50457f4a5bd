"""Benchmark the `classifier` stage against datatrove's FastTextClassifierFilter, and the trainers' held-out metrics.

Real text of several kinds from this machine (bench/real_text.py: rendered man pages, Debian
changelogs and copyright files, licences, READMEs) plus the low-quality text built from it
(`junk_*`: repeated lines, word lists, shuffled words, boilerplate…). The split:

- positive `hq`: real documents; negative `cc`: junk documents (the same kinds the heuristics catch);
- `--train` documents (the embedding head: the first `--embed-train` of them), 20 % held out
  (stratified) for the metrics in the trainers' cards;
- the speed corpus is `--docs` other documents of the same mix.

1. `datamill classifier train` (kind fasttext, DCLM's settings, `bucket` lowered to keep the file
   small) and (kind embedding, bundled all-MiniLM-L6-v2 + logistic head): held-out metrics.
2. Speed, one process, same model file, same documents: datamill's `classifier` stage
   (`process` on batches of `--batch-rows`, `preprocess: lines`) vs datatrove's
   `FastTextClassifierFilter(newline_replacement=" ")` run on pre-built Documents (building
   the Documents is not timed). Both keep P(hq) >= 0.5; scores are compared exactly.
3. The embedding classifier's docs/s on CPU (`--embed-docs` documents).

    python bench/bench_classifier.py --docs 10000 --train 3000 --embed-train 400 --embed-docs 200
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from datamill.filters.classifier import ClassifierFilter, ClassifierParams
from datamill.filters.classifier_train import FastTextSettings, TrainSettings, metrics_rows, train_classifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_text import corpus  # noqa: E402
from timing import fastest  # noqa: E402


def labelled(n: int, seed: int) -> pl.DataFrame:
    docs = corpus(n, seed, junk_share=0.35)
    return pl.DataFrame({"kind": [k for k, _ in docs], "text": [t for _, t in docs]}).with_columns(
        pl.when(pl.col("kind").str.starts_with("junk")).then(pl.lit("cc")).otherwise(pl.lit("hq")).alias("label"))


def run_datamill(stage: ClassifierFilter, frame: pl.DataFrame, batch_rows: int) -> pl.DataFrame:
    parts = [stage.process(frame.slice(start, batch_rows)) for start in range(0, frame.height, batch_rows)]
    return pl.concat(parts)


def run_datatrove(model_path: Path, texts: list[str]) -> tuple[float, list[float], int]:
    from datatrove.data import Document
    from datatrove.pipeline.filters import FastTextClassifierFilter
    from datatrove.utils import _import_utils

    # datatrove insists on the pip distribution `fasttext-numpy2-wheel`; the `fasttext` module here is
    # fasttext-community (same C++ library and Python API), so both sides call the very same binding.
    wanted = _import_utils._is_distribution_available
    _import_utils._is_distribution_available = lambda name: name == "fasttext-numpy2-wheel" or wanted(name)

    block = FastTextClassifierFilter(str(model_path), keep_labels=("hq", 0.5), newline_replacement=" ")
    block.model  # load outside the timing, as datamill's setup() does
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    start = time.perf_counter()
    kept = list(block.run(iter(docs)))
    seconds = time.perf_counter() - start
    return seconds, [d.metadata.get("__label__hq", float("nan")) for d in docs], len(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--train", type=int, default=4_000)
    parser.add_argument("--embed-train", type=int, default=400, help="Documents the embedding head trains on "
                        "(the first of the training split; MiniLM on a CPU is slow).")
    parser.add_argument("--embed-docs", type=int, default=200)
    parser.add_argument("--batch-rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket", type=int, default=200_000, help="fastText hash buckets (DCLM: 2,000,000).")
    args = parser.parse_args()

    everything = labelled(args.train + args.docs, seed=0)
    train, speed = everything.head(args.train), everything.slice(args.train)
    print(f"corpus: {everything.height} documents, {everything['text'].str.len_chars().sum() / 1e6:.1f} M chars; "
          f"train {train.height} ({(train['label'] == 'hq').sum()} hq / {(train['label'] == 'cc').sum()} cc), "
          f"speed {speed.height}")
    print("kinds:", dict(everything["kind"].str.split("_").list.first().value_counts().sort("count", descending=True).iter_rows()))
    work = Path(tempfile.mkdtemp(prefix="bench-classifier-"))

    started = time.perf_counter()
    ft_card = train_classifier(train.select("text", "label"), TrainSettings(
        kind="fasttext", holdout=0.2, positive_label="hq", fasttext=FastTextSettings(bucket=args.bucket)), work / "ft")
    print(f"\nfastText (DCLM settings, bucket {args.bucket:,}) trained in {time.perf_counter() - started:.1f}s; held out:")
    for name, value in metrics_rows(ft_card):
        print(f"  {name:40s} {value}")

    stage = ClassifierFilter(ClassifierParams(name="q", model=str(work / "ft" / "model.bin"), label="hq",
                                              preprocess="lines", min_score=0.5))
    stage.setup()
    frame = speed.select(pl.format("d{}", pl.int_range(pl.len())).alias("id"), "text")
    dm_seconds, dm_out = fastest(lambda: run_datamill(stage, frame, args.batch_rows), args.repeats)
    texts = frame["text"].to_list()
    dt_seconds, dt_scores, dt_kept = float("inf"), [], 0
    for _ in range(args.repeats):
        seconds, dt_scores, dt_kept = run_datatrove(work / "ft" / "model.bin", texts)
        dt_seconds = min(dt_seconds, seconds)
    same = np.array_equal(dm_out["q_score"].to_numpy(), np.asarray(dt_scores, dtype=np.float64), equal_nan=True)
    kept = int(dm_out["_drop_reason"].is_null().sum())
    print(f"\nfastText scoring, {len(texts)} docs, one process (best of {args.repeats}):")
    print(f"  datamill classifier stage   {len(texts) / dm_seconds:10,.0f} docs/s  ({dm_seconds:.2f}s)")
    print(f"  datatrove FastTextClassifierFilter {len(texts) / dt_seconds:10,.0f} docs/s  ({dt_seconds:.2f}s)")
    print(f"  ratio x{dt_seconds / dm_seconds:.2f}; scores identical: {same}; kept {kept} vs {dt_kept}")

    started = time.perf_counter()
    emb_card = train_classifier(train.head(args.embed_train).select("text", "label"), TrainSettings(
        kind="embedding", holdout=0.2, positive_label="hq"), work / "emb")
    print(f"\nMiniLM + logistic head ({min(args.embed_train, train.height)} docs) trained in "
          f"{time.perf_counter() - started:.1f}s; held out:")
    for name, value in metrics_rows(emb_card):
        print(f"  {name:40s} {value}")
    emb = ClassifierFilter(ClassifierParams(name="e", model=str(work / "emb")))
    emb.setup()
    sample = frame.sample(min(args.embed_docs, frame.height), seed=1)
    seconds, _ = fastest(lambda: emb.process(sample), 1)
    print(f"\nembedding classifier on CPU: {sample.height / seconds:,.1f} docs/s ({sample.height} docs, "
          f"max_tokens {emb_card['max_tokens']})")


if __name__ == "__main__":
    random.seed(0)
    main()
