"""minhash_lsh_index: incremental dedup against a persisted datasketch MinHashLSH."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import tempfile
import textwrap

import polars as pl
import pytest
from datasketch import MinHash, MinHashLSH
from pydantic import ValidationError

from conftest import recipe_dict, write_jsonl
from datamill.curate.dedup.lsh_index import MinHashLSHIndex, MinHashLSHIndexParams, load_index
from datamill.curate.dedup.shingles import Shingler
from datamill.curate.executors.run import run_recipe
from datamill.curate.engine.recipe import validate_recipe



def edited(text: str, word: int) -> str:
    """`text` with its `word`-th word replaced (a near-duplicate: Jaccard ~0.95 over 5-word shingles)."""
    words = text.split()
    words[word] = "reworded"
    return " ".join(words)


# long standard-library docstrings (150-300 words): real prose, unrelated to each other
OLD = [json.dumps.__doc__, subprocess.run.__doc__, textwrap.TextWrapper.__doc__]
NEW = [shutil.copytree.__doc__, tempfile.mkstemp.__doc__, shutil.move.__doc__, os.walk.__doc__]
OLD_EDITED = edited(OLD[0], 30)
NEW_EDITED = edited(NEW[0], 40)


def datasketch_minhash(text: str, num_perm: int = 112, seed: int = 1) -> MinHash:
    """What a plain datasketch user computes: MinHash over the same 5-word shingles."""
    sketch = MinHash(num_perm=num_perm, seed=seed)
    for shingle in Shingler("word", 5).table(pl.Series([text]))["shingle"].unique():
        sketch.update(shingle.encode("utf-8"))
    return sketch


@pytest.fixture
def old_index(tmp_path):
    """An index built by plain datasketch from OLD, keys old-0…, pickled."""
    lsh = MinHashLSH(threshold=0.8, num_perm=112)
    for i, text in enumerate(OLD):
        lsh.insert(f"old-{i}", datasketch_minhash(text))
    path = tmp_path / "old.pkl"
    path.write_bytes(pickle.dumps(lsh))
    return path


def run_stage(stage: MinHashLSHIndex, parts: list[pl.DataFrame]) -> pl.DataFrame:
    """What the executor does: summarize every part, reduce once, apply to every part."""
    summaries = pl.concat([stage.summarize(part) for part in parts])
    decision = stage.reduce(summaries.lazy())
    return pl.concat([stage.apply(part, decision) for part in parts])


def batch(texts: list[str], start: int = 0) -> pl.DataFrame:
    n = len(texts)
    return pl.DataFrame(
        {"id": [f"new-{start + i}" for i in range(n)], "text": texts,
         "_pos": pl.Series(range(start * 10, (start + n) * 10, 10), dtype=pl.UInt64)}
    )


def test_documents_already_in_the_index_are_removed(old_index):
    texts = [NEW[0], OLD[1], NEW[1], OLD_EDITED, NEW[2], ""]
    stage = MinHashLSHIndex(MinHashLSHIndexParams(index=str(old_index)))
    out = run_stage(stage, [batch(texts[:3]), batch(texts[3:], start=3)])
    assert out["id"].to_list() == [f"new-{i}" for i in range(6)]  # apply keeps each part's order
    assert out["_drop_reason"].to_list() == [None, "indexed_duplicate", None, "indexed_duplicate", None, None]
    assert out["dup_of"].to_list() == [None, "old-1", None, "old-0", None, None]


def test_near_duplicates_within_the_run_keep_the_first_unless_dedup_within_is_off(old_index):
    texts = [NEW[0], NEW[1], NEW_EDITED, NEW[0]]
    within = run_stage(MinHashLSHIndex(MinHashLSHIndexParams(index=str(old_index))), [batch(texts)])
    assert within["dup_of"].to_list() == [None, None, "new-0", "new-0"]
    index_only = MinHashLSHIndexParams(index=str(old_index), dedup_within=False)
    assert run_stage(MinHashLSHIndex(index_only), [batch(texts)])["dup_of"].to_list() == [None] * 4


def test_saved_index_answers_plain_datasketch_queries(old_index, tmp_path):
    saved = tmp_path / "grown.pkl"
    params = MinHashLSHIndexParams(index=str(old_index), save_index=str(saved))
    run_stage(MinHashLSHIndex(params), [batch([NEW[0], OLD[2], NEW[1], NEW_EDITED])])
    lsh = pickle.loads(saved.read_bytes())  # plain pickle, plain datasketch
    assert sorted(lsh.keys) == ["new-0", "new-2", "old-0", "old-1", "old-2"]  # kept documents were added
    assert lsh.query(datasketch_minhash(NEW[1])) == ["new-2"]
    assert lsh.query(datasketch_minhash(edited(NEW[1], 50))) == ["new-2"]
    assert lsh.query(datasketch_minhash(NEW[0])) == ["new-0"]
    assert lsh.query(datasketch_minhash(NEW[3])) == []
    assert pickle.loads(old_index.read_bytes()).keys.size() == 3  # the input index is untouched


def test_first_run_starts_an_empty_index_and_the_next_run_uses_it(tmp_path):
    first = tmp_path / "day1.pkl"
    out = run_stage(MinHashLSHIndex(MinHashLSHIndexParams(save_index=str(first))), [batch(NEW[:2] + [NEW[0]])])
    assert out["dup_of"].to_list() == [None, None, "new-0"]
    second = MinHashLSHIndexParams(index=str(first), save_index=str(tmp_path / "day2.pkl"))
    out = run_stage(MinHashLSHIndex(second), [batch([NEW_EDITED, NEW[3]], start=10)])
    assert out["dup_of"].to_list() == ["new-0", None]
    assert sorted(load_index(tmp_path / "day2.pkl").keys) == ["new-0", "new-1", "new-11"]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_only_datasketch_indexes_are_unpickled(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.pkl.*references posix\.system"):
        load_index(evil)
    custom = MinHashLSH(num_perm=112, hashfunc=repr)
    (tmp_path / "custom.pkl").write_bytes(pickle.dumps(custom))
    with pytest.raises(pickle.UnpicklingError, match="builtins.repr"):
        load_index(tmp_path / "custom.pkl")
    with pytest.raises(FileNotFoundError, match="missing.pkl does not exist"):
        load_index(tmp_path / "missing.pkl")


def test_mismatched_index_and_bad_records_give_clear_errors(old_index, tmp_path):
    with pytest.raises(ValueError, match="num_perm=112, the stage num_perm=64"):
        MinHashLSHIndex(MinHashLSHIndexParams(index=str(old_index), num_perm=64)).open_index()
    with pytest.raises(ValidationError, match="save_index must differ from index"):
        MinHashLSHIndexParams(index=str(old_index), save_index=str(old_index))
    with pytest.raises(ValueError, match="key_field 'url' names no column"):
        MinHashLSHIndex(MinHashLSHIndexParams(key_field="url")).summarize(batch(NEW[:1]))
    reused_key = batch([NEW[0]]).with_columns(pl.lit("old-1").alias("id"))
    stage = MinHashLSHIndex(MinHashLSHIndexParams(index=str(old_index)))
    with pytest.raises(ValueError, match="id='old-1' is already a key of the index"):
        stage.reduce(stage.summarize(reused_key).lazy())


def test_recipe_run_drops_indexed_documents_and_saves_the_index(old_index, tmp_path):
    rows = [{"text": t} for t in [NEW[0], OLD[0], NEW[1], NEW_EDITED, NEW[2], OLD_EDITED, NEW[3]]]
    write_jsonl(tmp_path / "raw" / "a.jsonl", rows[:4])
    write_jsonl(tmp_path / "raw" / "b.jsonl", rows[4:])
    saved = tmp_path / "index" / "next.pkl"
    stage = {"type": "minhash_lsh_index", "index": str(old_index), "save_index": str(saved)}
    recipe = validate_recipe(recipe_dict(str(tmp_path / "raw" / "*.jsonl"), str(tmp_path / "out"), [stage]))
    stats = run_recipe(recipe, workers=1)
    corpus = pl.read_parquet(sorted((tmp_path / "out" / "shards").glob("*.parquet")))
    assert corpus["text"].to_list() == [NEW[0], NEW[1], NEW[2], NEW[3]]
    assert corpus["dup_of"].null_count() == 4
    assert stats["stages"][0]["dropped"] == {"indexed_duplicate": 3}
    assert sorted(load_index(saved).keys) == sorted(corpus["id"].to_list() + ["old-0", "old-1", "old-2"])
