"""Sources read from an S3-compatible object store (moto's server on 127.0.0.1) exactly as from disk."""

from __future__ import annotations

import gzip
import json
import socket
from pathlib import Path

import polars as pl
import pytest

from conftest import make_documents
from datamill.curate.engine.recipe import validate_recipe
from datamill.curate.executors.run import run_recipe

s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (pip install datamill[s3])")
server_module = pytest.importorskip("moto.server", reason="moto[server] is not installed (dev extra)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A local S3 server for this module's tests; credentials and endpoint through the environment."""
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    patch = pytest.MonkeyPatch()
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": endpoint}.items():
        patch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches filesystems: none may keep another module's endpoint
    try:
        yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        patch.undo()
        server.stop()


def write_inputs(folder: Path) -> None:
    docs = make_documents(90)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(2):
        lines = "".join(json.dumps({"text": d}) + "\n" for d in docs[k * 30:(k + 1) * 30]) + "{broken\n"
        (folder / f"part{k}.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    pl.DataFrame({"text": docs[60:] + [docs[0]]}).write_parquet(folder / "table.parquet", row_group_size=10)


def recipe(inputs: str, out: Path):
    return validate_recipe({
        "name": "store", "output": {"dir": str(out)},
        "sources": [{"type": "jsonl", "path": f"{inputs}/*.jsonl.gz", "name": "lines"},
                    {"type": "parquet", "path": f"{inputs}/table.parquet", "name": "table"}],
        "stages": [{"type": "exact_dedup"}]})


def test_a_run_reads_s3_urls_like_local_files(s3_endpoint, tmp_path):
    local = tmp_path / "inputs"
    write_inputs(local)
    store = s3fs.S3FileSystem()
    store.mkdir("corpus")
    store.put(str(local) + "/", "corpus/raw/", recursive=True)
    from_disk = run_recipe(recipe(str(local), tmp_path / "disk"), workers=1)
    from_store = run_recipe(recipe("s3://corpus/raw", tmp_path / "store"), workers=2)
    disk = pl.read_parquet(sorted((tmp_path / "disk" / "shards").glob("*.parquet")))
    remote = pl.read_parquet(sorted((tmp_path / "store" / "shards").glob("*.parquet")))
    assert remote.drop("id").equals(disk.drop("id"))
    assert remote["id"].str.starts_with("lines:s3://corpus/raw/part0.jsonl.gz:").sum() == 30
    assert from_store["quarantine"]["by_reason"] == from_disk["quarantine"]["by_reason"] == {"bad_json": 2}
    assert from_store["stages"][0]["dropped"] == {"exact_duplicate": 1}


def test_a_missing_s3_glob_is_reported_before_any_work(s3_endpoint, tmp_path):
    from datamill.curate.engine.recipe import path_problems

    problems = path_problems(recipe("s3://corpus/nothing-here", tmp_path / "out"))
    assert any("no file matches 's3://corpus/nothing-here/*.jsonl.gz'" in p for p in problems)
