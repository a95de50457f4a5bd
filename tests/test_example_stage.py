"""The README's "add a stage" example is real code: it is the file docs/example_stage.py, and it runs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import polars as pl

from conftest import make_documents, recipe_dict, write_jsonl
from datamill.curate.engine.recipe import validate_recipe
from datamill.curate.executors.run import run_recipe

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "example_stage.py"


def test_the_readme_shows_the_example_file_verbatim():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert EXAMPLE.read_text(encoding="utf-8") in blocks


def test_the_example_stage_registers_and_filters_a_run(tmp_path):
    spec = importlib.util.spec_from_file_location("example_stage", EXAMPLE)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # registers `shouting`
    calm = make_documents(6)
    rows = [{"text": t} for t in calm] + [{"text": calm[0].upper()}, {"text": "WARNING: DO NOT TOUCH THE FAN."}]
    write_jsonl(tmp_path / "raw" / "a.jsonl", rows)
    recipe = validate_recipe(recipe_dict(str(tmp_path / "raw" / "*.jsonl"), str(tmp_path / "out"),
                                         [{"type": "shouting", "max_upper": 0.6}]))
    stats = run_recipe(recipe, workers=1)
    corpus = pl.read_parquet(sorted((tmp_path / "out" / "shards").glob("*.parquet")))
    assert sorted(corpus["text"]) == sorted(calm)
    assert corpus["upper_share"].max() < 0.2
    assert stats["stages"][0]["dropped"] == {"shouting": 2}
