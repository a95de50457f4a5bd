"""`datamill train CONFIG`: the typer sub-app that runs training from a YAML file.

Run it alone with `python -m datamill.train.cli CONFIG`, or under torchrun:
`torchrun --nproc_per_node 2 -m datamill.train.cli CONFIG`.
"""

from __future__ import annotations

import os
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False)
console = Console(stderr=True)


@app.command()
def train(
    config: str = typer.Argument(..., help="Training YAML, or a recipe with a `train:` section."),
    out_dir: Optional[str] = typer.Option(None, "--out", "-o", help="Override out_dir."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Override the length of the run."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore existing checkpoints in out_dir."),
) -> None:
    """Train a causal LM on a corpus: pretraining from a preset, or fine-tuning a model folder."""
    import yaml

    from pathlib import Path

    from datamill.curate.engine.recipe import builtin_recipe_names, resolve_recipe_path
    from datamill.train.config import TrainConfigError, load_config
    from datamill.train.loop import train as run_training

    if not Path(config).exists() and config.removesuffix(".yaml") in builtin_recipe_names():
        config = str(resolve_recipe_path(config))  # a shipped recipe by name, e.g. `datamill train preference`
    try:
        cfg = load_config(config)
    except TrainConfigError as err:
        console.print(f"[red]invalid training config[/] {config}:\n{err}")
        raise typer.Exit(2) from None
    changes = {}
    if out_dir is not None:
        changes["out_dir"] = out_dir
    if max_steps is not None:
        changes.update(max_steps=max_steps, tokens=None)
    if fresh:
        changes["resume"] = False
    if changes:
        cfg = load_config({**cfg.model_dump(), **changes})
    try:
        result = run_training(cfg)
    except TrainConfigError as err:  # a setting this device cannot honour (checked before any work)
        console.print(f"[red]training config not runnable here[/] {config}:\n{err}")
        raise typer.Exit(2) from None
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for all
        return
    if result.interrupted:
        console.print(f"stopped by SIGTERM at step {result.steps}; resume with the same command ({result.checkpoint})")
        return
    summary = {"steps": result.steps, "train_loss": result.train_loss, "eval_loss": result.eval_loss,
               "eval_ppl": result.eval_ppl, "tokens_per_s": result.tokens_per_s, "mfu": result.mfu,
               "model": str(result.final_dir) if result.final_dir else None}
    console.print(yaml.safe_dump(summary, sort_keys=False).strip())


if __name__ == "__main__":
    app()
