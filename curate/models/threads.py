"""Worker setup for model stages: torch/BLAS threads = cores ÷ workers, and dying with the parent.

Torch and the BLAS libraries start one thread per core in every process by default, so W workers
on C cores run W×C threads that spin against each other (on 2 shared cores a SmolLM2 self_instruct
run went from 91 s with one thread per worker to not finishing in 54 min). `configure_threads`
gives each worker `cores // workers` threads (at least 1); `DATAMILL_THREADS_PER_WORKER`, or an
`OMP_NUM_THREADS` the user exported, overrides it.

A worker whose parent is killed (kill -9 of `datamill run`) is re-parented and would go on
generating; `exit_with_parent` starts a watchdog thread that ends the worker within
`poll_s` seconds of its parent's death (a parent-death signal would fire when the parent *thread*
that spawned the worker exits, which need not be the main thread).

Executors call `init_model_worker(workers)` in each pool worker's initializer and
`configure_threads(workers)` when they run work in their own process.
"""

from __future__ import annotations

import os
import sys
import threading
import time

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")
"""Read by OpenMP, MKL, OpenBLAS and the tokenizers' Rayon pool when they start."""
OURS = "DATAMILL_THREADS_CONFIGURED"


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Threads each of `workers` processes should use: `DATAMILL_THREADS_PER_WORKER` if set, else
    an `OMP_NUM_THREADS` the user set, else cores ÷ workers (at least 1)."""
    for name in ("DATAMILL_THREADS_PER_WORKER", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if name == "OMP_NUM_THREADS" and value == os.environ.get(OURS):
            continue  # set by configure_threads in a parent process, not by the user
        if value:
            try:
                threads = int(value)
            except ValueError:
                raise ValueError(f"environment variable {name}={value!r} must be a whole number of threads") from None
            if threads < 1:
                raise ValueError(f"environment variable {name}={value!r} must be at least 1")
            return threads
    return max(1, (cores or available_cores()) // max(1, workers))


def configure_threads(workers: int, cores: int | None = None) -> int:
    """Set this process's torch and BLAS thread counts for one of `workers` workers; returns the count.

    The environment variables reach libraries not loaded yet (and child processes); torch, if
    importable, is set directly, as it may already be loaded."""
    threads = threads_per_worker(workers, cores)
    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    os.environ[OURS] = str(threads)  # so a worker spawned from here does not take it for the user's choice
    try:
        import torch
    except ImportError:
        return threads
    torch.set_num_threads(threads)
    return threads


def exit_with_parent(poll_s: float = 0.5) -> threading.Thread:
    """Start a daemon thread that ends this process (exit status 1) once its parent has died."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                sys.stderr.write(f"datamill worker {os.getpid()}: parent {parent} died, exiting\n")
                os._exit(1)
            time.sleep(poll_s)

    thread = threading.Thread(target=watch, name="datamill-parent-watchdog", daemon=True)
    thread.start()
    return thread


def init_model_worker(workers: int) -> int:
    """Everything a pool worker needs before it loads a model: its thread count and the watchdog."""
    exit_with_parent()
    return configure_threads(workers)
