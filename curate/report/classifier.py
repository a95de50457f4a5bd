"""The report's classifier section: per `classifier` stage a score histogram with its thresholds and
the top/bottom 3 documents; per `annotate` stage how the LLM's labels were distributed.

Rendered only for runs that have such stages. The histogram is the one the run already sampled
into stats.json (`<stage>.<stage>_score`), with the stage's `min_score`/`max_score` (read from the
recipe saved in the run's state/, like the core score plots) and, with `keep_top`, the lowest kept
score drawn as the cut. The examples are read from the output shards and, with
`output.keep_removed`, from `removed/<stage>/` too; without it the "bottom" examples can only be
the lowest-scored documents that were kept, and the section says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datamill.curate.report.plots import plot_score_histograms, recipe_thresholds
from datamill.curate.report.render import Block, Code, Facts, Figure, Heading, Para, Table, count, percent, \
    register_report_section

EXAMPLES = 3
EXAMPLE_CHARS = 220


def stage_params(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Stage name → its recipe entry, from the recipe saved in the run's state/ (empty if none)."""
    saved = run_dir / "state" / "recipe.json"
    try:
        stages = json.loads(saved.read_text())["recipe"]["stages"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    found, seen = {}, {}
    for entry in stages:
        name = entry.get("name") or entry.get("type", "")
        seen[name] = seen.get(name, 0) + 1
        found[name if seen[name] == 1 else f"{name}_{seen[name]}"] = entry
    return found


def read_scored(run_dir: Path, stage: str, score: str) -> tuple[pl.DataFrame, bool]:
    """(text, score) of the output shards plus `removed/<stage>/`, and whether removed rows were there."""
    frames, removed = [], False
    for folder, is_removed in ((run_dir / "shards", False), (run_dir / "removed" / stage, True)):
        files = sorted(folder.glob("*.parquet")) + sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
        for path in files:
            frame = pl.scan_parquet(path) if path.suffix == ".parquet" else pl.scan_ndjson(path, infer_schema_length=None)
            if {"text", score} <= set(frame.collect_schema().names()):
                frames.append(frame.select("text", pl.col(score).cast(pl.Float64)).filter(pl.col(score).is_not_null()))
                removed |= is_removed
    if not frames:
        return pl.DataFrame(schema={"text": pl.String, score: pl.Float64}), False
    return pl.concat(frames).collect(), removed


def one_line(text: str, limit: int = EXAMPLE_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def example_rows(frame: pl.DataFrame, score: str) -> list[list[str | Code]]:
    """Rows (rank, text, score) of the top and bottom documents by score."""
    ranked = frame.with_row_index("_row").sort([score, "_row"], descending=[True, False])
    top, bottom = ranked.head(EXAMPLES), ranked.tail(min(EXAMPLES, max(ranked.height - EXAMPLES, 0))).reverse()
    rows = [[f"top {i + 1}", one_line(t), f"{s:.4g}"] for i, (t, s) in enumerate(top.select("text", score).iter_rows())]
    rows += [[f"bottom {i + 1}", one_line(t), f"{s:.4g}"] for i, (t, s) in enumerate(bottom.select("text", score).iter_rows())]
    return rows


def classifier_stage_blocks(run_dir: Path, stats: dict[str, Any], plots_dir: Path, stage: dict[str, Any],
                            params: dict[str, Any]) -> list[Block]:
    name = stage["name"]
    score = f"{name}_score"
    blocks: list[Block] = [Heading(f"Classifier: {name}", 3)]
    model = params.get("model") or (params.get("train") or {}).get("out")
    facts: list[tuple[str, str | Code]] = [("Model", Code(str(model)) if model else "—")]
    if params.get("train"):
        facts.append(("Trained in this run on", Code(params["train"].get("label_column", "?"))))
    rules = [f"{k} {params[k]:g}" for k in ("min_score", "max_score", "keep_top") if params.get(k) is not None]
    facts.append(("Rule", ", ".join(rules) if rules else "none (scores only)"))
    flagging = params.get("action") == "flag" or bool(stage["flagged"])
    acted = stage["flagged"] if flagging else stage["dropped"]
    facts.append(("Flagged (kept)" if flagging else "Dropped",
                  percent(sum(acted.values()), stage["records_in"]) + " of " + count(stage["records_in"])))
    blocks.append(Facts(facts))
    frame, with_removed = read_scored(run_dir, name, score)
    key = f"{name}.{score}"
    hist = stats.get("histograms", {}).get("scores", {}).get(key)
    if hist is not None:
        thresholds = list(recipe_thresholds(run_dir).get(key, []))
        if params.get("keep_top") is not None and frame.height and not with_removed and not stage["flagged"]:
            thresholds.append(float(frame[score].min()))  # the output holds exactly the kept rows: the cut
        png = plot_score_histograms({"histograms": {"scores": {key: hist}}, "run_dir": str(run_dir)},
                                    plots_dir / f"classifier_{name}.png", {key: thresholds})
        if png is not None:
            blocks.append(Figure(f"classifier_{name}", f"{score}: distribution (dashed: threshold)", png))
    if frame.height:
        blocks.append(Table(["example", "text (truncated)", "score"], example_rows(frame, score), numeric_from=2))
        if not with_removed and stage["dropped"]:
            blocks.append(Para("Bottom examples are the lowest-scored documents that were kept; set "
                               "output.keep_removed: true to see the dropped ones."))
    return blocks


def label_distribution(hist: dict[str, list[float]]) -> dict[int, int]:
    """Counts per whole-number score from a histogram of whole-number values (each value lies in one bin)."""
    edges, counts = np.asarray(hist["edges"], dtype=float), hist["counts"]
    found: dict[int, int] = {}
    for i, c in enumerate(counts):
        if not c:
            continue
        lo, hi = edges[i], edges[i + 1]
        inside = [k for k in range(int(np.ceil(lo)), int(np.floor(hi)) + 1) if lo <= k < hi or (i == len(counts) - 1 and k == hi)]
        if inside:
            found[inside[0]] = found.get(inside[0], 0) + int(c)
    return dict(sorted(found.items()))


def annotate_stage_blocks(stats: dict[str, Any], stage: dict[str, Any], params: dict[str, Any]) -> list[Block]:
    name = stage["name"]
    unparsed = stage["flagged"].get(f"{name}_unparsed", 0) + stage["dropped"].get(f"{name}_unparsed", 0)
    hist = stats.get("histograms", {}).get("scores", {}).get(f"{name}.{name}_score")
    labels = label_distribution(hist) if hist else {}
    annotated = sum(labels.values()) + unparsed
    blocks: list[Block] = [Heading(f"Annotation: {name}", 3), Facts([
        ("Template", Code(str(params.get("template", "fineweb_edu")))),
        ("Generator", Code(str((params.get("generator") or {}).get("model", "smollm2-135m")))),
        ("Annotated", f"{count(annotated)} of {count(stage['records_in'])} (sample {params.get('sample', 1.0):g})"),
        ("Replies without a valid score", percent(unparsed, annotated) if annotated else "—"),
    ])]
    if labels or unparsed:
        rows = [[str(k), count(v), percent(v, annotated)] for k, v in labels.items()]
        rows.append(["unparsed", count(unparsed), percent(unparsed, annotated)])
        blocks.append(Table(["label", "records", "share"], rows))
    return blocks


@register_report_section("classifier")
def classifier_blocks(run_dir: Path, stats: dict[str, Any], plots_dir: Path) -> list[Block]:
    """The section's blocks; empty for runs without `annotate` or `classifier` stages."""
    run_dir, plots_dir = Path(run_dir), Path(plots_dir)
    for old in plots_dir.glob("classifier_*.png"):
        old.unlink(missing_ok=True)
    ours = [s for s in stats.get("stages", []) if s.get("type") in ("annotate", "classifier")]
    if not ours:
        return []
    params = stage_params(run_dir)
    blocks: list[Block] = [Heading("Classifiers and annotation")]
    for stage in ours:
        entry = params.get(stage["name"], {})
        if stage["type"] == "annotate":
            blocks += annotate_stage_blocks(stats, stage, entry)
        else:
            blocks += classifier_stage_blocks(run_dir, stats, plots_dir, stage, entry)
    return blocks
