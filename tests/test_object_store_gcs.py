"""A run on Google Cloud Storage (gs://) through gcsfs, against gcp-storage-emulator on 127.0.0.1: a gs://
source and a gs:// output.dir write the local run's bytes, resume trusts only verified markers, --fresh,
report and export work, and the run lock holds.

The emulator ignores GCS preconditions (`ifGenerationMatch=0`, what gcsfs sends for an exclusive
create): a second create silently overwrites. The lock test therefore puts GCS's documented answer
to that header (412 Precondition Failed) in front of the emulator's upload handler, so gcsfs's own
412 → FileExistsError path is what the run lock meets; everything else is the emulator unchanged.
"""

from __future__ import annotations

import json
import socket

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_documents, write_jsonl
from datamill.curate.cli import app
from datamill.curate.engine.layout import RunLayout
from datamill.curate.engine.recipe import validate_recipe
from datamill.curate.executors.run import RunError, run_recipe
from run_lock_checks import assert_a_dead_runs_lock_is_taken_over

gcsfs = pytest.importorskip("gcsfs", reason="gcsfs is not installed (dev extra)")
emulator = pytest.importorskip("gcp_storage_emulator.server", reason="gcp-storage-emulator is not installed (dev extra)")

BUCKET = "gcs-runs"
SOURCE = f"gs://{BUCKET}/raw/*.jsonl"
runner = CliRunner()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A local GCS server for this module (in memory); gcsfs finds it through STORAGE_EMULATOR_HOST and
    authenticates anonymously (FSSPEC_GCS_TOKEN=anon), as a user's environment would configure it."""
    port = free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    patch = pytest.MonkeyPatch()
    patch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    patch.setenv("FSSPEC_GCS_TOKEN", "anon")
    patch.setenv("DATAMILL_SCRATCH", str(tmp_path_factory.mktemp("gcs-scratch")))
    import fsspec
    import fsspec.config
    from gcsfs.core import GCSFileSystem

    fsspec.config.set_conf_env(fsspec.config.conf)  # fsspec read FSSPEC_* at import: read them again
    # gcsfs's default class first asks GCS's gRPC control API for the bucket's layout (zonal/HNS), which
    # the emulator lacks (retried for minutes): the plain JSON-API class, as GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
    registered = {p: fsspec.get_filesystem_class(p) for p in ("gs", "gcs")}
    for protocol in registered:
        fsspec.register_implementation(protocol, GCSFileSystem, clobber=True)
    GCSFileSystem.clear_instance_cache()
    try:
        yield GCSFileSystem(token="anon")
    finally:
        GCSFileSystem.clear_instance_cache()
        for protocol, cls in registered.items():
            fsspec.register_implementation(protocol, cls, clobber=True)
        fsspec.config.conf.pop("gcs", None)
        patch.undo()
        server.stop()


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """The report without its matplotlib PNGs (~1 s a run; the S3 tests upload them): this module tests the store."""
    import datamill.curate.report.render as render

    monkeypatch.setattr(render, "draw_all", lambda stats, folder: {})


def recipe(source: str, out, **output):
    return validate_recipe({
        "name": "gcs-run", "seed": 3,
        "output": {"dir": str(out), "shard_rows": 20, "keep_removed": True, **output},
        "sources": [{"type": "jsonl", "path": source, "name": "docs"}],
        "stages": [{"type": "length_filter", "min_words": 5}, {"type": "exact_dedup"}]})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, gcs):
    """Three jsonl files (duplicates across files, a short doc and a broken line in each), on disk and on GCS."""
    folder = tmp_path_factory.mktemp("inputs")
    docs = make_documents(120)
    for k in range(3):
        rows = [{"text": d} for d in docs[k * 40:(k + 1) * 40]] + [{"text": docs[k]}, {"text": "too short"}, "{bad"]
        write_jsonl(folder / f"part{k}.jsonl", rows)
        gcs.put_file(str(folder / f"part{k}.jsonl"), f"{BUCKET}/raw/part{k}.jsonl")
    return folder


@pytest.fixture(scope="module")
def disk_run(inputs, tmp_path_factory):
    """The gs:// source into a local run directory (record ids name the source files, so the
    store runs are compared with a run of the same URLs)."""
    out = tmp_path_factory.mktemp("disk") / "run"
    stats = run_recipe(recipe(SOURCE, out), workers=1)
    return out, stats


def test_a_gs_source_reads_the_records_of_the_same_files_on_disk(inputs, disk_run, tmp_path):
    disk, from_gcs = disk_run
    from_disk = run_recipe(recipe(str(inputs / "*.jsonl"), tmp_path / "local"), workers=1)
    ours = pl.read_parquet(sorted((disk / "shards").glob("*.parquet")))
    theirs = pl.read_parquet(sorted((tmp_path / "local" / "shards").glob("*.parquet")))
    assert ours.drop("id").equals(theirs.drop("id")) and ours.height == 120
    assert ours["id"].str.starts_with(f"docs:gs://{BUCKET}/raw/part0.jsonl:").sum() == \
        theirs["id"].str.contains("/part0.jsonl:", literal=True).sum() > 0
    assert from_gcs["quarantine"] == from_disk["quarantine"]


def objects(fs, url: str, folder: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    root = url.removeprefix("gs://") + "/" + folder
    return {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in sorted(fs.find(root))}


def local_files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_gs_source_and_a_gs_run_dir_write_the_local_runs_bytes_fresh_report_and_export(gcs, inputs, disk_run,
                                                                                          tmp_path):
    disk, disk_stats = disk_run
    url = f"gs://{BUCKET}/same"
    gcs.pipe_file(f"{BUCKET}/same/shards/part-00099-000.parquet", b"left by an older run")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe(SOURCE, "unused").model_dump(mode="json")))
    result = runner.invoke(app, ["run", str(recipe_file), "-o", url, "--workers", "1", "--fresh"])
    assert result.exit_code == 0, result.output
    for folder in ("shards", "quarantine", "removed/exact_dedup"):
        assert objects(gcs, url, folder) == local_files(disk / folder), folder
    stats = json.loads(gcs.cat_file(f"{BUCKET}/same/stats.json"))
    assert stats["output"] == disk_stats["output"] and stats["run_dir"] == url
    assert stats["quarantine"]["by_reason"] == {"bad_json": 3}
    markers = RunLayout(url).done_markers()
    assert len(markers) == 6
    gcs.invalidate_cache()
    for entry in (e for m in markers for e in m["committed"]):  # the object's generation: new on every write
        assert entry["version"] == str(gcs.info(f"{BUCKET}/same/{entry['path']}")["generation"])
    report = gcs.cat_file(f"{BUCKET}/same/report.md").decode()
    assert f"{url}/shards" in report
    gcs.rm(f"{BUCKET}/same/report.md")
    result = runner.invoke(app, ["report", url])  # re-rendered from the store's stats.json
    assert result.exit_code == 0, result.output
    assert gcs.cat_file(f"{BUCKET}/same/report.md").decode() == report
    result = runner.invoke(app, ["export", url, "--format", "hf", "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    exported = pl.read_parquet(sorted((tmp_path / "hf").rglob("*.parquet")))
    corpus = pl.read_parquet(sorted((disk / "shards").glob("*.parquet")))
    assert exported["text"].to_list() == corpus["text"].to_list()


def test_resume_on_gcs_redoes_exactly_the_shards_whose_objects_changed(gcs, inputs, disk_run):
    disk, _ = disk_run
    url = f"gs://{BUCKET}/resume"
    root = f"{BUCKET}/resume"
    run_recipe(recipe(SOURCE, url), workers=1)
    shards = sorted(gcs.find(f"{root}/shards"))
    data = gcs.cat_file(shards[-1])
    gcs.pipe_file(shards[-1], data[:100] + bytes([data[100] ^ 1]) + data[101:])  # same size, one bit flipped
    gcs.rm(f"{root}/state/done/segment-1-shard-00001.json")
    gcs.pipe_file(f"{root}/shards/part-00001-009.parquet", b"partial upload")  # an interrupted attempt's file
    layout = RunLayout(url)
    assert layout.unfinished(1, 3) == [1, 2] and layout.unfinished(0, 3) == []
    seen = []
    run_recipe(recipe(SOURCE, url), workers=1, progress=lambda phase, done, total, n: seen.append((phase, done)))
    assert [d for p, d in seen if p.startswith("segment 1/2")][0] == 3  # segment 0 trusted whole
    assert [d for p, d in seen if p.startswith("segment 2/2")][0] == 1  # shards 1 and 2 redone
    assert objects(gcs, url, "shards") == local_files(disk / "shards")  # the stray part is gone


@pytest.fixture
def honours_preconditions(monkeypatch):
    """GCS's answer to `ifGenerationMatch=0` on an existing object (412), which the emulator lacks."""
    from http import HTTPStatus

    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects as handlers

    original = handlers.insert

    def insert(request, response, storage, *args, **kwargs):
        if request.query.get("ifGenerationMatch") == ["0"] and "name" in request.query:
            try:
                storage.get_file_obj(request.params["bucket_name"], request.query["name"][0])
            except NotFound:
                pass
            else:
                response.status = HTTPStatus.PRECONDITION_FAILED
                return None
        return original(request, response, storage, *args, **kwargs)

    monkeypatch.setattr(handlers, "insert", insert)
    for _, methods in server.HANDLERS:
        if methods.get(server.POST) is original:
            monkeypatch.setitem(methods, server.POST, insert)

def test_the_gcs_run_lock_refuses_a_second_run_and_a_stale_one_is_taken_over(gcs, inputs, honours_preconditions,
                                                                             monkeypatch):
    from datamill.curate.engine import lock as lock_module
    from datamill.curate.engine.store import ObjectStore

    url = f"gs://{BUCKET}/locked"
    assert ObjectStore(url).create_exclusive("state/probe", b"1")
    assert not ObjectStore(url).create_exclusive("state/probe", b"2")  # gcsfs: 412 → FileExistsError
    assert gcs.cat_file(f"{BUCKET}/locked/state/probe") == b"1"
    holder = lock_module.RunLock(url)
    holder.acquire()
    try:
        with pytest.raises(RunError, match=r"being written by another run \(pid \d+ on .+, last heartbeat"):
            run_recipe(recipe(SOURCE, url), workers=1)
    finally:
        holder.release()
    assert not gcs.exists(f"{BUCKET}/locked/state/run.lock")
    assert_a_dead_runs_lock_is_taken_over(gcs, f"{BUCKET}/locked/state/run.lock", url, monkeypatch)
