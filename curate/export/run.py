"""`export_run`: write a run's corpus as a Megatron indexed dataset, datatrove/nanotron shards or an HF folder.

The export is built in a hidden folder beside `out` and renamed into place when complete, so an
interrupted export never leaves a half-written dataset under `out`. It also writes
`datamill_export.json` (format, source, tokenizer, counts, files).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from datamill.curate.engine.layout import RunLayout
from datamill.curate.engine.store import is_remote
from datamill.curate.export.corpus import run_info, shard_files

FORMATS = ("megatron", "nanotron", "hf")
RECORD_FORMATS = ("auto", "text", "messages", "prompt_completion")
MANIFEST = "datamill_export.json"


class ExportError(Exception):
    """An export that cannot be made, with a message for the user."""


def export_run(run_dir: str | Path, fmt: str, out: str | Path, *, tokenizer: str | None = None,
               data_format: str = "auto", name: str | None = None, overwrite: bool = False,
               batch_rows: int = 1024, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Export the corpus of `run_dir` (a run dir, or a folder of parquet/jsonl files) to `out`."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if data_format not in RECORD_FORMATS:
        raise ExportError(f"unknown record format {data_format!r}; choose one of {', '.join(RECORD_FORMATS)}")
    source = str(run_dir)
    run_dir, out = local_run_copy(run_dir), Path(out)
    try:
        files = shard_files(run_dir)
    except FileNotFoundError as err:
        raise ExportError(str(err)) from None
    _check_target(out, overwrite)
    info = run_info(run_dir)
    name = name or (info["recipe"] or {}).get("name") or run_dir.resolve().name
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        try:
            written = _write(fmt, files, staging, info, name, tokenizer, data_format, batch_rows, log)
        except ValueError as err:  # bad records or columns, named by file
            raise ExportError(str(err)) from None
        manifest = {"format": fmt, "source": source if is_remote(source) else str(run_dir.resolve()),
                    "name": name, **written}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        staging.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def local_run_copy(run_dir: str | Path) -> Path:
    """The run dir as a local folder: a path as it is; an object-store run's corpus, stats and
    recipe fetched into its local mirror (files already there and unchanged are not fetched again)."""
    if not is_remote(run_dir):
        return Path(run_dir)
    layout = RunLayout(run_dir)
    if not layout.store.listing("shards"):
        raise ExportError(f"{run_dir} holds no shards/: is it a finished datamill run?")
    return layout.sync_down(("shards", "stats.json", "state/recipe.json"))


def _check_target(out: Path, overwrite: bool) -> None:
    if out.is_file():
        raise ExportError(f"{out} is a file; give a folder for the export")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out} is not empty; choose another --out or pass --overwrite")
        if not (out / MANIFEST).is_file():
            raise ExportError(f"{out} is not empty and holds no earlier export ({MANIFEST}); "
                              "--overwrite only replaces a folder datamill exported")


def _write(fmt: str, files: list[Path], staging: Path, info: dict, name: str, tokenizer_name: str | None,
           data_format: str, batch_rows: int, log: Callable[[str], Any]) -> dict[str, Any]:
    if fmt == "hf":
        from datamill.curate.export.hf import write_hf

        return write_hf(files, staging, info, name)
    from datamill.curate.export.tokens import load_export_tokenizer, tokenized_batches

    try:
        tokenizer = load_export_tokenizer(tokenizer_name)
    except (FileNotFoundError, OSError, ValueError) as err:
        raise ExportError(f"tokenizer: {err}") from None
    label = tokenizer_name or "smollm2-135m"
    record_format, batches = tokenized_batches(files, tokenizer, data_format, batch_rows)
    log(f"tokenizing {len(files)} file(s) of {record_format} records with {label}")
    common = {"tokenizer": label, "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
              "record_format": record_format}
    if fmt == "megatron":
        from datamill.curate.export.megatron import write_megatron

        prefix = re.sub(r"[^\w.-]+", "_", name) + "_text_document"
        return {**common, "data_path": prefix, **write_megatron(batches, staging / prefix, len(tokenizer))}
    from datamill.curate.export.nanotron import write_datatrove

    return {**common, **write_datatrove(batches, staging, len(tokenizer), label, record_format != "text")}
