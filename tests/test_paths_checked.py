"""`validate` and `run` check every input path and the output dir before any work: key path, exit 2, nothing written."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from datamill.curate.cli import app

RECIPE = """
name: paths
sources:
  - {{type: jsonl, path: data/*.jsonl}}
  - {{type: parquet, path: [data/*.parquet, "{missing_parquet}"]}}
  - {{type: hf, path: json, data_files: {{train: [data/a.parquet, "hf-data/*.jsonl"]}}}}
stages:
  - type: decontaminate
    benchmarks:
      - {{name: quiz, source: {{type: jsonl, path: evals/quiz.jsonl}}}}
  - type: codeswitch_lexicon
    lexicons: [no-such-lexicon.tsv]
  - {{type: perplexity, model: models/not-here}}
  - {{type: language, model: lid/not-here.ftz}}
  - {{type: semantic_dedup, model: embedders/not-here}}
  - {{type: ds_weight, valid_path: valid/not-here.jsonl}}
  - {{type: transliterate_tokens, word_list: no-such-words.tsv, origins: [loan]}}
output: {{dir: "{out}"}}
"""


def plain(output: str) -> str:
    return " ".join(output.split())


def test_validate_and_run_report_every_missing_path_by_key_and_write_nothing(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.parquet").write_bytes(b"")
    recipe = tmp_path / "recipe.yaml"
    out = tmp_path / "out"
    recipe.write_text(RECIPE.format(missing_parquet="more/*.parquet", out=out))

    validated = CliRunner().invoke(app, ["validate", str(recipe)])
    ran = CliRunner().invoke(app, ["run", str(recipe)])

    for result in (validated, ran):
        assert result.exit_code == 2, result.output
        text = plain(result.output)
        assert "Traceback" not in text and "[red]" not in text
        assert "sources[0].path: no file matches 'data/*.jsonl'" in text
        assert "sources[1].path[1]: no file matches 'more/*.parquet'" in text
        assert "sources[1].path[0]" not in text
        assert "sources[2].data_files: no file matches 'hf-data/*.jsonl'" in text
        assert "data/a.parquet'" not in text
        assert "stages[0].benchmarks[0].source.path: no file matches 'evals/quiz.jsonl'" in text
        assert "stages[1].lexicons[0]: lexicon 'no-such-lexicon.tsv' not found" in text
        assert "stages[2].model: 'models/not-here'" in text
        assert "stages[3].model: fastText model file 'lid/not-here.ftz' not found" in text
        assert "stages[4].model: embedding model 'embedders/not-here'" in text
        assert "stages[5].valid_path: valid set 'valid/not-here.jsonl' does not exist" in text
        assert "stages[6].word_list: lexicon 'no-such-words.tsv' not found" in text
    assert not out.exists()


def test_an_output_dir_that_cannot_be_written_is_a_recipe_error_not_a_traceback(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text(json.dumps({"text": "hello there"}) + "\n")
    (tmp_path / "blocker").write_text("a file where the run folder should go")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: out\nsources: [{{type: jsonl, path: data/*.jsonl}}]\n"
                      f"output: {{dir: \"{tmp_path / 'blocker' / 'run'}\"}}\n")

    result = CliRunner().invoke(app, ["run", str(recipe)])

    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "output.dir: cannot write" in plain(result.output) and "is not a folder" in plain(result.output)
