"""Resolving model names to local folders: the SmolLM2 GGUF is converted once, atomically, and cached."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from pathlib import Path

import pytest
import torch

from datamill.curate.models import resolve as models
from datamill.curate.models.resolve import cache_dir, load_causal_lm, resolve_model


@pytest.fixture(scope="session")
def smollm():
    """SmolLM2 from the user's cache (converted on the first run; $DATAMILL_CACHE overrides)."""
    torch.set_num_threads(1)  # busy shared cores: OpenMP threads waiting on each other are slower than one
    return load_causal_lm("smollm2-135m", device="cpu")


def fake_converter(calls_file: Path, seconds: float = 0.0, fail: bool = False):
    """A stand-in for the minute-long GGUF conversion that records each call."""

    def convert(gguf_path: Path, out_dir: Path) -> None:
        with open(calls_file, "a") as f:
            f.write(f"{gguf_path.name}\n")
        (out_dir / "weights.bin").write_bytes(b"partial")
        time.sleep(seconds)
        if fail:
            raise RuntimeError("disk full")
        (out_dir / "config.json").write_text("{}")

    return convert


def test_builtin_name_loads_from_cache_without_converting_again(smollm, monkeypatch):
    model, tokenizer = smollm
    folder = cache_dir() / "models" / "smollm2-135m-instruct"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert json.loads((folder / "config.json").read_text()).get("quantization_config") is None

    def must_not_run(*args):
        raise AssertionError("the cached model was converted again")

    monkeypatch.setattr(models, "convert_gguf", must_not_run)
    monkeypatch.setattr(models, "bundled_smollm2_gguf", must_not_run)
    assert resolve_model("smollm2-135m") == folder
    assert resolve_model("SmolLM2-135M-Instruct") == folder
    again, _ = load_causal_lm("smollm2-135m", device="cpu")
    assert torch.equal(again.get_output_embeddings().weight, model.get_output_embeddings().weight)


def test_loaded_model_is_float32_eval_mode_on_cpu_with_pad_token(smollm):
    model, tokenizer = smollm
    assert model.device.type == "cpu" and model.dtype == torch.float32
    assert not model.training
    assert tokenizer.pad_token is not None
    ids = tokenizer("The ferry does not run when the fog is thick.", return_tensors="pt").input_ids
    with torch.inference_mode():
        loss = model(ids, labels=ids).loss.item()
    assert 1.0 < loss < 8.0  # a real language model, not random weights (ln 49152 ≈ 10.8)


def test_two_processes_converting_at_once_convert_once(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAMILL_CACHE", str(tmp_path / "cache"))
    calls = tmp_path / "calls.txt"
    monkeypatch.setattr(models, "convert_gguf", fake_converter(calls, seconds=0.5))
    context = multiprocessing.get_context("fork")  # children inherit the patched converter
    with context.Pool(2) as pool:
        folders = pool.map(resolve_model, ["smollm2-135m", "smollm2-135m-instruct"])
    target = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    assert folders == [target, target]
    assert calls.read_text().splitlines() == [models.SMOLLM2_GGUF]
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "weights.bin"]
    leftovers = [p.name for p in target.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_failed_conversion_leaves_no_folder_and_is_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAMILL_CACHE", str(tmp_path))
    calls = tmp_path / "calls.txt"
    monkeypatch.setattr(models, "convert_gguf", fake_converter(calls, fail=True))
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model("smollm2-135m")
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["smollm2-135m-instruct.lock"]
    monkeypatch.setattr(models, "convert_gguf", fake_converter(calls))
    assert (resolve_model("smollm2-135m") / "config.json").is_file()
    assert len(calls.read_text().splitlines()) == 2


def test_missing_local_model_folder_is_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "no-such-model")):
        resolve_model(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_causal_lm(str(tmp_path / "empty"))


def test_local_folder_without_pad_token_gets_one(smollm, tmp_path):
    source = resolve_model("smollm2-135m")
    local = tmp_path / "my-model"
    local.mkdir()
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        shutil.copy(source / name, local / name)
    (local / "model.safetensors").symlink_to(source / "model.safetensors")
    config = json.loads((source / "tokenizer_config.json").read_text())
    del config["pad_token"]
    (local / "tokenizer_config.json").write_text(json.dumps(config))
    model, tokenizer = load_causal_lm(str(local), device="cpu")
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert torch.equal(model.get_output_embeddings().weight, smollm[0].get_output_embeddings().weight)
