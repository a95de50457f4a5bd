"""Run report: report.md / report.html / plots/*.png rendered from a run's stats.json."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt

from datamill.curate.report.render import render_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LENGTH_EDGES = [0] + [2**i for i in range(17)]


def length_counts(rng: np.random.Generator, n: int, median: float) -> list[int]:
    lengths = rng.lognormal(mean=np.log(median), sigma=1.0, size=n)
    return np.histogram(lengths, bins=LENGTH_EDGES)[0].tolist()


def score_hist(rng: np.random.Generator, values: np.ndarray, bins: int) -> dict:
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def realistic_stats() -> dict:
    """A web-text run: two sources, three stages with drops, quarantine, two score columns."""
    rng = np.random.default_rng(7)
    return {
        "recipe": "web-en-small", "run_dir": "out/web-en-small", "executor": "local",
        "workers": 2, "started_at": "2026-11-23T10:00:00+00:00",
        "finished_at": "2026-11-23T10:00:12.300000+00:00", "seconds": 12.3,
        "sources": [
            {"name": "crawl", "type": "jsonl", "shards": 6, "records_read": 9000,
             "records_ok": 8975, "quarantined": 25},
            {"name": "docs", "type": "installed_docs", "shards": 2, "records_read": 1000,
             "records_ok": 995, "quarantined": 5},
        ],
        "quarantine": {"total": 30, "by_reason": {"bad_json": 18, "empty_text": 12},
                       "dir": "quarantine"},
        "stages": [
            {"name": "length", "type": "length_filter", "records_in": 9970, "records_out": 9012,
             "tokens_in": 2_415_880, "tokens_out": 2_377_101,
             "dropped": {"too_short": 901, "too_long": 57}, "flagged": {}, "errors": 0,
             "seconds": 0.41},
            {"name": "gopher", "type": "gopher_quality", "records_in": 9012, "records_out": 7650,
             "tokens_in": 2_377_101, "tokens_out": 2_051_388,
             "dropped": {"gopher_word_count": 610, "gopher_symbol_ratio": 452,
                         "gopher_stop_words": 300},
             "flagged": {"gopher_bullet_lines": 41}, "errors": 2, "seconds": 3.87},
            {"name": "exact_dedup", "type": "exact_dedup", "records_in": 7650,
             "records_out": 7311, "tokens_in": 2_051_388, "tokens_out": 1_962_540,
             "dropped": {"duplicate": 339}, "flagged": {}, "errors": 0, "seconds": 1.05},
        ],
        "output": {"records": 7311, "tokens": 1_962_540, "files": 3, "bytes": 5_812_344,
                   "dir": "shards", "format": "parquet"},
        "histograms": {
            "length_chars": {"edges": LENGTH_EDGES, "input": length_counts(rng, 9970, 900),
                             "output": length_counts(rng, 7311, 1400)},
            "scores": {
                "gopher.gopher_word_count": score_hist(rng, rng.lognormal(5, 0.8, 9012), 30),
                "gopher.gopher_symbol_ratio": score_hist(rng, rng.beta(1, 12, 9012), 25),
            },
        },
    }


def empty_stats() -> dict:
    """A run with no stages that read nothing."""
    return {
        "recipe": "nothing", "run_dir": "out/nothing", "executor": "local", "workers": 1,
        "started_at": "2026-11-23T10:00:00+00:00", "finished_at": "2026-11-23T10:00:00+00:00",
        "seconds": 0.0, "sources": [],
        "quarantine": {"total": 0, "by_reason": {}, "dir": "quarantine"},
        "stages": [],
        "output": {"records": 0, "tokens": 0, "files": 0, "bytes": 0, "dir": "shards",
                   "format": "parquet"},
        "histograms": {"length_chars": {"edges": [], "input": [], "output": []}, "scores": {}},
    }


def write_run(run_dir: Path, stats: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
    return run_dir


def rendered_markdown(md: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(md)


@pytest.fixture(scope="module")
def realistic_report(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    run_dir = write_run(tmp_path_factory.mktemp("run") / "web-en-small", realistic_stats())
    return run_dir, render_report(run_dir)


def test_markdown_has_the_funnel_table_numbers(realistic_report):
    run_dir, paths = realistic_report
    md = paths["md"].read_text(encoding="utf-8")
    funnel = md.split("## Funnel\n")[1].split("\n## ")[0]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]]
            for line in funnel.splitlines() if line.startswith("|")]
    assert rows[0][:4] == ["stage", "type", "records in", "records out"]
    assert rows[3] == ["`gopher`", "`gopher_quality`", "9,012", "7,650", "84.9%", "76.7%",
                       "2,377,101", "2,051,388", "3.87", "2"]
    assert rows[5] == ["all stages", "", "9,970", "7,311", "73.3%", "73.3%", "2,415,880",
                       "1,962,540", "5.33", "2"]
    # Header: records/s over the 10,000 records read in 12.3 s.
    assert "10,000 records read, 813.0 records/s" in md
    assert "local with 2 worker(s)" in md


def test_markdown_lists_drop_reasons_quarantine_and_output(realistic_report):
    _, paths = realistic_report
    rendered = rendered_markdown(paths["md"].read_text(encoding="utf-8"))
    assert re.search(r"<td><code>gopher</code></td>\s*<td><code>gopher_symbol_ratio</code></td>"
                     r"\s*<td>dropped</td>\s*<td[^>]*>452</td>\s*<td[^>]*>5.0%</td>", rendered)
    assert re.search(r"<code>gopher_bullet_lines</code></td>\s*<td>flagged</td>", rendered)
    assert re.search(r"<code>bad_json</code></td>\s*<td[^>]*>18</td>\s*<td[^>]*>60.0%</td>",
                     rendered)
    assert "<code>out/web-en-small/quarantine</code>" in rendered
    assert "<code>out/web-en-small/shards</code>" in rendered
    assert "5.8 MB" in rendered
    for name in ("funnel", "drop_reasons", "length_hist", "scores"):
        assert f'src="plots/{name}.png"' in rendered


def test_html_is_self_contained_with_decodable_pngs(realistic_report):
    run_dir, paths = realistic_report
    page = paths["html"].read_text(encoding="utf-8")
    assert 'src="http' not in page and "<script" not in page
    assert "<link" not in page and "url(" not in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4
    for encoded in images:
        assert base64.b64decode(encoded, validate=True).startswith(PNG_MAGIC)
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "drop_reasons.png", "funnel.png", "length_hist.png", "scores.png"]
    assert {k: v for k, v in paths.items() if k not in ("md", "html")} == {
        name: run_dir / "plots" / f"{name}.png"
        for name in ("funnel", "drop_reasons", "length_hist", "scores")}
    assert "<td class=\"num\">84.9%</td>" in page


def test_empty_run_renders_and_says_plots_were_skipped(tmp_path):
    run_dir = write_run(tmp_path / "nothing", empty_stats())
    paths = render_report(run_dir)
    assert set(paths) == {"md", "html"}
    md = paths["md"].read_text(encoding="utf-8")
    assert "The recipe has no stages" in md
    assert "No stage dropped or flagged any record." in md
    for skipped in ("Funnel", "Drop reasons per stage", "Text length", "Score distributions"):
        assert re.search(rf"Skipped the '{skipped}[^']*' plot: ", md), skipped
    page = paths["html"].read_text(encoding="utf-8")
    assert "data:image/png" not in page and "Skipped the" in page
    assert not list((run_dir / "plots").glob("*.png"))


def test_rerender_removes_plots_that_no_longer_have_data(tmp_path):
    stats = realistic_stats()
    run_dir = write_run(tmp_path / "run", stats)
    render_report(run_dir)
    stats["histograms"]["scores"] = {}
    write_run(run_dir, stats)
    paths = render_report(run_dir)
    assert "scores" not in paths and not (run_dir / "plots" / "scores.png").exists()
    assert (run_dir / "plots" / "funnel.png").exists()


def test_stage_names_and_reasons_from_stats_are_escaped(tmp_path):
    stats = copy.deepcopy(realistic_stats())
    stats["stages"][1]["name"] = "<script>alert('x')</script>"
    stats["stages"][1]["dropped"] = {"a|b <img src=x onerror=alert(1)>": 12}
    paths = render_report(write_run(tmp_path / "evil", stats))
    page = paths["html"].read_text(encoding="utf-8")
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    rendered = rendered_markdown(paths["md"].read_text(encoding="utf-8"))
    assert "<script" not in rendered and "<img src=x" not in rendered
    # The pipe inside the reason stays in its cell: the drop table row keeps five cells.
    row = re.search(r"<tr>\s*<td><code>&lt;script&gt;alert\('x'\)&lt;/script&gt;</code></td>"
                    r"\s*<td><code>a\|b &lt;img src=x onerror=alert\(1\)&gt;</code></td>"
                    r"\s*<td>dropped</td>\s*<td[^>]*>12</td>", rendered)
    assert row
