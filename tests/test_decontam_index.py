"""The decontamination index: built once per run even when workers start together, memory-mapped, same answers."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import recipe_dict, write_jsonl
from datamill.curate.engine.recipe import validate_recipe
from datamill.curate.executors.run import run_recipe
from datamill.filters.decontam_index import NgramIndex, shared_index
from datamill.filters.decontaminate import Decontaminate, DecontaminateParams
from test_decontaminate import DOCS, MATH, TRIVIA


def small_index() -> NgramIndex:
    table = pl.DataFrame(
        {"hash": [7, 3, 2**64 - 1, 3, 3, 0, 7], "_order": [0, 0, 1, 1, 0, 1, 0], "_item": [5, 1, 9, 2, 0, 4, 5]},
        schema={"hash": pl.UInt64, "_order": pl.UInt32, "_item": pl.UInt32},
    )
    return NgramIndex.from_table(table, [13, 9])


def test_lookup_returns_every_entry_of_each_wanted_hash():
    index = small_index()
    assert index.lengths == (9, 13) and len(index) == 6  # the repeated (7, 0, 5) entry is kept once
    found = index.matches(pl.Series([3, 3, 8, 2**64 - 1, 1, 7], dtype=pl.UInt64))
    assert found.rows() == [(3, 0, 0), (3, 0, 1), (3, 1, 2), (7, 0, 5), (2**64 - 1, 1, 9)]
    assert found.schema == {"hash": pl.UInt64, "_order": pl.UInt32, "_item": pl.UInt32}
    assert index.matches(pl.Series([], dtype=pl.UInt64)).height == 0
    assert index.matches(pl.Series([1, 2, 4], dtype=pl.UInt64)).height == 0


def test_lookup_agrees_with_a_join_on_random_hashes():
    rng = np.random.default_rng(3)
    pool = rng.integers(0, 2**64, size=2000, dtype=np.uint64)
    table = pl.DataFrame({"hash": rng.choice(pool, 5000), "_order": rng.integers(0, 3, 5000, dtype=np.uint32),
                          "_item": rng.integers(0, 400, 5000, dtype=np.uint32)})
    index = NgramIndex.from_table(table, [13])
    query = pl.Series("hash", np.concatenate([rng.choice(pool, 3000), rng.integers(0, 2**64, 3000, dtype=np.uint64)]))
    expected = pl.DataFrame({"hash": query}).unique().join(table.unique(), on="hash").sort(pl.all())
    assert index.matches(query).sort(pl.all()).equals(expected)


def slow_build(log: str) -> NgramIndex:
    with open(log, "a") as out:
        out.write(f"{os.getpid()}\n")
    time.sleep(0.5)  # long enough for the other process to reach the lock
    return small_index()


def open_shared(folder: str, log: str, results) -> None:
    index = shared_index(Path(folder), "key", lambda: slow_build(log))
    results.put((isinstance(index.hashes, np.memmap), index.hashes.tolist(), index.items.tolist()))


def test_processes_starting_together_build_the_index_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    log = tmp_path / "builds.log"
    workers = [context.Process(target=open_shared, args=(str(tmp_path / "index"), str(log), results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    got = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert len(log.read_text().split()) == 1  # one build, the other process waited and opened it
    expected = small_index()
    assert got == [(True, expected.hashes.tolist(), expected.items.tolist())] * 2
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["key", "key.lock"]  # no staging left


def test_a_half_written_index_folder_is_rebuilt(tmp_path):
    (tmp_path / "key").mkdir()
    (tmp_path / "key" / "hashes.npy").write_bytes(b"cut short")  # no meta.json: a build that never finished
    index = shared_index(tmp_path, "key", small_index)
    assert index.hashes.tolist() == small_index().hashes.tolist()
    (tmp_path / "key" / "items.npy").unlink()
    np.save(tmp_path / "key" / "items.npy", np.zeros(2, dtype=np.uint32))
    with pytest.raises(ValueError, match=r"index .*key is damaged \(items.npy\); delete the folder"):
        shared_index(tmp_path, "key", small_index)


def test_a_build_that_loses_the_rename_opens_the_winner(tmp_path):
    def build_while_another_machine_finishes() -> NgramIndex:
        (tmp_path / "key").mkdir()
        small_index().save(tmp_path / "key")  # finished first, unseen by our lock (e.g. another NFS client)
        return NgramIndex.from_table(pl.DataFrame({"hash": [1], "_order": [0], "_item": [0]},
                                                  schema={"hash": pl.UInt64, "_order": pl.UInt32, "_item": pl.UInt32}), [13])

    index = shared_index(tmp_path, "key", build_while_another_machine_finishes)
    assert index.hashes.tolist() == small_index().hashes.tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key", "key.lock"]


def stage(evals: Path, **params) -> Decontaminate:
    sources = {name: {"type": "jsonl", "path": str(evals / f"{name}.jsonl"), "text_field": "question"}
               for name in ("math", "trivia")}
    benchmarks = [{"name": name, "source": source} for name, source in sources.items()]
    return Decontaminate(DecontaminateParams(benchmarks=benchmarks, short_items=True, **params))


def scores(decontaminate: Decontaminate) -> pl.DataFrame:
    decontaminate.setup()
    out = decontaminate.process(pl.DataFrame({"text": list(DOCS.values())}))
    return out.select("contamination_ngrams", "contaminated_by", "contaminated_items", "_drop_reason")


def test_index_dir_is_reused_until_an_eval_file_changes(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "math.jsonl", MATH)
    write_jsonl(tmp_path / "trivia.jsonl", TRIVIA)
    in_memory = scores(stage(tmp_path))
    cache = tmp_path / "cache"
    first = stage(tmp_path, index_dir=str(cache))
    assert scores(first).equals(in_memory)
    assert isinstance(first.index.hashes, np.memmap)
    built = [p for p in cache.iterdir() if p.is_dir()]
    assert len(built) == 1

    def no_build(self):
        raise AssertionError("the index was built again")

    with monkeypatch.context() as patched:
        patched.setattr(Decontaminate, "build_index", no_build)
        assert scores(stage(tmp_path, index_dir=str(cache))).equals(in_memory)  # opened, not rebuilt
    write_jsonl(tmp_path / "trivia.jsonl", TRIVIA[:1])  # the shortest-day item is gone
    changed = scores(stage(tmp_path, index_dir=str(cache)))
    assert changed["contaminated_items"].to_list()[3] == []
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2
    assert scores(stage(tmp_path, index_dir=str(cache), ngram=12)).height == len(DOCS)  # own key
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 3
    with pytest.raises(ValueError, match="index_dir must be a local folder"):
        stage(tmp_path, index_dir="s3://bucket/indexes")


def test_two_workers_share_one_index_and_agree_with_one(tmp_path):
    write_jsonl(tmp_path / "evals" / "math.jsonl", MATH)
    write_jsonl(tmp_path / "evals" / "trivia.jsonl", TRIVIA)
    for part in range(2):  # two input files: two shards, one per worker
        write_jsonl(tmp_path / "raw" / f"train{part}.jsonl",
                    [{"text": t, "label": n} for n, t in list(DOCS.items())[part::2]])
    benchmarks = [{"name": name, "source": {"type": "jsonl", "path": str(tmp_path / "evals" / f"{name}.jsonl"),
                                            "text_field": "question"}} for name in ("math", "trivia")]
    stages = [{"type": "decontaminate", "benchmarks": benchmarks, "short_items": True, "action": "flag"}]
    corpora = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        run_recipe(validate_recipe(recipe_dict(str(tmp_path / "raw" / "*.jsonl"), str(out), stages)), workers=workers)
        folder = out / "state" / "decontaminate"
        assert len([p for p in folder.iterdir() if p.is_dir()]) == 1
        corpora[workers] = pl.read_parquet(sorted((out / "shards").glob("*.parquet"))).select(
            pl.col("meta").str.json_path_match("$.label"), "contaminated_by", "contaminated_items"
        ).sort("meta")
    assert corpora[2].equals(corpora[1])
    assert corpora[2].filter(pl.col("contaminated_by").list.len() > 0).height == 4
