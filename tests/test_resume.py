"""A run killed with SIGKILL at any point and re-run gives byte-identical output to a clean run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import make_documents, write_jsonl

pytestmark = pytest.mark.slow


def build_recipe(tmp_path: Path, out: Path) -> Path:
    docs = make_documents(600, sentences_per_doc=6)
    for k in range(16):
        rows = [{"text": d} for d in docs[(k * 37) % 500:(k * 37) % 500 + 100]]  # overlaps: duplicates across files
        rows.insert(5, "{broken json")
        write_jsonl(tmp_path / "raw" / f"f{k:02d}.jsonl", rows)
    recipe = {
        "name": "resume",
        "sources": [{"type": "jsonl", "path": str(tmp_path / "raw" / "*.jsonl")}],
        "stages": [{"type": "normalize_text"}, {"type": "length_filter", "min_words": 5},
                   {"type": "exact_dedup"}, {"type": "length_filter", "max_chars": 100000}],
        "output": {"dir": str(out), "shard_rows": 40},
        "executor": {"batch_rows": 8},
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def datamill(recipe: Path, *extra: str) -> subprocess.Popen:
    cli = [sys.executable, "-c", "from datamill.curate.cli import main; main()"]
    return subprocess.Popen([*cli, "run", str(recipe), "--workers", "2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes()
            for folder in ("shards", "quarantine") for p in sorted((out / folder).rglob("*")) if p.is_file()}


def kill_when(proc: subprocess.Popen, ready) -> bool:
    """SIGKILL the whole process group once `ready()` holds; False if the run finished first."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    proc.wait()
    return False


def markers(out: Path) -> int:
    folder = out / "state" / "done"
    return len(list(folder.glob("*.json"))) if folder.exists() else 0


@pytest.mark.parametrize("when", ["during_start", "first_segment", "after_barrier"])
def test_sigkill_then_rerun_is_byte_identical(tmp_path, when):
    clean = tmp_path / "clean"
    proc = datamill(build_recipe(tmp_path, clean))
    assert proc.wait() == 0, proc.stdout.read().decode()
    expected = snapshot(clean)
    assert any(name.startswith("shards/") for name in expected)
    assert any(name.startswith("quarantine/") for name in expected)

    killed = tmp_path / "killed"
    recipe = build_recipe(tmp_path, killed)
    ready = {
        "during_start": lambda: (killed / "state").exists(),
        "first_segment": lambda: markers(killed) >= 3,
        "after_barrier": lambda: markers(killed) >= 18,
    }[when]
    was_killed = kill_when(datamill(recipe), ready)
    assert was_killed, "the run finished before it could be killed"
    assert not (killed / "stats.json").exists()

    proc = datamill(recipe)
    assert proc.wait() == 0, proc.stdout.read().decode()
    assert snapshot(killed) == expected
