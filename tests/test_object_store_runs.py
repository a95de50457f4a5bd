"""A whole run directory on an S3-compatible store (moto's server on 127.0.0.1): same bytes as on disk,
resume that trusts only verified markers, the object-store lock, --fresh, report and export."""

from __future__ import annotations

import json
import time

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

s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (pip install datamill[s3])")
pytest.importorskip("moto.server", reason="moto[server] is not installed (dev extra)")
from test_object_store import s3_endpoint  # noqa: E402,F401  (the module's S3 server fixture)

BUCKET = "runs"
runner = CliRunner()


def recipe(inputs, out, **output):
    return validate_recipe({
        "name": "store-run", "seed": 3,
        "output": {"dir": str(out), "shard_rows": 20, "keep_removed": True, **output},
        "sources": [{"type": "jsonl", "path": str(inputs / "*.jsonl"), "name": "docs"}],
        "stages": [{"type": "length_filter", "min_words": 5},
                   {"type": "exact_dedup"}]})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    docs = make_documents(120)
    for k in range(3):  # duplicates across files, a short doc and a broken line in each
        rows = [{"text": d} for d in docs[k * 40:(k + 1) * 40]] + [{"text": docs[k]}, {"text": "too short"}, "{bad"]
        write_jsonl(folder / f"part{k}.jsonl", rows)
    return folder


@pytest.fixture(scope="module")
def store(s3_endpoint, tmp_path_factory):
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec reuses filesystems: never one of another module's server
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    scratch = tmp_path_factory.mktemp("scratch")
    patch = pytest.MonkeyPatch()
    patch.setenv("DATAMILL_SCRATCH", str(scratch))  # the runs' local mirrors
    yield fs
    patch.undo()
    s3fs.S3FileSystem.clear_instance_cache()


def objects(fs, url: str, folder: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    root = url.removeprefix("s3://") + "/" + folder
    return {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in sorted(fs.find(root))}


def local_files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def disk_run(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("disk") / "run"
    stats = run_recipe(recipe(inputs, out), workers=1)
    return out, stats


def test_datamill_run_to_s3_writes_the_same_shards_report_and_stats_as_a_local_run(store, inputs, disk_run, tmp_path):
    disk, disk_stats = disk_run
    url = f"s3://{BUCKET}/same"
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe(inputs, "unused").model_dump(mode="json")))
    result = runner.invoke(app, ["run", str(recipe_file), "-o", url, "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert f"corpus: {url}/shards" in result.output and f"report: {url}/report.html" in result.output
    assert objects(store, url, "shards") == local_files(disk / "shards")
    assert objects(store, url, "quarantine") == local_files(disk / "quarantine")
    assert objects(store, url, "removed/exact_dedup") == local_files(disk / "removed" / "exact_dedup")
    stats = json.loads(store.cat_file(f"{BUCKET}/same/stats.json"))
    assert stats["output"] == disk_stats["output"] and stats["run_dir"] == url
    assert stats["quarantine"]["by_reason"] == disk_stats["quarantine"]["by_reason"] == {"bad_json": 3}
    report = store.cat_file(f"{BUCKET}/same/report.md").decode()
    assert f"{url}/shards" in report and store.exists(f"{BUCKET}/same/report.html")
    assert store.find(f"{BUCKET}/same/plots")  # the plots were uploaded too
    markers = RunLayout(url).done_markers()
    assert len(markers) == 2 * 3 and all(e.get("version") for m in markers for e in m["committed"])
    store.rm(f"{BUCKET}/same/report.md")
    result = runner.invoke(app, ["report", url])  # re-rendered from the store's stats.json
    assert result.exit_code == 0, result.output
    assert store.cat_file(f"{BUCKET}/same/report.md").decode() == report


def test_resume_redoes_exactly_the_shards_whose_objects_were_deleted_or_altered(store, inputs, disk_run, tmp_path):
    disk, _ = disk_run
    url = f"s3://{BUCKET}/resume"
    run_recipe(recipe(inputs, url), workers=1)
    root = f"{BUCKET}/resume"
    shards = sorted(store.find(f"{root}/shards"))
    store.rm(shards[0])                                            # shard 0's first file deleted
    store.pipe_file(shards[-1], store.cat_file(shards[-1])[:-1] + b"!")  # shard 2's last file edited
    # an interrupted attempt at shard 1: files under their final names, no marker, one extra
    store.rm(f"{root}/state/done/segment-1-shard-00001.json")
    store.pipe_file(f"{root}/shards/part-00001-009.parquet", b"partial upload")
    # shard 2's intermediate (segment 0 output, read back by segment 1) replaced on the store
    store.pipe_file(f"{root}/state/segment-0/part-00002-000.parquet", b"not parquet at all")
    layout = RunLayout(url)
    assert [layout.verified_done(0, i) for i in range(3)] == [True, True, False]
    seen = []
    run_recipe(recipe(inputs, url), workers=1, progress=lambda phase, done, total, n: seen.append((phase, done)))
    first = [done for phase, done in seen if phase.startswith("segment 1/2")]
    assert first[0] == 2  # segment 0: only shard 2 redone, the others' objects verified and trusted
    last = [done for phase, done in seen if phase.startswith("segment 2/2")]
    assert last[0] == 0  # none of the three last-segment shards verified: all redone
    assert [layout.verified_done(s, i) for s in (0, 1) for i in range(3)] == [True] * 6
    assert objects(store, url, "shards") == local_files(disk / "shards")  # the stray part is gone


def test_a_held_s3_lock_refuses_a_second_run_and_a_stale_one_is_taken_over(store, inputs, monkeypatch):
    from datamill.curate.engine import lock as lock_module

    url = f"s3://{BUCKET}/locked"
    holder = lock_module.RunLock(url)
    holder.acquire()
    try:
        with pytest.raises(RunError, match=r"being written by another run \(pid \d+ on .+, last heartbeat"):
            run_recipe(recipe(inputs, url), workers=1)
        with pytest.raises(lock_module.RunLocked):
            lock_module.RunLock(url).acquire()
    finally:
        holder.release()
    assert not store.exists(f"{BUCKET}/locked/state/run.lock")
    assert_a_dead_runs_lock_is_taken_over(store, f"{BUCKET}/locked/state/run.lock", url, monkeypatch)



def test_fresh_clears_the_prefix_export_reads_an_s3_run_and_versionless_stores_rehash(store, inputs, disk_run,
                                                                                         tmp_path, monkeypatch):
    disk, _ = disk_run
    url = f"s3://{BUCKET}/fresh"
    store.pipe_file(f"{BUCKET}/fresh/shards/part-00099-000.parquet", b"left by an older run")
    run_recipe(recipe(inputs, url), workers=1, resume=False)
    assert objects(store, url, "shards") == local_files(disk / "shards")
    result = runner.invoke(app, ["export", url, "--format", "hf", "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "hf" / "datamill_export.json").read_text())
    exported = pl.read_parquet(sorted((tmp_path / "hf").rglob("*.parquet")))
    corpus = pl.read_parquet(sorted((disk / "shards").glob("*.parquet")))
    assert manifest["documents"] == corpus.height == exported.height
    assert exported["text"].to_list() == corpus["text"].to_list()
    assert manifest["source"] == url
    # what a stage wrote into the local mirror (generation tallies) is uploaded with the run's files
    tally = RunLayout(url).root / "state" / "synthesis" / "gen-1.json"
    tally.parent.mkdir(parents=True, exist_ok=True)
    tally.write_text('{"calls": 3}')
    RunLayout(url).sync_up(("state/synthesis",))
    assert store.cat_file(f"{BUCKET}/fresh/state/synthesis/gen-1.json") == b'{"calls": 3}'
    # a store that reports no object versions (no ETag): resume re-hashes the objects' bytes
    import datamill.curate.engine.layout as layout_module

    monkeypatch.setattr(layout_module, "version", lambda info: None)
    layout = RunLayout(url)
    assert layout.unfinished(1, 3) == [] and layout.verified_done(1, 0)
    first = sorted(store.find(f"{BUCKET}/fresh/shards"))[0]
    data = store.cat_file(first)
    store.pipe_file(first, data[:100] + bytes([data[100] ^ 1]) + data[101:])  # same size, one bit flipped
    assert layout.unfinished(1, 3) == [0] and not layout.verified_done(1, 0)
