"""Issue 18: MinHash duplicate pairs joined by partitioned connected components (forced on small inputs)
give union–find's components and the one-process decision table, for any partition count, locally
and on Ray, within a bounded number of rounds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import recipe_dict
from datamill.curate.dedup.components import connected_components
from datamill.curate.dedup.components_partitioned import combine_pairs, partitioned_decisions
from datamill.curate.dedup.minhash_stage import MinHashDedup
from datamill.curate.dedup.partition_pool import reduce_partitioned
from datamill.curate.engine.partition_tasks import DecisionParts, LocalRunner, write_decision
from datamill.curate.engine.recipe import validate_recipe
from datamill.curate.engine.stage import POSITION
from datamill.curate.executors.run import run_recipe
from test_partitioned_reduce import corpus, write_summaries  # noqa: F401  (the shared near-duplicate corpus)


def components_of(src, dst, partitions: int, folder: Path, inputs: int = 3) -> tuple[pl.DataFrame, dict]:
    """(`_pos`, `dup_cluster`) by the partitioned steps, the pairs cut over `inputs` first-step tasks."""
    pairs = pl.DataFrame({"src": np.asarray(src), "dst": np.asarray(dst)}, schema={"src": pl.Int64, "dst": pl.Int64})
    folder.mkdir(parents=True)
    files = []
    for i, rows in enumerate(np.array_split(np.arange(pairs.height), inputs)):
        files.append(folder / f"pairs-{i}.arrow")
        pairs[rows].write_ipc(files[-1])
    stats = {}
    parts = partitioned_decisions(LocalRunner(folder / "work"), [[f] for f in files], partitions, keep="first",
                                  pos_dtype=pl.Int64, summary_files=[], stats=stats)
    return parts.collect().select(POSITION, "dup_cluster"), stats


def union_find(src, dst) -> pl.DataFrame:
    nodes, labels = connected_components(np.asarray(src), np.asarray(dst))
    return pl.DataFrame({POSITION: nodes, "dup_cluster": labels}, schema={POSITION: pl.Int64, "dup_cluster": pl.Int64})


rng = np.random.default_rng(18)
CHAIN = 3_000
PERM = rng.permutation(CHAIN)
GRAPHS = {
    # chains are label propagation's worst case (diameter n): the rounds must stay ~log n
    "chain-in-order": (np.arange(1, CHAIN), np.arange(CHAIN - 1)),
    "chain-shuffled-ids": (PERM[1:], PERM[:-1]),
    "chain-reversed": (np.arange(CHAIN - 1), np.arange(1, CHAIN)),
    "star-at-smallest": (np.arange(1, 3000), np.zeros(2999, dtype=np.int64)),
    "star-at-largest": (np.full(2999, 10**12), np.arange(2999) * 7),
    "many-components": (np.arange(0, 15_000, 3) + 1, np.arange(0, 15_000, 3)),  # 5,000 pairs
    "random-graph": tuple(rng.integers(0, 20_000, size=(2, 15_000))),
}


CASES = [(graph, 3) for graph in GRAPHS] + [(graph, p) for graph in ("chain-shuffled-ids", "random-graph") for p in (1, 8)]


@pytest.mark.parametrize(("graph", "partitions"), CASES)
def test_components_equal_union_find_with_the_smallest_node_as_label(graph, partitions, tmp_path):
    src, dst = GRAPHS[graph]
    keep = src != dst
    got, stats = components_of(src[keep], dst[keep], partitions, tmp_path / "g")
    assert got.equals(union_find(src[keep], dst[keep]))
    assert stats["rounds"] <= 2 * math.ceil(math.log2(len(src) + 1)), stats  # chain 3,000: ~12 rounds


def test_a_star_forest_converges_in_one_round(tmp_path):
    _, stats = components_of(np.arange(1, 1000), np.zeros(999, dtype=np.int64), 3, tmp_path / "s")
    assert stats["rounds"] == 1


@pytest.mark.parametrize(
    "stage",
    [
        MinHashDedup(),
        MinHashDedup(MinHashDedup.Params(keep="longest", ngram=3)),
        MinHashDedup(MinHashDedup.Params(keep="quality", verify_jaccard=0.7)),
        MinHashDedup(MinHashDedup.Params(verify_jaccard=0.8, verify_window=2)),
    ],
    ids=["first", "longest", "verified-by-column", "verified-first"],
)
def test_forced_partitioned_combine_gives_the_one_process_decision_table(stage, corpus, tmp_path):  # noqa: F811
    files = write_summaries(stage, corpus, tmp_path / "summaries")
    whole = stage.reduce(pl.scan_parquet(files))
    assert whole.height > 100 and whole["dup_cluster_size"].max() >= 3
    for partitions in (1, 3, 8) if stage.params.keep == "longest" else (3,):
        decision = reduce_partitioned(stage, files, tmp_path / f"work-{partitions}", partitions, combine_memory_mib=0)
        assert isinstance(decision, DecisionParts), "a budget of 0 MiB must force the partitioned combine"
        table = decision.collect()
        assert table.schema == whole.schema and table.equals(whole), f"{partitions} partitions"
        write_decision(decision, tmp_path / f"decision-{partitions}.parquet")  # streamed range by range
        assert pl.read_parquet(tmp_path / f"decision-{partitions}.parquet").equals(whole)


def test_pairs_within_the_budget_keep_the_one_process_union_find(corpus, tmp_path):  # noqa: F811
    stage = MinHashDedup()
    files = write_summaries(stage, corpus, tmp_path / "summaries")
    decision = reduce_partitioned(stage, files, tmp_path / "work", 3, combine_memory_mib=2048)
    assert isinstance(decision, pl.DataFrame) and decision.equals(stage.reduce(pl.scan_parquet(files)))


def test_no_pairs_give_the_empty_decision_table(tmp_path):
    stage = MinHashDedup()
    unique = pl.DataFrame({"text": [f"document number {i} says {i * i} things" for i in range(40)]})
    files = write_summaries(stage, unique.with_row_index(POSITION), tmp_path / "summaries", shards=2)
    whole = stage.reduce(pl.scan_parquet(files))
    empty = tmp_path / "pairs.arrow"
    pl.DataFrame(schema={"src": pl.UInt32, "dst": pl.UInt32}).write_ipc(empty)
    decision = combine_pairs(stage, LocalRunner(tmp_path / "work"), [[empty]], files, 3)
    assert whole.height == 0 and decision.collect().schema == whole.schema and decision.collect().height == 0


def test_a_run_with_the_partitioned_combine_writes_the_same_shards(corpus, tmp_path):  # noqa: F811
    """End to end: `executor.combine_memory_mib: 0` forces the partitioned components; the shards are
    byte-identical to the one-process reduce's."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for k, part in enumerate(corpus.head(450).select("text").iter_slices(150)):
        part.write_ndjson(raw / f"part{k}.jsonl")
    stages = [{"type": "minhash_dedup", "keep": "longest"}]
    shards = {}
    for name, executor in {"one": {}, "forced": {"reduce_partitions": 3, "combine_memory_mib": 0}}.items():
        spec = recipe_dict(str(raw / "*.jsonl"), str(tmp_path / name), stages)
        spec["executor"].update(executor, batch_rows=400)
        stats = run_recipe(validate_recipe(spec), workers=1)
        assert stats["stages"][0]["dropped"]["near_duplicate"] > 30
        shards[name] = {p.name: p.read_bytes() for p in sorted((tmp_path / name / "shards").iterdir())}
        assert not list((tmp_path / name / "state").rglob("reduce"))  # the work files are gone
    assert shards["forced"] == shards["one"]


def test_the_partitioned_combine_runs_in_worker_processes(corpus, tmp_path):  # noqa: F811
    stage = MinHashDedup(MinHashDedup.Params(keep="longest"))
    files = write_summaries(stage, corpus, tmp_path / "summaries")
    decision = reduce_partitioned(stage, files, tmp_path / "work", 3, workers=2, combine_memory_mib=0)
    assert decision.collect().equals(stage.reduce(pl.scan_parquet(files)))


def test_the_partitioned_combine_runs_as_ray_tasks(corpus, tmp_path):  # noqa: F811
    ray = pytest.importorskip("ray")
    from datamill.curate.executors.ray import reduce_on_ray

    stage = MinHashDedup(MinHashDedup.Params(keep="longest"))
    files = write_summaries(stage, corpus, tmp_path / "summaries")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        decision = reduce_on_ray(stage, files, 3, combine_memory_mib=0)
        assert isinstance(decision, DecisionParts)
        assert decision.collect().equals(stage.reduce(pl.scan_parquet(files)))
    finally:
        if started:
            ray.shutdown()
