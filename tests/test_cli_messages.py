"""What the CLI prints: validate's verdict on stdout, stage descriptions verbatim, no promise of files that do not exist."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from datamill.curate.cli import app


def plain(text: str) -> str:
    return " ".join(text.split())


def small_recipe(tmp_path, stages: str = "[]") -> str:
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"short text number {i}"}) + "\n" for i in range(5)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: small\nsources: [{{type: jsonl, path: a.jsonl}}]\nstages: {stages}\n"
                      f"output: {{dir: \"{tmp_path / 'out'}\"}}\nexecutor: {{workers: 1}}\n")
    return str(recipe)


def test_validate_prints_ok_on_stdout(tmp_path):
    result = CliRunner().invoke(app, ["validate", small_recipe(tmp_path)])

    assert result.exit_code == 0
    assert result.stdout.startswith("ok small: 1 source(s)")
    assert "ok" not in result.stderr


def test_stages_prints_bracketed_text_and_describes_every_source_type():
    result = CliRunner().invoke(app, ["stages"], env={"COLUMNS": "400"})

    assert result.exit_code == 0
    assert "Delete [1], [edit], [citation needed] from lines." in result.stdout
    for source_type in ("jsonl", "parquet", "hf", "installed_docs"):
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"{source_type} — "))
        assert len(line.split(" — ", 1)[1].strip()) > 20, line


def test_a_run_that_keeps_nothing_does_not_point_at_a_corpus(tmp_path):
    recipe = small_recipe(tmp_path, stages="[{type: length_filter, min_words: 1000}]")

    result = CliRunner().invoke(app, ["run", recipe])

    assert result.exit_code == 0, result.output
    assert "corpus: no records were kept" in plain(result.output)
    assert "/shards" not in result.output
    report = (tmp_path / "out" / "report.md").read_text()
    assert not (tmp_path / "out" / "quarantine").exists()
    assert str(tmp_path / "out" / "quarantine") not in report
