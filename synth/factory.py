"""Building a stage's generator: the backend a spec names, wrapped in the run's generation cache.

This sits above `synth/generation.py` (the interface and backend table) and `synth/cache.py` (the
cache, which only knows the `Generator` protocol), so neither imports the other. The cache lives in
the run directory by default (`<run dir>/state/generation_cache`: `--fresh` discards it with the
rest of the run's state); `generator.cache_dir` names a cache shared between runs instead.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from datamill.synth.cache import CachedGenerator
from datamill.synth.generation import Generator, GeneratorSpec, SamplingParams, load_backend

RUN_CACHE = Path("state") / "generation_cache"
"""Where a run keeps its generations, relative to the run directory."""


def run_cache_dir(run_dir: str | Path) -> Path:
    """`<run dir>/state/generation_cache`."""
    return Path(run_dir) / RUN_CACHE


TALLIES = Path("state") / "synthesis"
"""Per-stage generation tallies (`<stage>-<pid>-<random>.json`: one per generator made), relative to the run directory: the report's synthesis section."""


def make_generator(spec: GeneratorSpec, run_dir: str | Path | None = None,
                   probe: SamplingParams | None = None, label: str | None = None) -> Generator:
    """The backend `spec` names, wrapped in the generation cache: `spec.cache_dir` when set (a
    shared cache, asked for), else the run's own cache under `run_dir`; with neither (a stage used
    outside a run) the backend itself, uncached. With `probe`, a backend that can check a server's
    capabilities (openai) does so once, before any record, for those sampling params. In a run,
    the generator's tally (cache hits, tokens, seconds…) is kept under `<run dir>/state/synthesis/`
    as `<label>-<pid>-<random>.json` for the report."""
    backend = load_backend(spec)
    if probe is not None and hasattr(backend, "probe"):
        backend.probe(probe)
    if spec.cache_dir:
        folder = Path(spec.cache_dir).expanduser()
    elif run_dir is not None:
        folder = run_cache_dir(run_dir)
    else:
        return backend
    tally = Path(run_dir) / TALLIES / f"{label or 'generator'}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json" if run_dir is not None else None
    return CachedGenerator(backend, folder, chunk_chats=max(spec.batch_size, 64), tally_path=tally)
