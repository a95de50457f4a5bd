"""Draw the run report's PNG plots (funnel, drop reasons, length and score histograms) from stats.

Each `plot_*` function takes the parsed stats.json dict and an output path, writes one PNG and
returns its path, or returns None without writing when there is nothing to draw. Figures are
built with `matplotlib.figure.Figure` (rendered by the Agg canvas, no pyplot, no display and no
global figure state), so plotting works headless and inside worker processes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

DPI = 110
LABEL_CHARS = 42
SOURCE_COLOR = "#7f7f7f"
STAGE_COLOR = "#1f77b4"
INPUT_COLOR = "#9ecae1"
OUTPUT_COLOR = "#d62728"
PANEL_WIDTH, PANEL_HEIGHT, PANEL_GAP = 3.9, 3.0, 0.95
"""Score grid geometry in inches; the gap holds tick labels, the x label and a two-line title."""
GRID_TOP, GRID_BOTTOM = 0.85, 0.5


def compact(value: float) -> str:
    """Short human number for plot annotations: 950, 12.3k, 4.5M, 1.2B."""
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else f"{int(value)}"


def binary_size(value: float) -> str:
    """Power-of-two axis label: 256, 1K, 64K, 1M (K = 1024)."""
    for threshold, suffix in ((2**30, "G"), (2**20, "M"), (2**10, "K")):
        if value >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return f"{value:.3g}"


def shorten(label: str, limit: int = LABEL_CHARS) -> str:
    """Cut the middle of a long label (names differ at both ends) so axes keep their room."""
    if len(label) <= limit:
        return label
    head = (limit - 1) // 2
    return label[:head] + "…" + label[len(label) - (limit - 1 - head):]


def two_line_title(label: str, width: int = 38) -> str:
    """Split a long label onto two lines after a '.', '_', '-' or space; shorten what remains."""
    if len(label) <= width:
        return label
    cut = max(label.rfind(mark, 0, width) for mark in "._- ") + 1 or width
    return shorten(label[:cut], width) + "\n" + shorten(label[cut:], width)


def funnel_steps(stats: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(step name, records, tokens) after the sources and after each stage, in pipeline order."""
    stages = stats["stages"]
    if stages:
        source_records, source_tokens = stages[0]["records_in"], stages[0]["tokens_in"]
    else:
        source_records = sum(source["records_ok"] for source in stats["sources"])
        source_tokens = stats["output"]["tokens"]
    steps = [("sources", source_records, source_tokens)]
    steps += [(stage["name"], stage["records_out"], stage["tokens_out"]) for stage in stages]
    return steps


def save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def plot_funnel(stats: dict[str, Any], path: Path) -> Path | None:
    """Two horizontal bar panels: records and tokens left after the sources and each stage."""
    steps = funnel_steps(stats)
    if not any(records or tokens for _, records, tokens in steps):
        return None
    labels = [shorten(name) for name, _, _ in steps]
    colors = [SOURCE_COLOR] + [STAGE_COLOR] * (len(steps) - 1)
    height = 1.6 + 0.42 * len(steps)
    figure = Figure(figsize=(11, height), layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    positions = np.arange(len(steps))
    for panel, column, title in ((panels[0], 1, "Records"), (panels[1], 2, "Tokens (approx.)")):
        values = np.array([step[column] for step in steps], dtype=float)
        panel.barh(positions, values, color=colors, height=0.7)
        start = values[0]
        for position, value in zip(positions, values):
            share = f" ({value / start:.0%})" if start else ""
            panel.text(value, position, f" {compact(value)}{share}", va="center", fontsize=8)
        panel.set_title(f"{title} after each step", fontsize=11)
        panel.set_xlim(0, max(values.max(), 1) * 1.3)
        panel.xaxis.set_major_formatter(FuncFormatter(lambda x, _: compact(x)))
        panel.grid(axis="x", alpha=0.3)
        panel.set_axisbelow(True)
    panels[0].set_yticks(positions, labels, fontsize=9)
    panels[0].invert_yaxis()
    figure.suptitle(f"Funnel: {shorten(stats['recipe'], 60)}", fontsize=12)
    return save(figure, path)


def drop_rows(stats: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(stage, reason, count) for every positive drop count, in pipeline order."""
    return [
        (stage["name"], reason, count)
        for stage in stats["stages"]
        for reason, count in stage["dropped"].items()
        if count > 0
    ]


def plot_drop_reasons(stats: dict[str, Any], path: Path) -> Path | None:
    """Horizontal bars of records dropped per (stage, reason), one color per stage."""
    rows = drop_rows(stats)
    if not rows:
        return None
    stage_names = list(dict.fromkeys(stage for stage, _, _ in rows))
    palette = colormaps["tab10" if len(stage_names) <= 10 else "tab20"]
    color_of = {name: palette(i % palette.N) for i, name in enumerate(stage_names)}
    positions = np.arange(len(rows))
    counts = np.array([count for _, _, count in rows], dtype=float)
    figure = Figure(figsize=(11, 1.6 + 0.36 * len(rows)), layout="constrained")
    axes = figure.subplots()
    for stage in stage_names:
        mine = [i for i, row in enumerate(rows) if row[0] == stage]
        axes.barh(positions[mine], counts[mine], color=color_of[stage], height=0.7,
                  label=shorten(stage, 40))
    for position, count in zip(positions, counts):
        axes.text(count, position, f" {compact(count)}", va="center", fontsize=8)
    axes.set_yticks(positions, [shorten(reason, 36) for _, reason, _ in rows], fontsize=9)
    axes.invert_yaxis()
    axes.set_xlim(0, counts.max() * 1.15)
    axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: compact(x)))
    axes.set_xlabel("records dropped")
    axes.set_title("Drop reasons per stage", fontsize=12)
    axes.grid(axis="x", alpha=0.3)
    axes.set_axisbelow(True)
    axes.legend(title="stage", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                title_fontsize=9, frameon=False)
    return save(figure, path)


def display_edges(edges: list[float]) -> np.ndarray:
    """Bin edges usable on a log axis: a leading 0 edge becomes half of the next edge."""
    shown = np.asarray(edges, dtype=float).copy()
    if len(shown) > 1 and shown[0] <= 0:
        shown[0] = shown[1] / 2 if shown[1] > 0 else 0.5
    return shown


def is_histogram(edges: list[float], *count_lists: list[float]) -> bool:
    """True when every count list fits the edges and at least one count is positive."""
    return (
        len(edges) >= 2
        and all(len(counts) == len(edges) - 1 for counts in count_lists)
        and any(sum(counts) > 0 for counts in count_lists)
    )


def plot_length_histogram(stats: dict[str, Any], path: Path) -> Path | None:
    """Text length in characters, input vs output, on a log-x axis with power-of-two bins."""
    hist = stats["histograms"].get("length_chars")
    if not hist or not is_histogram(hist["edges"], hist["input"], hist["output"]):
        return None
    edges = display_edges(hist["edges"])
    figure = Figure(figsize=(9, 4.2), layout="constrained")
    axes = figure.subplots()
    axes.stairs(hist["input"], edges, fill=True, color=INPUT_COLOR, alpha=0.8,
                label=f"input ({compact(sum(hist['input']))} records)")
    axes.stairs(hist["output"], edges, color=OUTPUT_COLOR, linewidth=1.8,
                label=f"output ({compact(sum(hist['output']))} records)")
    axes.set_xscale("log", base=2)
    axes.xaxis.set_major_locator(LogLocator(base=2, numticks=12))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: binary_size(x)))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda y, _: compact(y)))
    occupied = np.flatnonzero(np.asarray(hist["input"]) + np.asarray(hist["output"]))
    axes.set_xlim(edges[max(occupied[0] - 1, 0)], edges[min(occupied[-1] + 2, len(edges) - 1)])
    axes.set_xlabel("characters per record (log scale, power-of-two bins, K = 1024)")
    axes.set_ylabel("records")
    axes.set_title("Text length: input vs output", fontsize=12)
    axes.grid(alpha=0.3)
    axes.set_axisbelow(True)
    axes.legend(fontsize=9)
    return save(figure, path)


ID_LIKE = re.compile(r"(^|_)(id|ids|hash|hashes|cluster|pos|position|index|seed)$")
"""Numeric columns that name things rather than measure them (`dup_cluster` is a position):
their histograms say nothing and are not drawn."""
RULE = re.compile(r'col\("([^"]+)"\)\) (?:<|<=|>|>=) \(dyn (?:int|float): ([-+0-9.eE]+|inf)\)')
"""A drop rule comparing a column with a number, as polars prints it: `[(col("ppl")) > (dyn float: 50)]`."""


def drawable_scores(stats: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Score histograms that have matching edges/counts, at least one count, and a column that is
    a measurement (not an id, hash or cluster label)."""
    return {
        name: hist
        for name, hist in stats["histograms"].get("scores", {}).items()
        if is_histogram(hist["edges"], hist["counts"]) and not ID_LIKE.search(name.rsplit(".", 1)[-1])
    }


def is_log_binned(edges: list[float]) -> bool:
    """Edges that are positive, evenly spaced in log and span more than two decades."""
    values = np.asarray(edges, dtype=float)
    if len(values) < 3 or values[0] <= 0 or values[-1] / values[0] <= 100:
        return False
    ratios = values[1:] / values[:-1]
    return bool(np.allclose(ratios, ratios[0], rtol=1e-6))


def rule_thresholds(rules: list[tuple[str, Any]]) -> dict[str, list[float]]:
    """Column → the numbers a filter's drop rules compare it with (`ppl > 50` → {ppl: [50]})."""
    found: dict[str, list[float]] = {}
    for _, condition in rules:
        for column, number in RULE.findall(str(condition)):
            found.setdefault(column, []).append(float(number))
    return found


def recipe_thresholds(run_dir: str | Path) -> dict[str, list[float]]:
    """`stage.column` → thresholds of the run's filters, from the recipe saved in its state/
    (empty when there is none or it cannot be read)."""
    saved = Path(run_dir) / "state" / "recipe.json"
    if not saved.is_file():
        return {}
    try:
        from datamill.curate.engine.pipeline import Pipeline
        from datamill.curate.engine.recipe import Recipe
        from datamill.curate.engine.stage import Filter

        pipeline = Pipeline(Recipe.model_validate(json.loads(saved.read_text())["recipe"]))
        return {
            f"{stage.name}.{column}": values
            for stage in pipeline.stages if isinstance(stage, Filter)
            for column, values in rule_thresholds(stage.drop_rules()).items()
        }
    except (OSError, ValueError, KeyError, TypeError, ImportError):  # an old or hand-edited recipe.json
        # only costs the threshold lines
        return {}


@dataclass(frozen=True)
class ScorePanel:
    """One panel of the score grid: what is drawn, decided apart from drawing it."""

    name: str
    edges: np.ndarray
    counts: list[float]
    log_x: bool
    thresholds: list[float]


def score_panels(stats: dict[str, Any], thresholds: dict[str, list[float]] | None = None) -> list[ScorePanel]:
    """The panels of the score grid: measurement columns only, a log x axis for log-binned
    (heavy-tailed) scores, and the thresholds inside the drawn range (default: from the run's recipe)."""
    scores = drawable_scores(stats)
    if thresholds is None:
        thresholds = recipe_thresholds(stats["run_dir"]) if scores and stats.get("run_dir") else {}
    panels = []
    for name, hist in scores.items():
        edges = np.asarray(hist["edges"], dtype=float)
        log_x = is_log_binned(hist["edges"])
        shown = [t for t in thresholds.get(name, []) if edges[0] <= t <= edges[-1] and (t > 0 or not log_x)]
        panels.append(ScorePanel(name, edges, hist["counts"], log_x, shown))
    return panels


def plot_score_histograms(stats: dict[str, Any], path: Path,
                          thresholds: dict[str, list[float]] | None = None) -> Path | None:
    """Small multiples: one histogram per score column, three per row (see `score_panels`)."""
    panels = score_panels(stats, thresholds)
    if not panels:
        return None
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(PANEL_WIDTH * columns, PANEL_HEIGHT * rows + GRID_TOP + GRID_BOTTOM))
    # Fixed margins in inches instead of constrained layout, which costs ~0.2 s per panel.
    width, height = figure.get_size_inches()
    axes_height = PANEL_HEIGHT - PANEL_GAP
    figure.subplots_adjust(left=0.55 / width, right=1 - 0.15 / width, bottom=GRID_BOTTOM / height,
                           top=1 - GRID_TOP / height, wspace=0.22, hspace=PANEL_GAP / axes_height)
    grid = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, panel in zip(grid, panels):
        axes.stairs(panel.counts, panel.edges, fill=True, color=STAGE_COLOR, alpha=0.85)
        if panel.log_x:
            axes.set_xscale("log")
        for threshold in panel.thresholds:
            axes.axvline(threshold, color=OUTPUT_COLOR, linestyle="--", linewidth=1.4)
        axes.set_title(two_line_title(panel.name), fontsize=9)
        notes = (" · log x" if panel.log_x else "") + (" · dashed: threshold" if panel.thresholds else "")
        axes.set_xlabel(f"n = {compact(sum(panel.counts))} values{notes}", fontsize=8)
        axes.yaxis.set_major_formatter(FuncFormatter(lambda y, _: compact(y)))
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
        axes.set_axisbelow(True)
    for axes in grid[len(panels):]:
        axes.set_visible(False)
    figure.suptitle("Score distributions", fontsize=12, y=1 - 0.12 / height)
    return save(figure, path)


PLOTTERS = {
    "funnel": plot_funnel,
    "drop_reasons": plot_drop_reasons,
    "length_hist": plot_length_histogram,
    "scores": plot_score_histograms,
}
"""Plot name → function; the name is also the PNG file stem under plots/."""


def draw_all(stats: dict[str, Any], plots_dir: Path) -> dict[str, Path | None]:
    """Draw every plot into `plots_dir`; None marks a plot skipped for lack of data."""
    drawn = {}
    for name, plotter in PLOTTERS.items():
        target = plots_dir / f"{name}.png"
        target.unlink(missing_ok=True)
        drawn[name] = plotter(stats, target)
    return drawn
