"""Model-stage workers: threads = cores ÷ workers unless overridden, and a worker dies with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datamill.curate.models.threads import OURS, THREAD_ENV, configure_threads, threads_per_worker


@pytest.fixture
def clean_env(monkeypatch):
    for name in (*THREAD_ENV, OURS, "DATAMILL_THREADS_PER_WORKER"):
        monkeypatch.delenv(name, raising=False)
    import torch

    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)


def test_threads_are_cores_divided_by_workers_unless_overridden(clean_env):
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(3, cores=16) == 5
    assert threads_per_worker(8, cores=2) == 1
    assert threads_per_worker(1, cores=4) == 4
    clean_env.setenv("OMP_NUM_THREADS", "3")  # the user's own choice wins
    assert threads_per_worker(2, cores=16) == 3
    clean_env.setenv("DATAMILL_THREADS_PER_WORKER", "2")
    assert threads_per_worker(2, cores=16) == 2
    clean_env.setenv("DATAMILL_THREADS_PER_WORKER", "many")
    with pytest.raises(ValueError, match="DATAMILL_THREADS_PER_WORKER='many'"):
        threads_per_worker(2)


def test_configure_sets_torch_and_blas_and_is_not_mistaken_for_a_user_choice(clean_env):
    import torch

    assert configure_threads(4, cores=8) == 2
    assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2" and os.environ["MKL_NUM_THREADS"] == "2"
    # a worker spawned from this process divides the cores itself instead of inheriting our 2
    assert threads_per_worker(8, cores=8) == 1


PARENT = """
import multiprocessing, sys, time
from datamill.curate.models.threads import init_model_worker

def work(path):
    with open(path, "w") as f:
        f.write(str(__import__("os").getpid()))
    time.sleep(120)

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    with __import__("concurrent.futures").futures.ProcessPoolExecutor(
            1, mp_context=context, initializer=init_model_worker, initargs=(1,)) as pool:
        pool.submit(work, sys.argv[1]).result()
"""


def test_a_worker_exits_within_seconds_of_its_parent_being_killed(tmp_path):
    script, pid_file = tmp_path / "parent.py", tmp_path / "worker.pid"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        worker = int(pid_file.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        gone_by = time.monotonic() + 5
        while time.monotonic() < gone_by and Path(f"/proc/{worker}").exists() and not _zombie(worker):
            time.sleep(0.1)
        assert not Path(f"/proc/{worker}").exists() or _zombie(worker), "the worker outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True
