"""The local executor: run a recipe's shards in parallel worker processes, resumably.

Order of work: plan every source into shards (the plan is saved, so a resumed run sees the same
shards), then for each segment: reduce the barrier's summaries (once), run every shard that has
no done marker in a process pool, and finally sum the markers into stats.json and render the
report. Output depends only on the recipe and the input, never on the number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from datamill.curate.engine.layout import RunLayout, write_json_atomic
from datamill.curate.engine.pipeline import Pipeline, ShardRun
from datamill.curate.engine.recipe import Recipe
from datamill.curate.engine.source import ShardSpec
from datamill.curate.engine.stage import POSITION
from datamill.curate.engine.stats import aggregate


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


ProgressCallback = Callable[[str, int, int, int], None]
"""(phase description, shards done, shards total, records just processed)."""


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
    file's folder). A recipe with `executor.type: ray` runs on Ray (`ray_executor`)."""
    if recipe.executor.type == "ray":
        from datamill.curate.executors.ray import run_recipe_ray

        return run_recipe_ray(recipe, workers=workers, resume=resume, base_dir=base_dir, progress=progress)
    base_dir = recipe.base_dir if base_dir is None else base_dir
    started_wall, started = datetime.now(timezone.utc), time.perf_counter()
    layout = RunLayout(recipe.output.dir)
    workers = workers or recipe.executor.workers or os.cpu_count() or 1
    if not resume:
        layout.clear()
    _check_same_recipe(layout, recipe)
    pipeline = Pipeline(recipe, str(base_dir))
    specs = _load_or_make_plan(layout, pipeline)
    notify = progress or (lambda *args: None)

    with _WorkerPool(workers, recipe, str(base_dir), str(layout.root)) as pool:
        for segment in pipeline.segments:
            if segment.barrier is not None:
                _reduce_barrier(layout, segment.index, segment.barrier)
            todo = [i for i in range(len(specs)) if not layout.is_done(segment.index, i)]
            phase = _phase_name(pipeline, segment.index)
            pool.run(segment.index, todo, specs, phase, len(specs), notify)

    return finish_run(layout, pipeline, recipe, executor="local", workers=workers,
                      started_wall=started_wall, started=started)


def finish_run(layout: RunLayout, pipeline: Pipeline, recipe: Recipe, *, executor: str, workers: int,
               started_wall: datetime, started: float) -> dict[str, Any]:
    """Aggregate the done markers into `stats.json`, render the report, return the stats
    (the common ending of every executor)."""
    stats = aggregate(
        layout.done_markers(),
        stage_order=[(s.name, s.type_name) for s in pipeline.stages],
        sources=[{"name": s.name, "type": s.type_name} for s in pipeline.sources],
        last_segment=len(pipeline.segments) - 1,
        header={
            "recipe": recipe.name,
            "run_dir": str(layout.root),
            "executor": executor,
            "workers": workers,
            "started_at": started_wall.isoformat(timespec="seconds"),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 3),
        },
        output_format=recipe.output.format,
    )
    write_json_atomic(layout.root / "stats.json", stats)
    from datamill.curate.report.render import render_report

    render_report(layout.root)
    return stats


def _phase_name(pipeline: Pipeline, segment: int) -> str:
    seg = pipeline.segments[segment]
    names = ([seg.barrier.name] if seg.barrier else []) + [s.name for s in seg.stages]
    return f"segment {segment + 1}/{len(pipeline.segments)}" + (f" ({', '.join(names)})" if names else " (read)")


def _check_same_recipe(layout: RunLayout, recipe: Recipe) -> None:
    saved = layout.state / "recipe.json"
    if saved.exists():
        import json

        previous = json.loads(saved.read_text())
        if previous["fingerprint"] != recipe.fingerprint():
            raise RunError(
                f"{layout.root} holds a run of a different recipe (or different limits); "
                "re-run with --fresh to discard it, or choose another output.dir"
            )
    else:
        write_json_atomic(saved, {"fingerprint": recipe.fingerprint(), "recipe": recipe.model_dump(mode="json")})


def _load_or_make_plan(layout: RunLayout, pipeline: Pipeline) -> list[ShardSpec]:
    path = layout.state / "plan.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    specs = pipeline.plan()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(specs))
    os.replace(tmp, path)
    return specs


def _reduce_barrier(layout: RunLayout, segment: int, barrier) -> None:
    target = layout.decision(segment)
    if target.exists():
        return
    summaries = sorted(layout.segment_dir(segment - 1).glob("summary-*.parquet"))
    if summaries:
        decision = barrier.reduce(pl.scan_parquet(summaries))
    else:
        decision = pl.DataFrame({POSITION: pl.Series([], dtype=pl.Int64)})
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name("decision.tmp.parquet")
    decision.write_parquet(tmp)
    os.replace(tmp, target)


# --- worker processes ---------------------------------------------------------------------

_worker_state: dict[str, Any] = {}


def _init_worker(recipe_json: str, base_dir: str, run_dir: str, progress_queue) -> None:
    _worker_state.update(
        pipeline=Pipeline(Recipe.model_validate_json(recipe_json), base_dir),
        layout=RunLayout(run_dir),
        queue=progress_queue,
    )


def _run_one(segment: int, shard: int, spec: ShardSpec) -> dict:
    q = _worker_state["queue"]
    report = (lambda n: q.put(n)) if q is not None else None
    return ShardRun(_worker_state["pipeline"], _worker_state["layout"], segment, shard, spec, report).run()


class _WorkerPool:
    """A process pool (or the current process when workers == 1) that runs shards."""

    def __init__(self, workers: int, recipe: Recipe, base_dir: str, run_dir: str):
        self.workers = workers
        self.args = (recipe.model_dump_json(), base_dir, run_dir)
        self.executor: ProcessPoolExecutor | None = None
        self.queue = None

    def __enter__(self) -> _WorkerPool:
        if self.workers > 1:
            context = multiprocessing.get_context("spawn")
            self.queue = context.Manager().Queue()
            self.executor = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_init_worker, initargs=(*self.args, self.queue)
            )
        else:
            _init_worker(*self.args, None)
        return self

    def __exit__(self, *exc) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=exc[0] is None, cancel_futures=True)

    def run(self, segment: int, todo: list[int], specs: list[ShardSpec], phase: str, total: int,
            notify: ProgressCallback) -> None:
        done = total - len(todo)
        notify(phase, done, total, 0)
        if self.executor is None:
            layout, pipeline = _worker_state["layout"], _worker_state["pipeline"]
            for shard in todo:
                try:
                    ShardRun(pipeline, layout, segment, shard, specs[shard],
                             lambda n: notify(phase, done, total, n)).run()
                except Exception as err:
                    raise RunError(f"shard {shard} ({specs[shard].description}) failed: {err}") from err
                done += 1
                notify(phase, done, total, 0)
            return
        pending: dict[Future, int] = {
            self.executor.submit(_run_one, segment, shard, specs[shard]): shard for shard in todo
        }
        while pending:
            finished, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            self._drain(phase, done, total, notify)
            for future in finished:
                shard = pending.pop(future)
                try:
                    future.result()
                except Exception as err:
                    raise RunError(f"shard {shard} ({specs[shard].description}) failed: {err}") from err
                done += 1
                notify(phase, done, total, 0)

    def _drain(self, phase: str, done: int, total: int, notify: ProgressCallback) -> None:
        records = 0
        while True:
            try:
                records += self.queue.get_nowait()
            except queue.Empty:
                break
        if records:
            notify(phase, done, total, records)
