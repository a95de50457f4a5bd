"""`executor.reduce_partitions`: dedup barriers reduced in hash-range partitions give the same corpus."""

from __future__ import annotations

from pathlib import Path

from conftest import make_documents, recipe_dict, write_jsonl
from datamill.curate.engine.recipe import validate_recipe
from datamill.curate.executors.run import run_recipe


def near_duplicate_corpus(folder: Path) -> Path:
    docs = make_documents(240, sentences_per_doc=8)
    for k in range(4):
        rows = [{"text": d} for d in docs[k * 60:(k + 1) * 60]]
        rows += [{"text": docs[(k * 17) % 240]}]  # an exact copy from another file
        rows += [{"text": docs[(k * 31 + 5) % 240].replace(". ", "; ", 1)}]  # a near copy
        write_jsonl(folder / f"part{k}.jsonl", rows)
    return folder


def test_partitioned_dedup_reduce_writes_the_same_corpus(tmp_path):
    raw = near_duplicate_corpus(tmp_path / "raw")
    stages = [{"type": "exact_dedup"}, {"type": "minhash_dedup", "threshold": 0.7}]
    shards, stats = {}, {}
    for partitions in (1, 4):
        spec = recipe_dict(str(raw / "*.jsonl"), str(tmp_path / f"p{partitions}"), stages)
        spec["executor"]["reduce_partitions"] = partitions
        stats[partitions] = run_recipe(validate_recipe(spec), workers=2)
        out = tmp_path / f"p{partitions}" / "shards"
        shards[partitions] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        assert not list((tmp_path / f"p{partitions}" / "state").rglob("reduce"))  # work files removed
    assert shards[4] == shards[1]
    assert stats[4]["stages"][0]["dropped"] == {"exact_duplicate": 4}
    assert stats[4]["stages"][1]["dropped"].get("near_duplicate", 0) >= 3


def test_reduce_partitions_do_not_change_the_fingerprint(tmp_path):
    spec = recipe_dict(str(tmp_path / "*.jsonl"), str(tmp_path / "out"), [])
    one = validate_recipe(spec).fingerprint()
    spec["executor"]["reduce_partitions"] = 8
    assert validate_recipe(spec).fingerprint() == one
