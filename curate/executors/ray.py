"""The Ray executor: run a recipe's shards with Ray Data on a Ray cluster, same output as local.

Every segment of the pipeline becomes one Ray Dataset: the shards the local executor plans
(`Source.plan()`, saved in state/plan.pkl) are its rows, and one `map_batches` call runs the
segment's Stage objects over each shard with the same `ShardRun` as the local executor (so error bisection
→ quarantine, drop counting, removed/, the atomic commit and the done markers are the same code).
A segment whose stages load models in `setup()` or want GPUs runs in an actor pool (models load
once per actor, `num_cpus`/`num_gpus` from the stages' `Resources`); other segments run as tasks.
Barrier stages summarize in the segment before them, reduce, then apply (the shared
orchestration in `executors.run`). The reduce runs on the driver, or with
`executor.reduce_partitions: P` (stages with a partitioned reduce: minhash_dedup, exact_dedup,
the ranking barriers) as Ray tasks (`reduce_on_ray`): one split task per summary file returns its
P partition frames and its statistics into Ray's object store, one task per partition reduces the
frames of that partition, and the driver combines the partition results (duplicate pairs,
candidates) into the decision table — the same table as the single-process reduce. MinHash pairs
beyond `executor.combine_memory_mib` stay in the object store and are joined by partitioned
connected components in Ray tasks (`dedup.components_partitioned`, `engine.partition_tasks.RayRunner`).

A worker that dies (killed, out of memory) is restarted by Ray and its shard re-run from scratch:
a shard's files only appear by rename with its done marker, so a retry never duplicates output.
The run directory must be on a filesystem every node and the driver see (NFS, a shared disk), or
on an object store (`output.dir: s3://…`): then workers and driver exchange shards, summaries and
decisions only through the store (engine.layout), and the partitioned reduce's tasks read the
summary files from it by URL.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from datamill.curate.dedup.components_partitioned import combine_pairs, pairs_fit
from datamill.curate.dedup.partitioned import MinHashPartitions, partition_reducer
from datamill.curate.engine.layout import RunLayout
from datamill.curate.engine.partition_tasks import DecisionParts, RayRunner
from datamill.curate.engine.paths import local_copy
from datamill.curate.engine.pipeline import Pipeline, Segment
from datamill.curate.engine.recipe import Recipe
from datamill.curate.engine.source import ShardSpec
from datamill.curate.engine.stage import BarrierStage, Resources, Stage
from datamill.curate.executors.run import Executor, RunError, ShardProgress, register_executor
from datamill.curate.executors.workers import ShardFailed, records_seen, run_shard_reporting

MAX_RESTARTS = 3
"""How often Ray restarts a dead actor / retries a shard whose worker died, before the run fails."""


@register_executor
class RayExecutor(Executor):
    """Each segment one Ray Dataset over the shards to do (see the module docstring)."""

    type_name = "ray"

    def __init__(self, recipe: Recipe, pipeline: Pipeline, specs: list[ShardSpec], layout: RunLayout,
                 workers: int | None):
        super().__init__(recipe, pipeline, specs, layout, workers)
        self.run_dir = layout.address
        self.started_ray = False
        self.used = 1

    def __enter__(self) -> RayExecutor:
        self.started_ray = _connect(self.recipe.executor.address)
        _quiet_ray_data()
        return self

    def __exit__(self, *exc) -> None:
        if self.started_ray:
            import ray

            ray.shutdown()

    @property
    def workers_used(self) -> int:
        return self.used

    def reduce(self, barrier: BarrierStage, summary_files: list[Path], workdir: Path) -> pl.DataFrame | DecisionParts:
        """In `executor.reduce_partitions` partitions as Ray tasks where the stage has a
        partitioned reduce; else on the driver."""
        partitions = self.recipe.executor.reduce_partitions
        if partitions > 1 and partition_reducer(barrier) is not None:
            try:
                task_files = ([self.layout.store.url_of(self.layout.rel(Path(f))) for f in summary_files]
                              if self.layout.store else None)  # an object-store run: tasks read the URLs
                return reduce_on_ray(barrier, summary_files, partitions, task_files,
                                     self.recipe.executor.combine_memory_mib)
            except Exception as err:
                raise RunError(f"stage {barrier.name!r}: the partitioned reduce failed: {_root_message(err)}") from err
        return super().reduce(barrier, summary_files, workdir)

    def map_shards(self, segment: Segment, shards: list[int]) -> Iterator[ShardProgress]:
        import ray
        from ray.util.annotations import RayDeprecationWarning

        needs, stateful = segment_resources(segment)
        size = min(len(shards), self.workers or _cluster_slots(needs))
        self.used = max(self.used, size)
        items = ray.data.from_items([{"segment": segment.index, "shard": i} for i in shards],
                                    override_num_blocks=len(shards))
        with warnings.catch_warnings():  # retry limits have no named parameter yet (Ray 2.60)
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", RayDeprecationWarning)
            done = _map_shards(items, stateful, size, needs, self.pipeline, self.specs, self.run_dir)
        try:
            for row in done.iter_rows():
                yield ShardProgress(records=int(row["records"]), finished=True)
        except Exception as err:
            raise RunError(_root_message(err)) from err


def _connect(address: str | None) -> bool:
    """Join the running Ray cluster or the one at `address`, else start a local one. True if started here."""
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    except ConnectionError as err:
        raise RunError(f"cannot reach the Ray cluster at {address!r}: {err}; start one with "
                       "`ray start --head` or leave --address out for a local cluster") from None
    return True


def _quiet_ray_data() -> None:
    """The CLI draws its own progress bars; Ray Data's own would interleave with them."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


# --- one segment as one Ray Dataset --------------------------------------------------------

def segment_resources(segment: Segment) -> tuple[Resources, bool]:
    """What one worker of this segment needs (the most any of its stages asks for), and whether
    it should be a long-lived actor (some stage loads models in `setup()` or wants a GPU)."""
    stages = [s for s in (segment.barrier, *segment.stages, segment.next_barrier) if s is not None]
    cpus = max([s.resources.cpus for s in stages], default=1.0)
    gpus = max([s.resources.gpus for s in stages], default=0.0)
    stateful = any(type(s).setup is not Stage.setup or s.resources.gpus > 0 for s in stages)
    return Resources(cpus=cpus, gpus=gpus), stateful


def _map_shards(shards, stateful: bool, size: int, needs: Resources, pipeline: Pipeline,
                specs: list[ShardSpec], run_dir: str):
    """The segment's shards → `map_batches` over an actor pool (stateful) or a task pool."""
    import ray

    common = dict(batch_size=1, batch_format="numpy", num_cpus=needs.cpus, num_gpus=needs.gpus or None)
    if stateful:
        return shards.map_batches(
            _ShardActor, fn_constructor_args=(pipeline, specs, run_dir),
            compute=ray.data.ActorPoolStrategy(size=size),
            max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS, **common)
    return shards.map_batches(
        _run_shards, fn_args=(pipeline, specs, run_dir),
        compute=ray.data.TaskPoolStrategy(size=size), max_retries=MAX_RESTARTS, **common)


def _cluster_slots(needs: Resources) -> int:
    import ray

    available = ray.cluster_resources()
    slots = int(available.get("CPU", 1) // max(needs.cpus, 1e-3))
    if needs.gpus:
        slots = min(slots, int(available.get("GPU", 0) // needs.gpus))
        if slots == 0:
            raise RunError(f"the recipe's stages need {needs.gpus} GPU(s) per worker; the Ray cluster has "
                           f"{available.get('GPU', 0)}")
    return max(slots, 1)


def _root_message(err: BaseException) -> str:
    """The ShardFailed message inside Ray's wrapping exceptions, or Ray's own message."""
    seen = err
    while seen is not None:
        if isinstance(seen, ShardFailed):
            return str(seen)
        cause = getattr(seen, "cause", None)
        seen = seen.__cause__ or (cause if isinstance(cause, BaseException) else None)
    text = str(err)
    if "ShardFailed: " in text:
        return text.rsplit("ShardFailed: ", 1)[1].strip().splitlines()[0]
    return f"the Ray run failed: {text}"


# --- the partitioned barrier reduce as Ray tasks ---------------------------------------------

def reduce_on_ray(stage: BarrierStage, summary_files: Sequence[Path], partitions: int,
                  task_files: Sequence[str] | None = None,
                  combine_memory_mib: int | None = None) -> pl.DataFrame | DecisionParts:
    """The decision table of `stage` over `summary_files` (equal to `stage.reduce` of them all),
    reduced in `partitions` partitions by Ray tasks on the connected cluster; the partition data
    travels through Ray's object store, the summary files are read where the tasks run (as
    `task_files`, e.g. their object-store URLs, where given). MinHash pairs beyond
    `combine_memory_mib` MiB are joined by partitioned connected components in Ray tasks too."""
    import ray

    reducer = partition_reducer(stage)
    if reducer is None:
        raise TypeError(f"{stage.name}: {type(stage).__name__} has no partitioned reduce")
    files = [str(f) for f in summary_files]
    if not files:
        raise ValueError(f"{stage.name}: no summary files to reduce")
    split = ray.remote(_split_summary).options(num_returns=partitions + 1, max_retries=MAX_RESTARTS)
    reduce_one = ray.remote(_reduce_partition).options(max_retries=MAX_RESTARTS)
    stage_ref = ray.put(stage)
    opened = [str(f) for f in task_files] if task_files is not None else files
    pieces = [split.remote(stage_ref, file, partitions) for file in opened]  # per file: P frames, stats
    shard_stats = [s for s in ray.get([refs[-1] for refs in pieces]) if s is not None]
    stats = pl.concat(shard_stats) if shard_stats else None
    stats_ref = ray.put(stats)
    result_refs = [reduce_one.remote(stage_ref, opened, stats_ref, *[refs[p] for refs in pieces])
                   for p in range(partitions)]
    if combine_memory_mib is not None and hasattr(reducer, "combine_ranges") and reducer.combines_in_ranges(
            stats, combine_memory_mib):  # ranking rows stay in the object store, cut into `_pos` ranges
        runner = RayRunner(MAX_RESTARTS)
        return DecisionParts(runner, *reducer.combine_ranges(runner, [[ref] for ref in result_refs], stats,
                                                             pl.scan_parquet(files)))
    if combine_memory_mib is not None and isinstance(reducer, MinHashPartitions):
        pairs = sum(ray.get([ray.remote(_height).remote(ref) for ref in result_refs]))
        if not pairs_fit(pairs, combine_memory_mib):  # the pairs stay in the object store
            return combine_pairs(stage, RayRunner(MAX_RESTARTS), [[ref] for ref in result_refs], files,
                                 partitions, task_files=opened)
    results = ray.get(result_refs)
    return reducer.combine(pl.concat(results).lazy(), pl.scan_parquet(files), stats)


def _height(frame: pl.DataFrame) -> int:
    """Task: the rows of a frame in the object store (without fetching it to the driver)."""
    return frame.height


def _split_summary(stage: BarrierStage, file: str, partitions: int) -> tuple:
    """Task: one summary file → its partition frames and its statistics."""
    reducer = partition_reducer(stage)
    summary = pl.read_parquet(local_copy(file))
    return (*reducer.split(summary, partitions), reducer.stats(summary))


def _reduce_partition(stage: BarrierStage, files: list[str], stats: pl.DataFrame | None,
                      *frames: pl.DataFrame) -> pl.DataFrame:
    """Task: one partition's frames (from every summary file) → the partition's result."""
    files = [local_copy(f) for f in files]  # a URL is fetched once per node
    return partition_reducer(stage).reduce_partition(pl.concat(frames).lazy(), pl.scan_parquet(files), stats)


# --- on the workers ------------------------------------------------------------------------

def _run_shard_batch(pipeline: Pipeline, layout: RunLayout, specs: list[ShardSpec],
                     batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    records = []
    for segment, shard in zip(batch["segment"].tolist(), batch["shard"].tolist()):
        if layout.verified_done(segment, shard):  # a retry after the commit: nothing left to do
            records.append(records_seen(layout.read_marker(segment, shard)))
            continue
        records.append(records_seen(run_shard_reporting(pipeline, layout, segment, shard, specs[shard])))
    return {"shard": batch["shard"], "records": np.asarray(records, dtype=np.int64)}


def _run_shards(batch: dict[str, np.ndarray], pipeline: Pipeline, specs: list[ShardSpec],
                run_dir: str) -> dict[str, np.ndarray]:
    """Task body for segments without models: build nothing, run the shards, return counts."""
    return _run_shard_batch(pipeline, RunLayout(run_dir), specs, batch)


class _ShardActor:
    """Actor body for segments with models: `Pipeline.setup` loads each model once per actor."""

    def __init__(self, pipeline: Pipeline, specs: list[ShardSpec], run_dir: str):
        self.pipeline, self.specs, self.layout = pipeline, specs, RunLayout(run_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _run_shard_batch(self.pipeline, self.layout, self.specs, batch)


