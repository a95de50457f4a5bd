"""The report's synthesis section: per generating stage, tokens, throughput, cache hits, truncation,
agreement and parse failures.

Read from what a run leaves behind: the generation tallies each stage's cached generator writes
under `<run dir>/state/synthesis/<stage>-<pid>-<random>.json` (`synth/factory.py`; summed over worker
processes and resumed runs), the stage's drop reasons in `stats.json` (`truncated`, `no_answer`,
`low_agreement`, `empty_completion`…) and quarantine reasons of sources (`self_instruct:*`), and
the `agreement` column of the output shards (self-consistency votes). Without tallies it adds
nothing. Registered as the report section `synthesis` (entry point `curate-report-synthesis`).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from datamill.curate.report.render import (
    Block, Code, Facts, Heading, Table, count, percent, register_report_section)

TALLY_FIELDS = ("completions", "cache_hits", "generated", "tokens", "truncated", "seconds")
PARSE_FAILURES = ("no_answer", "truncated", "empty_completion", "empty_output", "unparsed", "parse_error")


def read_tallies(run_dir: Path) -> dict[str, dict]:
    """Stage label → summed tally (and its model ids) from `state/synthesis/*.json`."""
    tallies: dict[str, dict] = {}
    for path in sorted((Path(run_dir) / "state" / "synthesis").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a tally being replaced right now: the next report has it
        label = path.stem.rsplit("-", 2)[0]
        total = tallies.setdefault(label, {**dict.fromkeys(TALLY_FIELDS, 0), "models": set()})
        for field in TALLY_FIELDS:
            total[field] += data.get(field, 0)
        total["models"].add(data.get("model_id", "?"))
    return tallies


def stage_failures(stats: dict, label: str) -> dict[str, int]:
    """Drop and quarantine reasons of one stage or source that are parse/generation failures."""
    reasons: dict[str, int] = {}
    for stage in stats.get("stages", []):
        if stage.get("name") == label:
            reasons.update({r: n for r, n in stage.get("dropped", {}).items()})
            if stage.get("errors"):
                reasons["stage_error"] = stage["errors"]
    for reason, n in stats.get("quarantine", {}).get("by_reason", {}).items():
        if reason.startswith(f"{label}:") or reason == f"stage_error:{label}":
            reasons[reason.split(":", 1)[1] if reason.startswith(f"{label}:") else "stage_error"] = n
    return reasons


def agreement(shards: Path) -> pl.DataFrame | None:
    """The `agreement` column of the output shards, when they have one."""
    frames = []
    for path in sorted(shards.glob("*.parquet")):
        scan = pl.scan_parquet(path)
        if "agreement" in scan.collect_schema().names():
            frames.append(scan.select("agreement"))
    return pl.concat(frames).collect() if frames else None


@register_report_section("synthesis")
def synthesis_blocks(run_dir: Path, stats: dict, plots_dir: Path) -> list[Block]:
    """The section's blocks; empty when no stage generated anything in this run."""
    tallies = read_tallies(Path(run_dir))
    if not tallies:
        return []
    rows = []
    for label, t in sorted(tallies.items()):
        failures = stage_failures(stats, label)
        parse = {r: n for r, n in failures.items() if r in PARSE_FAILURES or r == "stage_error"}
        rows.append([Code(label), count(t["completions"]), percent(t["cache_hits"], t["completions"]),
                     count(t["generated"]), count(t["tokens"]),
                     f"{t['tokens'] / t['seconds']:.1f}" if t["seconds"] > 0 else "—",
                     percent(t["truncated"], t["generated"]),
                     ", ".join(f"{r} {n:,}" for r, n in sorted(parse.items())) or "—"])
    blocks: list[Block] = [
        Heading("Synthesis"),
        Table(["stage", "completions", "cache hits", "generated", "tokens", "tokens/s", "truncated",
               "parse failures / drops"], rows),
    ]
    votes = agreement(Path(run_dir) / "shards")
    if votes is not None and votes.height:
        a = votes["agreement"].drop_nulls()
        blocks.append(Facts([("Records with an agreement (vote) score", count(len(a))),
                             ("Mean agreement", f"{a.mean():.3f}" if len(a) else "—"),
                             ("Unanimous (agreement = 1)", percent(int((a >= 1.0).sum()), len(a)))]))
    models = sorted({m for t in tallies.values() for m in t["models"]})
    blocks.append(Facts([("Generators", Code(", ".join(models)))]))
    return blocks
