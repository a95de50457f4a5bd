"""The generation cache of a run on an object store (moto's S3 server on 127.0.0.1) without Ray: what one
machine generates reaches the store, also when the backend fails mid-chunk, and a machine with an empty
scratch folder answers from it."""

from __future__ import annotations

import json

import pytest

from datamill.curate.engine.store import local_mirror, mirror_origin
from datamill.synth.cache import CachedGenerator
from datamill.synth.generation import Completion, SamplingParams

s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (dev extra)")
pytest.importorskip("moto.server", reason="moto[server] is not installed (dev extra)")
from test_object_store import s3_endpoint  # noqa: E402,F401  (the S3 server fixture)

URL = "s3://gen-cache/run"
CHATS = [[{"role": "user", "content": f"Question {i}?"}] for i in range(5)]


class Echo:
    """Answers "<question> (sample k)", streaming each completion; fails after `fail_after` of them."""

    model_id = "echo"

    def __init__(self, fail_after: int | None = None):
        self.fail_after, self.made = fail_after, 0

    def generate(self, chats, params, on_completion=None):
        out = []
        for i, chat in enumerate(chats):
            row = []
            for k in range(params.n):
                if self.made == self.fail_after:
                    raise ConnectionError("the server went away")
                self.made += 1
                row.append(Completion(f"{chat[-1]['content']} (sample {k})", "stop", 3))
                on_completion(i, k, row[-1])
            out.append(row)
        return out


def generator(backend, scratch, monkeypatch) -> CachedGenerator:
    """The cached generator a stage makes in a run whose output.dir is URL, on a machine with `scratch`."""
    monkeypatch.setenv("DATAMILL_SCRATCH", str(scratch))
    mirror = local_mirror(URL)
    return CachedGenerator(backend, mirror / "state" / "generation_cache", chunk_chats=2,
                           tally_path=mirror / "state" / "synthesis" / f"distill-{scratch.name}.json")


def test_entries_and_tallies_reach_the_store_and_serve_other_machines(s3_endpoint, tmp_path, monkeypatch):
    fs = s3fs.S3FileSystem()
    fs.mkdir("gen-cache")
    params = SamplingParams(max_new_tokens=4, n=2)
    assert mirror_origin(tmp_path / "elsewhere" / "state") is None  # a local run's cache stays local
    first = generator(Echo(fail_after=7), tmp_path / "machine-1", monkeypatch)
    assert mirror_origin(first.cache.folder) == f"{URL}/state/generation_cache"
    with pytest.raises(ConnectionError):
        first.generate(CHATS, params)
    fs.invalidate_cache()
    assert len(fs.find("gen-cache/run/state/generation_cache")) == 7  # chunks 1-2 and the 3 of chunk 2 streamed
    tally = json.loads(fs.cat_file("gen-cache/run/state/synthesis/distill-machine-1.json"))
    assert tally["generated"] == 4  # the tally as of the last finished chunk

    backend = Echo()
    second = generator(backend, tmp_path / "machine-2", monkeypatch)
    results = second.generate(CHATS, params)
    assert backend.made == 4  # only chats 3 (one sample of two was stored) and 4 asked again
    assert results[1][1].text == "Question 1? (sample 1)" and second.tally.cache_hits == 7
    fs.invalidate_cache()
    assert len(fs.find("gen-cache/run/state/generation_cache")) == 10
    third = Echo()
    generator(third, tmp_path / "machine-3", monkeypatch).generate(CHATS, params)
    assert third.made == 0


def test_entries_of_a_worker_killed_before_its_upload_reach_the_store_with_the_next_cache(
        s3_endpoint, tmp_path, monkeypatch):
    fs = s3fs.S3FileSystem()
    if not fs.exists("gen-cache"):
        fs.mkdir("gen-cache")
    killed = generator(Echo(), tmp_path / "machine-k", monkeypatch)
    for i in range(3):  # written locally, then the process dies before its chunk's flush
        killed.cache.put(f"{i:02d}killed", Completion(f"answer {i}", "stop", 2))
    del killed
    fs.invalidate_cache()
    assert not fs.exists("gen-cache/run/state/generation_cache/00/00killed.json")
    reopened = generator(Echo(), tmp_path / "machine-k", monkeypatch)  # a later run on the same machine
    fs.invalidate_cache()
    assert fs.cat_file("gen-cache/run/state/generation_cache/02/02killed.json") == \
        reopened.cache.path("02killed").read_bytes()
    assert not list(reopened.cache.folder.glob(".unsent.*"))  # nothing left to send
    backend = Echo()
    elsewhere = generator(backend, tmp_path / "machine-x", monkeypatch)
    elsewhere.cache.prefetch(["01killed"])
    assert elsewhere.cache.get("01killed").text == "answer 1"
