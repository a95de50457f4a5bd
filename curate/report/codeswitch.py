"""The report's code-switching section: cs_ratio histogram, language pairs and switch points.

Rendered only when the run's output shards have a `cs_ratio` column (written by the
`codeswitch_verify` stage); otherwise it adds nothing. It reads just the code-switching columns
of the output shards (parquet or jsonl), so it costs little even on a large corpus.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure as MplFigure

from datamill.curate.report.plots import DPI, STAGE_COLOR, compact
from datamill.curate.report.render import (
    Block, Code, Facts, Figure, Heading, Table, count, percent, register_report_section)

CS_COLUMNS = ("cs_ratio", "switch_points", "matrix_lang", "cs_langs")
PLOT_NAME = "codeswitch"
RATIO_BINS = np.linspace(0.0, 0.5, 11)
"""cs_ratio is the non-matrix share, so it lies in [0, 0.5] (a tie at 0.5)."""


def read_cs_columns(shards: Path) -> pl.DataFrame | None:
    """The code-switching columns of every output shard, or None when there are none."""
    frames = []
    for path in sorted(shards.glob("*.parquet")):
        frames.append(pl.scan_parquet(path))
    for path in sorted(shards.glob("*.jsonl")):
        frames.append(pl.scan_ndjson(path, infer_schema_length=None))
    if not frames:
        return None
    available = [set(f.collect_schema().names()) for f in frames]
    if not all("cs_ratio" in names for names in available):
        return None
    columns = [c for c in CS_COLUMNS if all(c in names for names in available)]
    return pl.concat([f.select(columns) for f in frames], how="vertical_relaxed").collect()


def language_pairs(frame: pl.DataFrame) -> pl.DataFrame:
    """Records per (matrix language, embedded language) pair, most frequent first."""
    if "cs_langs" not in frame.columns or "matrix_lang" not in frame.columns:
        return pl.DataFrame(schema={"pair": pl.String, "records": pl.UInt32})
    return (
        frame.select("matrix_lang", pl.col("cs_langs").alias("embedded")).explode("embedded")
        .filter(pl.col("embedded").is_not_null() & (pl.col("embedded") != pl.col("matrix_lang")))
        .select(pl.concat_str("matrix_lang", pl.lit("→"), "embedded").alias("pair"))
        .group_by("pair").agg(pl.len().alias("records")).sort(["records", "pair"], descending=[True, False])
    )


def plot_codeswitch(frame: pl.DataFrame, path: Path) -> Path | None:
    """Three panels: cs_ratio histogram, language pairs, switch points per record."""
    if frame.is_empty():
        return None
    figure = MplFigure(figsize=(12, 3.4), layout="constrained")
    ratio_axes, pair_axes, switch_axes = figure.subplots(1, 3)
    counts, _ = np.histogram(frame["cs_ratio"].drop_nulls().clip(0, 0.5).to_numpy(), bins=RATIO_BINS)
    ratio_axes.stairs(counts, RATIO_BINS, fill=True, color=STAGE_COLOR, alpha=0.85)
    ratio_axes.set_title("cs_ratio (non-matrix token share)", fontsize=10)
    pairs = language_pairs(frame).head(10)
    pair_axes.barh(pairs["pair"].to_list()[::-1], pairs["records"].to_list()[::-1], color=STAGE_COLOR)
    pair_axes.set_title("language pairs (matrix→embedded)", fontsize=10)
    switches = frame["switch_points"].drop_nulls().cast(pl.Int64).to_numpy()
    edges = np.arange(0, max(int(switches.max(initial=0)), 1) + 2) - 0.5
    switch_counts, _ = np.histogram(switches, bins=edges)
    switch_axes.stairs(switch_counts, edges, fill=True, color=STAGE_COLOR, alpha=0.85)
    switch_axes.set_title("switch points per record", fontsize=10)
    for axes in (ratio_axes, switch_axes):
        axes.yaxis.set_major_formatter(lambda y, _: compact(y))
        axes.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


@register_report_section("codeswitch")
def codeswitch_blocks(run_dir: Path, stats: dict, plots_dir: Path) -> list[Block]:
    """The section's blocks; empty when the output has no `cs_ratio` column."""
    target = plots_dir / f"{PLOT_NAME}.png"
    target.unlink(missing_ok=True)
    frame = read_cs_columns(Path(run_dir) / "shards")
    if frame is None:
        return []
    ratios = frame["cs_ratio"].drop_nulls()
    facts: list[tuple[str, str | Code]] = [
        ("Records with cs_ratio", count(frame.height)),
        ("Mean cs_ratio", f"{ratios.mean():.3f}" if len(ratios) else "—"),
        ("Mixed (cs_ratio > 0)", percent(int((ratios > 0).sum()), len(ratios))),
    ]
    if "switch_points" in frame.columns:
        facts.append(("Mean switch points", f"{frame['switch_points'].cast(pl.Float64).mean() or 0:.2f}"))
    blocks: list[Block] = [Heading("Code-switching"), Facts(facts)]
    pairs = language_pairs(frame)
    if pairs.height:
        blocks.append(Table(["language pair", "records"], [[Code(p), count(n)] for p, n in pairs.iter_rows()]))
    png = plot_codeswitch(frame, target)
    if png is not None:
        blocks.append(Figure(PLOT_NAME, "Code-switching: cs_ratio, language pairs, switch points", png))
    return blocks
