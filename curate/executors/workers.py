"""What every executor's workers do with one shard: run it, and turn any failure into a plain message.

A shard that raises outside a stage's batch (reading the source, a stage's setup, writing) fails the
run. The error must cross process boundaries (a process pool, Ray): polars panics are
`BaseException`s and some exceptions do not pickle, so the worker sends back `ShardFailed`, a plain
error whose message names the shard, its input and the original error.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from datamill.curate.engine.layout import RunLayout
from datamill.curate.models.threads import configure_threads
from datamill.curate.engine.pipeline import Pipeline, ShardRun
from datamill.curate.engine.source import ShardSpec


class ShardFailed(RuntimeError):
    """A shard failed; the message says which shard, which input and what went wrong."""

    def __reduce__(self):
        return ShardFailed, (str(self),)


def worker_setup(workers: int, parent: int) -> None:
    """Prepare a worker process: share the cores (`models.threads`), die with the parent, leave
    Ctrl-C to the parent. A worker whose parent was killed (even with kill -9) exits within a second
    instead of generating on for nobody.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool on Ctrl-C
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked since birth, see sigint_deferred
    configure_threads(workers)
    die_with_parent(parent)


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Start worker processes inside this: they inherit a blocked SIGINT until `worker_setup` ignores it,
    so a Ctrl-C while they import prints no tracebacks; the parent receives one pressed meanwhile on exit."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def die_with_parent(parent: int) -> None:
    """Exit when the parent process (pid `parent`) dies: Linux's parent-death signal at once, and a
    watchdog thread everywhere (the signal fires when the parent *thread* that started this process
    ends, which need not be the parent's main thread)."""
    if os.getppid() != parent:  # it died while this process was starting
        os._exit(1)
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="datamill-parent-watch", daemon=True).start()


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
