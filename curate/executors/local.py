"""The local executor: run a segment's shards in worker processes on this machine.

With one worker the shards run in the current process; otherwise in a pool of spawned processes,
each of which builds the pipeline once (models load once per worker) and reports records processed
through a queue so the progress bar moves inside long shards. A worker's failure comes back as a
plain `ShardFailed` message naming the shard and what failed, never as an exception object that
cannot cross a process boundary (polars panics, unpicklable errors).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from datamill.curate.engine.layout import RunLayout
from datamill.curate.engine.pipeline import Pipeline, Segment
from datamill.curate.engine.recipe import Recipe
from datamill.curate.engine.source import ShardSpec
from datamill.curate.executors.run import Executor, RunError, ShardProgress, register_executor
from datamill.curate.executors.workers import ShardFailed, run_shard_reporting, sigint_deferred, worker_setup


@register_executor
class LocalExecutor(Executor):
    """A process pool (or the current process when workers == 1) that runs shards."""

    type_name = "local"

    def __init__(self, recipe: Recipe, pipeline: Pipeline, specs: list[ShardSpec], layout: RunLayout,
                 workers: int | None):
        super().__init__(recipe, pipeline, specs, layout, workers or multiprocessing.cpu_count() or 1)
        self.pool: ProcessPoolExecutor | None = None
        self.queue = None

    def __enter__(self) -> LocalExecutor:
        if self.workers > 1:
            context = multiprocessing.get_context("spawn")
            self.queue = context.Queue()
            self.pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_init_worker,
                initargs=(self.recipe.model_dump_json(), self.pipeline.base_dir, self.layout.location,
                          self.workers, os.getpid(), self.queue))
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is None:
            return
        if exc[0] is not None:  # failing or interrupted: stop the workers now, resume redoes their shards
            for child in multiprocessing.active_children():
                child.terminate()
        self.pool.shutdown(wait=exc[0] is None, cancel_futures=True)

    def map_shards(self, segment: Segment, shards: list[int]) -> Iterator[ShardProgress]:
        if self.pool is None:
            yield from self._in_process(segment, shards)
            return
        with sigint_deferred():  # submitting starts the worker processes
            pending: dict[Future, int] = {
                self.pool.submit(_run_one, segment.index, shard, self.specs[shard]): shard for shard in shards
            }
        while pending:
            finished, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            records = self._drain()
            if records:
                yield ShardProgress(records=records)
            for future in finished:
                shard = pending.pop(future)
                try:
                    future.result()
                except ShardFailed as err:
                    raise RunError(str(err)) from None
                except Exception as err:  # the worker process itself died
                    raise RunError(f"shard {shard} ({self.specs[shard].description}) failed: "
                                   f"{type(err).__name__}: {err}") from None
                yield ShardProgress(finished=True)

    def _in_process(self, segment: Segment, shards: list[int]) -> Iterator[ShardProgress]:
        counted: list[int] = []
        for shard in shards:
            try:
                run_shard_reporting(self.pipeline, self.layout, segment.index, shard, self.specs[shard],
                                    counted.append)
            except ShardFailed as err:
                raise RunError(str(err)) from None
            yield ShardProgress(records=sum(counted), finished=True)
            counted.clear()

    def _drain(self) -> int:
        records = 0
        while True:
            try:
                records += self.queue.get_nowait()
            except queue.Empty:
                return records


# --- in the worker processes ------------------------------------------------------------------

_worker_state: dict[str, Any] = {}


def _init_worker(recipe_json: str, base_dir: str, run_dir: str, workers: int, parent: int, progress_queue) -> None:
    worker_setup(workers, parent)
    _worker_state.update(
        pipeline=Pipeline(Recipe.model_validate_json(recipe_json), base_dir),
        layout=RunLayout(run_dir),
        queue=progress_queue,
    )


def _run_one(segment: int, shard: int, spec: ShardSpec) -> None:
    run_shard_reporting(_worker_state["pipeline"], _worker_state["layout"], segment, shard, spec,
                        _worker_state["queue"].put)

