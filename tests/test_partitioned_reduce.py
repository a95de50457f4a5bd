"""Partitioned MinHash and exact-dedup reduces give the single-process decision table, byte for byte,
for any partition count, on real near-duplicate text (licences and Debian copyright files)."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest

from datamill.curate.dedup.exact import ExactDedup
from datamill.curate.dedup.minhash_stage import MinHashDedup
from datamill.curate.dedup.partition_pool import reduce_partitioned
from datamill.curate.dedup.partitioned import hash_partition, partition_reducer
from datamill.curate.engine.stage import POSITION

TEXT_ROOTS = [Path("/usr/share/common-licenses"), Path("/usr/share/doc")]


def real_paragraphs(limit: int = 700) -> list[str]:
    """Distinct paragraphs of at least 20 words from licences and copyright files on this machine."""
    files = sorted(p for p in TEXT_ROOTS[0].glob("*") if p.is_file())
    files += sorted(TEXT_ROOTS[1].glob("*/copyright"))
    seen, out = set(), []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for block in text.split("\n\n"):
            block = " ".join(block.split())
            if len(block.split()) >= 20 and block not in seen:
                seen.add(block)
                out.append(block)
                if len(out) >= limit:
                    return out
    return out


def near_copy(text: str, rng: random.Random, edits: int) -> str:
    """`text` with `edits` words replaced, deleted or duplicated."""
    words = text.split()
    for _ in range(edits):
        i = rng.randrange(len(words))
        kind = rng.randrange(3)
        if kind == 0:
            words[i] = rng.choice(["data", "the", "Software", "license", "copy"])
        elif kind == 1 and len(words) > 5:
            del words[i]
        else:
            words.insert(i, words[i])
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus() -> pl.DataFrame:
    """Real paragraphs, a third of them followed later by one to three near or exact copies, shuffled."""
    paragraphs = real_paragraphs()
    assert len(paragraphs) >= 200, "needs licence/copyright text on the machine"
    rng = random.Random(7)
    docs = list(paragraphs)
    for text in paragraphs[::3]:
        for _ in range(rng.randint(1, 3)):
            edits = rng.choice([0, 1, 2, 4, 8])
            docs.append(near_copy(text, rng, edits) if edits else text.upper())
    rng.shuffle(docs)
    return pl.DataFrame({"text": docs, "quality": [rng.random() for _ in docs]}).with_row_index(POSITION)


def write_summaries(stage, corpus: pl.DataFrame, folder: Path, shards: int = 4) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, part in enumerate(corpus.iter_slices(-(-corpus.height // shards))):
        files.append(folder / f"summary-{k:05d}.parquet")
        stage.summarize(part).write_parquet(files[-1])
    return files


def parquet_bytes(frame: pl.DataFrame, path: Path) -> bytes:
    frame.write_parquet(path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "stage",
    [
        MinHashDedup(),
        MinHashDedup(MinHashDedup.Params(keep="longest", ngram=3)),
        MinHashDedup(MinHashDedup.Params(keep="quality", verify_jaccard=0.7)),
        MinHashDedup(MinHashDedup.Params(verify_jaccard=0.8, verify_window=2)),
        ExactDedup(),
    ],
    ids=["minhash", "minhash-longest", "minhash-verified-by-column", "minhash-verified-first", "exact"],
)
def test_partitioned_reduce_equals_the_single_process_reduce_for_any_partition_count(stage, corpus, tmp_path):
    files = write_summaries(stage, corpus, tmp_path / "summaries")
    whole = stage.reduce(pl.scan_parquet(files))
    assert whole.height > 100, "the corpus must hold many duplicates"
    expected = parquet_bytes(whole, tmp_path / "whole.parquet")
    for partitions in (1, 3, 8):
        decision = reduce_partitioned(stage, files, tmp_path / f"work-{partitions}", partitions)
        assert decision.schema == whole.schema
        assert decision.equals(whole), f"{partitions} partitions"
        assert parquet_bytes(decision, tmp_path / f"p{partitions}.parquet") == expected


def test_partitions_run_in_worker_processes(corpus, tmp_path):
    stage = MinHashDedup()
    files = write_summaries(stage, corpus, tmp_path / "summaries")
    decision = reduce_partitioned(stage, files, tmp_path / "work", partitions=3, workers=2)
    assert decision.equals(stage.reduce(pl.scan_parquet(files)))


def test_each_bucket_lies_in_one_partition_and_partitions_emit_only_pairs(corpus):
    stage = MinHashDedup()
    summary = stage.summarize(corpus)
    reducer = partition_reducer(stage)
    frames = reducer.split(summary, 3)
    for frame in frames:
        assert frame.columns == [POSITION, "band", "hash"]  # no text, no keep key: those stay in the summaries
    values = pl.concat([f.with_columns(pl.lit(p).alias("p")) for p, f in enumerate(frames)])
    assert values.height == sum(summary[b].drop_nulls().len() for b in stage.band_columns)  # each value once
    assert values.group_by("band", "hash").agg(pl.col("p").n_unique())["p"].max() == 1  # a bucket in one partition
    pairs = reducer.reduce_partition(frames[0].lazy(), summary.lazy())
    assert pairs.columns == ["src", "dst"] and 0 < pairs.height < summary.height


def test_hash_ranges_are_contiguous_and_cover_uint64():
    hashes = pl.Series([0, 2**62, 2**63 - 1, 2**63, 2**64 - 1], dtype=pl.UInt64)
    assert pl.select(hash_partition(pl.lit(hashes), 4)).to_series().to_list() == [0, 1, 1, 2, 3]
    assert pl.select(hash_partition(pl.lit(hashes), 1)).to_series().to_list() == [0] * 5
    with pytest.raises(ValueError):
        hash_partition(pl.lit(hashes), 0)


def test_a_stage_without_a_partitioned_reduce_is_named(tmp_path):
    from datamill.curate.dedup.semantic import SemanticDedup

    assert partition_reducer(object.__new__(SemanticDedup)) is None


@pytest.mark.parametrize("stage", [MinHashDedup(), ExactDedup()], ids=["minhash", "exact"])
def test_a_corpus_without_duplicates_gives_the_same_empty_decision_table(stage, tmp_path):
    unique = pl.DataFrame({"text": real_paragraphs(60)}).with_row_index(POSITION)
    files = write_summaries(stage, unique, tmp_path / "summaries", shards=2)
    whole = stage.reduce(pl.scan_parquet(files))
    decision = reduce_partitioned(stage, files, tmp_path / "work", partitions=4)
    assert whole.height == 0 and decision.schema == whole.schema and decision.equals(whole)
