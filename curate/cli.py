"""The `datamill` command line: run, validate, stages, report, loop, ablate, train."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from datamill.recipes import builtin_recipe_names
from datamill.train.cli import train as train_command

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="datamill: curate, synthesize, select and train on LLM data from one recipe.")
console = Console(stderr=True)


class ExecutorType(str, Enum):
    """The `--executor` choices (recipe key `executor.type`)."""

    local = "local"
    ray = "ray"


DAMAGE_REASONS = ("truncated_file", "corrupt_file", "missing_file")
"""Quarantine reasons that stand for a whole damaged input file; the summary line names them."""

RECIPE_HELP = "Recipe file, or the name of a built-in recipe: " + ", ".join(builtin_recipe_names())


@app.command()
def run(
    recipe: str = typer.Argument("quickstart", help=RECIPE_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="Worker processes (default: cores)."),
    resume: bool = typer.Option(True, "--resume/--fresh", help="Skip finished shards, or start over."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Read at most N records per source."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Override output.dir."),
    executor: Optional[ExecutorType] = typer.Option(
        None, "--executor", "-e", help="Override executor.type (default: the recipe's, else local)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (`auto`, "
                                          "`ray://head:10001`); implies --executor ray."),
    strict: bool = typer.Option(False, "--strict", help="Exit 3 when anything was quarantined (for CI)."),
) -> None:
    """Run a recipe: read sources, apply stages, write the corpus and its report."""
    from datamill.curate.executors.run import RunError, run_recipe

    overrides = {}
    if limit is not None:
        overrides["sources.*.limit"] = limit
    if output is not None:
        overrides["output.dir"] = output
    if address is not None and executor is ExecutorType.local:
        console.print("[red]error:[/] --address is for the ray executor; drop it or use --executor ray")
        raise typer.Exit(2)
    if executor is not None or address is not None:
        overrides["executor.type"] = executor.value if executor else "ray"
    if address is not None:
        overrides["executor.address"] = address
    parsed = _load_or_exit(recipe, overrides)
    console.print(f"[bold]datamill[/] running [cyan]{parsed.name}[/] → {parsed.output.dir}")
    try:
        with _ProgressDisplay() as display:
            stats = run_recipe(parsed, workers=workers, resume=resume, progress=display.update)  # local or ray
    except RunError as err:
        console.print(f"[red]error:[/] {escape(str(err))}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        _interrupted()
    _print_summary(stats)
    if strict and stats["quarantine"]["total"]:
        console.print(f"[red]error:[/] {stats['quarantine']['total']:,} record(s) quarantined and --strict is set")
        raise typer.Exit(3)


@app.command()
def validate(recipe: str = typer.Argument(..., help=RECIPE_HELP)) -> None:
    """Check a recipe without running it."""
    parsed = _load_or_exit(recipe, {})
    Console().print(f"[green]ok[/] {parsed.name}: {len(parsed.sources)} source(s), {len(parsed.stages)} stage(s) "
                  f"→ {parsed.output.dir}")


@app.command()
def stages() -> None:
    """List the stage and source types a recipe can use, with their parameters."""
    from datamill.curate.engine.registry import source_types, stage_types
    from datamill.curate.engine.stage import describe_params

    out = Console()
    for title, table_of_types in (("Stages", stage_types()), ("Sources", source_types())):
        out.rule(title)
        for name, cls in table_of_types.items():
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            table = Table(title=f"[bold]{name}[/] — {escape(doc)}", title_justify="left", show_edge=False)
            for column in ("parameter", "type", "default", "description"):
                table.add_column(column)
            for row in describe_params(cls.Params):
                if row["name"] == "type":
                    continue
                default = "required" if row["required"] else repr(row["default"])
                table.add_row(*(escape(text) for text in (row["name"], row["type"], default, row["description"])))
            out.print(table)


@app.command()
def report(run_dir: str = typer.Argument(..., help="A run directory or its URL (s3://…; holds stats.json).")) -> None:
    """Render report.md and report.html again from a run's stats.json."""
    from datamill.curate.report.render import render_report

    from datamill.curate.engine.layout import RunLayout

    layout = RunLayout(run_dir)
    if not layout.exists(layout.root / "stats.json"):
        console.print(f"[red]error:[/] {run_dir.rstrip('/')}/stats.json not found: is {run_dir} a finished run?")
        raise typer.Exit(1)
    paths = render_report(run_dir)
    console.print(f"report: {paths['html']}\n        {paths['md']}")


class ExportFormat(str, Enum):
    """The `datamill export --format` choices."""

    megatron = "megatron"
    nanotron = "nanotron"
    hf = "hf"


@app.command()
def export(
    run_dir: str = typer.Argument(..., help="A run directory or its URL (s3://…; its shards/), or a folder of "
                                  "parquet/jsonl files."),
    format: ExportFormat = typer.Option(..., "--format", "-f", help="megatron: .bin/.idx indexed dataset; nanotron: "
                                        "datatrove .ds token shards; hf: parquet + README dataset card."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (must be empty or an earlier export)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", "-t", help="Tokenizer or model folder, or a "
                                            "built-in name (default: smollm2-135m). Not used by hf."),
    data_format: str = typer.Option("auto", "--data-format", help="Records: text, messages, prompt_completion "
                                    "or auto (from the columns)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export in --out."),
) -> None:
    """Export a finished run's corpus for another trainer: Megatron-LM, nanotron/datatrove or the HF hub."""
    from datamill.curate.export.run import ExportError, export_run

    try:
        manifest = export_run(run_dir, format.value, out, tokenizer=tokenizer, data_format=data_format,
                              overwrite=overwrite, log=lambda text: console.print(escape(text)))
    except ExportError as err:
        console.print(f"[red]error:[/] {escape(str(err))}", highlight=False)
        raise typer.Exit(1) from None
    tokens = f", {manifest['tokens']:,} tokens" if "tokens" in manifest else ""
    console.print(f"[green]exported[/] {manifest['documents']:,} documents{tokens} as {format.value} → {out}")


@app.command()
def loop(
    recipe: str = typer.Argument(..., help=RECIPE_HELP),
    resume: bool = typer.Option(True, "--resume/--fresh", help="Skip finished phases, or start over."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Read at most N records per source."),
) -> None:
    """Run every phase of a recipe: curate → synth → select → train → eval; finished phases are skipped."""
    from datamill.curate.loop.loop import run_loop

    done = _run_phases(run_loop, recipe, resume, limit)
    if "eval" in done:
        console.print(f"[green]done[/]: target perplexity {done['eval']['final']['ppl']:.2f}")


@app.command()
def ablate(
    recipe: str = typer.Argument(..., help=RECIPE_HELP),
    resume: bool = typer.Option(True, "--resume/--fresh", help="Skip finished corpora and runs, or start over."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Read at most N records per source."),
) -> None:
    """Does curation help? Train on raw, curated and selected data (same budget, ≥2 seeds); compare on target text."""
    from datamill.curate.loop.ablate import run_ablation

    result = _run_phases(run_ablation, recipe, resume, limit)
    console.print(f"[green]done[/]: {result['verdict']['text']}\nreport: {result['report']['html']}")


def _run_phases(runner, recipe: str, resume: bool, limit: Optional[int]) -> dict:
    from datamill.curate.executors.run import RunError
    from datamill.curate.loop.loop import LoopError

    parsed = _load_or_exit(recipe, {"sources.*.limit": limit} if limit is not None else {})
    try:
        return runner(parsed, resume=resume, log=console.print)
    except (LoopError, RunError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        _interrupted()


app.command("train")(train_command)

classifier_app = typer.Typer(no_args_is_help=True, help="Text classifiers: train one (fastText or embeddings + a "
                             "linear head); score with the `classifier` stage.")
app.add_typer(classifier_app, name="classifier")


@classifier_app.command("train")
def classifier_train(config: Path = typer.Argument(..., help="Training config (YAML): sources, kind, out.")) -> None:
    """Train a quality/safety classifier; writes model + card.json and prints the held-out metrics."""
    from pydantic import ValidationError

    from datamill.filters.classifier_train import metrics_rows, train_from_config

    try:
        card = train_from_config(config)
    except (ValidationError, ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}", highlight=False)
        raise typer.Exit(2) from None
    table = Table(title=f"{card['kind']} {card['task']}: held-out metrics ({card['counts']['holdout']} rows)",
                  title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics_rows(card):
        table.add_row(escape(name), escape(value))
    Console().print(table)
    console.print(f"[green]done[/] in {card['seconds']:.1f}s: {card['counts']['fit']:,} training rows → "
                  f"{escape(str(Path(card['out'])))}")


def _load_or_exit(recipe: str, overrides: dict):
    from datamill.curate.engine.recipe import RecipeError, load_recipe

    try:
        return load_recipe(recipe, overrides)
    except RecipeError as err:
        console.print(f"[red]error:[/] {escape(str(err))}", highlight=False)
        raise typer.Exit(2) from None


class _ProgressDisplay:
    """A rich progress bar per segment with shards done and records/s."""

    def __init__(self):
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("shards · {task.fields[records]:,} records · {task.fields[rate]:,.0f} rec/s"),
            TimeElapsedColumn(), console=console, disable=not console.is_terminal,
        )
        self.tasks: dict[str, tuple[int, float, int]] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def update(self, phase: str, done: int, total: int, records: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = (self.progress.add_task(phase, total=total, records=0, rate=0.0), time.perf_counter(), 0)
        task, started, seen = self.tasks[phase]
        seen += records
        self.tasks[phase] = (task, started, seen)
        rate = seen / max(time.perf_counter() - started, 1e-6)
        self.progress.update(task, completed=done, records=seen, rate=rate)


def _print_summary(stats: dict) -> None:
    out = stats["output"]
    q = stats["quarantine"]["total"]
    read = sum(s["records_read"] for s in stats["sources"])
    damaged = {reason: n for reason, n in stats["quarantine"]["by_reason"].items() if reason in DAMAGE_REASONS}
    damage_note = f" ({', '.join(f'{n:,} {reason}' for reason, n in damaged.items())})" if damaged else ""
    console.print(
        f"[green]done[/] in {stats['seconds']:.1f}s: {read:,} read → {out['records']:,} kept "
        f"({out['tokens']:,} tokens) in {out['files']} file(s); {q:,} quarantined{damage_note}"
    )
    root = stats["run_dir"].rstrip("/")  # a path or an object-store URL
    if out["files"]:
        console.print(f"corpus: {root}/shards")
    else:
        console.print("corpus: [yellow]no records were kept[/], so no shard files were written")
    console.print(f"report: {root}/report.html")


def _interrupted() -> None:
    """Ctrl-C: say what was kept and how to go on; exit 130 like any interrupted command."""
    console.print("[yellow]interrupted[/]: finished shards are kept; run the same command again to resume")
    raise typer.Exit(130)


def main() -> None:
    app()
