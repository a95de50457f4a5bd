"""Running recipes end to end: output, dedup across shards, determinism, flags, errors, quarantine."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import polars as pl
import pytest

from conftest import make_documents, recipe_dict, write_jsonl
from datamill.curate.executors.run import RunError, run_recipe
from datamill.curate.engine.recipe import validate_recipe
from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Stage

STAGES = [{"type": "normalize_text"}, {"type": "length_filter", "min_words": 10}, {"type": "exact_dedup"}]


def run(corpus: Path, out: Path, stages=STAGES, workers=1, **output) -> dict:
    recipe = validate_recipe(recipe_dict(str(corpus / "*.jsonl"), str(out), stages, **output))
    return run_recipe(recipe, workers=workers)


def read_corpus(out: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted((out / "shards").glob("*.parquet")))


def test_run_writes_deduplicated_corpus_loadable_by_datasets(corpus_dir, tmp_path):
    out = tmp_path / "out"
    stats = run(corpus_dir, out)
    corpus = read_corpus(out)
    assert corpus.height == 120  # 124 read, the 4 copies removed across files
    assert corpus["text"].n_unique() == 120
    assert set(corpus.columns) >= {"id", "source", "text", "meta", "n_words", "exact_dup_count"}
    assert not any(c.startswith("_") for c in corpus.columns)
    assert corpus.filter(pl.col("id").str.ends_with("/part1.jsonl:1"))["meta"].item() == '{"url":"https://example.org/1/0"}'
    dedup = stats["stages"][2]
    assert dedup["records_in"] == 124 and dedup["dropped"] == {"exact_duplicate": 4}
    loaded = datasets.load_dataset("parquet", data_dir=str(out / "shards"), split="train")
    assert len(loaded) == 120
    assert (out / "report.html").exists() and (out / "report.md").exists()


def test_output_is_identical_for_any_worker_count(corpus_dir, tmp_path):
    run(corpus_dir, tmp_path / "one", workers=1)
    run(corpus_dir, tmp_path / "two", workers=2)
    one = sorted((tmp_path / "one" / "shards").iterdir())
    two = sorted((tmp_path / "two" / "shards").iterdir())
    assert [p.name for p in one] == [p.name for p in two]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))


def test_flag_keeps_rows_and_writes_reason(corpus_dir, tmp_path):
    stages = [{"type": "length_filter", "min_words": 60, "action": "flag"}]
    stats = run(corpus_dir, tmp_path / "out", stages)
    corpus = read_corpus(tmp_path / "out")
    assert corpus.height == 124
    assert set(corpus["length_filter_reason"].drop_nulls()) == {"too_few_words"}
    assert stats["stages"][0]["flagged"]["too_few_words"] == corpus["length_filter_reason"].is_not_null().sum()


def test_keep_removed_and_jsonl_zst_shards(corpus_dir, tmp_path):
    out = tmp_path / "out"
    run(corpus_dir, out, keep_removed=True, format="jsonl.zst", shard_rows=10)
    files = sorted((out / "shards").glob("*.jsonl.zst"))
    rows = pl.concat([pl.read_ndjson(f) for f in files])
    assert rows.height == 120 and max(pl.read_ndjson(f).height for f in files) == 10
    removed = pl.read_parquet(sorted((out / "removed" / "exact_dedup").glob("*.parquet")))
    assert removed.height == 4 and set(removed["drop_reason"]) == {"exact_duplicate"}


@register_stage
class ExplodesOnWord(Stage):
    """Test stage: raises on any text containing 'chestnuts'."""

    type_name = "test_explodes_on_word"

    def process(self, batch):
        if batch["text"].str.contains("chestnuts").any():
            raise ValueError("cannot digest chestnuts")
        return batch


def test_stage_error_quarantines_only_the_failing_records(corpus_dir, tmp_path):
    out = tmp_path / "out"
    stats = run(corpus_dir, out, [{"type": "test_explodes_on_word"}])
    corpus = read_corpus(out)
    bad = pl.concat([pl.read_ndjson(f) for f in (out / "quarantine").glob("*.jsonl")])
    assert bad.height > 0 and corpus.height + bad.height == 124
    assert not corpus["text"].str.contains("chestnuts").any()
    assert set(bad["reason"]) == {"stage_error:test_explodes_on_word"}
    assert "raised ValueError: cannot digest chestnuts" in bad["detail"][0]
    assert json.loads(bad["raw"][0])["text"].count("chestnuts") >= 1
    assert stats["stages"][0]["errors"] == bad.height
    assert stats["quarantine"]["by_reason"] == {"stage_error:test_explodes_on_word": bad.height}


def test_malformed_input_is_quarantined_counted_and_reported(tmp_path):
    good = make_documents(5)
    lines = [json.dumps({"text": good[0]}), "{not json", json.dumps({"body": "no text field"}),
             json.dumps({"text": 42}), json.dumps({"text": "   "}), json.dumps({"text": good[1]})]
    folder = tmp_path / "raw"
    write_jsonl(folder / "a.jsonl", lines)
    with open(folder / "a.jsonl", "ab") as f:
        f.write(b'{"text": "caf\xe9 latin-1 bytes"}\n')
    stats = run(folder, tmp_path / "out", [])
    assert stats["quarantine"]["by_reason"] == {
        "bad_json": 1, "empty_text": 1, "invalid_utf8": 1, "missing_field:text": 1, "non_string_field:text": 1}
    assert stats["sources"][0]["records_read"] == 7 and stats["output"]["records"] == 2
    report = (tmp_path / "out" / "report.md").read_text()
    assert "invalid_utf8" in report and "non_string_field:text" in report


def test_a_different_recipe_in_the_same_dir_needs_fresh(corpus_dir, tmp_path):
    out = tmp_path / "out"
    run(corpus_dir, out)
    with pytest.raises(RunError, match="--fresh"):
        run(corpus_dir, out, [{"type": "normalize_text"}])
    recipe = validate_recipe(recipe_dict(str(corpus_dir / "*.jsonl"), str(out), [{"type": "normalize_text"}]))
    stats = run_recipe(recipe, workers=1, resume=False)
    assert stats["output"]["records"] == 124


def distinct_long_docstrings(n: int) -> list[str]:
    """n real, distinct English docstrings of 400+ characters from the standard library."""
    import argparse, collections, email.message, json.decoder, logging, pathlib, subprocess, threading

    def shingles(text: str) -> set:
        words = text.lower().split()
        return {tuple(words[i:i + 5]) for i in range(len(words) - 4)}

    found, seen = [], []
    for module in (argparse, collections, email.message, json.decoder, logging, pathlib, subprocess, threading):
        for obj in vars(module).values():
            for member in [obj, *vars(obj).values()] if isinstance(obj, type) else [obj]:
                doc = getattr(member, "__doc__", None)
                if not isinstance(doc, str) or len(doc) < 400:
                    continue
                mine = shingles(doc)
                if all(len(mine & other) / len(mine | other) < 0.3 for other in seen):
                    found.append(doc)
                    seen.append(mine)
    assert len(found) >= n
    return found[:n]


def test_near_duplicates_across_files_removed_identically_for_any_worker_count(tmp_path):
    docs = distinct_long_docstrings(60)
    near = [d.replace(" the ", " a ", 1) for d in docs[:5]]  # one word changed
    assert all(n != d for n, d in zip(near, docs))
    for k in range(3):
        rows = [{"text": d} for d in docs[k * 20:(k + 1) * 20]] + ([{"text": n} for n in near] if k == 2 else [])
        write_jsonl(tmp_path / "raw" / f"p{k}.jsonl", rows)
    stages = [{"type": "minhash_dedup", "threshold": 0.7}]
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        stats = run(tmp_path / "raw", out, stages, workers=workers)
        outputs.append([p.read_bytes() for p in sorted((out / "shards").iterdir())])
    corpus = read_corpus(tmp_path / "out2")
    assert stats["stages"][0]["dropped"] == {"near_duplicate": 5}
    assert set(corpus["text"]) == set(docs)  # the first occurrence is kept, the edited copies go
    assert outputs[0] == outputs[1]
