"""One writer per run directory: an exclusive lock held for the run's whole life.

Local run directories: `<run>/state/run.lock` is an OS lock (filelock), so it is released when the
holder exits, even by `kill -9`; `<run>/state/run.owner.json` names the holder (pid, host, start
time) so a refused second run can say who has the directory.

Object stores (`output.dir: s3://…`) have no OS locks. There the lock is the object
`state/run.lock`, holding the owner (pid, host, start time, a random token) and a heartbeat time:

- it is taken with a conditional create (S3 `If-None-Match: *`, fsspec's exclusive mode "xb"),
  which the store itself makes atomic: of two runs starting together exactly one gets it;
- the holder rewrites the heartbeat every `HEARTBEAT_S` seconds and deletes the object on exit;
- a holder killed with `kill -9` cannot delete it, so a lock whose heartbeat is older than
  `STALE_AFTER_S` is taken over: overwritten with the new owner, then read back after a pause.
  This takeover is best effort, not atomic: two runs taking over the same stale lock within that
  pause can both believe they hold it. The heartbeat uses the writers' clocks (skew ≪ 10 min assumed);
- on a store without conditional create the lock falls back to the same write-and-read-back,
  with the same caveat for two runs starting at the same moment.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from datamill.curate.engine.store import ObjectStore, is_remote, local_path

HEARTBEAT_S = 30.0
"""How often the holder of an object-store lock rewrites its heartbeat."""
STALE_AFTER_S = 600.0
"""An object-store lock whose heartbeat is older than this is taken to be a dead run's."""
SETTLE_S = 2.0
"""Pause between overwriting a stale lock and reading it back."""
LOCK_OBJECT = "state/run.lock"


class RunLocked(RuntimeError):
    """Another process is writing to this run directory."""


class RunLock:
    """`with RunLock(run_dir):` — fail at once if another run holds `run_dir` (a path or a URL)."""

    def __init__(self, root: str | Path, *, stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S):
        self.location = str(root)
        self.store = ObjectStore(self.location) if is_remote(self.location) else None
        self.root = local_path(root)
        self.state = self.root / "state"
        self.stale_after_s, self.heartbeat_s = stale_after_s, heartbeat_s
        self._lock: FileLock | None = None
        self._token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock now or raise RunLocked naming the holder."""
        if self.store:
            self._acquire_object()
            return
        try:
            self.state.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunLocked(f"cannot create the run directory {self.root}: {err.strerror or err}") from None
        self._lock = FileLock(self.state / "run.lock")
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RunLocked(f"{self.root} is being written by another run ({self._holder()}); wait for it "
                            "to finish, stop it, or choose another output.dir") from None
        (self.state / "run.owner.json").write_text(json.dumps(self._owner()))

    def release(self) -> None:
        if self.store:
            self._stop.set()
            if self._beat is not None:
                self._beat.join()
                self._beat = None
            if self._read_object().get("token") == self._token:
                self.store.delete([LOCK_OBJECT])
            return
        (self.state / "run.owner.json").unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.release()

    def _owner(self) -> dict:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return {"pid": os.getpid(), "host": socket.gethostname(), "started_at": now, "token": self._token,
                "heartbeat": time.time()}

    def _holder(self) -> str:
        try:
            owner = self._read_object() if self.store else json.loads((self.state / "run.owner.json").read_text())
            return f"pid {owner['pid']} on {owner['host']}, since {owner['started_at']}"
        except (OSError, ValueError, KeyError):
            return "holder unknown"

    # --- object stores -------------------------------------------------------------------
    def _read_object(self) -> dict:
        try:
            raw = self.store.read_bytes(LOCK_OBJECT)
            return json.loads(raw) if raw else {}
        except (OSError, ValueError):
            return {}

    def _acquire_object(self) -> None:
        self._owner_record = self._owner()
        data = json.dumps(self._owner_record).encode()
        try:
            won = self.store.create_exclusive(LOCK_OBJECT, data)
        except NotImplementedError:
            won = None
        except OSError as err:
            raise RunLocked(f"cannot write the run directory {self.location}: {err}") from None
        if not won:
            held = self._read_object()
            age = time.time() - float(held.get("heartbeat", 0) or 0)
            if held and age < self.stale_after_s:
                raise RunLocked(f"{self.location} is being written by another run ({self._holder()}, last "
                                f"heartbeat {age:.0f}s ago); wait for it to finish, stop it, or choose another "
                                f"output.dir (a lock without a heartbeat for {self.stale_after_s:.0f}s is taken over)")
            self.store.write_bytes(LOCK_OBJECT, data)  # stale or no conditional create: write, then read back
            time.sleep(SETTLE_S)
            if self._read_object().get("token") != self._token:
                raise RunLocked(f"{self.location} was taken by another run ({self._holder()}) while this one "
                                "was taking over its stale lock")
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="datamill-lock-heartbeat", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if self._read_object().get("token") != self._token:
                    return  # taken over (this run stalled past STALE_AFTER_S): stop touching it
                self.store.write_bytes(LOCK_OBJECT, json.dumps({**self._owner_record, "heartbeat": time.time()}).encode())
            except OSError:
                continue  # a failed beat is retried; the lock only goes stale after STALE_AFTER_S
