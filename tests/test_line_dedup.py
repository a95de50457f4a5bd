"""Boilerplate lines repeated across many documents are removed everywhere; the rest stays."""

from __future__ import annotations

import polars as pl

from conftest import make_documents, recipe_dict, write_jsonl
from datamill.curate.executors.run import run_recipe
from datamill.curate.engine.recipe import validate_recipe

COOKIE = "We use cookies to improve your experience on this website."
NAV = "Home | News | Sport | Weather | Contact us"


def test_repeated_lines_are_removed_across_shards(tmp_path):
    docs = make_documents(40)
    rows = []
    for i, doc in enumerate(docs):
        lines = [NAV, doc, COOKIE] if i % 2 == 0 else [doc]  # 20 documents carry the boilerplate
        rows.append({"text": "\n".join(lines)})
    rows.append({"text": NAV + "\n" + COOKIE})  # nothing but boilerplate
    rows.append({"text": "A line seen twice is fine.\n" + docs[0]})
    rows.append({"text": "A line seen twice is fine.\n" + docs[1]})
    for k in range(3):  # three shards: the counts must be global
        write_jsonl(tmp_path / "raw" / f"p{k}.jsonl", rows[k::3])
    recipe = validate_recipe(recipe_dict(str(tmp_path / "raw" / "*.jsonl"), str(tmp_path / "out"),
                                         [{"type": "line_dedup", "max_documents": 5}]))
    stats = run_recipe(recipe, workers=1)
    corpus = pl.read_parquet(sorted((tmp_path / "out" / "shards").glob("*.parquet")))
    assert corpus.height == 42
    assert not corpus["text"].str.contains(COOKIE, literal=True).any()
    assert not corpus["text"].str.contains("Contact us", literal=True).any()
    assert corpus["text"].str.contains("A line seen twice is fine.", literal=True).sum() == 2
    assert set(docs) <= set(corpus["text"]) | {t.split("\n", 1)[1] for t in corpus["text"] if "\n" in t}
    assert corpus.filter(pl.col("boilerplate_lines_removed") == 2).height == 20
    assert stats["stages"][0]["dropped"] == {"all_lines_boilerplate": 1}


def test_paragraph_unit_keeps_short_lines_and_structure(tmp_path):
    footer = "This article is licensed under the Creative Commons Attribution 4.0 licence."
    docs = make_documents(12)
    rows = [{"text": f"{d}\n\nShort.\n\n{footer}"} for d in docs]
    write_jsonl(tmp_path / "raw" / "a.jsonl", rows)
    recipe = validate_recipe(recipe_dict(str(tmp_path / "raw" / "*.jsonl"), str(tmp_path / "out"),
                                         [{"type": "line_dedup", "unit": "paragraph", "max_documents": 3}]))
    run_recipe(recipe, workers=1)
    corpus = pl.read_parquet(sorted((tmp_path / "out" / "shards").glob("*.parquet")))
    assert corpus["text"].to_list() == [f"{d}\n\nShort." for d in docs]  # "Short." is under min_chars
