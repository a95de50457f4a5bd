"""Test helper shared by the object-store run tests (S3, GCS): a dead run's lock is taken over."""

from __future__ import annotations

import json
import time


def assert_a_dead_runs_lock_is_taken_over(fs, lock_key: str, url: str, monkeypatch) -> None:
    """A lock whose run sent no heartbeat for longer than stale_after_s is taken over, and released."""
    from datamill.curate.engine import lock as lock_module

    dead = {"pid": 1, "host": "gone", "started_at": "2026-01-01T00:00:00+00:00", "token": "x",
            "heartbeat": time.time() - 3600}
    fs.pipe_file(lock_key, json.dumps(dead).encode())
    monkeypatch.setattr(lock_module, "SETTLE_S", 0.0)
    with lock_module.RunLock(url) as taken:
        assert json.loads(fs.cat_file(lock_key))["token"] == taken._token
    assert not fs.exists(lock_key)
