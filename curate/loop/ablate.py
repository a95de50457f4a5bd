"""`datamill ablate`: does curation help? Train one model per arm × seed on the same token budget and
score every run on the same held-out target text.

Arms (each a corpus, minus the target slice):
- `raw`: the recipe's sources with no stages at all;
- `curated`: the recipe's `stages` (the curate phase of the loop);
- `selected`: curated (+ `synth`), then the recipe's `select` stages; without a `select` section,
  DSIR (`curate/selection/dsir.py`) keeps `ablate.select_budget` of the curated corpus, resampled
  toward the target text.

The target is carved from the curated corpus before anything trains (see `loop.carve_target`) and
removed, by id and by normalized text, from every arm; `loop.assert_disjoint` checks each arm's data.
Same model config, same `tokens`/`max_steps`, same seeds (`ablate.seeds`) for every arm: only the data
differs. Every run and every corpus is resumable; the report goes to `<output.dir>/ablate/`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from datamill.curate.loop.loop import (
    TARGET_FILE, AblateSpec, EvalSpec, LoopError, LoopLayout, corpus_source, data_phases, digest, eval_phase,
    finished, mark, run_stages, stage_run, train_config, train_phase, without_target,
)

ARM_TITLES = {"raw": "raw (sources, no stages)", "curated": "curated (recipe stages)",
              "selected": "curated + selection"}


def default_selection(target_dir: Path, spec: AblateSpec) -> list[dict]:
    """DSIR toward the target text, keeping `select_budget` of the curated documents."""
    return [{"type": "dsir", "target": {"type": "parquet", "path": str((target_dir / TARGET_FILE).resolve())},
             "budget": {"fraction": spec.select_budget}, "min_words": spec.select_min_words}]


def arm_corpora(recipe, root: Path, spec: AblateSpec, *, workers, resume: bool, log) -> tuple[dict, dict]:
    """{arm: (corpus dir, curation seconds, selection description)} and the data phases' markers."""
    done = data_phases(recipe, workers=workers, resume=resume, log=log)
    curate_s = done["curate"]["seconds"]
    arms: dict[str, tuple[Path, float, str]] = {}
    if "raw" in spec.arms:
        raw = stage_run(recipe, "raw", recipe.sources, [], root / "raw" / "corpus")
        made = run_stages(raw, "raw corpus", root / "raw" / "corpus.done.json", workers=workers, resume=resume, log=log)
        arms["raw"] = (Path(made["dir"]), made["seconds"], "no stages")
    if "curated" in spec.arms:
        arms["curated"] = (Path(done["curate"]["dir"]), curate_s, f"{len(recipe.stages)} recipe stage(s)")
    if "selected" in spec.arms:
        if recipe.section("select") is not None:
            extra = sum(done[name]["seconds"] for name in ("synth", "select") if name in done)
            names = ", ".join(s["type"] for s in recipe.section("select").stages)
            arms["selected"] = (Path(done[done["last"]]["dir"]), curate_s + extra, f"recipe select: {names}")
        else:
            stages = default_selection(LoopLayout(recipe).target, spec)
            source = corpus_source(Path(done["curate"]["dir"]), recipe.output.format, "curated")
            run = stage_run(recipe, "selected", [source], stages, root / "selected" / "corpus")
            made = run_stages(run, "selected corpus", root / "selected" / "corpus.done.json", workers=workers,
                              resume=resume, log=log)
            arms["selected"] = (Path(made["dir"]), curate_s + made["seconds"],
                                f"dsir toward the target, budget {spec.select_budget:g}")
    return arms, done


def corpus_tokens(data_dir: Path) -> int | None:
    """Training tokens of an arm's data, from the trainer's token cache (None before it exists)."""
    metas = sorted((data_dir / "tokens").glob("*/meta.json"))
    return json.loads(metas[-1].read_text())["splits"]["train"]["tokens"] if metas else None


def run_ablation(recipe, *, workers: int | None = None, resume: bool = True, log: Callable = print) -> dict:
    """Build every arm's corpus, train every arm × seed, score each on the target; write the report."""
    from datamill.curate.report.ablation import render_ablation

    if recipe.section("train") is None:
        raise LoopError(f"{recipe.name}: `datamill ablate` needs a `train:` section (model, seq_len, tokens)")
    spec = recipe.section("ablate") or AblateSpec()
    recipe = recipe.with_sections(eval=recipe.section("eval") or EvalSpec())
    train_spec, eval_spec = recipe.section("train"), recipe.section("eval")
    root = Path(recipe.output.dir) / "ablate"
    if not resume:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    corpora, done = arm_corpora(recipe, root, spec, workers=workers, resume=resume, log=log)
    target_dir = LoopLayout(recipe).target
    runs, arms = [], []
    for arm, (corpus, curation_s, how) in corpora.items():
        data_dir, marker = root / arm / "data", root / arm / "data.done.json"
        key = digest({"corpus": str(corpus), "target": done["target"]["key"],
                      "made": json.loads((corpus / "state" / "recipe.json").read_text())["fingerprint"]})
        data = finished(marker, key) or mark(marker, key, **without_target(corpus, target_dir, data_dir))
        log(f"{arm}: {data['records']:,} training records ({data['dropped_as_target']} dropped as target)")
        arm_runs = []
        for seed in spec.seeds:
            cfg = train_config(train_spec, data_dir, root / arm / f"seed-{seed}", eval_spec, seed=seed)
            trained = train_phase(cfg, root / arm / f"seed-{seed}.train.json", resume=resume, log=log)
            scored = eval_phase(cfg, target_dir, eval_spec, root / arm / f"seed-{seed}.eval.json", resume=resume,
                                log=log, keep_last_checkpoint=False)
            arm_runs.append({"arm": arm, "seed": seed, "steps": trained["steps"], "tokens": trained["tokens"],
                             "train_seconds": trained["seconds"], "eval_seconds": scored["seconds"],
                             "target_loss": scored["final"]["loss"], "target_ppl": scored["final"]["ppl"],
                             "target_curve": scored["curve"], "train_curve": trained["curve"]})
        runs += arm_runs
        ppl = np.array([r["target_ppl"] for r in arm_runs])
        available = corpus_tokens(data_dir)
        arms.append({"arm": arm, "title": ARM_TITLES[arm], "how": how, "records": data["records"],
                     "corpus_tokens": available, "budget_tokens": arm_runs[0]["tokens"],
                     "epochs": arm_runs[0]["tokens"] / available if available else None,
                     "ppl_mean": float(ppl.mean()), "ppl_std": float(ppl.std(ddof=1)),
                     "ppl_min": float(ppl.min()), "ppl_max": float(ppl.max()),
                     "loss_mean": float(np.mean([r["target_loss"] for r in arm_runs])),
                     "curation_seconds": curation_s,
                     "train_seconds": float(np.mean([r["train_seconds"] for r in arm_runs])),
                     "eval_seconds": float(np.mean([r["eval_seconds"] for r in arm_runs]))})
    result = {"recipe": recipe.name, "seeds": spec.seeds, "model": train_spec.get("model"),
              "seq_len": train_spec.get("seq_len"), "target": {**done["target"], "dir": str(target_dir)},
              "arms": arms, "runs": runs, "verdict": verdict(arms)}
    (root / "ablation.json").write_text(json.dumps(result, indent=2))
    result["report"] = {k: str(v) for k, v in render_ablation(result, root).items()}
    return result


def verdict(arms: list[dict]) -> dict:
    """Which arm has the lowest mean target perplexity, by how much, and whether the seeds agree."""
    ranked = sorted(arms, key=lambda a: a["ppl_mean"])
    best, runner_up = ranked[0], ranked[1]
    gain = 100 * (runner_up["ppl_mean"] - best["ppl_mean"]) / runner_up["ppl_mean"]
    clear = best["ppl_max"] < runner_up["ppl_min"]
    by_arm = {a["arm"]: a for a in arms}
    vs_raw = None
    if "raw" in by_arm and best["arm"] != "raw":
        vs_raw = 100 * (by_arm["raw"]["ppl_mean"] - best["ppl_mean"]) / by_arm["raw"]["ppl_mean"]
    text = (f"{best['arm']} won: target perplexity {best['ppl_mean']:.2f} vs {runner_up['ppl_mean']:.2f} for "
            f"{runner_up['arm']} ({gain:.1f}% lower); "
            + ("every seed of the winner beat every seed of the runner-up." if clear else
               "the seed ranges overlap, so the gap is within the seed-to-seed spread."))
    if vs_raw is not None and runner_up["arm"] != "raw":
        text += f" Against raw data: {vs_raw:.1f}% lower perplexity."
    return {"winner": best["arm"], "runner_up": runner_up["arm"], "gain_percent": gain, "clear": clear,
            "vs_raw_percent": vs_raw, "text": text}
