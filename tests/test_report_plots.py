"""The report's score grid: measurement columns only, log axes for heavy tails, thresholds as lines."""

from __future__ import annotations

import json

import numpy as np

from datamill.curate.engine.recipe import validate_recipe
from datamill.curate.executors.run import run_recipe
from datamill.curate.report.plots import plot_score_histograms, score_panels


def test_score_grid_skips_cluster_ids_uses_log_x_for_heavy_tails_and_draws_the_threshold(tmp_path):
    rng = np.random.default_rng(0)
    lengths = np.unique(np.round(np.exp(rng.uniform(np.log(3), np.log(3000), 400))).astype(int))
    lines = [json.dumps({"text": " ".join(f"w{i}x{j}" for j in range(n))}) for i, n in enumerate(lengths)]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    recipe = validate_recipe({
        "name": "plots",
        "sources": [{"type": "jsonl", "path": str(tmp_path / "docs.jsonl")}],
        "stages": [{"type": "length_filter", "min_words": 40, "max_words": 2000}, {"type": "minhash_dedup"}],
        "output": {"dir": str(tmp_path / "out")},
        "executor": {"workers": 1},
    })

    stats = run_recipe(recipe)
    panels = {panel.name: panel for panel in score_panels(stats)}

    assert "minhash_dedup.dup_cluster" in stats["histograms"]["scores"]
    assert "minhash_dedup.dup_cluster" not in panels and "minhash_dedup.dup_cluster_size" in panels
    words = panels["length_filter.n_words"]
    assert words.log_x and words.edges[-1] / words.edges[0] > 100
    assert words.thresholds == [40.0, 2000.0]
    assert not panels["minhash_dedup.dup_cluster_size"].log_x
    assert plot_score_histograms(stats, tmp_path / "scores.png").stat().st_size > 10_000
