"""Turn a run's stats.json into report.md, a self-contained report.html and plots/*.png.

The report is first built as a small list of blocks (headings, paragraphs, facts, tables,
figures); two writers then render the same blocks as Markdown and as HTML, so both files always
say the same thing. Every string that comes from stats.json (stage names, reasons, paths) is
escaped by the writer: code spans in Markdown, `html.escape` in HTML.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Union

from datamill.curate.engine.layout import RunLayout
from datamill.curate.engine.plugins import load_plugins
from datamill.curate.report.plots import draw_all

PLOT_TITLES = {
    "funnel": "Funnel: records and tokens after each step",
    "drop_reasons": "Drop reasons per stage",
    "length_hist": "Text length, input vs output",
    "scores": "Score distributions",
}
PLOT_SKIP_REASONS = {
    "funnel": "no records reached the pipeline",
    "drop_reasons": "no stage dropped any record",
    "length_hist": "no length histogram with counts was recorded",
    "scores": "no score column histogram with counts was recorded",
}


@dataclass(frozen=True)
class Code:
    """A value taken verbatim from the stats (name, reason, path), shown as code."""

    text: str


Cell = Union[str, Code]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Facts:
    items: list[tuple[str, Cell]]


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    numeric_from: int = 1
    """Columns from this index on are numbers and are right-aligned."""


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    png: Path


Block = Union[Heading, Para, Facts, Table, Figure]


def count(value: int | float) -> str:
    return f"{int(value):,}"


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def timestamp(value: str) -> str:
    """ISO timestamp as 'YYYY-MM-DD HH:MM:SS UTC'; the raw string if it does not parse."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return str(value)
    return parsed.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def run_path(stats: dict[str, Any], sub_dir: str) -> Code:
    if "://" in stats["run_dir"]:  # an object-store run dir keeps its URL
        return Code(f"{stats['run_dir'].rstrip('/')}/{sub_dir}")
    return Code(str(Path(stats["run_dir"]) / sub_dir))


def header_blocks(stats: dict[str, Any]) -> list[Block]:
    read = sum(source["records_read"] for source in stats["sources"])
    seconds = stats["seconds"]
    rate = f"{read / seconds:,.1f} records/s" if seconds > 0 else "n/a records/s"
    return [
        Heading(f"datamill run report: {stats['recipe']}", 1),
        Facts([
            ("Recipe", Code(stats["recipe"])),
            ("Run directory", Code(stats["run_dir"])),
            ("Started", timestamp(stats["started_at"])),
            ("Finished", timestamp(stats["finished_at"])),
            ("Duration", f"{seconds:,.1f} s"),
            ("Executor", f"{stats['executor']} with {stats['workers']} worker(s)"),
            ("Throughput", f"{count(read)} records read, {rate}"),
            ("Output", f"{count(stats['output']['records'])} records, "
                       f"~{count(stats['output']['tokens'])} tokens"),
        ]),
    ]


def source_blocks(stats: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading("Sources")]
    sources = stats["sources"]
    if not sources:
        return blocks + [Para("The run read no sources.")]
    rows: list[list[Cell]] = [
        [Code(s["name"]), Code(s["type"]), count(s["shards"]), count(s["records_read"]),
         count(s["records_ok"]), count(s["quarantined"])]
        for s in sources
    ]
    if len(sources) > 1:
        rows.append(["total", "", *(count(sum(s[key] for s in sources)) for key in
                                     ("shards", "records_read", "records_ok", "quarantined"))])
    headers = ["source", "type", "shards", "records read", "records ok", "quarantined"]
    skipped = [Para(f"Skipped by source {s['name']} (read and counted, not documents): " + ", ".join(
        f"{reason} {count(n)}" for reason, n in s["skipped"].items()) + ".")
        for s in sources if s.get("skipped")]
    return blocks + [Table(headers, rows, numeric_from=2), *skipped]


def funnel_blocks(stats: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading("Funnel")]
    stages = stats["stages"]
    if not stages:
        return blocks + [Para("The recipe has no stages: every record read went to the output.")]
    start = stages[0]["records_in"]
    rows: list[list[Cell]] = [
        [Code(stage["name"]), Code(stage["type"]), count(stage["records_in"]),
         count(stage["records_out"]), percent(stage["records_out"], stage["records_in"]),
         percent(stage["records_out"], start), count(stage["tokens_in"]),
         count(stage["tokens_out"]), f"{stage['seconds']:,.2f}", count(stage["errors"])]
        for stage in stages
    ]
    last = stages[-1]
    rows.append([
        "all stages", "", count(start), count(last["records_out"]),
        percent(last["records_out"], start), percent(last["records_out"], start),
        count(stages[0]["tokens_in"]), count(last["tokens_out"]),
        f"{sum(stage['seconds'] for stage in stages):,.2f}",
        count(sum(stage["errors"] for stage in stages)),
    ])
    headers = ["stage", "type", "records in", "records out", "kept %", "% of input",
               "tokens in", "tokens out", "seconds", "errors"]
    note = Para("'kept %' is relative to the stage's input; '% of input' to the records the "
                "first stage received. Tokens are approximate (words and punctuation marks).")
    return blocks + [Table(headers, rows, numeric_from=2), note]


def reason_blocks(stats: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading("Drop and flag reasons")]
    rows: list[list[Cell]] = [
        [Code(stage["name"]), Code(reason), kind, count(n), percent(n, stage["records_in"])]
        for stage in stats["stages"]
        for kind, reasons in (("dropped", stage["dropped"]), ("flagged", stage["flagged"]))
        for reason, n in reasons.items()
    ]
    tallies = [Para(f"Counted by stage {stage['name']}: " + ", ".join(
        f"{name} {count(n)}" for name, n in stage["tallies"].items()) + ".")
        for stage in stats["stages"] if stage.get("tallies")]
    tallies += [Para(f"Set-up of stage {stage['name']}: " + ", ".join(
        f"{name} {count(n)}" for name, n in stage["facts"].items()) + ".")
        for stage in stats["stages"] if stage.get("facts")]
    if not rows:
        return blocks + [Para("No stage dropped or flagged any record."), *tallies]
    headers = ["stage", "reason", "action", "records", "% of stage input"]
    return blocks + [Table(headers, rows, numeric_from=3), *tallies]


def quarantine_blocks(stats: dict[str, Any]) -> list[Block]:
    quarantine = stats["quarantine"]
    facts = [("Records quarantined", count(quarantine["total"]))]
    if quarantine["total"]:  # no quarantined record, no quarantine/ folder to point at
        facts.append(("Directory", run_path(stats, quarantine["dir"])))
    blocks: list[Block] = [Heading("Quarantine"), Facts(facts)]
    if not quarantine["by_reason"]:
        return blocks + [Para("No input was quarantined.")]
    rows: list[list[Cell]] = [
        [Code(reason), count(n), percent(n, quarantine["total"])]
        for reason, n in sorted(quarantine["by_reason"].items(), key=lambda item: -item[1])
    ]
    return blocks + [Table(["reason", "records", "share"], rows)]


def output_blocks(stats: dict[str, Any]) -> list[Block]:
    output = stats["output"]
    return [
        Heading("Output"),
        Facts([
            ("Records", count(output["records"])),
            ("Tokens (approx.)", count(output["tokens"])),
            ("Files", f"{count(output['files'])} {output['format']} file(s)"),
            ("Size", human_bytes(output["bytes"])),
            ("Directory", run_path(stats, output["dir"])),
        ]),
    ]


def plot_blocks(plots: dict[str, Path | None]) -> list[Block]:
    blocks: list[Block] = [Heading("Plots")]
    for name, png in plots.items():
        if png is None:
            skipped = f"Skipped the '{PLOT_TITLES[name]}' plot: {PLOT_SKIP_REASONS[name]}."
            blocks.append(Para(skipped))
        else:
            blocks.append(Figure(name, PLOT_TITLES[name], png))
    return blocks


def report_blocks(stats: dict[str, Any], plots: dict[str, Path | None]) -> list[Block]:
    return [
        *header_blocks(stats), *source_blocks(stats), *funnel_blocks(stats),
        *reason_blocks(stats), *quarantine_blocks(stats), *output_blocks(stats),
        *plot_blocks(plots),
    ]


# ---- Markdown writer ----

MD_SPECIAL = set("\\`*_[]<>|#!")


def md_text(text: str) -> str:
    return "".join("\\" + ch if ch in MD_SPECIAL else ch for ch in str(text).replace("\n", " "))


def md_code(text: str, in_table: bool) -> str:
    """A code span that survives any content: its fence is longer than any backtick run inside."""
    body = str(text).replace("\n", " ")
    if in_table:
        body = body.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", body)), default=0) + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def md_cell(cell: Cell, in_table: bool = False) -> str:
    return md_code(cell.text, in_table) if isinstance(cell, Code) else md_text(cell)


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + md_text(block.text), ""]
        elif isinstance(block, Para):
            lines += [md_text(block.text), ""]
        elif isinstance(block, Facts):
            lines += [f"- **{md_text(label)}:** {md_cell(value)}" for label, value in block.items]
            lines.append("")
        elif isinstance(block, Table):
            aligns = ["---" if i < block.numeric_from else "---:"
                      for i in range(len(block.headers))]
            lines.append("| " + " | ".join(md_text(h) for h in block.headers) + " |")
            lines.append("| " + " | ".join(aligns) + " |")
            lines += ["| " + " | ".join(md_cell(c, in_table=True) for c in row) + " |"
                      for row in block.rows]
            lines.append("")
        elif isinstance(block, Figure):
            lines += [f"![{md_text(block.title)}](plots/{block.png.name})", ""]
    return "\n".join(lines)


# ---- HTML writer ----

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1180px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #1f77b4; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .3em .65em; }
th { background: #f3f6fa; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #f4f4f4; padding: 0 .25em; border-radius: 3px; word-break: break-all; }
dl { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; }
dt { font-weight: 600; }
dd { margin: 0; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
p.note { color: #555; font-size: .9em; }
""".strip()


def html_cell(cell: Cell) -> str:
    if isinstance(cell, Code):
        return f"<code>{html.escape(cell.text)}</code>"
    return html.escape(str(cell))


def png_data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def to_html(blocks: list[Block], title: str) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", f"<style>\n{CSS}\n</style>", "</head>", "<body>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            parts.append(f'<p class="note">{html.escape(block.text)}</p>')
        elif isinstance(block, Facts):
            items = "".join(f"<dt>{html.escape(label)}</dt><dd>{html_cell(value)}</dd>"
                            for label, value in block.items)
            parts.append(f"<dl>{items}</dl>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
            body = "".join(
                "<tr>" + "".join(
                    f'<td class="num">{html_cell(c)}</td>' if i >= block.numeric_from
                    else f"<td>{html_cell(c)}</td>"
                    for i, c in enumerate(row)) + "</tr>"
                for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Figure):
            parts.append(
                f'<figure id="{block.name}"><img src="{png_data_uri(block.png)}" '
                f'alt="{html.escape(block.title)}"><figcaption>{html.escape(block.title)}'
                "</figcaption></figure>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


ReportSection = Callable[[Path, dict[str, Any], Path], list[Block]]
"""(run dir, stats, plots dir) -> the section's blocks, empty when the run has nothing for it."""

_sections: dict[str, ReportSection] = {}


def register_report_section(name: str):
    """Decorator: a feature adds its own section to every report (code-switching, classifiers…);
    sections are appended after the core report, in name order."""

    def add(function: ReportSection) -> ReportSection:
        _sections[name] = function
        return function

    return add


def section_blocks(run_dir: Path, stats: dict[str, Any], plots_dir: Path) -> list[Block]:
    """The blocks of every registered report section, in name order."""
    load_plugins()
    blocks: list[Block] = []
    for name in sorted(_sections):
        blocks += _sections[name](run_dir, stats, plots_dir)
    return blocks


REPORT_INPUTS = ("stats.json", "state/recipe.json", "state/synthesis", "shards", "removed")
"""What the report reads from a run dir; a remote run's are fetched into its local mirror first."""


def render_report(run_dir: str | Path) -> dict[str, Path | str]:
    """Write report.md, report.html and plots/*.png for the run in `run_dir` (a path or an
    object-store URL: then rendered in the local mirror and uploaded beside the run's stats).

    Returns the written paths (URLs for a remote run): "md", "html" and one entry per drawn plot
    (funnel, drop_reasons, length_hist, scores); a plot without data is skipped and the report says so.
    """
    layout = RunLayout(run_dir)
    local = layout.sync_down(REPORT_INPUTS)
    stats = json.loads((local / "stats.json").read_text(encoding="utf-8"))
    plots = draw_all(dict(stats, run_dir=str(local)), local / "plots")
    blocks = report_blocks(stats, plots) + section_blocks(local, stats, local / "plots")
    md_path, html_path = local / "report.md", local / "report.html"
    md_path.write_text(to_markdown(blocks), encoding="utf-8")
    html_path.write_text(to_html(blocks, f"datamill report: {stats['recipe']}"), encoding="utf-8")
    written = {"md": md_path, "html": html_path, **{name: png for name, png in plots.items() if png is not None}}
    if layout.store is None:
        return written
    for path in written.values():
        layout.publish(path, path)
    return {name: layout.store.url_of(layout.rel(path)) for name, path in written.items()}

