"""Benchmark: end-to-end MinHash dedup throughput, datamill vs datatrove, one worker each.

Input: the corpus of `bench_dedup_quality.build_corpus` (--docs real docstrings + --planted
near-duplicates, shuffled), written once as --files jsonl files. Both sides read those files,
deduplicate with 5-word shingles and 112 permutations cut into 14 bands of 8 (datatrove's
defaults), and write the kept documents as uncompressed jsonl:

- datatrove 0.10: `JsonlReader → MinhashDedupSignature`, `MinhashDedupBuckets` (14 tasks, one
  per bucket), `MinhashDedupCluster`, `JsonlReader → MinhashDedupFilter → JsonlWriter`, each a
  `LocalPipelineExecutor` with workers=1 (tasks = files for the per-file steps);
- datamill: `run_recipe` with a jsonl source, `minhash_dedup` (bands 14, rows 8) and jsonl output,
  workers=1 (the executor then runs everything in the current process).

Times are wall-clock and CPU (user + system, this process and children) for the whole pipeline,
including reading and writing (and datamill's report), best of --repeat,
after each side's one-off start-up (numba kernels warmed, datatrove's tokenizer loaded by a tiny
run). The two remove different counts because they normalize text differently (datatrove
removes punctuation, folds digits and tokenizes with its English word tokenizer; datamill
lowercases and splits on whitespace) and use different hash functions; both counts are printed.
datatrove 0.10 passes `str` to `xxhash.xxh64_intdigest`, which the installed xxhash 4 rejects;
the benchmark patches datatrove's wrapper to encode to UTF-8 first (`patch_datatrove_xxhash`).
The machine is shared: timings are noisy.

    python bench/bench_dedup_datatrove.py [--docs 20000] [--planted 2000] [--files 4] [--repeat 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("POLARS_MAX_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dedup_quality import build_corpus  # noqa: E402

from datamill.curate.dedup.minhash import warm_up  # noqa: E402
from datamill.curate.executors.run import run_recipe  # noqa: E402
from datamill.curate.engine.recipe import validate_recipe  # noqa: E402

BANDS, ROWS, NGRAM = 14, 8, 5


def write_inputs(folder: Path, texts: list[str], ids: list[str], files: int) -> None:
    folder.mkdir(parents=True)
    for k in range(files):
        with open(folder / f"part-{k:02d}.jsonl", "w", encoding="utf-8") as f:
            for doc_id, text in zip(ids[k::files], texts[k::files]):
                f.write(json.dumps({"id": doc_id, "text": text}) + "\n")


def count_lines(folder: Path) -> int:
    return sum(sum(1 for _ in open(p, encoding="utf-8")) for p in sorted(folder.rglob("*.jsonl")))


def run_datamill(inputs: Path, work: Path) -> int:
    recipe = validate_recipe(
        {
            "name": "bench-dedup",
            "sources": [{"type": "jsonl", "path": str(inputs / "*.jsonl"), "id_field": "id"}],
            "stages": [{"type": "minhash_dedup", "ngram": NGRAM, "num_perm": BANDS * ROWS, "bands": BANDS, "rows": ROWS}],
            "output": {"dir": str(work / "out"), "format": "jsonl"},
        }
    )
    run_recipe(recipe, workers=1, resume=False)
    return count_lines(work / "out" / "shards")


def patch_datatrove_xxhash() -> None:
    """datatrove 0.10 hands `str` to xxhash, which xxhash >= 4 refuses; hash the UTF-8 bytes
    instead (what xxhash < 4 did with a str). Works because workers=1 runs tasks in-process."""
    import xxhash
    from datatrove.utils.hashes import xxhash as datatrove_xxhash

    def xxhash64(data: str | bytes) -> int:
        return xxhash.xxh64_intdigest(data.encode("utf-8") if isinstance(data, str) else data)

    def xxhash32(data: str | bytes) -> int:
        return xxhash.xxh32_intdigest(data.encode("utf-8") if isinstance(data, str) else data)

    datatrove_xxhash.xxhash64, datatrove_xxhash.xxhash32 = xxhash64, xxhash32


def run_datatrove(inputs: Path, work: Path, files: int) -> int:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    config = MinhashConfig(n_grams=NGRAM, num_buckets=BANDS, hashes_per_bucket=ROWS)
    steps = [
        ([JsonlReader(str(inputs)), MinhashDedupSignature(output_folder=str(work / "sigs"), config=config)], files),
        ([MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=config)], BANDS),
        ([MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=config)], 1),
        (
            [
                JsonlReader(str(inputs)),
                MinhashDedupFilter(input_folder=str(work / "remove")),
                JsonlWriter(str(work / "out"), output_filename="${rank}.jsonl", compression=None),
            ],
            files,
        ),
    ]
    for i, (pipeline, tasks) in enumerate(steps):
        executor = LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(work / f"logs{i}"), skip_completed=False
        )
        executor.run()
    return count_lines(work / "out")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(run, repeat: int) -> tuple[float, float, int]:
    """(best wall seconds, best CPU seconds, documents kept)."""
    best_wall, best_cpu, kept = float("inf"), float("inf"), 0
    for _ in range(repeat):
        work = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
        try:
            start, start_cpu = time.perf_counter(), cpu_seconds()
            kept = run(work)
            best_wall = min(best_wall, time.perf_counter() - start)
            best_cpu = min(best_cpu, cpu_seconds() - start_cpu)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return best_wall, best_cpu, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--planted", type=int, default=2000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    from loguru import logger

    logger.remove()  # datatrove logs every step at INFO to stderr
    logging.getLogger().setLevel(logging.WARNING)
    patch_datatrove_xxhash()
    warm_up()
    corpus = build_corpus(args.docs, args.planted)
    root = Path(tempfile.mkdtemp(prefix="bench-dedup-inputs-"))
    try:
        inputs = root / "in"
        write_inputs(inputs, corpus["text"].to_list(), corpus["id"].to_list(), args.files)
        small = root / "small"
        write_inputs(small, corpus["text"].head(50).to_list(), corpus["id"].head(50).to_list(), 1)
        timed(lambda work: run_datatrove(small, work, 1), 1)  # load the word tokenizer once
        timed(lambda work: run_datamill(small, work), 1)
        datatrove_s, datatrove_cpu, datatrove_kept = timed(lambda work: run_datatrove(inputs, work, args.files), args.repeat)
        datamill_s, datamill_cpu, datamill_kept = timed(lambda work: run_datamill(inputs, work), args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    n = corpus.height
    print(f"{n} documents in {args.files} jsonl files; 5-word shingles, {BANDS} bands x {ROWS} rows; one worker each")
    for name, wall, cpu, kept in (("datatrove", datatrove_s, datatrove_cpu, datatrove_kept),
                                  ("datamill", datamill_s, datamill_cpu, datamill_kept)):
        print(f"{name:10s} wall {wall:7.2f} s ({n / wall:7.0f} docs/s)  cpu {cpu:7.2f} s ({n / cpu:7.0f} docs/s)"
              f"  removed {n - kept}")
    print(f"speed-up (datatrove / datamill): wall {datatrove_s / datamill_s:.1f}x, cpu {datatrove_cpu / datamill_cpu:.1f}x"
          "  (shared machine: wall time is noisy, CPU time less so)")


if __name__ == "__main__":
    main()
