"""Every shard of a run has the same schema, even when only some sources declare extra columns."""

from __future__ import annotations

import json

import polars as pl

from datamill.curate.engine.recipe import validate_recipe
from datamill.curate.executors.run import run_recipe


def test_sources_with_and_without_declared_columns_write_shards_of_one_schema(tmp_path):
    (tmp_path / "web.jsonl").write_text("".join(
        json.dumps({"text": f"web page {i} about mills", "url": f"https://mill.example/{i}"}) + "\n" for i in range(3)))
    (tmp_path / "books.jsonl").write_text("".join(
        json.dumps({"text": f"book chapter {i} about rivers"}) + "\n" for i in range(2)))
    recipe = validate_recipe({
        "name": "schemas",
        "sources": [{"type": "jsonl", "path": str(tmp_path / "web.jsonl"), "name": "web", "columns": {"url": "str"}},
                    {"type": "jsonl", "path": str(tmp_path / "books.jsonl"), "name": "books"}],
        "output": {"dir": str(tmp_path / "out")},
        "executor": {"workers": 1},
    })

    run_recipe(recipe)
    corpus = pl.read_parquet(tmp_path / "out" / "shards" / "*.parquet")

    assert corpus.columns == ["id", "source", "text", "meta", "url"]
    assert corpus.filter(pl.col("source") == "books")["url"].to_list() == [None, None]
    assert corpus.filter(pl.col("source") == "web")["url"].to_list()[0] == "https://mill.example/0"
