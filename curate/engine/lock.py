"""One writer per run directory: an exclusive lock held for the run's whole life.

The lock file `<run>/state/run.lock` is an OS lock (filelock), so it is released when the holder
exits, even by `kill -9`; `<run>/state/run.owner.json` names the holder (pid, host, start time)
so a refused second run can say who has the directory.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout


class RunLocked(RuntimeError):
    """Another process is writing to this run directory."""


class RunLock:
    """`with RunLock(run_dir):` — fail at once if another run holds `run_dir`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.state = self.root / "state"
        self._lock: FileLock | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock now or raise RunLocked naming the holder."""
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
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (self.state / "run.owner.json").write_text(json.dumps(owner))

    def release(self) -> None:
        (self.state / "run.owner.json").unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.release()

    def _holder(self) -> str:
        try:
            owner = json.loads((self.state / "run.owner.json").read_text())
        except (OSError, ValueError):
            return "holder unknown"
        return f"pid {owner['pid']} on {owner['host']}, since {owner['started_at']}"
