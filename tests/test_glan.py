"""glan on pre-written generations: taxonomy file → syllabus sessions with key concepts → homework
questions built on those concepts → answers, with provenance columns, and a subject whose syllabus
does not parse quarantined with its reason."""

from __future__ import annotations

import re

import pytest

from datamill.synth.glan import GlanParams, GlanSource, parse_syllabus, read_taxonomy

from scripted_generator import ScriptedGenerator

SYLLABUS = """Here is the syllabus.
Session 1: Linear equations
Key concepts: variables, solving for x, balance method
**Session 2: Quadratic equations**
Key concepts: factoring; the quadratic formula
Session 3 - Inequalities
"""


def test_syllabus_parsing():
    assert parse_syllabus(SYLLABUS) == [
        ("Linear equations", ["variables", "solving for x", "balance method"]),
        ("Quadratic equations", ["factoring", "the quadratic formula"]),
        ("Inequalities", ["Inequalities"])]


def teacher(text: str, k: int, params) -> str:
    if "Design the syllabus" in text:
        return SYLLABUS if "Algebra" in text else "I like this subject very much."
    if "homework question" in text:
        concepts = re.search(r"key concepts: (.*)\. The question", text).group(1)
        return f"Explain, with an example, how {concepts} work together."
    return "An answer: " + text[:40]


def test_taxonomy_to_instructions_with_provenance(tmp_path, monkeypatch):
    taxonomy = tmp_path / "taxonomy.yaml"
    taxonomy.write_text("Mathematics: [Algebra]\nPoetry: Sonnets\n")
    assert read_taxonomy(taxonomy) == [("Mathematics", "Algebra"), ("Poetry", "Sonnets")]
    source = GlanSource(GlanParams(taxonomy="taxonomy.yaml", sessions=2, questions_per_session=2), index=0)
    source.base_dir = str(tmp_path)
    monkeypatch.setattr("datamill.synth.glan.make_generator", lambda *a, **k: ScriptedGenerator(teacher, "teacher"))
    shards = source.plan()
    assert [s.description for s in shards] == ["glan: Mathematics / Algebra", "glan: Poetry / Sonnets"]
    (algebra,) = list(source.read(shards[0], 100))
    records = algebra.records
    assert records.height == 4 and set(records["session"]) == {"Linear equations", "Quadratic equations"}
    for row in records.iter_rows(named=True):
        assert row["discipline"] == "Mathematics" and row["subject"] == "Algebra"
        assert all(c in row["instruction"] for c in row["key_concepts"])
        assert row["output"].startswith("An answer: Explain") and row["messages"][0]["content"] == row["instruction"]
    assert records["id"].n_unique() == 4
    (poetry,) = list(source.read(shards[1], 100))
    assert poetry.records.height == 0 and poetry.quarantine["reason"].to_list() == ["glan:no_syllabus"]


def test_malformed_taxonomy_is_named(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("Mathematics: [1, '']\n")
    with pytest.raises(ValueError, match="'Mathematics' must list its subjects"):
        read_taxonomy(bad)
