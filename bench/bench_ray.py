"""Benchmark: the quickstart recipe's stages on the local executor vs the Ray executor, same input.

Two corpora: the quickstart's own input (docstrings and READMEs installed on this machine, read by
the `installed_docs` source), and a generated one --scale times larger: the same documents written
to jsonl --scale times, each copy's words rotated by a different amount so copies are new text to
exact dedup (MinHash still finds many of them). Each corpus runs through the quickstart's stages
on both executors with the same worker count; the Ray cluster is started once before any timing
(its start-up time is printed separately) and every Ray run includes Ray Data's own scheduling.
The two outputs are checked to hold the same records before any ratio is printed.

    python bench/bench_ray.py [--workers 2] [--scale 10] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import polars as pl

from datamill.curate.executors.run import run_recipe
from datamill.curate.engine.pipeline import Pipeline
from datamill.curate.engine.recipe import load_recipe, validate_recipe


def run_recipe_ray(recipe, **options):
    """The same recipe on the Ray executor."""
    return run_recipe(recipe.model_copy(update={"executor": recipe.executor.model_copy(update={"type": "ray"})}), **options)


def quickstart_texts(recipe) -> list[str]:
    """Every record text the quickstart's source yields, in plan order."""
    source = Pipeline(recipe).sources[0]
    return [t for spec in source.plan() for part in source.read(spec, 5000) for t in part.records["text"]]


def write_scaled(texts: list[str], scale: int, folder: Path, files: int = 8) -> int:
    """`scale` copies of every text (copy c rotates its words by c) over `files` jsonl files."""
    frame = pl.DataFrame({"text": texts}).with_columns(pl.col("text").str.split(" ").alias("words"))
    copies = [frame.select(pl.concat_list(pl.col("words").list.slice(c), pl.col("words").list.slice(0, c))
                           .list.join(" ").alias("text")) for c in range(scale)]
    rows = pl.concat(copies).with_row_index("n")
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(files):
        rows.filter(pl.col("n") % files == k).select("text").write_ndjson(folder / f"part{k:02d}.jsonl")
    return rows.height


def timed_pair(raw: dict, out: Path, workers: int) -> tuple[float, float, int]:
    seconds, corpora = {}, {}
    for name, runner in (("local", run_recipe), ("ray", run_recipe_ray)):
        recipe = validate_recipe({**raw, "output": {**raw["output"], "dir": str(out / name)}})
        started = time.perf_counter()
        stats = runner(recipe, workers=workers, resume=False)
        seconds[name] = time.perf_counter() - started
        corpora[name] = pl.read_parquet(sorted((out / name / "shards").glob("*.parquet"))).sort("id")
        read = sum(s["records_read"] for s in stats["sources"])
    if not corpora["local"].equals(corpora["ray"]):
        raise SystemExit("local and ray outputs differ: not timing a wrong result")
    return seconds["local"], seconds["ray"], read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None, help="Read at most N quickstart records.")
    args = parser.parse_args()
    import ray

    overrides = {"sources.*.limit": args.limit} if args.limit else {}
    quickstart = load_recipe("quickstart", overrides)
    started = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="WARNING")
    print(f"ray.init (local cluster, {args.workers} CPUs): {time.perf_counter() - started:.1f} s")
    raw_recipe = quickstart.model_dump(mode="json")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = quickstart_texts(quickstart)
        scaled = write_scaled(texts, args.scale, tmp / "raw")
        scaled_recipe = {**raw_recipe, "sources": [{"type": "jsonl", "path": str(tmp / "raw" / "*.jsonl")}]}
        print(f"{'corpus':<28}{'records':>9}{'local s':>9}{'ray s':>9}{'local rec/s':>13}{'ray rec/s':>11}"
              f"{'ray/local':>11}")
        for label, raw in ((f"quickstart ({len(texts)} docs)", raw_recipe), (f"generated x{args.scale} ({scaled} docs)", scaled_recipe)):
            local_s, ray_s, read = timed_pair(raw, tmp / label.split()[0].replace("(", ""), args.workers)
            print(f"{label:<28}{read:>9}{local_s:>9.1f}{ray_s:>9.1f}{read / local_s:>13,.0f}{read / ray_s:>11,.0f}"
                  f"{local_s / ray_s:>11.2f}")
    ray.shutdown()
    print(json.dumps({"note": "ray/local = throughput ratio (>1: Ray faster); shared 2-core machine: noisy"}))


if __name__ == "__main__":
    main()
