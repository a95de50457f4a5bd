"""Run one shard of one pipeline segment: read, apply stages, write, count, commit.

A pipeline is split into segments at barrier stages. Segment 0 reads a source shard; segment k>0
reads segment k-1's output for that shard and starts with the barrier's `apply`. A segment that
precedes a barrier writes its rows (with a `_pos` position) plus the barrier's `summarize` table
to state/; the last segment writes the corpus. Every stage call is isolated: if a stage raises on
a batch, the batch is bisected until the failing records are found; those go to quarantine with
the error, the rest go on.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from datamill.curate.engine.layout import RunLayout, local_run_dir, shard_prefix
from datamill.curate.engine.recipe import Recipe
from datamill.curate.engine.records import QUARANTINE_SCHEMA, TOKENS, approx_tokens, record_schema
from datamill.curate.engine.registry import source_types, stage_types
from datamill.curate.engine.sinks import ShardWriter, public_columns
from datamill.curate.engine.source import ShardSpec, Source
from datamill.curate.engine.stage import DROP_REASON, POSITION, BarrierStage, Stage
from datamill.curate.engine.stats import ShardStats, token_sum

SHARD_BITS = 40
"""`_pos` = shard index << 40 | row number in the shard's segment output."""
UNBOUNDED = 2**62


@dataclass
class Segment:
    index: int
    barrier: BarrierStage | None
    """Applied first (its decision was reduced from the previous segment's summaries)."""
    stages: list[Stage] = field(default_factory=list)
    next_barrier: BarrierStage | None = None
    """Summarized at the end of this segment, when the next segment starts with a barrier."""


class StageSetupError(RuntimeError):
    """A stage's `setup()` failed (model missing, bad file…): the message names the stage."""


class Pipeline:
    """Sources and stages built from a validated recipe, split into segments at barriers."""

    def __init__(self, recipe: Recipe, base_dir: str = "."):
        self.recipe = recipe
        self.base_dir = base_dir
        sources = source_types()
        self.sources: list[Source] = [
            sources[p.type](p, index=i, base_dir=base_dir) for i, p in enumerate(recipe.source_params())
        ]
        run_dir = local_run_dir(recipe.output.dir)
        for source in self.sources:
            source.run_dir = run_dir
        declared: dict[str, str] = {}
        for source in self.sources:
            for name, kind in source.params.columns.items():
                declared.setdefault(name, kind)
        self.record_schema = record_schema(declared)
        """Every source's records get every declared column (nulls where a source has none), so all
        shards of a run share one schema."""
        self.stages: list[Stage] = []
        seen: Counter = Counter()
        types = stage_types()
        for i, (type_name, params) in enumerate(recipe.stage_params()):
            stage = types[type_name](params, seed=recipe.seed * 7919 + i)
            stage.base_dir = base_dir
            stage.run_dir = run_dir  # where a stage keeps run-local state (the generation cache)
            seen[stage.name] += 1
            if seen[stage.name] > 1:
                stage.name = f"{stage.name}_{seen[stage.name]}"
            self.stages.append(stage)
        self.segments = split_segments(self.stages)
        self._set_up: set[int] = set()

    def __setstate__(self, state: dict) -> None:
        """Unpickled in a worker (a Ray node may be another machine): stages and sources keep their
        run-local files in this machine's mirror of a remote run directory, not the sender's."""
        self.__dict__.update(state)
        run_dir = local_run_dir(self.recipe.output.dir)
        for part in (*self.sources, *self.stages):
            part.run_dir = run_dir

    def setup(self, stages: list[Stage]) -> None:
        """Call `setup()` once per stage per process (models load once per worker)."""
        for stage in stages:
            if id(stage) not in self._set_up:
                try:
                    stage.setup()
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as err:  # a plain error naming the stage (polars panics included)
                    raise StageSetupError(f"stage {stage.name!r} could not set up: {type(err).__name__}: {err}") from err
                self._set_up.add(id(stage))

    def plan(self) -> list[ShardSpec]:
        return [spec for source in self.sources for spec in source.plan()]


def split_segments(stages: list[Stage]) -> list[Segment]:
    segments = [Segment(0, None)]
    for stage in stages:
        if stage.barrier:
            segments[-1].next_barrier = stage
            segments.append(Segment(len(segments), stage))
        else:
            segments[-1].stages.append(stage)
    return segments


class ShardRun:
    """The state of one shard of one segment while it runs."""

    def __init__(self, pipeline: Pipeline, layout: RunLayout, segment: int, shard: int, spec: ShardSpec,
                 report_progress: Callable[[int], None] | None = None):
        self.pipeline, self.layout = pipeline, layout
        self.segment = pipeline.segments[segment]
        self.shard, self.spec = shard, spec
        self.recipe = pipeline.recipe
        self.is_last = segment == len(pipeline.segments) - 1
        self.stats = ShardStats(segment=segment, shard=shard, source_index=spec.source_index)
        self.report_progress = report_progress or (lambda n: None)
        self.tmp = layout.begin(segment, shard)
        prefix = f"part-{shard:05d}"
        out = self.recipe.output
        if self.is_last:
            self.writer = ShardWriter(self.tmp / "shards", prefix, out.format, out.shard_rows)
        else:
            self.writer = ShardWriter(self.tmp / "segment", prefix, "parquet", UNBOUNDED, keep_hidden=True)
        self.quarantine = ShardWriter(self.tmp / "quarantine", shard_prefix(segment, shard), "jsonl", UNBOUNDED)
        self.removed: dict[str, ShardWriter] = {}
        self.summaries: list[pl.DataFrame] = []
        self.next_row = 0
        self._decision: pl.DataFrame | None = None

    # --- the run -----------------------------------------------------------------------
    def run(self) -> dict:
        started = time.perf_counter()
        seg = self.segment
        stages = [s for s in ([seg.barrier] if seg.barrier else []) + seg.stages + (
            [seg.next_barrier] if seg.next_barrier else [])]
        self.pipeline.setup(stages)
        for batch in self._input_batches():
            self.report_progress(batch.height)
            if seg.barrier is not None:
                batch = self._run_stage(seg.barrier, batch, lambda b: seg.barrier.apply(b, self._decision_table()))
            for stage in seg.stages:
                if batch.height == 0:
                    break
                batch = self._run_stage(stage, batch, stage.process)
            if batch.height:
                self._emit(batch)
        return self._commit(started)

    def _input_batches(self) -> Iterator[pl.DataFrame]:
        batch_rows = self.recipe.executor.batch_rows
        if self.segment.index == 0:
            source = self.pipeline.sources[self.spec.source_index]
            for part in source.read(self.spec, batch_rows):
                self.stats.records_read += part.lines_read
                self.stats.skipped.update(part.skipped)
                if part.quarantine.height:
                    self._quarantine(part.quarantine)
                schema = self.pipeline.record_schema
                missing = [pl.lit(None, dtype=kind).alias(name) for name, kind in schema.items()
                           if name not in part.records.columns]
                records = part.records.with_columns(*missing, approx_tokens(pl.col("text")).alias(TOKENS))
                records = records.select(*schema, pl.exclude(*schema))
                self.stats.records_ok += records.height
                self.stats.add_lengths("input", records)
                yield records
            return
        path = self.layout.fetch(self.layout.intermediate(self.segment.index - 1, self.shard))
        if path is not None:
            for record_batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
                yield pl.from_arrow(record_batch)

    def _decision_table(self) -> pl.DataFrame:
        if self._decision is None:
            lo = self.shard << SHARD_BITS
            decision = pl.scan_parquet(self.layout.fetch(self.layout.decision(self.segment.index)))
            self._decision = self.segment.barrier.decision_for_shard(decision, lo, lo + (1 << SHARD_BITS))
        return self._decision

    def _emit(self, batch: pl.DataFrame) -> None:
        if self.is_last:
            self.stats.output_records += batch.height
            self.stats.output_tokens += token_sum(batch)
            self.stats.add_lengths("output", batch)
            self.writer.write(batch)
            return
        positions = pl.int_range(self.next_row, self.next_row + batch.height, dtype=pl.Int64) + (
            self.shard << SHARD_BITS)
        batch = batch.with_columns(positions.alias(POSITION))
        self.next_row += batch.height
        barrier = self.segment.next_barrier
        started = time.perf_counter()
        try:
            self.summaries.append(barrier.summarize(batch))
        except Exception as err:
            raise RuntimeError(f"stage {barrier.name!r} failed to summarize shard {self.shard}: {err}") from err
        self.stats.stage(barrier.name).seconds += time.perf_counter() - started
        self.writer.write(batch)

    # --- one stage on one batch ----------------------------------------------------------
    def _run_stage(self, stage: Stage, batch: pl.DataFrame, call: Callable[[pl.DataFrame], pl.DataFrame]) -> pl.DataFrame:
        counts = self.stats.stage(stage.name)
        started = time.perf_counter()
        counts.records_in += batch.height
        counts.tokens_in += token_sum(batch)
        result = self._isolating_errors(stage, batch, call)
        if stage.modifies_text and result.height:
            result = result.with_columns(approx_tokens(pl.col("text")).alias(TOKENS))
        self.stats.sample_scores(stage.name, result, stage.outputs)
        counts.tallies.update(stage.tallies(result))
        if not counts.facts:
            counts.facts.update(stage.facts())
        if DROP_REASON in result.columns:
            reasons = Counter(dict(result[DROP_REASON].drop_nulls().value_counts().iter_rows()))
            if getattr(stage.params, "action", "drop") == "flag":
                counts.flagged.update(reasons)
                result = result.rename({DROP_REASON: f"{stage.name}_reason"})
            else:
                counts.dropped.update(reasons)
                if self.recipe.output.keep_removed and reasons:
                    removed = result.filter(pl.col(DROP_REASON).is_not_null())
                    self._removed_writer(stage.name).write(removed.rename({DROP_REASON: "drop_reason"}))
                result = result.filter(pl.col(DROP_REASON).is_null()).drop(DROP_REASON)
        counts.records_out += result.height
        counts.tokens_out += token_sum(result)
        counts.seconds += time.perf_counter() - started
        return result

    def _isolating_errors(self, stage: Stage, batch: pl.DataFrame, call) -> pl.DataFrame:
        try:
            return call(batch)
        except Exception as err:
            if batch.height <= 1:
                self._quarantine_stage_error(stage, batch, err)
                return batch.clear()
        half = batch.height // 2
        parts = [self._isolating_errors(stage, batch.slice(0, half), call),
                 self._isolating_errors(stage, batch.slice(half), call)]
        parts = [p for p in parts if p.height] or parts[:1]
        return pl.concat(parts, how="diagonal_relaxed")

    def _quarantine_stage_error(self, stage: Stage, batch: pl.DataFrame, err: Exception) -> None:
        where = traceback.extract_tb(err.__traceback__)[-1]
        self.stats.stage(stage.name).errors += batch.height
        rows = public_columns(batch).with_columns(pl.all().cast(pl.String, strict=False))
        quarantined = batch.select(
            pl.col("source"),
            pl.lit(None, dtype=pl.String).alias("file"),
            pl.lit(None, dtype=pl.Int64).alias("line"),
            pl.lit(f"stage_error:{stage.name}").alias("reason"),
            (pl.lit("record ") + pl.col("id") + pl.lit(
                f": stage {stage.name!r} raised {type(err).__name__}: {err} "
                f"({Path(where.filename).name}:{where.lineno})")).alias("detail"),
            pl.Series("raw", [r for r in rows.select(pl.struct(rows.columns).struct.json_encode()).to_series()],
                      dtype=pl.String),
            pl.lit(None, dtype=pl.String).alias("raw_b64"),
        )
        self._quarantine(quarantined)

    def _quarantine(self, rows: pl.DataFrame) -> None:
        self.stats.quarantine.update(dict(rows["reason"].value_counts().iter_rows()))
        self.quarantine.write(rows.select(list(QUARANTINE_SCHEMA)))

    def _removed_writer(self, stage_name: str) -> ShardWriter:
        if stage_name not in self.removed:
            self.removed[stage_name] = ShardWriter(
                self.tmp / "removed" / stage_name, shard_prefix(self.segment.index, self.shard), "parquet", UNBOUNDED)
        return self.removed[stage_name]

    # --- commit ------------------------------------------------------------------------
    def _commit(self, started: float) -> dict:
        layout, seg = self.layout, self.segment.index
        moves = []
        target = layout.shards if self.is_last else layout.segment_dir(seg)
        moves += [(p, target / p.name) for p in self.writer.close()]
        moves += [(p, layout.quarantine / p.name) for p in self.quarantine.close()]
        for stage_name, writer in self.removed.items():
            moves += [(p, layout.removed / stage_name / p.name) for p in writer.close()]
        if self.summaries:
            summary = self.tmp / "summary.parquet"
            pl.concat(self.summaries, how="vertical_relaxed").write_parquet(summary)
            moves.append((summary, layout.summary(seg, self.shard)))
        if self.is_last:
            self.stats.output_files = [str(t.relative_to(layout.root)) for _, t in moves if t.parent == layout.shards]
            self.stats.output_bytes = sum(p.stat().st_size for p, t in moves if t.parent == layout.shards)
        self.stats.seconds = time.perf_counter() - started
        marker = self.stats.to_json()
        layout.commit(seg, self.shard, moves, marker)
        return marker
