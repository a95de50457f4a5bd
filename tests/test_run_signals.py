"""Ctrl-C stops a run at once with a message; a run killed with kill -9 takes its workers with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import make_documents, write_jsonl

pytestmark = pytest.mark.slow


def start_run(tmp_path: Path) -> subprocess.Popen:
    docs = make_documents(3000, sentences_per_doc=12)
    for k in range(8):
        write_jsonl(tmp_path / "raw" / f"f{k}.jsonl", [{"text": f"{k} {d}"} for d in docs])
    recipe = {"name": "signals", "sources": [{"type": "jsonl", "path": str(tmp_path / "raw" / "*.jsonl")}],
              "stages": [{"type": "minhash_dedup"}], "output": {"dir": str(tmp_path / "out")}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    cli = [sys.executable, "-c", "from datamill.curate.cli import main; main()", "run", str(tmp_path / "r.yaml"),
           "--workers", "2"]
    return subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_workers(proc: subprocess.Popen, count: int = 2, timeout: float = 120) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        if len(workers) >= count:
            time.sleep(2)  # let them finish starting
            return workers
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.2)
    raise AssertionError("the workers did not start")


def test_ctrl_c_stops_the_run_with_a_message_and_no_traceback(tmp_path):
    proc = start_run(tmp_path)
    workers = wait_for_workers(proc)
    pressed = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: the whole process group
    output = proc.communicate(timeout=60)[0].decode()
    assert time.monotonic() - pressed < 10
    assert proc.returncode == 130
    assert "interrupted: finished shards are kept" in output
    assert "Traceback" not in output
    psutil.wait_procs(workers, timeout=10)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_workers_exit_when_the_run_is_killed(tmp_path):
    proc = start_run(tmp_path)
    workers = wait_for_workers(proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []
