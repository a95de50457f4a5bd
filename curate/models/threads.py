"""Threads for model stages: torch/BLAS threads = cores ÷ workers in every worker process.

Torch and the BLAS libraries start one thread per core in every process by default, so W workers
on C cores run W×C threads that spin against each other (on 2 shared cores a SmolLM2 self_instruct
run went from 91 s with one thread per worker to not finishing in 54 min). `configure_threads`
gives each worker `cores // workers` threads (at least 1); `DATAMILL_THREADS_PER_WORKER`, or an
`OMP_NUM_THREADS` the user exported, overrides it.

Executors call `configure_threads(workers)` in each worker process (`executors.workers.worker_setup`)
and when they run the shards in their own process.
"""

from __future__ import annotations

import os

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
