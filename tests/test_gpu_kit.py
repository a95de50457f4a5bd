"""The one-command GPU run cannot rot unnoticed: `bench/gpu/run.sh --dry-run` runs every step on
CPU with tiny shapes and writes the results table; kit.sh names the wheels for the GPU machine's
Python 3.12; the report judges the H100 targets from the benchmarks' figures."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_runner():
    spec = importlib.util.spec_from_file_location("gpu_runner", ROOT / "bench" / "gpu" / "runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = load_runner()


def probe_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, standing in for the kit's wheels."""
    folder.mkdir(parents=True)
    wheel = folder / "gpu_kit_probe-0.1-py3-none-any.whl"
    files = {"gpu_kit_probe.py": "VALUE = 1\n",
             "gpu_kit_probe-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: gpu-kit-probe\nVersion: 0.1\n",
             "gpu_kit_probe-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  "Tag: py3-none-any\n"}
    record = "".join(f"{name},,\n" for name in files) + "gpu_kit_probe-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in {**files, "gpu_kit_probe-0.1.dist-info/RECORD": record}.items():
            archive.writestr(name, text)
    return folder


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-dry-run")
    kit = probe_wheel(tmp_path_factory.mktemp("kit") / "wheels")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "run.sh"), "--out", str(out), "--dry-run",
                           "--kit", str(kit)], env=env, capture_output=True, text=True, timeout=600)
    return done, out


def test_dry_run_runs_every_step_and_writes_the_table(dry_run):
    done, out = dry_run
    assert done.returncode == 0, (out / "run.log").read_text()[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["pytest-cuda.xml", "results.json", "results.md", "run.log"]
    report = json.loads((out / "results.json").read_text())
    assert {name: step["status"] for name, step in report["steps"].items()} == {
        "cuda_tests": "ok", "lm_scoring": "ok", "train": "ok", "generate": "ok"}
    tests = report["cuda_tests"]  # on CPU every cuda-marked test is collected and skipped
    assert tests["skipped"] >= 5 and tests["passed"] == 0 and not tests["failed_tests"]
    assert report["train"]["ours_tokens_per_s"] > 0 and report["train"]["hf_eager_tokens_per_s"] > 0
    assert report["lm_scoring"]["ours_tokens_per_s"] > 0 and report["lm_scoring"]["max_loss_diff"] < 1e-3
    assert [row["batch"] for row in report["generate"]] == [2] and report["generate"][0]["ours_tokens"] > 0
    assert report["environment"]["model_kind"] == "random-init tiny llama (dry run)"
    assert report["imported_outside_image_and_kit"] == []  # nothing the bare GPU image and the kit lack
    log = (out / "run.log").read_text()
    assert "installing 1 wheels from" in log and "wheel install failed" not in log
    assert "training with liger: off" in log  # no liger kernel runs on a CPU
    table = (out / "results.md").read_text()
    assert "DRY RUN" in table and "| LM scoring tok/s" in table and "| generation tok/s, batch 2" in table


def test_run_sh_refuses_a_call_without_an_output_folder_or_with_an_unknown_step(tmp_path):
    run_sh = str(ROOT / "bench" / "gpu" / "run.sh")
    done = subprocess.run(["bash", run_sh, "--dry-run"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage: bash bench/gpu/run.sh --out DIR" in done.stderr
    done = subprocess.run(["bash", run_sh, "--out", str(tmp_path), "--only", "train,benchmarks"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--only takes cuda_tests,lm_scoring,train,generate (not benchmarks)" in done.stderr
    assert not any(tmp_path.iterdir())  # refused before doing anything


def test_kit_names_python_3_12_wheels_of_what_the_image_lacks():
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "kit.sh"), "--list"], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, check=True)
    lines = done.stdout.splitlines()
    assert f"polars=={importlib.metadata.version('polars')}" in lines
    assert f"pydantic-core=={importlib.metadata.version('pydantic-core')}" in lines
    assert "liger-kernel==0.8.5" in lines
    download = next(line for line in lines if " pip download " in line)
    assert "--python-version 3.12" in download and "--only-binary=:all:" in download and "--no-deps" in download
    image = runner.listed(ROOT / "bench" / "gpu" / "image-packages.txt")
    assert {"torch", "transformers", "triton", "numpy", "tokenizers"} <= image
    assert not runner.listed(ROOT / "bench" / "gpu" / "kit-packages.txt") & image  # nothing the image has


def test_report_judges_the_h100_targets(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "steps.tsv").write_text("cuda_tests\tok\t40\ntrain\tok\t200\nlm_scoring\tok\t30\ngenerate\ttimeout after 250s\t250\n")
    (work / "env.json").write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0",
                                               "transformers": "5.17.0", "model_kind": runner.STAND_IN}))
    (work / "train.json").write_text(json.dumps({
        "preset": "llama-135m", "seq_len": 2048, "micro_batch": 16, "attention": "flex_attention", "liger": True,
        "peak_flops": 989e12, "ours_tokens_per_s": 500e3, "ours_mfu": 0.51, "hf_eager_tokens_per_s": 156e3,
        "hf_compile_tokens_per_s": 283e3, "hf_compile_mfu": 0.29}))
    (work / "lm_scoring.json").write_text(json.dumps({"docs": 2000, "dtype": "torch.bfloat16", "ratio": 1.7,
                                                      "ours_tokens_per_s": 790e3, "plain_tokens_per_s": 466e3}))
    report = runner.build_report(work, out, dry_run=False)
    table = (out / "results.md").read_text()
    assert "NVIDIA H100 80GB HBM3" in table and runner.STAND_IN in table and "DRY RUN" not in table
    assert "| train tok/s vs HF + torch.compile | 500,000 | 283,000 | 1.77× | ≥ 1.5× | met |" in table
    assert "| train MFU (bf16 peak 9.89e+14) | 51.0% | 29.0% | - | ≥ 45 % | met |" in table
    assert "| 1.70× | ≥ 2× | MISSED |" in table
    assert "| generation | - | - | - | ≥ 10× at batch 256 | not measured |" in table
    assert "generate timeout after 250s (250 s)" in table
    assert "cuda tests: no result" in table
    assert report["steps"]["generate"]["status"] == "timeout after 250s"
    assert json.loads((out / "results.json").read_text())["train"]["ours_mfu"] == 0.51
