"""Model-stage workers: threads = cores ÷ workers unless overridden, and a worker dies with its parent."""

from __future__ import annotations

import os

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
