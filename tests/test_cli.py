"""The `datamill` command line as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from conftest import recipe_dict
from datamill.curate.cli import app

runner = CliRunner()


def test_validate_accepts_good_and_names_problems_in_bad(tmp_path, corpus_dir):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(recipe_dict(str(corpus_dir / "*.jsonl"), str(tmp_path / "o"))))
    result = runner.invoke(app, ["validate", str(good)])
    assert result.exit_code == 0 and "ok" in result.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nsources: [{type: jsonl, path: x}]\nstages: [{type: length_filter, min_chars: -1}]\n"
                   "output: {dir: o}\n")
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "stages[0].min_chars: -1 is not in [0, inf)" in result.output


def test_stages_lists_types_with_parameters():
    result = runner.invoke(app, ["stages"])
    assert result.exit_code == 0
    for expected in ("length_filter", "min_words", "exact_dedup", "normalize_text", "installed_docs", "jsonl"):
        assert expected in result.output


def test_run_then_report_rerenders(tmp_path, corpus_dir):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(recipe_dict(str(corpus_dir / "*.jsonl"), str(tmp_path / "o"),
                                             [{"type": "exact_dedup"}])))
    result = runner.invoke(app, ["run", str(recipe), "--workers", "1", "--limit", "10"])
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["sources"][0]["records_read"] == 10  # the limit is per source, across its files
    (tmp_path / "o" / "report.html").unlink()
    result = runner.invoke(app, ["report", str(tmp_path / "o")])
    assert result.exit_code == 0 and (tmp_path / "o" / "report.html").exists()
    assert runner.invoke(app, ["report", str(tmp_path)]).exit_code == 1


def test_quickstart_runs_offline_with_the_installed_command(tmp_path):
    """The README's first command, minus the install: `datamill run` in an empty directory."""
    exe = shutil.which("datamill")
    assert exe, "the datamill console script is not installed"
    env = {"PATH": str(Path(exe).parent) + ":/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([exe, "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out" / "quickstart"
    corpus = pl.read_parquet(sorted((out / "shards").glob("*.parquet")))
    stats = json.loads((out / "stats.json").read_text())
    assert corpus.height == stats["output"]["records"] > 1000
    assert corpus["text"].n_unique() == corpus.height  # exact duplicates are gone
    dropped = {stage["name"]: stage["dropped"] for stage in stats["stages"]}
    assert dropped["exact_dedup"]["exact_duplicate"] > 0
    assert dropped["minhash_dedup"]["near_duplicate"] > 0
    assert (corpus["text"].str.count_matches(r"\S+") >= 20).all()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
