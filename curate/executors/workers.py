"""What every executor's workers do with one shard: run it, and turn any failure into a plain message.

A shard that raises outside a stage's batch (reading the source, a stage's setup, writing) fails the
run. The error must cross process boundaries (a process pool, Ray): polars panics are
`BaseException`s and some exceptions do not pickle, so the worker sends back `ShardFailed`, a plain
error whose message names the shard, its input and the original error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datamill.curate.engine.layout import RunLayout
from datamill.curate.engine.pipeline import Pipeline, ShardRun
from datamill.curate.engine.source import ShardSpec


class ShardFailed(RuntimeError):
    """A shard failed; the message says which shard, which input and what went wrong."""

    def __reduce__(self):
        return ShardFailed, (str(self),)


def run_shard_reporting(pipeline: Pipeline, layout: RunLayout, segment: int, shard: int, spec: ShardSpec,
                        report: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Run one shard of one segment to its commit and return its done marker."""
    try:
        return ShardRun(pipeline, layout, segment, shard, spec, report).run()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # polars panics derive from BaseException
        raise ShardFailed(f"shard {shard} ({spec.description}) failed: {type(err).__name__}: {err}") from None


def records_seen(marker: dict[str, Any]) -> int:
    """Records a shard took in: read from the source (segment 0) or from the previous segment."""
    return marker["records_read"] or max((s["records_in"] for s in marker["stages"].values()), default=0)
