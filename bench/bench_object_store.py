"""Benchmark: the same recipe with `output.dir` on local disk vs on an S3 server (moto, 127.0.0.1), same input.

Input: real text gathered from this machine (man pages, Debian changelogs and copyright files,
licences, READMEs, plus junk; bench/real_text.py) as jsonl files. Recipe: length_filter, then
exact_dedup (a barrier: summaries uploaded, reduced on the driver from the store, decision read back
by every shard), keep_removed on. Timed, fastest of --repeat each, in one process:

1. a fresh run to a local folder and a fresh run to s3://bench/run (`--fresh`);
2. a resume of each with every shard already done (what the verification of committed files costs);
3. with --ray, the same recipe on a local Ray cluster to s3:// with the driver's and the workers'
   scratch mirrors in different folders (they share only the S3 run dir) and exact_dedup reduced in
   4 partitions as Ray tasks that read the summaries by URL; shard bytes compared.

The S3 shards are checked to be byte-identical to the local run's before any ratio is printed.
moto is an in-process Python server, much slower per request than S3 or MinIO, so the S3 figures
here are an upper bound on datamill's own overhead.

    python bench/bench_object_store.py [--docs 6000] [--files 8] [--repeat 2] [--ray]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from real_text import corpus  # noqa: E402
from timing import fastest  # noqa: E402

from datamill.curate.engine.recipe import validate_recipe  # noqa: E402
from datamill.curate.executors.run import run_recipe  # noqa: E402


def start_s3() -> tuple[object, dict[str, str]]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    os.environ.update(env)
    return server, env


def recipe(inputs: Path, out: str, executor: str = "local", partitions: int = 1):
    return validate_recipe({
        "name": "bench-object-store", "executor": {"type": executor, "reduce_partitions": partitions},
        "output": {"dir": out, "shard_rows": 2000, "keep_removed": True},
        "sources": [{"type": "jsonl", "path": str(inputs / "*.jsonl"), "name": "real"}],
        "stages": [{"type": "length_filter", "min_words": 20}, {"type": "exact_dedup"}]})


def store_files(fs, prefix: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in sorted(fs.find(prefix))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=6000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--ray", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-object-store-"))
    os.environ["DATAMILL_SCRATCH"] = str(work / "scratch-driver")
    docs = corpus(args.docs)
    inputs = work / "inputs"
    inputs.mkdir()
    for k in range(args.files):
        with open(inputs / f"part{k:02d}.jsonl", "w", encoding="utf-8") as handle:
            for kind, text in docs[k::args.files]:
                handle.write(json.dumps({"text": text, "kind": kind}) + "\n")
    size = sum(p.stat().st_size for p in inputs.iterdir())
    print(f"input: {len(docs):,} documents, {size / 2**20:.1f} MiB in {args.files} jsonl files; "
          f"workers={args.workers}")

    server, env = start_s3()
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("bench")
    local_out, url = str(work / "local-run"), "s3://bench/run"
    rows = []
    for name, out in (("local", local_out), ("s3 (moto)", url)):
        fresh, stats = fastest(lambda out=out: run_recipe(recipe(inputs, out), workers=args.workers, resume=False),
                               args.repeat)
        resume, _ = fastest(lambda out=out: run_recipe(recipe(inputs, out), workers=args.workers), args.repeat)
        rows.append((name, fresh, resume, stats["output"]["records"]))
    local_shards = {p.name: p.read_bytes() for p in sorted(Path(local_out, "shards").iterdir())}
    same = store_files(fs, "bench/run/shards") == local_shards
    print(f"S3 shards byte-identical to the local run's: {same} ({len(local_shards)} files)")
    if not same:
        raise SystemExit("outputs differ: no ratio printed")
    print(f"{'output.dir':<12}{'fresh run s':>12}{'resume (all done) s':>21}{'records':>9}")
    for name, fresh, resume, records in rows:
        print(f"{name:<12}{fresh:>12.2f}{resume:>21.2f}{records:>9,}")
    print(f"ratio s3/local: fresh run ×{rows[1][1] / rows[0][1]:.2f}, resume ×{rows[1][2] / rows[0][2]:.2f}")

    if args.ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
                 runtime_env={"env_vars": {**env, "DATAMILL_SCRATCH": str(work / "scratch-workers")}})
        started = time.perf_counter()
        run_recipe(recipe(inputs, "s3://bench/ray", "ray", partitions=4), resume=False)
        seconds = time.perf_counter() - started
        same = store_files(fs, "bench/ray/shards") == local_shards
        worker_files = len(list((work / "scratch-workers").rglob("*.parquet")))
        print(f"ray to s3 (reduce in 4 partitions as Ray tasks), driver and workers sharing only the S3 "
              f"run dir: {seconds:.2f} s, shards "
              f"byte-identical to the local run's: {same}; workers wrote {worker_files} parquet files to "
              "their own scratch mirror")
        ray.shutdown()
    server.stop()


if __name__ == "__main__":
    main()
