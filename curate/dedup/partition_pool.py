"""Run a partitioned dedup reduce over summary files on one machine: files in a work folder, a process pool.

`reduce_partitioned(stage, summary_files, workdir, partitions, workers)`:

1. split — each summary file is cut by `PartitionReducer.split` into
   `<workdir>/partition-PPPPP/summary-SSSSS.arrow`, its `PartitionReducer.stats` (if any) into
   `<workdir>/stats/stats-SSSSS.arrow` (one task per summary file);
2. reduce — each partition folder is reduced alone into `<workdir>/result-PPPPP.arrow`
   (one task per partition; with `workers` > 1 in a spawned process pool, so the largest
   process holds one partition, never the whole);
3. combine — in the calling process, from the result files and the summaries; MinHash pairs
   beyond `combine_memory_mib` are joined in partitions by the same pool instead
   (`components_partitioned`), and the decision comes back as sorted `_pos` ranges.

The work files are Arrow IPC, uncompressed: written ~10× faster than parquet, and band hashes
do not compress anyway. An executor that writes the split files itself in its map phase (so no summary is read twice)
calls `reduce_partition_folder` per partition and `combine_results` once.
"""

from __future__ import annotations

import multiprocessing
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import polars as pl

from datamill.curate.dedup.components_partitioned import combine_pairs, pairs_fit
from datamill.curate.dedup.partitioned import MinHashPartitions, PartitionReducer, partition_reducer
from datamill.curate.engine.partition_tasks import DecisionParts, LocalRunner
from datamill.curate.engine.stage import BarrierStage


def reducer_of(stage: BarrierStage) -> PartitionReducer:
    reducer = partition_reducer(stage)
    if reducer is None:
        raise TypeError(f"{stage.name}: {type(stage).__name__} has no partitioned reduce")
    return reducer


def partition_folder(workdir: Path, partition: int) -> Path:
    return Path(workdir) / f"partition-{partition:05d}"


def result_file(workdir: Path, partition: int) -> Path:
    return Path(workdir) / f"result-{partition:05d}.arrow"


def split_summary_file(stage: BarrierStage, summary_file: Path, index: int, workdir: Path, partitions: int) -> None:
    """Cut one summary file into `partition-PPPPP/summary-<index>.arrow` files."""
    write_split(stage, pl.read_parquet(summary_file), index, workdir, partitions)


def write_split(stage: BarrierStage, summary: pl.DataFrame, index: int, workdir: Path, partitions: int) -> None:
    """Cut one shard's summary (`stage.summarize` output, e.g. still in memory in the map phase)
    into `partition-PPPPP/summary-<index>.arrow` files, `index` unique per shard."""
    reducer = reducer_of(stage)
    for p, frame in enumerate(reducer.split(summary, partitions)):
        target = partition_folder(workdir, p) / f"summary-{index:05d}.arrow"
        target.parent.mkdir(parents=True, exist_ok=True)
        frame.write_ipc(target)
    stats = reducer.stats(summary)
    if stats is not None:
        target = Path(workdir) / "stats" / f"stats-{index:05d}.arrow"
        target.parent.mkdir(parents=True, exist_ok=True)
        stats.write_ipc(target)


def read_stats(workdir: Path) -> pl.DataFrame | None:
    """Every shard's statistics rows (see `write_split`), or None where the reducer keeps none."""
    files = sorted((Path(workdir) / "stats").glob("stats-*.arrow"))
    return pl.scan_ipc(files).collect() if files else None


def reduce_partition_folder(stage: BarrierStage, workdir: Path, partition: int, summary_files: Sequence[Path]) -> Path:
    """Reduce partition `partition` (its split files under `workdir`) into its result file."""
    files = sorted(partition_folder(workdir, partition).glob("summary-*.arrow"))
    if not files:
        raise FileNotFoundError(f"no split summaries in {partition_folder(workdir, partition)}")
    result = reducer_of(stage).reduce_partition(pl.scan_ipc(files), pl.scan_parquet(list(summary_files)),
                                                read_stats(workdir))
    target = result_file(workdir, partition)
    result.write_ipc(target)
    return target


def combine_results(stage: BarrierStage, workdir: Path, partitions: int, summary_files: Sequence[Path],
                    submit: Callable | None = None, combine_memory_mib: int | None = None) -> pl.DataFrame | DecisionParts:
    """The decision table from every partition's result file; MinHash pairs beyond `combine_memory_mib`
    are joined by partitioned connected components (tasks of `submit`, files under `workdir`)."""
    files = [result_file(workdir, p) for p in range(partitions)]
    reducer = reducer_of(stage)
    in_partitions = combines_in_partitions(stage, workdir, partitions, combine_memory_mib)
    if in_partitions and hasattr(reducer, "combine_ranges"):
        runner = LocalRunner(workdir, submit)  # ranking/mix rows stay in files, cut into `_pos` ranges
        summaries = pl.scan_parquet(list(summary_files))
        parts = reducer.combine_ranges(runner, [[f] for f in files], read_stats(workdir), summaries)
        return DecisionParts(runner, *parts)
    if in_partitions:
        return combine_pairs(stage, LocalRunner(workdir, submit), [[f] for f in files], summary_files, partitions)
    return reducer.combine(pl.scan_ipc(files), pl.scan_parquet(list(summary_files)), read_stats(workdir))


def combines_in_partitions(stage: BarrierStage, workdir: Path, partitions: int, combine_memory_mib: int | None) -> bool:
    """Whether the partition results are MinHash pairs too many for `combine_memory_mib` MiB, or
    ranking rows (a reducer with `combine_ranges`) too many to combine in one process (None: never)."""
    if combine_memory_mib is not None and hasattr(reducer_of(stage), "combine_ranges"):
        return reducer_of(stage).combines_in_ranges(read_stats(workdir), combine_memory_mib)
    if combine_memory_mib is None or not isinstance(reducer_of(stage), MinHashPartitions):
        return False
    pairs = pl.scan_ipc([result_file(workdir, p) for p in range(partitions)]).select(pl.len()).collect().item()
    return not pairs_fit(pairs, combine_memory_mib)


def reduce_partitioned(
    stage: BarrierStage, summary_files: Sequence[Path], workdir: Path, partitions: int, workers: int = 1,
    combine_memory_mib: int | None = None,
) -> pl.DataFrame | DecisionParts:
    """The decision table of `stage` over `summary_files`, equal to `stage.reduce` of them all,
    computed in `partitions` partitions by `workers` processes (1: this process); MinHash pairs
    beyond `combine_memory_mib` MiB are combined in partitions too (its files stay in `workdir`)."""
    summary_files = [Path(f) for f in summary_files]
    if not summary_files:
        raise ValueError(f"{stage.name}: no summary files to reduce")
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    shutil.rmtree(workdir, ignore_errors=True)  # a scratch folder: files of an earlier reduce would mix in
    Path(workdir).mkdir(parents=True, exist_ok=True)
    splits = [(split_summary_file, (stage, f, i, workdir, partitions)) for i, f in enumerate(summary_files)]
    reduces = [(reduce_partition_folder, (stage, workdir, p, summary_files)) for p in range(partitions)]
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            _run_all(pool.submit, splits)
            _run_all(pool.submit, reduces)
            if combines_in_partitions(stage, workdir, partitions, combine_memory_mib):
                return combine_results(stage, workdir, partitions, summary_files, pool.submit, combine_memory_mib)
    else:
        for function, args in splits + reduces:
            function(*args)
    return combine_results(stage, workdir, partitions, summary_files, None, combine_memory_mib)


def _run_all(submit: Callable, tasks: list[tuple[Callable, tuple]]) -> None:
    for future in [submit(function, *args) for function, args in tasks]:
        future.result()
