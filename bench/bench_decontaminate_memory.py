"""Benchmark: memory and build time of `decontaminate`'s n-gram index, per-worker (old) vs one shared memory-mapped index (new).

Input, built from real text on this machine (`bench/real_text.py`: rendered man pages, Debian
changelogs and copyright files, licences, READMEs): the documents are split in two disjoint halves.
From the first half's word stream, --questions eval questions are made, each three random word
windows of 4–12 words (12–36 words; alphabetic words only, which normalization keeps as one word
each): real words and phrases, but every 13-gram crosses a seam, so
each question's n-grams are its own, as in a real eval set, and the training text (full of licence
and man-page boilerplate) does not hit thousands of questions by accident; written as one jsonl
benchmark (`question` field). The second half are the training documents
(--docs), with --plants of the eval questions pasted into some of them, split into two shards.

Three modes, each a fresh pair of worker processes started at the same moment (multiprocessing
spawn; each takes one shard, batches of 1,000 documents):
- `old`: the stage as it was before the shared index (`git show LEGACY:filters/decontaminate.py`),
  where every worker's `setup()` builds its own polars table of the eval n-grams;
- `new`: this tree's stage with a run directory: the first worker builds the index into
  `<run>/state/decontaminate/` (the other waits on the lock), then both map it read-only;
- `new-warm`: the same run directory again (a resumed run, or `index_dir` reused across runs): both
  workers only open the index.

Each worker reports: its setup seconds; the unique (USS), proportional (PSS) and resident (RSS) set
sizes after processing and --settle seconds (polars' jemalloc returns freed pages to the system after
about 10 s, so what a build or a batch left behind is gone, as it is in a long run), measured while
both workers are alive (a barrier), so pages the two share
(the mapped index in the page cache) count half in each one's PSS and not at all in USS; its peak
RSS (`VmHWM`, which includes the build's transient memory); its anonymous and file-backed resident
memory (`RssAnon`, `RssFile`: the mapped index is file-backed, page cache the kernel can share and
reclaim, while the old per-worker table is anonymous); and the seconds spent scoring its shard.
Outputs (`contamination_ngrams`, `contaminated_by`, `contaminated_items`) of old and new must be
identical; the script fails otherwise.

    python bench/bench_decontaminate_memory.py [--questions 1000000] [--docs 4000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import queue
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LEGACY = "a0a7cff"
"""The last commit whose `filters/decontaminate.py` built the index in every worker."""
MIB = 1 << 20
BATCH = 1000


def status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(text.split(f"{field}:")[1].split()[0])


def make_inputs(folder: Path, questions: int, docs: int, plants: int, seed: int) -> tuple[Path, list[Path]]:
    """The eval jsonl and two training parquet shards (see the module docstring)."""
    sys.path.insert(0, str(HERE))
    from real_text import corpus

    texts = [text for _, text in corpus(docs * 3, seed=seed)]
    eval_words = [word for word in " ".join(texts[: 2 * docs]).split() if word.isalpha()]  # one word each
    train = texts[2 * docs:][:docs]
    rng = random.Random(seed)
    made = []
    for _ in range(questions):
        parts = []
        for _ in range(3):
            length = rng.randint(4, 12)
            start = rng.randrange(len(eval_words) - length)
            parts.append(" ".join(eval_words[start:start + length]))
        made.append(" ".join(parts))
    eval_path = folder / "eval.jsonl"
    pl.DataFrame({"question": made}).write_ndjson(eval_path)
    for i in range(min(plants, len(train))):
        doc = rng.randrange(len(train))
        words = train[doc].split(" ")
        cut = rng.randrange(len(words) + 1)
        train[doc] = " ".join(words[:cut] + [made[rng.randrange(questions)]] + words[cut:])
    shards = []
    for part in range(2):
        path = folder / f"train-{part}.parquet"
        pl.DataFrame({"text": train[part::2]}).write_parquet(path)
        shards.append(path)
    return eval_path, shards


def legacy_module(folder: Path):
    """The pre-shared-index stage, from git, registered under another type name."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{LEGACY}:filters/decontaminate.py"],
                            capture_output=True, text=True, check=True).stdout
    source = source.replace('type_name = "decontaminate"', 'type_name = "decontaminate_legacy"')
    path = folder / "legacy_decontaminate.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("legacy_decontaminate", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the module's annotations through it
    spec.loader.exec_module(module)
    return module


def worker(mode: str, folder: str, eval_path: str, shard: str, out: str, settle: float, start, measured,
           results) -> None:
    """One worker: set the stage up, score its shard, measure while the other worker is alive too."""
    import psutil

    folder_path = Path(folder)
    if mode == "old":
        module = legacy_module(folder_path)
    else:
        from datamill.filters import decontaminate as module
    params = module.DecontaminateParams(
        benchmarks=[{"name": "eval", "source": {"type": "jsonl", "path": eval_path, "text_field": "question"}}])
    stage = module.Decontaminate(params)
    if mode != "old":
        stage.run_dir = str(folder_path / "run")
    frame = pl.read_parquet(shard)
    before = psutil.Process().memory_full_info()
    start.wait()  # both workers set up at the same moment
    began = time.perf_counter()
    stage.setup()
    setup_s = time.perf_counter() - began
    began = time.perf_counter()
    outputs = [stage.process(frame.slice(i, BATCH)) for i in range(0, frame.height, BATCH)]
    score_s = time.perf_counter() - began
    measured.wait()  # both alive, both done: shared pages are shared now
    time.sleep(settle)  # polars' jemalloc hands freed pages back to the system after ~10 s
    info = psutil.Process().memory_full_info()
    pl.concat(outputs).select("contamination_ngrams", "contaminated_by", "contaminated_items").write_parquet(out)
    results.put({"setup_s": setup_s, "score_s": score_s, "uss": info.uss, "pss": info.pss, "rss": info.rss,
                 "anon": status_kib("RssAnon") * 1024, "file": status_kib("RssFile") * 1024,
                 "hwm": status_kib("VmHWM") * 1024, "uss_before": before.uss})
    measured.wait()  # keep the mapping until the other worker has measured too


def run_mode(mode: str, folder: Path, eval_path: Path, shards: list[Path], settle: float) -> tuple[list[dict], list[Path]]:
    context = multiprocessing.get_context("spawn")
    start, measured, results = context.Barrier(2), context.Barrier(2), context.Queue()
    outs = [folder / f"out-{mode}-{i}.parquet" for i in range(2)]
    procs = [context.Process(target=worker, args=(mode, str(folder), str(eval_path), str(shards[i]), str(outs[i]),
                                                  settle, start, measured, results)) for i in range(2)]
    for proc in procs:
        proc.start()
    reports = []
    while len(reports) < len(procs):
        try:
            reports.append(results.get(timeout=2))
        except queue.Empty:
            if any(proc.exitcode not in (None, 0) for proc in procs):
                for proc in procs:
                    proc.kill()
                raise SystemExit(f"{mode}: a worker failed (see its traceback above)") from None
    for proc in procs:
        proc.join(timeout=600)
        if proc.exitcode != 0:
            raise SystemExit(f"{mode}: a worker failed (exit {proc.exitcode})")
    return reports, outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=1_000_000)
    parser.add_argument("--docs", type=int, default=4000)
    parser.add_argument("--plants", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds to wait after scoring before measuring (allocator returns freed memory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_decontam_") as tmp:
        folder = Path(tmp)
        began = time.perf_counter()
        eval_path, shards = make_inputs(folder, args.questions, args.docs, args.plants, args.seed)
        words = pl.scan_ndjson(eval_path).select(pl.col("question").str.count_matches(r"\S+").sum()).collect().item()
        print(f"inputs: {args.questions:,} eval questions ({words:,} words, {eval_path.stat().st_size / MIB:.0f} MiB), "
              f"{args.docs:,} training documents in 2 shards, {args.plants} plants "
              f"({time.perf_counter() - began:.1f} s to make)")
        table, outputs = {}, {}
        for mode in ("old", "new", "new-warm"):
            table[mode], outputs[mode] = run_mode(mode, folder, eval_path, shards, args.settle)
        index_dirs = [p for p in (folder / "run" / "state" / "decontaminate").iterdir() if p.is_dir()]
        meta = json.loads((index_dirs[0] / "meta.json").read_text())
        on_disk = sum(f.stat().st_size for f in index_dirs[0].iterdir())
        print(f"shared index: {meta['entries']:,} entries, {on_disk / MIB:.0f} MiB on disk, "
              f"built once in {meta['build_seconds']:.1f} s")
        print(f"\n{'mode':9} {'worker':>6} {'setup s':>8} {'score s':>8} {'USS MiB':>8} {'PSS MiB':>8} "
              f"{'RSS MiB':>8} {'anon MiB':>9} {'file MiB':>9} {'peak MiB':>9} {'USS before':>10}")
        for mode, reports in table.items():
            for i, r in enumerate(reports):
                print(f"{mode:9} {i:>6} {r['setup_s']:8.1f} {r['score_s']:8.1f} {r['uss'] / MIB:8.0f} "
                      f"{r['pss'] / MIB:8.0f} {r['rss'] / MIB:8.0f} {r['anon'] / MIB:9.0f} {r['file'] / MIB:9.0f} "
                      f"{r['hwm'] / MIB:9.0f} {r['uss_before'] / MIB:10.0f}")
        for mode in ("new", "new-warm"):
            for i in range(2):
                same = pl.read_parquet(outputs["old"][i]).equals(pl.read_parquet(outputs[mode][i]))
                if not same:
                    raise SystemExit(f"{mode} worker {i}: results differ from old")
        hits = sum(pl.read_parquet(p)["contaminated_by"].list.len().gt(0).sum() for p in outputs["new"])
        print(f"\nresults identical old/new/new-warm ({hits} contaminated documents)")

        def total(mode: str, key: str) -> float:
            return sum(r[key] for r in table[mode]) / MIB

        for key in ("pss", "uss", "anon", "hwm"):
            print(f"sum over 2 workers, {key.upper()}: old {total('old', key):.0f} MiB, new {total('new', key):.0f} MiB "
                  f"(x{total('old', key) / total('new', key):.2f} less), new-warm {total('new-warm', key):.0f} MiB")
        old_setup = max(r["setup_s"] for r in table["old"])
        print(f"setup until both workers can score: old {old_setup:.1f} s, new {max(r['setup_s'] for r in table['new']):.1f} s,"
              f" new-warm {max(r['setup_s'] for r in table['new-warm']):.2f} s")


if __name__ == "__main__":
    main()
