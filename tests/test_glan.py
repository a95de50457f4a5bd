"""glan on pre-written generations: taxonomy file → syllabus sessions with key concepts → homework
questions built on those concepts → answers, with provenance columns, and a subject whose syllabus
does not parse quarantined with its reason."""

from __future__ import annotations

import re

import pytest

from datamill.synth.glan import GlanParams, GlanSource, parse_subjects, parse_syllabus, read_taxonomy

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


SUBJECTS = """Here are the subjects:
1. **Organic Chemistry**: the chemistry of carbon compounds
   - alkanes
2) Physical chemistry - energy and rates
3. organic   chemistry
4) Analytical Chemistry
5. A long line that describes a whole programme of study rather than naming one subject
6. Biochemistry
"""


def test_subject_list_parsing():
    assert parse_subjects(SUBJECTS, limit=10) == ["Organic Chemistry", "Physical chemistry", "Analytical Chemistry",
                                                 "Biochemistry"]
    assert parse_subjects(SUBJECTS, limit=2) == ["Organic Chemistry", "Physical chemistry"]
    assert parse_subjects("I cannot list subjects.", limit=5) == []
    nested = "1.Genetics\n   - DNA\n   - heredity\n2. Ecology\n   * food webs"  # bullets under numbers are subtopics
    assert parse_subjects(nested, limit=5) == ["Genetics", "Ecology"]
    assert parse_subjects("- Zoology\n- Botany", limit=5) == ["Zoology", "Botany"]


def llm_teacher(text: str, k: int, params) -> str:
    if "List 3 different subjects" in text:
        return SUBJECTS if "student of Chemistry" in text else "Poetry is the art of words."
    if "Design the syllabus" in text:
        return SYLLABUS
    return teacher(text, k, params)


def test_disciplines_only_get_subjects_from_the_llm(tmp_path, monkeypatch):
    taxonomy = tmp_path / "taxonomy.yaml"
    taxonomy.write_text("Mathematics: [Algebra]\nChemistry:\n")
    assert read_taxonomy(taxonomy) == [("Mathematics", "Algebra"), ("Chemistry", None)]
    params = GlanParams(taxonomy=str(taxonomy), disciplines=["Poetry", "Chemistry"], subjects_per_discipline=3,
                        sessions=1, questions_per_session=1)
    source = GlanSource(params, index=0)
    generator = ScriptedGenerator(llm_teacher, "teacher")
    monkeypatch.setattr("datamill.synth.glan.make_generator", lambda *a, **k: generator)
    shards = source.plan()
    assert [s.description for s in shards] == ["glan: Mathematics / Algebra", "glan: Chemistry / subjects by the LLM",
                                              "glan: Poetry / subjects by the LLM"]  # Chemistry once
    (algebra,) = list(source.read(shards[0], 100))
    assert algebra.records["subject_source"].to_list() == ["taxonomy"]
    assert algebra.records["subject_model"].to_list() == [None]
    (chemistry,) = list(source.read(shards[1], 100))
    records = chemistry.records
    assert records["subject"].to_list() == ["Organic Chemistry", "Physical chemistry", "Analytical Chemistry"]
    assert set(records["subject_source"]) == {"llm"} and set(records["subject_model"]) == {"teacher"}
    assert set(records["discipline"]) == {"Chemistry"} and records["id"].n_unique() == 3
    assert records["id"].to_list()[0] == "glan:1.0:0:0"
    assert any("course on Physical chemistry" in a for a in generator.asked)  # each subject got its syllabus
    (poetry,) = list(source.read(shards[2], 100))
    assert poetry.records.height == 0 and poetry.quarantine["reason"].to_list() == ["glan:no_subjects"]
    assert "Poetry is the art" in poetry.quarantine["detail"][0] and poetry.quarantine["file"][0] == str(taxonomy)


def test_a_list_of_disciplines_is_a_taxonomy_and_something_is_needed(tmp_path):
    listed = tmp_path / "d.json"
    listed.write_text('["Physics", "History"]')
    assert read_taxonomy(listed) == [("Physics", None), ("History", None)]
    with pytest.raises(ValueError, match="a taxonomy file or a list of disciplines"):
        GlanParams()
    assert GlanParams(taxonomy="missing.yaml").check_paths(str(tmp_path)) == [
        f"taxonomy: no such file {tmp_path / 'missing.yaml'}"]
