"""Run a recipe: the one orchestration every executor shares (plan, reduce, map shards, finish).

Order of work: lock the run directory, check it holds no other recipe's run, plan every source into
shards (the plan is saved, so a resumed run sees the same shards), then for each segment: reduce the
barrier's summaries (once), hand every shard without a verified done marker to the executor, and
finally sum the markers into stats.json and render the report. Output depends only on the recipe
and the input, never on the executor or the number of workers.

An executor only decides *where* shards run (`map_shards`) and how a barrier reduces (`reduce`);
executors register by name (`@register_executor`) and are found through datamill's plug-in table.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import polars as pl

from datamill.curate.dedup.partition_pool import reduce_partitioned
from datamill.curate.dedup.partitioned import partition_reducer
from datamill.curate.engine.layout import RunLayout
from datamill.curate.engine.partition_tasks import DecisionParts, write_decision
from datamill.curate.engine.lock import RunLock, RunLocked
from datamill.curate.engine.pipeline import Pipeline, Segment
from datamill.curate.engine.plugins import load_plugins
from datamill.curate.engine.recipe import Recipe
from datamill.curate.engine.source import ShardSpec
from datamill.curate.engine.stage import POSITION, BarrierStage
from datamill.curate.engine.stats import aggregate
from datamill.curate.report.render import render_report


STAGE_FILES = ("state/synthesis",)
"""Run files stages write themselves (generation tallies), uploaded at the end of an object-store run."""


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


ProgressCallback = Callable[[str, int, int, int], None]
"""(phase description, shards done, shards total, records just processed)."""


@dataclass(frozen=True)
class ShardProgress:
    """What an executor reports while mapping: records just processed, and whether a shard finished."""

    records: int = 0
    finished: bool = False


class Executor(ABC):
    """Where a run's shards execute. `map_shards` runs a segment over shards and reports progress;
    `reduce` turns a barrier's summaries into its decision table (by default on this process)."""

    type_name: ClassVar[str]

    def __init__(self, recipe: Recipe, pipeline: Pipeline, specs: list[ShardSpec], layout: RunLayout,
                 workers: int | None):
        self.recipe, self.pipeline, self.specs, self.layout = recipe, pipeline, specs, layout
        self.workers = workers

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        """Release workers; `exc` is set when the run is failing."""

    @abstractmethod
    def map_shards(self, segment: Segment, shards: list[int]) -> Iterator[ShardProgress]:
        """Run `segment` over `shards`, yielding progress; raise RunError naming a shard that failed."""

    def reduce(self, barrier: BarrierStage, summary_files: list[Path], workdir: Path) -> pl.DataFrame | DecisionParts:
        """The barrier's decision table: in `executor.reduce_partitions` partitions on a process
        pool where the stage has a partitioned reduce (dedup, ranking), else in this process."""
        partitions = self.recipe.executor.reduce_partitions
        if partitions > 1 and partition_reducer(barrier) is not None:
            return reduce_partitioned(barrier, summary_files, workdir, partitions, workers=self.workers_used,
                                      combine_memory_mib=self.recipe.executor.combine_memory_mib)
        return barrier.reduce(pl.scan_parquet(summary_files))

    @property
    def workers_used(self) -> int:
        return self.workers or 1


_executors: dict[str, type[Executor]] = {}
E = TypeVar("E", bound=type[Executor])


def register_executor(cls: E) -> E:
    """Class decorator: make an executor available as `executor.type: <cls.type_name>`."""
    _executors[cls.type_name] = cls
    return cls


def executor_types() -> dict[str, type[Executor]]:
    load_plugins()
    return dict(_executors)


def run_recipe(
    recipe: Recipe,
    *,
    workers: int | None = None,
    resume: bool = True,
    base_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Run `recipe` to completion and return its stats (also written to `<output.dir>/stats.json`).
    Relative source paths are read from `base_dir`, by default `recipe.base_dir` (the recipe
    file's folder); `recipe.executor.type` picks the executor."""
    kind = executor_types().get(recipe.executor.type)
    if kind is None:
        raise RunError(f"executor.type {recipe.executor.type!r} is not installed; "
                       f"known: {', '.join(executor_types())}")
    layout = RunLayout(recipe.output.dir)
    lock = RunLock(layout.location)
    try:
        lock.acquire()
    except RunLocked as err:
        raise RunError(str(err)) from None
    try:
        return _run_locked(recipe, layout, kind, workers=workers, resume=resume, base_dir=base_dir,
                           progress=progress)
    finally:
        lock.release()


def _run_locked(recipe: Recipe, layout: RunLayout, kind: type[Executor], *, workers, resume, base_dir,
                progress) -> dict[str, Any]:
    started_wall, started = datetime.now(timezone.utc), time.perf_counter()
    if not resume:
        layout.clear()
    check_same_recipe(layout, recipe)
    pipeline = Pipeline(recipe, str(Path(recipe.base_dir if base_dir is None else base_dir).resolve()))
    specs = load_or_make_plan(layout, pipeline)
    notify = progress or (lambda *args: None)
    with kind(recipe, pipeline, specs, layout, workers or recipe.executor.workers) as executor:
        for segment in pipeline.segments:
            if segment.barrier is not None:
                reduce_barrier(layout, segment.index, segment.barrier, executor.reduce)
            todo = layout.unfinished(segment.index, len(specs))
            phase = phase_name(pipeline, segment.index)
            done = len(specs) - len(todo)
            notify(phase, done, len(specs), 0)
            if not todo:
                continue
            for step in executor.map_shards(segment, todo):
                done += step.finished
                notify(phase, done, len(specs), step.records)
        used = executor.workers_used
    return finish_run(layout, pipeline, recipe, executor=recipe.executor.type, workers=used,
                      started_wall=started_wall, started=started)




def finish_run(layout: RunLayout, pipeline: Pipeline, recipe: Recipe, *, executor: str, workers: int,
               started_wall: datetime, started: float) -> dict[str, Any]:
    """Aggregate the done markers into `stats.json`, render the report, return the stats."""
    stats = aggregate(
        layout.done_markers(),
        stage_order=[(s.name, s.type_name) for s in pipeline.stages],
        sources=[{"name": s.name, "type": s.type_name} for s in pipeline.sources],
        last_segment=len(pipeline.segments) - 1,
        header={
            "recipe": recipe.name,
            "run_dir": layout.store.url if layout.store else str(layout.root),
            "executor": executor,
            "workers": workers,
            "started_at": started_wall.isoformat(timespec="seconds"),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 3),
        },
        output_format=recipe.output.format,
    )
    layout.write_json(layout.root / "stats.json", stats)
    layout.sync_up(STAGE_FILES)  # on an object store: what stages left in the local mirror
    render_report(layout.location)
    return stats


def phase_name(pipeline: Pipeline, segment: int) -> str:
    """`segment 2/3 (minhash_dedup, perplexity)`: what the progress bar shows for a segment."""
    seg = pipeline.segments[segment]
    names = ([seg.barrier.name] if seg.barrier else []) + [s.name for s in seg.stages]
    return f"segment {segment + 1}/{len(pipeline.segments)}" + (f" ({', '.join(names)})" if names else " (read)")


def check_same_recipe(layout: RunLayout, recipe: Recipe) -> None:
    """Refuse to continue a run directory that holds another recipe's run; remember this one's."""
    saved = layout.read_bytes(layout.state / "recipe.json")
    if saved is not None:
        previous = json.loads(saved)
        if previous["fingerprint"] != recipe.fingerprint():
            raise RunError(
                f"{layout.root} holds a run of a different recipe (or different limits); "
                "re-run with --fresh to discard it, or choose another output.dir"
            )
    else:
        layout.write_json(layout.state / "recipe.json",
                          {"fingerprint": recipe.fingerprint(), "recipe": recipe.model_dump(mode="json")})


def load_or_make_plan(layout: RunLayout, pipeline: Pipeline) -> list[ShardSpec]:
    """The run's shards: planned once, saved in state/plan.pkl, read back on resume."""
    saved = layout.read_bytes(layout.state / "plan.pkl")
    if saved is not None:
        return pickle.loads(saved)
    specs = pipeline.plan()
    layout.write_bytes(layout.state / "plan.pkl", pickle.dumps(specs))
    return specs


def reduce_barrier(layout: RunLayout, segment: int, barrier: BarrierStage,
                   reduce: Callable[[BarrierStage, list[Path], Path], pl.DataFrame | DecisionParts]) -> None:
    """Write segment `segment`'s decision table from the summaries of the segment before (once);
    on a remote run the summaries are read back from the store and the decision uploaded."""
    target = layout.decision(segment)
    if layout.exists(target):
        return
    summaries = layout.fetch_matching(layout.segment_dir(segment - 1), "summary-*.parquet")
    workdir = layout.segment_dir(segment) / "reduce"
    if summaries:
        shutil.rmtree(workdir, ignore_errors=True)  # what an interrupted reduce left
        decision = reduce(barrier, summaries, workdir)
    else:
        decision = pl.DataFrame({POSITION: pl.Series([], dtype=pl.Int64)})
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name("decision.tmp.parquet")
    write_decision(decision, tmp)  # a partitioned decision's ranges may still be files in workdir
    shutil.rmtree(workdir, ignore_errors=True)
    layout.publish(tmp, target)
