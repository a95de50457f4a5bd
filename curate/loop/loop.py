"""Chain a recipe's phases: curate → target → synth → select → train data → train → eval, resumably.

A recipe with only `sources`/`stages`/`output` is a plain curation run. Optional sections add phases,
each reading the previous phase's output folder:

- `synth: {stages: [...]}` and `select: {stages: [...]}` run more stages over the curated shards
  (through the same executor, so barriers like `dsir` and shard-level resume work as in `datamill run`);
- `eval: {...}` carves a held-out *target* slice out of the curated corpus (by a seeded hash of the
  record id) before anything trains; every training corpus drops those ids and any text equal to a
  target text, and the loop asserts the two are disjoint;
- `train: {...}` is the trainer's own config (see `datamill.train.config`); its `data.path` is set to
  the last data phase, minus the target;
- `eval` then scores the trained model's checkpoints on the target text (loss and perplexity curve);
- `rest_em: {...}` and `llm2llm: {...}` run those self-improvement loops (see `datamill.synth.rest_em`,
  `datamill.synth.llm2llm`) under `phases/<name>/` unless they name their own `out_dir`.

Everything lands under `<output.dir>/phases/`. A finished phase leaves `<phase>.done.json` holding a hash
of what decided it; a re-run skips it, or refuses when the recipe changed (use `fresh=True`).
The curate output (`<output.dir>/shards`) and the recipe fingerprint are the same as `datamill run`'s.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from datamill.curate.engine.recipe import RecipeSection, register_section, stage_entry_problems
from datamill.curate.engine.store import is_remote
from datamill.synth.llm2llm import LLM2LLMConfig, run_llm2llm
from datamill.synth.rest_em import RestEMConfig, run_rest_em

TARGET_FILE = "target.parquet"


class LoopError(RuntimeError):
    """A loop that cannot run or continue; the message says which phase and what to do."""


class PhaseSpec(BaseModel):
    """More stages over the previous phase's corpus (synthesis or selection)."""

    model_config = ConfigDict(extra="forbid")

    stages: list[dict[str, Any]] = Field(min_length=1, description="Stage entries, exactly like `stages`.")


class EvalSpec(BaseModel):
    """The held-out target text and how the trained model is scored on it."""

    model_config = ConfigDict(extra="forbid")

    target_fraction: float = Field(0.05, gt=0, le=0.5, description="Share of curated records held out as target.")
    max_target_docs: int = Field(400, ge=1, description="At most this many target documents.")
    points: int = Field(4, ge=1, description="Checkpoints along training scored on the target (the last included).")
    batch_rows: int = Field(8, ge=1, description="Packed rows per eval forward pass.")


class AblateSpec(BaseModel):
    """`datamill ablate`: the same model and token budget on raw, curated and selected data."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=2, description="Training seeds per arm.")
    arms: list[Literal["raw", "curated", "selected"]] = Field(
        default_factory=lambda: ["raw", "curated", "selected"], min_length=2, description="Arms to train.")
    select_budget: float = Field(0.5, gt=0, le=1, description="Without a `select` section: DSIR keeps this "
                                 "fraction of the curated corpus, resampled toward the target.")
    select_min_words: int = Field(20, ge=0, description="Without a `select` section: DSIR's min_words.")


def train_section_problems(section: Any, where: str) -> list[str]:
    """`key.path: problem` lines for the train section (the trainer's own config, data set later)."""
    from datamill.train.config import TrainConfig, format_validation_error

    if not isinstance(section, dict):
        return [f"{where}: expected a mapping of training settings, got {type(section).__name__}"]
    data = {"path": "<set by the loop>", **(section.get("data") or {})}
    try:
        TrainConfig.model_validate({**section, "data": data})
    except ValidationError as err:
        return format_validation_error(err, where).splitlines()
    return []


def phase_stage_problems(section: Any, where: str) -> list[str]:
    """Each stage entry of a `synth:`/`select:` section checked like the recipe's own `stages`."""
    return stage_entry_problems(section.get("stages"), f"{where}.stages") if isinstance(section, dict) else []


for _phase in ("synth", "select"):
    register_section(_phase, RecipeSection(PhaseSpec, phase_stage_problems, "more stages after curation"))
register_section("train", RecipeSection(None, train_section_problems, "datamill.train's config; data comes from the loop"))
register_section("eval", RecipeSection(EvalSpec, None, "held-out target text and how the model is scored"))
register_section("ablate", RecipeSection(AblateSpec, None, "`datamill ablate`: raw vs curated vs selected"))
register_section("rest_em", RecipeSection(RestEMConfig, None, "ReST-EM: sample, keep verified solutions, fine-tune, repeat"))
register_section("llm2llm", RecipeSection(LLM2LLMConfig, None, "LLM2LLM: the teacher augments what the student gets wrong"))


# ---- folders and markers ------------------------------------------------------------------------


class LoopLayout:
    """Where each phase of a recipe's loop writes."""

    def __init__(self, recipe):
        if is_remote(recipe.output.dir):
            raise LoopError(f"output.dir {recipe.output.dir!r}: `datamill loop` needs a local folder (its training "
                            "phases write checkpoints there); object-store run dirs are for `datamill run`")
        self.curated = Path(recipe.output.dir)
        self.root = self.curated / "phases"

    def phase(self, name: str) -> Path:
        return self.root / name

    @property
    def target(self) -> Path:
        return self.root / "target"

    def marker(self, name: str) -> Path:
        return self.root / f"{name}.done.json"


def digest(content: Any) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished(marker: Path, key: str) -> dict | None:
    """The marker's content if the phase finished with the same inputs; LoopError if they changed."""
    if not marker.exists():
        return None
    done = json.loads(marker.read_text())
    if done.get("key") != key:
        raise LoopError(f"{marker.parent}: phase {marker.name.removesuffix('.done.json')!r} finished with "
                        "different settings; re-run with --fresh to redo the loop")
    return done


def mark(marker: Path, key: str, **content: Any) -> dict:
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, **content}, indent=2, default=str))
    tmp.replace(marker)
    return json.loads(marker.read_text())


# ---- data phases ---------------------------------------------------------------------------------


def shard_files(run_dir: Path) -> list[Path]:
    files = sorted((run_dir / "shards").glob("*.parquet")) + sorted((run_dir / "shards").glob("*.jsonl*"))
    if not files:
        raise LoopError(f"{run_dir}: no corpus shards; did the phase that writes it finish?")
    return files


def corpus_source(run_dir: Path, output_format: str, name: str) -> dict[str, Any]:
    """A source entry that reads a finished run's shards back, keeping their ids."""
    kind, pattern = ("parquet", "*.parquet") if output_format == "parquet" else ("jsonl", f"*.{output_format}")
    return {"type": kind, "name": name, "path": str((run_dir / "shards" / pattern).resolve()), "id_field": "id"}


def stage_run(recipe, name: str, sources: list[dict], stages: list[dict], out_dir: Path):
    """A recipe that runs `stages` over `sources` into `out_dir`, with the parent's seed and executor.
    The recipe's own sources keep reading relative paths from the recipe file's folder; phases
    that read earlier phases' output (absolute paths) resolve stage paths, like `output.dir`,
    from the current directory."""
    from datamill.curate.engine.recipe import validate_recipe

    run = validate_recipe({
        "name": f"{recipe.name}-{name}", "seed": recipe.seed, "sources": sources, "stages": stages,
        "output": {"dir": str(out_dir), "format": recipe.output.format, "shard_rows": recipe.output.shard_rows},
        "executor": recipe.executor.model_dump(mode="json", exclude_none=True),
    }, where=f"{recipe.name}: {name} phase")
    if sources is recipe.sources:
        run._base_dir = recipe._base_dir
    return run


def run_stages(recipe, name: str, marker: Path, *, workers: int | None, resume: bool, log) -> dict:
    """Run a curation recipe (resumable shard by shard) unless its marker says it is done."""
    from datamill.curate.executors.run import run_recipe

    key = recipe.fingerprint()
    done = finished(marker, key) if resume else None
    if done is not None:
        log(f"{name}: done already ({done['records']:,} records), skipped")
        return done
    log(f"{name}: running {len(recipe.stages)} stage(s) → {recipe.output.dir}")
    stats = run_recipe(recipe, workers=workers, resume=resume)
    return mark(marker, key, records=stats["output"]["records"], tokens=stats["output"]["tokens"],
                seconds=stats["seconds"], dir=recipe.output.dir)


def text_key():
    """Text compared for target leaks: lowercased, whitespace runs collapsed, ends stripped."""
    import polars as pl

    return pl.col("text").str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()


def carve_target(curated: Path, target_dir: Path, spec: EvalSpec, seed: int) -> dict:
    """Write the target slice of the curated corpus: records whose seeded id hash falls in the
    first `target_fraction` of the hash range, at most `max_target_docs` of them (by id order)."""
    import polars as pl

    frame = pl.concat([_read(f).select("id", "text") for f in shard_files(curated)])
    cut = int(spec.target_fraction * 2**32)
    target = (frame.filter((pl.col("id").hash(seed) % 2**32) < cut).sort("id").head(spec.max_target_docs)
              .filter(pl.col("text").str.strip_chars() != ""))
    if target.height == 0:
        raise LoopError(f"{curated}: the target slice is empty ({frame.height} curated records × "
                        f"target_fraction {spec.target_fraction}); raise eval.target_fraction or read more data")
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = target_dir / f".{TARGET_FILE}"
    target.write_parquet(tmp)
    tmp.replace(target_dir / TARGET_FILE)
    return {"docs": target.height, "chars": int(target["text"].str.len_chars().sum())}


def _read(path: Path):
    import polars as pl

    return pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path)


def without_target(corpus: Path, target_dir: Path, out_dir: Path) -> dict:
    """Write `corpus` minus every target id and every text equal to a target text (after `text_key`)
    to `out_dir/part-00000.parquet`, then read it back and assert no target record is in it."""
    import polars as pl

    target = pl.read_parquet(target_dir / TARGET_FILE).with_columns(text_key().alias("_key"))
    frame = pl.concat([_read(f) for f in shard_files(corpus)], how="diagonal_relaxed")
    keep = frame.filter(~pl.col("id").is_in(target["id"].implode())
                        & ~text_key().is_in(target["_key"].implode()))
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".part-00000.parquet"
    keep.write_parquet(tmp)
    tmp.replace(out_dir / "part-00000.parquet")
    assert_disjoint(out_dir, target_dir)
    return {"records": keep.height, "dropped_as_target": frame.height - keep.height}


def assert_disjoint(train_dir: Path, target_dir: Path) -> None:
    """Raise LoopError if any training record has a target id or a target text."""
    import polars as pl

    target = pl.read_parquet(target_dir / TARGET_FILE).with_columns(text_key().alias("_key"))
    train = pl.read_parquet(sorted(train_dir.glob("*.parquet"))).with_columns(text_key().alias("_key"))
    shared_ids = train.join(target, on="id", how="semi").height
    shared_texts = train.join(target, on="_key", how="semi").height
    if shared_ids or shared_texts:
        raise LoopError(f"{train_dir}: {shared_ids} target ids and {shared_texts} target texts are in the "
                        f"training data; the target ({target_dir}) must never be trained on")


# ---- train and eval ------------------------------------------------------------------------------


def train_config(section: dict, data_dir: Path, out_dir: Path, eval_spec: EvalSpec | None, seed: int | None = None):
    """The TrainConfig of a loop's train phase: data from `data_dir`, checkpoints for the eval curve."""
    from datamill.train.config import load_config

    if (section.get("data") or {}).get("path"):
        raise LoopError("train.data.path: leave it unset; the loop trains on its previous phase's output")
    doc = {**section, "data": {**(section.get("data") or {}), "path": str(data_dir)}, "out_dir": str(out_dir)}
    if seed is not None:
        doc["seed"] = seed
    if eval_spec is not None:
        doc["data"].setdefault("eval_holdout", 0.0)  # the target is the held-out text
        steps = load_config(doc).steps_for(1)
        doc["checkpoint_every"] = max(1, math.ceil(steps / eval_spec.points))
        doc["keep_checkpoints"] = eval_spec.points + 1
    return load_config(doc)


def train_phase(cfg, marker: Path, *, resume: bool, log) -> dict:
    """Train (resuming from the newest checkpoint) unless the marker says this config finished."""
    from datamill.train import train

    key = digest(cfg.model_dump(mode="json"))
    done = finished(marker, key) if resume else None
    if done is not None:
        log(f"train: done already ({done['steps']} steps), skipped")
        return done
    if not resume:
        shutil.rmtree(cfg.out_dir, ignore_errors=True)
    log(f"train: {cfg.steps_for(1)} steps on {cfg.data.path} → {cfg.out_dir}")
    started = time.perf_counter()
    result = train(cfg)
    if result.interrupted:
        raise LoopError(f"train stopped at step {result.steps} (SIGTERM); re-run to resume from {result.checkpoint}")
    return mark(marker, key, steps=result.steps, tokens=result.steps * cfg.tokens_per_step(1),
                seconds=round(time.perf_counter() - started, 3), train_loss=result.train_loss,
                tokens_per_s=result.tokens_per_s, out_dir=str(cfg.out_dir), curve=train_curve(Path(cfg.out_dir)))


def train_curve(out_dir: Path) -> list[dict]:
    """(step, tokens, loss) of every logged training step in out_dir/log.jsonl."""
    from datamill.train.metrics import read_run_log

    return [{"step": r["step"], "tokens": r["tokens"], "loss": r["loss"]}
            for r in read_run_log(out_dir) if r.get("kind") == "train"]


def target_eval(cfg, target_dir: Path, batch_rows: int) -> list[dict]:
    """Held-out loss and perplexity on the target text of every checkpoint in cfg.out_dir, by step."""
    import numpy as np
    import torch

    from datamill.train.checkpoint import NAME, checkpoint_dir, load_checkpoint
    from datamill.train.data import PackedRows, tokenize_corpus
    from datamill.train.model import DEFAULT_TOKENIZER, LossModel, attention_mask_for, build_model, load_tokenizer

    checkpoints = sorted(p for p in checkpoint_dir(Path(cfg.out_dir)).glob("step-*.pt") if NAME.match(p.name))
    if not checkpoints:
        raise LoopError(f"{cfg.out_dir}: no checkpoints to evaluate")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path or DEFAULT_TOKENIZER)
    split = tokenize_corpus(target_dir, tokenizer, eval_holdout=0.0, log=lambda *_: None)["train"]
    rows = PackedRows(split, cfg.seq_len)
    model = LossModel(build_model(cfg.model, tokenizer, "sdpa", cfg.seed)).to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    curve = []
    for path in checkpoints:
        state = load_checkpoint(path)
        model.load_state_dict(state["model"])
        total, count = 0.0, 0.0
        with torch.no_grad(), autocast:
            for start in range(0, rows.n_rows, batch_rows):
                t = rows.batch(np.arange(start, min(start + batch_rows, rows.n_rows))).to_torch(device)
                mask = attention_mask_for(t["doc_ids"], "sdpa")
                total += float(model(t["input_ids"], t["position_ids"], mask, t["targets"], t["learned"], True))
                count += float(t["learned"].sum())
        loss = total / max(count, 1.0)
        curve.append({"step": state["step"], "tokens": state["step"] * cfg.tokens_per_step(1), "loss": loss,
                      "ppl": math.exp(min(loss, 50)), "target_tokens": int(count)})
    return curve


def eval_phase(cfg, target_dir: Path, spec: EvalSpec, marker: Path, *, resume: bool, log,
               keep_last_checkpoint: bool = True) -> dict:
    """Score the checkpoints on the target; then drop all but the newest (or all) checkpoints."""
    from datamill.train.checkpoint import checkpoint_dir

    key = digest({"train": cfg.model_dump(mode="json"), "eval": spec.model_dump()})
    done = finished(marker, key) if resume else None
    if done is not None:
        log(f"eval: done already (target ppl {done['final']['ppl']:.2f}), skipped")
        return done
    started = time.perf_counter()
    curve = target_eval(cfg, target_dir, spec.batch_rows)
    last = curve[-1]
    log(f"eval: target loss {last['loss']:.4f}, ppl {last['ppl']:.2f} ({last['target_tokens']:,} tokens)")
    done = mark(marker, key, curve=curve, final=curve[-1], seconds=round(time.perf_counter() - started, 3))
    folder = checkpoint_dir(Path(cfg.out_dir))
    for path in sorted(folder.glob("step-*.pt"))[: -1 if keep_last_checkpoint else None]:
        path.unlink()
    return done


# ---- the loop ------------------------------------------------------------------------------------


def data_phases(recipe, *, workers: int | None = None, resume: bool = True, log: Callable = print) -> dict:
    """Curate, carve the target (with `eval`), then synth and select; returns each phase's marker."""
    layout = LoopLayout(recipe)
    if not resume:
        shutil.rmtree(layout.root, ignore_errors=True)
    plain = recipe.with_sections(**{name: None for name in recipe.sections})
    target_spec = recipe.section("eval")
    done = {"curate": run_stages(plain, "curate", layout.marker("curate"), workers=workers, resume=resume, log=log)}
    if target_spec is not None:
        key = digest({"curate": done["curate"]["key"], "eval": target_spec.model_dump(), "seed": recipe.seed})
        done["target"] = finished(layout.marker("target"), key) or mark(
            layout.marker("target"), key, **carve_target(layout.curated, layout.target, target_spec, recipe.seed))
        log(f"target: {done['target']['docs']} held-out documents in {layout.target / TARGET_FILE}")
    previous = layout.curated
    for name in ("synth", "select"):
        spec = recipe.section(name)
        if spec is None:
            continue
        sources = [corpus_source(previous, recipe.output.format, name)]
        phase = stage_run(recipe, name, sources, spec.stages, layout.phase(name))
        done[name] = run_stages(phase, name, layout.marker(name), workers=workers, resume=resume, log=log)
        previous = layout.phase(name)
    done["last"] = name_of_last = next(n for n in ("select", "synth", "curate") if n in done)
    assert Path(done[name_of_last]["dir"]) == previous
    return done


def run_loop(recipe, *, workers: int | None = None, resume: bool = True, log: Callable = print) -> dict:
    """Run every phase the recipe has, skipping finished ones; returns what each phase did."""
    layout = LoopLayout(recipe)
    done = data_phases(recipe, workers=workers, resume=resume, log=log)
    if recipe.section("train") is not None:
        train_and_eval(recipe, layout, done, resume=resume, log=log)
    for name, run_phase in (("rest_em", run_rest_em), ("llm2llm", run_llm2llm)):
        spec = recipe.section(name)
        if spec is not None:  # self-contained phases with their own data; they resume per iteration
            out_dir = spec.out_dir if "out_dir" in spec.model_fields_set else str(layout.phase(name))
            done[name] = run_phase(spec.model_copy(update={"out_dir": out_dir}), base_dir=recipe.base_dir, log=log)
    return done


def train_and_eval(recipe, layout: LoopLayout, done: dict, *, resume: bool, log: Callable) -> None:
    """Train on the last data phase (minus the target) and score the checkpoints on the target."""
    train_spec, eval_spec = recipe.section("train"), recipe.section("eval")
    last = done[done["last"]]
    data_dir = Path(last["dir"])
    if eval_spec is not None:
        key = digest({"corpus": last["key"], "target": done["target"]["key"]})
        marker, data_dir = layout.marker("train_data"), layout.phase("train_data")
        done["train_data"] = finished(marker, key) or mark(marker, key, **without_target(
            Path(last["dir"]), layout.target, data_dir))
    cfg = train_config(train_spec, data_dir, Path(train_spec.get("out_dir") or layout.phase("train")), eval_spec)
    done["train"] = train_phase(cfg, layout.marker("train"), resume=resume, log=log)
    if eval_spec is not None:
        done["eval"] = eval_phase(cfg, layout.target, eval_spec, layout.marker("eval"), resume=resume, log=log)
