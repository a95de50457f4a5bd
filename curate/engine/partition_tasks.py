"""Tasks of a partitioned reduce step, run on a local process pool over files or as Ray tasks.

A step is `fn(frames, *args) -> (frames_out, info)` run once per input list in parallel
(`TaskRunner.map`); its outputs are handles (a file, or a Ray object reference; None: empty),
`regroup` turns outputs per source task into inputs per destination partition, and a decision
table made of sorted `_pos` ranges (`DecisionParts`) is written one range at a time by
`write_decision`. Barrier families (dedup's connected components, selection's ranged ranking and
mix combines) build their steps on these; executors pick the runner.

`LocalRunner` keeps every output frame in an Arrow IPC stream file (read ~8× faster than the IPC
file format for the many small frames, and not memory-mapped) under a work folder
(`cc-SSS/TTTTT-DDDDD.arrows`: step, task, destination; empty frames are not written) and runs the
tasks with a `submit` callable (a process pool's) or in this process; `RayRunner` runs them as Ray
tasks whose outputs stay in Ray's object store.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import polars as pl

Handle = Any
"""Where a task's output frame is: a file (local runner) or a Ray object reference; None: empty."""


class TaskRunner(Protocol):
    """Runs one step: `fn(frames, *args) -> (frames_out, info)` once per input list, in parallel."""

    def map(self, fn: Callable, inputs: Sequence[Sequence[Handle]], args: tuple,
            outputs: int) -> tuple[list[list[Handle]], list[Any]]:
        """Per task i (inputs[i] its frames): its `outputs` output handles, and the infos."""
        ...

    def fetch(self, handle: Handle) -> pl.DataFrame | None:
        """The frame behind a handle (None for an empty one)."""
        ...

    def drop(self, handles: Sequence[Handle]) -> None:
        """Forget frames no step needs any more."""
        ...


def regroup(outs: list[list[Handle]], partitions: int) -> list[list[Handle]]:
    """Outputs per source task → inputs per destination partition."""
    return [[task[p] for task in outs if task[p] is not None] for p in range(partitions)]


class DecisionParts:
    """A decision table held as sorted `_pos` ranges (one frame per range, in order), fetched one at
    a time: `write_decision` streams them into one parquet file, `collect` joins them (tests, small runs)."""

    def __init__(self, runner: TaskRunner, handles: list[Handle], schema: dict[str, pl.DataType]):
        self.runner, self.handles, self.schema = runner, handles, schema

    def __iter__(self) -> Iterator[pl.DataFrame]:
        for handle in self.handles:
            frame = self.runner.fetch(handle)
            if frame is not None and frame.height:
                yield frame

    def collect(self) -> pl.DataFrame:
        return pl.concat([pl.DataFrame(schema=self.schema), *self], how="vertical")


DECISION_ROW_GROUP = 1 << 20
"""Rows per row group of a written decision table, whichever way it was made."""


def write_decision(decision: pl.DataFrame | DecisionParts, target: Path) -> None:
    """Write a barrier's decision table (a frame, or the ranges of a partitioned one, streamed one
    range at a time) to `target` with one writer and row groups of `DECISION_ROW_GROUP` rows, so
    the file's bytes depend only on the table, not on how it was reduced."""
    import pyarrow.parquet as pq

    frames = [decision] if isinstance(decision, pl.DataFrame) else iter(decision)
    schema = pl.DataFrame(schema=decision.schema).to_arrow().schema
    pending: list[pl.DataFrame] = []
    rows = 0
    with pq.ParquetWriter(str(target), schema) as writer:
        for frame in frames:
            pending.append(frame)
            rows += frame.height
            while rows >= DECISION_ROW_GROUP:
                joined = pl.concat(pending, how="vertical")
                writer.write_table(joined.head(DECISION_ROW_GROUP).to_arrow(), row_group_size=DECISION_ROW_GROUP)
                pending, rows = [joined.slice(DECISION_ROW_GROUP)], joined.height - DECISION_ROW_GROUP
        if rows:  # an empty table is the schema and no row group
            writer.write_table(pl.concat(pending, how="vertical").to_arrow(), row_group_size=DECISION_ROW_GROUP)


def read_frame(path: Path) -> pl.DataFrame:
    """A frame from an Arrow IPC stream (`.arrows`, what the steps write) or file (the pair inputs)."""
    return pl.read_ipc_stream(path) if str(path).endswith(".arrows") else pl.read_ipc(path)


def run_file_task(fn: Callable, paths: list[Path], args: tuple, folder: Path, task: int) -> tuple[list, Any]:
    """One step's task on files: read the inputs, run `fn`, write each non-empty output frame."""
    frames = [read_frame(p) for p in paths]
    outs, info = fn(frames, *args)
    del frames
    written = []
    for dest, frame in enumerate(outs):
        if frame.height == 0:
            written.append(None)
            continue
        target = Path(folder) / f"{task:05d}-{dest:05d}.arrows"
        frame.write_ipc_stream(target)
        written.append(target)
    return written, info


class LocalRunner:
    """Steps as tasks of `submit` (e.g. `ProcessPoolExecutor.submit`; None: in this process) on files."""

    def __init__(self, workdir: Path, submit: Callable | None = None):
        self.workdir, self.submit, self.steps = Path(workdir), submit, 0

    def map(self, fn: Callable, inputs: Sequence[Sequence[Any]], args: tuple,
            outputs: int) -> tuple[list[list[Any]], list[Any]]:
        folder = self.workdir / f"cc-{self.steps:03d}"
        self.steps += 1
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        tasks = [(fn, [p for p in paths if p is not None], args, folder, i) for i, paths in enumerate(inputs)]
        if self.submit is None:
            results = [run_file_task(*task) for task in tasks]
        else:
            results = [future.result() for future in [self.submit(run_file_task, *task) for task in tasks]]
        for written, _ in results:
            if len(written) != outputs:
                raise RuntimeError(f"{fn.__name__}: a task returned {len(written)} frames, expected {outputs}")
        return [written for written, _ in results], [info for _, info in results]

    def fetch(self, handle: Any) -> pl.DataFrame | None:
        return None if handle is None else read_frame(handle)

    def drop(self, handles: Sequence[Any]) -> None:
        for path in handles:
            if path is not None:
                Path(path).unlink(missing_ok=True)


def run_ray_task(fn: Callable, args: tuple, *frames: pl.DataFrame) -> tuple:
    """One step's task in Ray: its output frames, then its info (num_returns = outputs + 1)."""
    outs, info = fn(list(frames), *args)
    return (*outs, info)


class RayRunner:
    """Steps as Ray tasks on the connected cluster; frames travel through Ray's object store."""

    def __init__(self, retries: int = 3):
        self.retries = retries

    def map(self, fn: Callable, inputs: Sequence[Sequence[Any]], args: tuple,
            outputs: int) -> tuple[list[list[Any]], list[Any]]:
        import ray

        task = ray.remote(run_ray_task).options(num_returns=outputs + 1, max_retries=self.retries)
        refs = [task.remote(fn, args, *handles) for handles in inputs]
        infos = ray.get([r[-1] for r in refs])
        return [list(r[:-1]) for r in refs], infos

    def fetch(self, handle: Any) -> pl.DataFrame | None:
        import ray

        return None if handle is None else ray.get(handle)

    def drop(self, handles: Sequence[Any]) -> None:
        """Nothing: Ray frees an object when its last reference goes."""
