"""Synthesis on Ray workers that share only an S3 run dir (moto on 127.0.0.1, each side its own
DATAMILL_SCRATCH): the generation cache and the tallies the workers write reach the store, and a rerun
on machines with empty scratch folders finds them there and sends the teacher nothing.

The test runs in tests/test_ray_executor.py (which imports it), on that module's Ray cluster and S3
server: a cluster of its own would cost ~8 s to start and ~7 s more to warm its workers.
"""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import make_documents, write_jsonl
from datamill.curate.engine.recipe import validate_recipe
from datamill.curate.executors.run import run_recipe

PROBE = "Say OK."  # what the openai backend asks once per generator to learn the server's gaps


class Teacher(ThreadingHTTPServer):
    """An OpenAI-compatible chat server answering "Answer: <length of the prompt>"; counts the prompts
    it was asked (the backend's capability probe aside)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), TeacherHandler)
        self.lock = threading.Lock()
        self.prompts: list[str] = []


class TeacherHandler(BaseHTTPRequestHandler):
    server: Teacher

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        if prompt != PROBE:
            with self.server.lock:
                self.server.prompts.append(prompt)
        choices = [{"index": i, "message": {"role": "assistant", "content": f"Answer: {len(prompt) + i}"},
                    "finish_reason": "stop"} for i in range(body.get("n", 1))]
        data = json.dumps({"object": "chat.completion", "choices": choices,
                           "usage": {"completion_tokens": 4 * len(choices)}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def teacher():
    server = Teacher()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def store_files(fs, prefix: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {p[len(prefix) + 1:]: fs.cat_file(p) for p in sorted(fs.find(prefix))}


def test_ray_workers_share_the_generation_cache_and_tallies_through_the_store(ray_cluster, teacher, worker_scratch,
                                                                              tmp_path, monkeypatch):
    """Issue 18: a synthesis stage on Ray workers without a shared filesystem."""
    s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (dev extra)")
    pytest.importorskip("moto.server", reason="moto[server] is not installed (dev extra)")
    docs = make_documents(18)
    for k in range(3):
        write_jsonl(tmp_path / "raw" / f"part{k}.jsonl", [{"text": f"How long is this? {d}"} for d in docs[k * 6:k * 6 + 6]])
    url = "s3://synth-runs/run"
    spec = validate_recipe({
        "name": "remote-synth", "output": {"dir": url},
        "sources": [{"type": "jsonl", "path": str(tmp_path / "raw" / "*.jsonl"), "name": "asks"}],
        "stages": [{"type": "distill", "generator": {
            "backend": "openai", "model": "teacher", "batch_size": 4, "max_retries": 0,
            "base_url": f"http://127.0.0.1:{teacher.server_address[1]}/v1"},
            "sampling": {"max_new_tokens": 8, "n": 2}}],
        "executor": {"type": "ray", "batch_rows": 4}})
    fs = s3fs.S3FileSystem()
    fs.mkdir("synth-runs")
    monkeypatch.setenv("DATAMILL_SCRATCH", str(tmp_path / "driver-1"))

    import datamill.curate.report.render as render

    monkeypatch.setattr(render, "draw_all", lambda stats, folder: {})  # no PNGs (~1 s a run): not tested here
    first = run_recipe(spec, workers=1)
    assert first["executor"] == "ray" and first["output"]["records"] == 18
    assert len(teacher.prompts) == 18  # one request per prompt (n=2 in one request)
    cache = store_files(fs, "synth-runs/run/state/generation_cache")
    assert len(cache) == 36  # 18 prompts x 2 samples, uploaded by the workers
    local_entries = {p.relative_to(p.parents[1]).as_posix() for p in worker_scratch.rglob("generation_cache/*/*.json")}
    assert local_entries == set(cache)  # written on the workers' side, under their own scratch folder
    assert not list((tmp_path / "driver-1").rglob("generation_cache/*/*.json"))  # the driver generated nothing
    tallies = [json.loads(v) for v in store_files(fs, "synth-runs/run/state/synthesis").values()]
    assert sum(t["generated"] for t in tallies) == 36 and sum(t["cache_hits"] for t in tallies) == 0
    shards = store_files(fs, "synth-runs/run/shards")

    # Other machines take over: every shard to redo (its done marker lost), no local state anywhere.
    fs.rm([p for p in fs.find("synth-runs/run/state/done")])
    shutil.rmtree(worker_scratch)
    worker_scratch.mkdir()
    monkeypatch.setenv("DATAMILL_SCRATCH", str(tmp_path / "driver-2"))
    teacher.prompts.clear()
    second = run_recipe(spec, workers=1)
    assert teacher.prompts == []  # regenerated nothing: every completion came from the store's cache
    assert second["output"] == first["output"] and store_files(fs, "synth-runs/run/shards") == shards
    tallies = [json.loads(v) for v in store_files(fs, "synth-runs/run/state/synthesis").values()]
    again = [t for t in tallies if t["completions"] and t["generated"] == 0]
    assert sum(t["cache_hits"] for t in again) == sum(t["completions"] for t in again) == 36
    report = fs.cat_file("synth-runs/run/report.md").decode()
    assert "| `distill` | 72 | 50.0% | 36 |" in report  # the synthesis section: both runs, half from the cache
