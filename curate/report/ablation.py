"""Write the ablation report (report.md, a self-contained report.html, plots/ablation.png) from its result.

The page: the verdict (which arm won, by how much, whether the seeds agree), a table per arm (target
perplexity mean ± std and range over seeds, records and tokens, epochs over the arm's data, curation,
training and eval seconds), a table per run, and one figure: target loss vs training tokens, training
loss vs tokens, and the final target perplexity of every seed. Blocks and writers are the run
report's (`report.render`), so both files say the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure as MplFigure

from datamill.curate.report.render import Code, Facts, Figure, Heading, Para, Table, to_html, to_markdown

COLORS = {"raw": "#7f7f7f", "curated": "#1f77b4", "selected": "#d62728"}
DPI = 110


def plot_ablation(result: dict[str, Any], path: Path) -> Path:
    """Three panels: target loss and training loss against tokens (seeds thin, mean bold), and
    final target perplexity per seed with the arm's mean."""
    figure = MplFigure(figsize=(14, 4.2), dpi=DPI, layout="constrained")
    target_ax, train_ax, final_ax = figure.subplots(1, 3)
    for position, arm in enumerate(result["arms"]):
        name, color = arm["arm"], COLORS.get(arm["arm"], "#2ca02c")
        runs = [r for r in result["runs"] if r["arm"] == name]
        for ax, curve, field in ((target_ax, "target_curve", "loss"), (train_ax, "train_curve", "loss")):
            for run in runs:
                ax.plot([p["tokens"] for p in run[curve]], [p[field] for p in run[curve]], color=color,
                        alpha=0.35, linewidth=0.8)
            length = min(len(run[curve]) for run in runs)
            if length:
                tokens = [p["tokens"] for p in runs[0][curve][:length]]
                mean = np.mean([[p[field] for p in run[curve][:length]] for run in runs], axis=0)
                marker = "o" if curve == "target_curve" else None
                ax.plot(tokens, mean, color=color, linewidth=2, label=name, marker=marker)
        seeds_ppl = [r["target_ppl"] for r in runs]
        final_ax.scatter([position] * len(seeds_ppl), seeds_ppl, color=color, zorder=3)
        final_ax.errorbar([position], [arm["ppl_mean"]], yerr=[[arm["ppl_mean"] - arm["ppl_min"]],
                                                                [arm["ppl_max"] - arm["ppl_mean"]]],
                          color="black", capsize=6, marker="_", markersize=18)
    target_ax.set(title="Held-out target loss", xlabel="training tokens", ylabel="loss (nats/token)")
    train_ax.set(title="Training loss (each arm on its own data)", xlabel="training tokens", ylabel="loss")
    final_ax.set(title="Final target perplexity per seed", ylabel="perplexity",
                 xticks=range(len(result["arms"])), xticklabels=[a["arm"] for a in result["arms"]])
    for ax in (target_ax, train_ax):
        ax.legend()
        ax.grid(alpha=0.3)
    final_ax.grid(alpha=0.3, axis="y")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def ablation_blocks(result: dict[str, Any], plot: Path) -> list:
    target, verdict = result["target"], result["verdict"]
    model = result.get("model") or {}
    blocks = [
        Heading(f"Ablation: {result['recipe']}", 1),
        Para(verdict["text"]),
        Facts([
            ("model", Code(str(model.get("preset") or model.get("path")))),
            ("seeds per arm", ", ".join(str(s) for s in result["seeds"])),
            ("token budget per run", f"{result['arms'][0]['budget_tokens']:,}"),
            ("target text", f"{target['docs']:,} documents held out of the curated corpus; removed by id and "
                            "by normalized text from every arm, and checked disjoint"),
            ("target folder", Code(target["dir"])),
        ]),
        Heading("Arms"),
        Table(["arm", "data", "records", "tokens", "epochs", "target ppl (mean ± std)", "range",
               "curation s", "train s / run", "eval s / run"],
              [[a["title"], a["how"], f"{a['records']:,}",
                f"{a['corpus_tokens']:,}" if a["corpus_tokens"] else "—",
                f"{a['epochs']:.2f}" if a["epochs"] else "—",
                f"{a['ppl_mean']:.2f} ± {a['ppl_std']:.2f}", f"{a['ppl_min']:.2f}–{a['ppl_max']:.2f}",
                _seconds(a["curation_seconds"]), _seconds(a["train_seconds"]), _seconds(a["eval_seconds"])]
               for a in result["arms"]], numeric_from=2),
        Para("Perplexity is exp(mean cross-entropy) over every target token, packed like training rows. "
             "Cost per arm = curation seconds (raw: reading only; selected: curation + selection) plus "
             "training seconds per seed. Timings on a shared machine are noisy."),
        Heading("Runs"),
        Table(["arm", "seed", "steps", "tokens", "target loss", "target ppl", "train s"],
              [[r["arm"], str(r["seed"]), f"{r['steps']:,}", f"{r['tokens']:,}", f"{r['target_loss']:.4f}",
                f"{r['target_ppl']:.2f}", _seconds(r["train_seconds"])] for r in result["runs"]], numeric_from=1),
        Heading("Curves"),
        Figure("ablation", "Target loss and training loss against tokens; final target perplexity per seed", plot),
    ]
    return blocks


def render_ablation(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.md, report.html and plots/ablation.png under `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    plot = plot_ablation(result, out_dir / "plots" / "ablation.png")
    blocks = ablation_blocks(result, plot)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(to_markdown(blocks), encoding="utf-8")
    page.write_text(to_html(blocks, f"datamill ablation: {result['recipe']}"), encoding="utf-8")
    return {"md": md, "html": page, "plot": plot}
