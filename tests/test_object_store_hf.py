"""hf:// inputs through huggingface_hub's HfFileSystem, offline: HF_ENDPOINT points the client at a stub of the
Hub's HTTP API on 127.0.0.1 that serves one folder as the dataset repo `user/corpus`.

There is no Hub emulator to install (the Hub's server is not published; huggingface_hub's own tests use
its staging Hub online), so the stub answers only the four read calls HfFileSystem makes for what
datamill does with an hf:// input — repo info, tree listing, paths-info and `resolve` downloads (with
Range) — shaped as the Hub answers them. A run directory on hf:// is refused up front (every object
written would be a Hub commit).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import polars as pl
import pytest

from conftest import make_documents, write_jsonl
from datamill.curate.engine.paths import local_copy
from datamill.curate.engine.recipe import RecipeError, load_recipe, validate_recipe
from datamill.curate.executors.run import run_recipe

hub = pytest.importorskip("huggingface_hub")

REPO = "user/corpus"
COMMIT = "c0ffee" * 6 + "c0ff"


class StubHub(ThreadingHTTPServer):
    """The Hub's read API for one dataset repo whose files are those under `root`."""

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), StubHubHandler)
        self.root = root


class StubHubHandler(BaseHTTPRequestHandler):
    server: StubHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def entry(self, path: Path) -> dict:
        rel = path.relative_to(self.server.root).as_posix()
        if path.is_dir():
            return {"type": "directory", "path": rel, "oid": "0" * 40}
        data = path.read_bytes()  # a git blob id, as the Hub reports for files outside LFS
        return {"type": "file", "path": rel, "size": len(data),
                "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}

    def send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def answer(self, payload) -> None:
        self.send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def do_GET(self):
        url = urlparse(self.path)
        path, root = unquote(url.path), self.server.root
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if self.command == "POST" else b""
        if re.fullmatch(rf"/api/datasets/{REPO}(/revision/[^/]+)?", path):
            files = [{"rfilename": p.relative_to(root).as_posix()} for p in sorted(root.rglob("*")) if p.is_file()]
            return self.answer({"id": REPO, "sha": COMMIT, "siblings": files})
        if m := re.fullmatch(rf"/api/datasets/{REPO}/tree/[^/]+/?(.*)", path):
            folder = root / m.group(1)
            if not folder.is_dir():
                return self.send(404, b'{"error": "no such folder"}')
            listed = folder.rglob("*") if "recursive=true" in url.query.lower() else folder.iterdir()
            return self.answer([self.entry(p) for p in sorted(listed)])
        if re.fullmatch(rf"/api/datasets/{REPO}/paths-info/[^/]+", path):
            asked = json.loads(body)["paths"] if body.startswith(b"{") else parse_qs(body.decode()).get("paths", [])
            return self.answer([self.entry(root / p) for p in asked if (root / p).exists()])
        if (m := re.fullmatch(rf"/datasets/{REPO}/resolve/[^/]+/(.+)", path)) and (root / m.group(1)).is_file():
            data = (root / m.group(1)).read_bytes()
            headers = {"ETag": f'"{self.entry(root / m.group(1))["oid"]}"', "X-Repo-Commit": COMMIT,
                       "Accept-Ranges": "bytes"}
            if wanted := self.headers.get("Range"):
                start, end = wanted.split("=", 1)[1].split("-")
                start, end = int(start), min(int(end) if end else len(data) - 1, len(data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return self.send(206, data[start:end + 1], headers)
            return self.send(200, data, headers)
        self.send(404, b'{"error": "not found"}', {"Content-Type": "application/json"})

    do_HEAD = do_POST = do_GET


@pytest.fixture(scope="module")
def hf_repo(tmp_path_factory):
    """Two jsonl files (a duplicate across them, a broken line) in the stub Hub's dataset repo."""
    root = tmp_path_factory.mktemp("hub-repo")
    docs = make_documents(40)
    write_jsonl(root / "raw" / "a.jsonl", [{"text": d} for d in docs[:20]] + ["{broken"])
    write_jsonl(root / "raw" / "b.jsonl", [{"text": d} for d in docs[20:]] + [{"text": docs[3]}])
    server = StubHub(root)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    import fsspec.config
    import huggingface_hub.constants as constants

    patch = pytest.MonkeyPatch()
    # HF_ENDPOINT is read when huggingface_hub is imported (maybe already, by another test): the same
    # setting through fsspec's configuration (FSSPEC_HF_ENDPOINT), which every hf:// filesystem gets
    patch.setitem(fsspec.config.conf, "hf", {"endpoint": f"http://127.0.0.1:{server.server_address[1]}"})
    patch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub.HfFileSystem.clear_instance_cache()
    yield root
    hub.HfFileSystem.clear_instance_cache()
    patch.undo()
    server.shutdown()
    server.server_close()


def test_an_hf_source_reads_the_records_of_the_same_files_on_disk(hf_repo, tmp_path):
    def recipe(path: str, out: Path):
        return validate_recipe({"name": "hf-in", "output": {"dir": str(out)},
                                "sources": [{"type": "jsonl", "path": path, "name": "docs"}],
                                "stages": [{"type": "exact_dedup"}]})

    from_hub = run_recipe(recipe(f"hf://datasets/{REPO}/raw/*.jsonl", tmp_path / "hub"), workers=1)
    from_disk = run_recipe(recipe(str(hf_repo / "raw" / "*.jsonl"), tmp_path / "disk"), workers=1)
    hub_rows = pl.read_parquet(sorted((tmp_path / "hub" / "shards").glob("*.parquet")))
    disk_rows = pl.read_parquet(sorted((tmp_path / "disk" / "shards").glob("*.parquet")))
    assert hub_rows.drop("id").equals(disk_rows.drop("id")) and hub_rows.height == 40
    assert hub_rows["id"].str.starts_with(f"docs:hf://datasets/{REPO}/raw/a.jsonl:").sum() == 20
    assert from_hub["quarantine"]["by_reason"] == from_disk["quarantine"]["by_reason"] == {"bad_json": 1}
    assert from_hub["stages"][0]["dropped"] == {"exact_duplicate": 1}


def test_an_hf_file_and_folder_are_copied_once_for_libraries_that_need_real_files(hf_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("DATAMILL_CACHE", str(tmp_path / "cache"))
    copy = local_copy(f"hf://datasets/{REPO}/raw/b.jsonl")
    assert Path(copy).read_bytes() == (hf_repo / "raw" / "b.jsonl").read_bytes()
    assert local_copy(f"hf://datasets/{REPO}/raw/b.jsonl") == copy
    folder = Path(local_copy(f"hf://datasets/{REPO}/raw"))
    assert sorted(p.name for p in folder.iterdir()) == ["a.jsonl", "b.jsonl"]


def test_an_hf_output_dir_is_refused_before_anything_is_written(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", make_documents(3))
    (tmp_path / "r.yaml").write_text(f"name: r\nsources: [{{type: jsonl, path: {tmp_path / 'in.jsonl'}}}]\n"
                                     "output: {dir: 'hf://datasets/user/runs/web'}\n")
    with pytest.raises(RecipeError, match=r"output.dir: hf://datasets/user/runs/web cannot hold a run directory: .*"
                                          r"commit.*datamill export RUN_DIR --format hf"):
        load_recipe(tmp_path / "r.yaml")
