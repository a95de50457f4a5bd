"""Content-addressed cache of generations: a re-run never regenerates a completion it already has.

Each completion is one small JSON file, `<dir>/<key[:2]>/<key>.json`, where the key is the
sha256 of (key version, model_id, messages, sampling params without `n`, sample index) — the seed is one of
the params. Files are written to a temporary name in the same folder and renamed into place
(atomic on POSIX), so a crash never leaves a half entry and loses only what was not finished.
`CachedGenerator` asks its backend for the missing chats a chunk at a time and stores each
completion as soon as the backend reports it (backends that take `on_completion`; for others, each
chunk as soon as it is done), so a run killed halfway resumes with only the rest left to generate.
This module knows only the `Generator` protocol; `synth/factory.py` wraps backends in it.

A run directory on an object store: the cache folder and the tallies are then inside this machine's
mirror of the run (`engine.store.local_mirror`), and the cache keeps the store in step with it, so
workers on other machines share one cache: entries missing locally are fetched from the store (one
concurrent batch of GETs per `generate` call; absent ones are generated), new entries are uploaded
after each chunk (one concurrent batch of PUTs) and the tally with them — all before the stage hands
its records back, so before the shard's done marker. Entries not yet uploaded are listed in a journal
beside them (`.unsent.<pid>`), so those of a worker killed mid-chunk are uploaded by the next cache
opened on the folder, on that machine.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from datamill.curate.engine.paths import write_bytes
from datamill.curate.engine.store import ObjectStore, mirror_origin
from datamill.synth.generation import Chat, Completion, Generator, OnCompletion, SamplingParams, validate_chats


KEY_VERSION = 3
"""Bumped when what a backend returns for the same key changes (2: per-row torch.Generator sampling
in the transformers backend, and `Completion.token_ids`; 3: `Completion.prompt_token_ids`), so old
entries are never served."""


def entry_key(model_id: str, chat: Chat, params: SamplingParams, sample_index: int) -> str:
    """sha256 hex of (key version, model_id, messages, params minus n, sample index)."""
    payload = {
        "version": KEY_VERSION,
        "model_id": model_id,
        "messages": chat,
        "params": params.model_dump(exclude={"n"}),
        "sample_index": sample_index,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def choice_key(model_id: str, chat: Chat, choices: list[str], prefix: str) -> str:
    """sha256 hex of (key version, model_id, messages, prefix, choices): a `score_choices` answer."""
    payload = {"version": KEY_VERSION, "kind": "choices", "model_id": model_id, "messages": chat,
               "prefix": prefix, "choices": choices}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


JOURNAL = ".unsent."
"""Journal file name prefix (then the writing process's pid) in a store-backed cache folder."""


class GenerationCache:
    """Completions stored one file per key under a folder (kept in step with the store when the
    folder is inside a remote run's mirror)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        origin = mirror_origin(self.folder)
        self.store = ObjectStore(origin) if origin else None
        """The cache's prefix on the run's object store, or None for a local cache."""
        self.unsent: dict[str, Path] = {}
        """Entries written here and not yet on the store, by key."""
        self.journal = self.folder / f"{JOURNAL}{os.getpid()}"
        """This process's list of the keys in `unsent`: what a crash would leave unsent."""
        if self.store is not None:
            self.send_journals()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def name(self, key: str) -> str:
        return f"{key[:2]}/{key}.json"

    def prefetch(self, keys: list[str]) -> int:
        """Copy the entries of `keys` that this folder lacks from the store (one concurrent batch);
        returns how many were found there. Nothing to do for a local cache."""
        if self.store is None:
            return 0
        wanted = {self.store.key(self.name(k)): k for k in dict.fromkeys(keys) if not self.path(k).is_file()}
        if not wanted:
            return 0
        found = self.store.fs.cat(list(wanted), on_error="return")
        got = 0
        for name, data in found.items():
            if isinstance(data, bytes):
                self.write_raw(wanted[name], data)
                got += 1
            elif not isinstance(data, FileNotFoundError):
                raise OSError(f"generation cache on {self.store.url}: cannot read {name}: {data}") from data
        return got

    def flush(self) -> None:
        """Upload the entries written since the last flush (one concurrent batch of PUTs)."""
        if self.store is None or not self.unsent:
            return
        self.store.fs.pipe({self.store.key(self.name(k)): p.read_bytes() for k, p in self.unsent.items()})
        self.unsent.clear()
        self.journal.unlink(missing_ok=True)

    def send_journals(self) -> None:
        """Upload the entries that the journals in the folder list (left by processes killed before
        their flush, or written by one still running: a PUT of the same bytes again is harmless)."""
        journals = list(self.folder.glob(f"{JOURNAL}*")) if self.folder.is_dir() else []
        for journal in journals:
            for key in journal.read_text(encoding="utf-8").split():
                if self.path(key).is_file():
                    self.unsent[key] = self.path(key)
        self.flush()
        for journal in journals:
            journal.unlink(missing_ok=True)

    def get(self, key: str) -> Completion | None:
        path = self.path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"generation cache entry {path} is corrupt ({error}); delete it to regenerate") from None
        return Completion(**data)

    def get_scores(self, key: str) -> list[float] | None:
        path = self.path(key)
        try:
            return [float(v) for v in json.loads(path.read_text(encoding="utf-8"))]
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as error:
            raise ValueError(f"generation cache entry {path} is corrupt ({error}); delete it to recompute") from None

    def put_scores(self, key: str, scores: list[float]) -> None:
        self.write(key, [float(v) for v in scores])  # -inf is written as -Infinity, which json reads back

    def put(self, key: str, completion: Completion) -> None:
        self.write(key, asdict(completion))

    def write(self, key: str, value) -> None:
        """Store `value` as the entry's JSON (queued for upload when the cache has a store)."""
        self.replace(key, "w", lambda f: json.dump(value, f, ensure_ascii=False))
        if self.store is not None:
            self.unsent[key] = self.path(key)
            with open(self.journal, "a", encoding="utf-8") as journal:
                journal.write(key + "\n")

    def write_raw(self, key: str, data: bytes) -> None:
        """Store the entry's bytes as they are (fetched from the store)."""
        self.replace(key, "wb", lambda f: f.write(data))

    def replace(self, key: str, mode: str, fill) -> None:
        """The entry's file, filled by `fill(file)` under a temporary name in the same folder, then
        renamed into place: a crash never leaves half an entry."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, mode, encoding="utf-8" if "b" not in mode else None) as f:
                fill(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass
class GenerationTally:
    """What a generator did: completions asked for, served from the cache, generated (with their
    tokens, seconds spent and how many hit max_new_tokens)."""

    completions: int = 0
    cache_hits: int = 0
    generated: int = 0
    tokens: int = 0
    truncated: int = 0
    seconds: float = 0.0

    def add(self, completion: Completion) -> None:
        self.generated += 1
        self.tokens += completion.num_tokens
        self.truncated += completion.finish_reason == "length"


def takes_on_completion(generator: Generator) -> bool:
    """Whether `generator.generate` accepts the `on_completion` callback."""
    try:
        return "on_completion" in inspect.signature(generator.generate).parameters
    except (TypeError, ValueError):
        return False


class CachedGenerator:
    """A Generator that answers from the cache and sends only missing chats to its backend.

    A chat with any missing sample is regenerated with all `n` samples (backends are deterministic
    per chat, sample index and seed) and only the missing entries are written, each as soon as the
    backend reports it. `tally` counts cache hits, generated completions and tokens.
    """

    def __init__(self, backend: Generator, folder: Path, chunk_chats: int = 64, tally_path: Path | None = None):
        self.backend = backend
        self.tally_path = tally_path
        """Where `tally` is written (JSON, atomically) after every call: the run report reads it."""
        self.tally_url = mirror_origin(tally_path) if tally_path is not None else None
        """Where the tally also goes when the run directory is on an object store."""
        self.cache = GenerationCache(folder)
        self.chunk_chats = chunk_chats
        self.model_id = backend.model_id
        self.streams = takes_on_completion(backend)
        self.tally = GenerationTally()
        if callable(getattr(backend, "score_choices", None)):  # the capability passes through, cached
            self.score_choices = self.cached_score_choices

    def cached_score_choices(self, chats: list[Chat], choices: list[str], prefix: str = "") -> list[list[float]]:
        """The backend's `score_choices`, each chat's answer stored under a key of (model, chat, prefix, choices)."""
        chats = validate_chats(chats)
        keys = [choice_key(self.model_id, chat, choices, prefix) for chat in chats]
        self.cache.prefetch(keys)
        found = [self.cache.get_scores(k) for k in keys]
        missing = [i for i, v in enumerate(found) if v is None]
        if missing:
            began = time.perf_counter()
            scores = self.backend.score_choices([chats[i] for i in missing], choices, prefix)
            self.tally.seconds += time.perf_counter() - began
            for i, row in zip(missing, scores):
                self.cache.put_scores(keys[i], row)
                found[i] = row
            self.cache.flush()
        self.tally.completions += len(chats)
        self.tally.cache_hits += len(chats) - len(missing)
        self.save_tally()
        return found  # type: ignore[return-value]

    def generate(self, chats: list[Chat], params: SamplingParams,
                 on_completion: OnCompletion | None = None) -> list[list[Completion]]:
        chats = validate_chats(chats)
        keys = [[entry_key(self.model_id, chat, params, s) for s in range(params.n)] for chat in chats]
        self.cache.prefetch([k for row in keys for k in row])
        results = [[self.cache.get(k) for k in row] for row in keys]
        hits = sum(c is not None for row in results for c in row)
        self.tally.completions += len(chats) * params.n
        self.tally.cache_hits += hits
        if on_completion is not None:
            for i, row in enumerate(results):
                for s, completion in enumerate(row):
                    if completion is not None:
                        on_completion(i, s, completion)
        missing = [i for i, row in enumerate(results) if any(c is None for c in row)]
        for start in range(0, len(missing), self.chunk_chats):
            chunk = missing[start:start + self.chunk_chats]

            def store(position: int, s: int, completion: Completion, chunk: list[int] = chunk) -> None:
                i = chunk[position]
                if results[i][s] is None:
                    self.cache.put(keys[i][s], completion)
                    results[i][s] = completion
                    self.tally.add(completion)
                    if on_completion is not None:
                        on_completion(i, s, completion)

            began = time.perf_counter()
            try:
                if self.streams:
                    generated = self.backend.generate([chats[i] for i in chunk], params, on_completion=store)
                else:
                    generated = self.backend.generate([chats[i] for i in chunk], params)
            except BaseException:
                self.cache.flush()  # what streamed in before the failure reaches the store too
                raise
            self.tally.seconds += time.perf_counter() - began
            if len(generated) != len(chunk) or any(len(row) != params.n for row in generated):
                raise RuntimeError(f"backend {self.model_id} returned a wrong number of completions")
            for position, row in enumerate(generated):
                for s, completion in enumerate(row):
                    store(position, s, completion)
            self.cache.flush()
            self.save_tally()
        self.save_tally()
        return results  # type: ignore[return-value]

    def save_tally(self) -> None:
        """Write the tally (and, for a run on an object store, put it there too: one PUT)."""
        if self.tally_path is None:
            return
        data = json.dumps({"model_id": self.model_id, **asdict(self.tally)}).encode()
        self.tally_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tally_path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.tally_path)
        if self.tally_url is not None:
            write_bytes(self.tally_url, data)
