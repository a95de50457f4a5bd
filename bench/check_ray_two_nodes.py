"""Check: a recipe on a two-node Ray cluster whose nodes share no folder writes what the local executor writes.

Issue 18 asks that "a run on a Ray cluster with a local S3 endpoint works with no NFS"; the CI test
runs one Ray node. This starts a real two-node cluster on this one machine with Ray's own
`ray.cluster_utils.Cluster` (a head node and a second node, each its own raylet, object store and
worker processes, 1 CPU each), gives the driver and each node a different DATAMILL_SCRATCH (the
workers inherit their raylet's environment), puts the inputs and the run directory on a moto S3
server on 127.0.0.1, and runs exact + MinHash dedup with their reduces as Ray tasks in 2 partitions.
It checks that the shard files on S3 equal the local run's byte for byte and that both nodes wrote
through their own mirror. Not a CI test (it starts two raylets: ~30-60 s on a 2-core box).

    python bench/check_ray_two_nodes.py [--docs 400]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def real_paragraphs(limit: int) -> list[str]:
    """Paragraphs of the copyright files and changelogs under /usr/share/doc (real text, some repeated)."""
    out: list[str] = []
    for path in sorted(Path("/usr/share/doc").glob("*/copyright")) + sorted(Path("/usr/share/doc").glob("*/changelog*.gz")):
        try:
            data = path.read_bytes()
            text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8", "replace")
        except (OSError, EOFError):
            continue
        out += [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.split()) >= 8]
        if len(out) >= limit:
            break
    return out[:limit]


def shard_bytes(fs, root: str) -> dict[str, bytes]:
    if root.startswith("s3://"):
        fs.invalidate_cache()
        return {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in sorted(fs.find(root.removeprefix("s3://") + "/shards"))}
    return {p.name: p.read_bytes() for p in sorted(Path(root, "shards").rglob("*")) if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=400)
    args = parser.parse_args()
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per S3 request otherwise

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.update({"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    import polars as pl
    import ray
    import s3fs
    from ray.cluster_utils import Cluster

    from datamill.curate.engine.recipe import validate_recipe
    from datamill.curate.executors.run import run_recipe

    tmp = Path(tempfile.mkdtemp(prefix="ray-two-nodes-"))
    scratch = {name: tmp / f"{name}-scratch" for name in ("head", "node2", "driver")}
    fs = s3fs.S3FileSystem()
    fs.mkdir("inputs")
    fs.mkdir("runs")
    docs = real_paragraphs(args.docs)
    parts = []
    for k in range(4):  # 4 input files, with exact and near duplicates across them
        part = docs[k::4] + docs[k:k + 5] + [d + " (copy)" for d in docs[k + 10:k + 13]]
        parts.append(part)
        fs.pipe_file(f"inputs/part{k}.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in part).encode())
    spec = {"name": "two-nodes", "sources": [{"type": "jsonl", "path": "s3://inputs/*.jsonl", "name": "docs"}],
            "stages": [{"type": "exact_dedup"}, {"type": "minhash_dedup", "threshold": 0.7}],
            "executor": {"batch_rows": 16}}
    cluster = None
    try:
        start = time.time()
        os.environ["DATAMILL_SCRATCH"] = str(scratch["head"])
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        os.environ["DATAMILL_SCRATCH"] = str(scratch["node2"])
        cluster.add_node(num_cpus=1)
        os.environ["DATAMILL_SCRATCH"] = str(scratch["driver"])
        ray.init(address=cluster.address, include_dashboard=False, logging_level="WARNING")
        nodes = [n for n in ray.nodes() if n["Alive"]]
        print(f"two-node cluster up in {time.time() - start:.1f} s: {len(nodes)} nodes, "
              f"{ray.cluster_resources().get('CPU')} CPUs")

        start = time.time()
        run_recipe(validate_recipe({**spec, "output": {"dir": str(tmp / "local")}}), workers=1)
        local_s = time.time() - start
        start = time.time()
        stats = run_recipe(validate_recipe({**spec, "executor": {**spec["executor"], "type": "ray",
                                                                 "reduce_partitions": 2},
                                            "output": {"dir": "s3://runs/ray"}}), workers=2)
        ray_s = time.time() - start
        local, remote = shard_bytes(fs, str(tmp / "local")), shard_bytes(fs, "s3://runs/ray")
        wrote = {name: sum(1 for p in folder.rglob("*") if p.is_file()) for name, folder in scratch.items()}
        same = local == remote and bool(local)
        print(f"local executor {local_s:.1f} s, Ray on 2 nodes {ray_s:.1f} s (executor={stats['executor']})")
        kept = sum(pl.read_parquet(io.BytesIO(b)).height for b in local.values())
        print(f"shard files: local {len(local)}, S3 {len(remote)} ({kept} of {sum(len(d) for d in parts)} "
              f"documents kept); byte-identical: {same}")
        print(f"files in each scratch folder (the nodes' own mirrors): {wrote}")
        both = wrote["head"] > 0 and wrote["node2"] > 0
        print("OK" if same and both else "FAILED" + ("" if same else ": output differs")
              + ("" if both else ": not both nodes wrote through their own mirror"))
        return 0 if same and both else 1
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()  # stops only this cluster's processes
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
