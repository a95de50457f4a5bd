"""A Hugging Face hub-ready dataset folder: `data/train-NNNNN-of-NNNNN.parquet` and a README dataset card.

The card's YAML header declares the parquet files as the `train` split of the `default` config
(so `datasets.load_dataset(folder)` and the hub viewer read them); its body gives the run's
sources, its stage-by-stage funnel and drop reasons, the columns, and the recipe that made it.
Upload with `huggingface-cli upload <user>/<name> <folder> --repo-type dataset`.

Every file gets the same schema (a column missing from one shard is added as nulls), as the hub
viewer requires; parquet shards that already have it are copied byte for byte.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from datamill.curate.export.corpus import read_file

SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                   (10_000_000_000, "1B<n<10B")]


def size_category(records: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if records < limit), "n>10B")


def schema_of(file: Path) -> pl.Schema:
    return pl.scan_parquet(file).collect_schema() if file.suffix == ".parquet" else read_file(file).schema


def common_schema(files: list[Path]) -> pl.Schema:
    """Every column of any file, in first-seen order, with a type all files' values fit."""
    empties = [pl.DataFrame(schema=schema_of(f)) for f in files]
    return pl.concat(empties, how="diagonal_relaxed").schema


def write_hf(files: list[Path], out: Path, info: dict[str, Any], name: str) -> dict:
    """Write the parquet files and README.md into `out`; return what was written."""
    schema = common_schema(files)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    records, written = 0, []
    for i, file in enumerate(files):
        target = data / f"train-{i:05d}-of-{len(files):05d}.parquet"
        if file.suffix == ".parquet" and schema_of(file) == schema:
            shutil.copyfile(file, target)
            records += pl.scan_parquet(file).select(pl.len()).collect().item()
        else:
            frame = pl.concat([pl.DataFrame(schema=schema), read_file(file)], how="diagonal_relaxed").select(schema.names())
            frame.write_parquet(target, compression="zstd")
            records += frame.height
        written.append(f"data/{target.name}")
    (out / "README.md").write_text(dataset_card(name, schema, records, info), encoding="utf-8")
    return {"documents": records, "files": written + ["README.md"]}


def dataset_card(name: str, schema: pl.Schema, records: int, info: dict[str, Any]) -> str:
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(records)],
        "tags": ["datamill"],
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "", f"# {name}", "",
             f"{records:,} records curated with datamill "
             f"from the recipe `{(info.get('recipe') or {}).get('name', name)}`.", "",
             "Licence: set `license:` in the header above to the licence of the sources before publishing.", ""]
    stats = info.get("stats")
    if stats:
        lines += _stats_section(stats)
    lines += ["## Columns", "", "| column | type |", "| --- | --- |"]
    lines += [f"| `{column}` | `{dtype}` |" for column, dtype in schema.items()]
    lines.append("")
    if info.get("recipe"):
        lines += ["## Recipe", "", "```yaml", yaml.safe_dump(info["recipe"], sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)


def _stats_section(stats: dict[str, Any]) -> list[str]:
    out = stats.get("output", {})
    read = sum(s.get("records_read", 0) for s in stats.get("sources", []))
    quarantined = stats.get("quarantine", {}).get("total", 0)
    lines = ["## How it was made", "",
             f"- Records read: {read:,}; kept: {out.get('records', 0):,} (~{out.get('tokens', 0):,} tokens); "
             f"quarantined as malformed: {quarantined:,}",
             f"- Run finished {stats.get('finished_at', '?')} in {stats.get('seconds', 0):.1f} s "
             f"({stats.get('executor', '?')} executor, {stats.get('workers', '?')} workers)", ""]
    if stats.get("sources"):
        lines += ["### Sources", "", "| source | type | records read | records ok |", "| --- | --- | ---: | ---: |"]
        lines += [f"| `{s['name']}` | `{s['type']}` | {s['records_read']:,} | {s['records_ok']:,} |"
                  for s in stats["sources"]]
        lines.append("")
    if stats.get("stages"):
        lines += ["### Stages", "", "| stage | type | records in | records out | dropped (reason: count) |",
                  "| --- | --- | ---: | ---: | --- |"]
        for s in stats["stages"]:
            dropped = ", ".join(f"{reason}: {n:,}" for reason, n in s.get("dropped", {}).items()) or "—"
            lines.append(f"| `{s['name']}` | `{s['type']}` | {s['records_in']:,} | {s['records_out']:,} | {dropped} |")
        lines.append("")
    return lines
