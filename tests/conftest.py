"""Shared test helpers: small real-language corpora written as jsonl, and recipe runners."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SENTENCES = [
    "The river rose overnight and flooded the low fields near the old mill.",
    "Farmers moved their cattle to higher ground before the storm arrived.",
    "A small library in the village lends books, maps and seeds to its readers.",
    "The committee agreed to repair the bridge before the winter market opens.",
    "Children collected chestnuts along the lane and roasted them by the fire.",
    "The baker starts work at four so that the bread is warm by seven.",
    "Engineers measured the wind on the ridge for a whole year before building.",
    "Her grandmother kept bees and sold the honey at the Saturday market.",
    "The ferry does not run when the fog is thick over the estuary.",
    "Students planted a row of oak trees along the edge of the playground.",
    "The museum reopened with a new room about the history of printing.",
    "After the rain the mushrooms appeared in rings under the birch trees.",
]


def make_documents(n: int, sentences_per_doc: int = 4) -> list[str]:
    """n distinct multi-sentence English documents (deterministic)."""
    docs = []
    for i in range(n):
        picked = [SENTENCES[(i * 7 + k * 5) % len(SENTENCES)] for k in range(sentences_per_doc)]
        docs.append(f"Note {i}. " + " ".join(picked))
    return docs


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """Four jsonl files of real sentences with some exact duplicates across files."""
    docs = make_documents(120)
    folder = tmp_path / "raw"
    for k in range(4):
        rows = [{"text": d, "url": f"https://example.org/{k}/{i}"} for i, d in enumerate(docs[k * 30:(k + 1) * 30])]
        rows += [{"text": docs[k]}]  # a copy of a document from file 0
        write_jsonl(folder / f"part{k}.jsonl", rows)
    return folder


def write_text_corpus(folder: Path, n_documents: int) -> Path:
    """A corpus folder as a finished run leaves it: `shards/part-00000.parquet` with a `text` column."""
    import polars as pl

    (folder / "shards").mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"text": make_documents(n_documents)}).write_parquet(folder / "shards" / "part-00000.parquet")
    return folder


def recipe_dict(source_path: str, out_dir: str, stages: list | None = None, **output) -> dict:
    return {
        "name": "test",
        "sources": [{"type": "jsonl", "path": source_path, "name": "web"}],
        "stages": stages if stages is not None else [],
        "output": {"dir": out_dir, **output},
        "executor": {"batch_rows": 16},
    }


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a CUDA GPU: elsewhere they are skipped, saying so and how to run them."""
    needs_gpu = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not needs_gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here); run on one: bash bench/gpu/run.sh --out DIR")
    for item in needs_gpu:
        item.add_marker(skip)


PEAK_RSS_MB = "int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) // 1024"
"""A Python expression for the current process's peak resident memory in MB, for test scripts run
in a subprocess. Unlike `ru_maxrss`, which Linux carries across fork+exec (a child of a large
pytest process would report the parent's peak), VmHWM belongs to the new address space."""
