"""Statistics: counted per shard while it runs, summed over shards into the run's stats.json.

Per stage: records and approximate tokens in/out, drops and flags by reason, stage errors and
seconds. Per run: source reads, quarantine by reason, output size, a length histogram of the
input and the output (fixed power-of-two bins, so shards add up exactly) and histograms of every
numeric score column a stage declares (from a bounded, deterministic sample of its values).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from datamill.curate.engine.records import TOKENS

LENGTH_EDGES = [0] + [2**k for k in range(0, 31)]
"""Character-length histogram bin edges: [0, 1, 2, 4, …, 2^30]."""

SCORE_SAMPLE_PER_BATCH = 2000
SCORE_BINS = 40


def length_histogram(batch: pl.DataFrame) -> list[int]:
    lengths = batch["text"].str.len_chars().to_numpy() if batch.height else np.zeros(0)
    counts, _ = np.histogram(np.clip(lengths, 0, LENGTH_EDGES[-1] - 1), bins=LENGTH_EDGES)
    return counts.tolist()


def token_sum(batch: pl.DataFrame) -> int:
    return int(batch[TOKENS].sum()) if batch.height else 0


@dataclass
class StageCounts:
    records_in: int = 0
    records_out: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    flagged: Counter = field(default_factory=Counter)
    tallies: Counter = field(default_factory=Counter)
    """What the stage counted besides drops and flags (`Stage.tallies`), by name."""
    facts: dict = field(default_factory=dict)
    """Counts describing the stage's set-up (`Stage.facts`): the same in every shard, not summed."""
    errors: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "records_in": self.records_in,
            "records_out": self.records_out,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "dropped": dict(sorted(self.dropped.items())),
            "flagged": dict(sorted(self.flagged.items())),
            "tallies": dict(sorted(self.tallies.items())),
            **({"facts": dict(sorted(self.facts.items()))} if self.facts else {}),
            "errors": self.errors,
            "seconds": round(self.seconds, 4),
        }


@dataclass
class ShardStats:
    """Everything one shard of one segment counts; saved in its done marker."""

    segment: int
    shard: int
    source_index: int
    records_read: int = 0
    records_ok: int = 0
    quarantine: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    """Input records a source skipped on purpose (not quarantined), by reason."""
    stages: dict[str, StageCounts] = field(default_factory=dict)
    length_input: list[int] = field(default_factory=lambda: [0] * (len(LENGTH_EDGES) - 1))
    length_output: list[int] = field(default_factory=lambda: [0] * (len(LENGTH_EDGES) - 1))
    output_records: int = 0
    output_tokens: int = 0
    output_files: list[str] = field(default_factory=list)
    output_bytes: int = 0
    score_samples: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def stage(self, name: str) -> StageCounts:
        return self.stages.setdefault(name, StageCounts())

    def add_lengths(self, which: str, batch: pl.DataFrame) -> None:
        target = self.length_input if which == "input" else self.length_output
        for i, c in enumerate(length_histogram(batch)):
            target[i] += c

    def sample_scores(self, stage_name: str, batch: pl.DataFrame, columns: tuple[str, ...]) -> None:
        """Keep an evenly spaced sample of each numeric score column (deterministic)."""
        if not batch.height:
            return
        step = max(1, batch.height // SCORE_SAMPLE_PER_BATCH)
        for column in columns:
            if column in batch.columns and batch.schema[column].is_numeric():
                values = batch[column].gather_every(step).drop_nulls().cast(pl.Float64).to_list()
                self.score_samples.setdefault(f"{stage_name}.{column}", []).extend(
                    v for v in values if np.isfinite(v)
                )

    def to_json(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "shard": self.shard,
            "source_index": self.source_index,
            "records_read": self.records_read,
            "records_ok": self.records_ok,
            "quarantine": dict(sorted(self.quarantine.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "stages": {name: counts.to_json() for name, counts in self.stages.items()},
            "length_input": self.length_input,
            "length_output": self.length_output,
            "output": {
                "records": self.output_records,
                "tokens": self.output_tokens,
                "files": self.output_files,
                "bytes": self.output_bytes,
            },
            "score_samples": self.score_samples,
            "seconds": round(self.seconds, 4),
        }


def aggregate(
    markers: list[dict[str, Any]],
    *,
    stage_order: list[tuple[str, str]],
    sources: list[dict[str, Any]],
    last_segment: int,
    header: dict[str, Any],
    output_format: str,
) -> dict[str, Any]:
    """Sum shard markers into the stats.json document the report is rendered from."""
    source_rows = [
        {**s, "shards": 0, "records_read": 0, "records_ok": 0, "quarantined": 0, "skipped": Counter()}
        for s in sources
    ]
    quarantine: Counter = Counter()
    stages = {name: StageCounts() for name, _ in stage_order}
    length_in = np.zeros(len(LENGTH_EDGES) - 1, dtype=np.int64)
    length_out = np.zeros(len(LENGTH_EDGES) - 1, dtype=np.int64)
    output = {"records": 0, "tokens": 0, "files": 0, "bytes": 0, "dir": "shards", "format": output_format}
    samples: dict[str, list[float]] = {}

    for m in markers:
        quarantine.update(m["quarantine"])
        if m["segment"] == 0:
            row = source_rows[m["source_index"]]
            row["shards"] += 1
            row["records_read"] += m["records_read"]
            row["records_ok"] += m["records_ok"]
            row["skipped"].update(m.get("skipped", {}))
            row["quarantined"] += sum(m["quarantine"].values()) - sum(
                c for r, c in m["quarantine"].items() if r.startswith("stage_error:")
            )
            length_in += np.asarray(m["length_input"])
        if m["segment"] == last_segment:
            length_out += np.asarray(m["length_output"])
            output["records"] += m["output"]["records"]
            output["tokens"] += m["output"]["tokens"]
            output["files"] += len(m["output"]["files"])
            output["bytes"] += m["output"]["bytes"]
        for name, c in m["stages"].items():
            total = stages.setdefault(name, StageCounts())
            total.records_in += c["records_in"]
            total.records_out += c["records_out"]
            total.tokens_in += c["tokens_in"]
            total.tokens_out += c["tokens_out"]
            total.dropped.update(c["dropped"])
            total.flagged.update(c["flagged"])
            total.tallies.update(c.get("tallies", {}))
            total.facts.update(c.get("facts", {}))
            total.errors += c["errors"]
            total.seconds += c["seconds"]
        for key, values in m["score_samples"].items():
            samples.setdefault(key, []).extend(values)

    types = dict(stage_order)
    for row in source_rows:
        row["skipped"] = dict(sorted(row["skipped"].items()))
    return {
        **header,
        "sources": source_rows,
        "quarantine": {"total": sum(quarantine.values()), "by_reason": dict(sorted(quarantine.items())),
                       "dir": "quarantine"},
        "stages": [{"name": name, "type": types.get(name, ""), **c.to_json()} for name, c in stages.items()],
        "output": output,
        "histograms": {
            "length_chars": {"edges": LENGTH_EDGES, "input": length_in.tolist(), "output": length_out.tolist()},
            "scores": {key: _histogram(values) for key, values in sorted(samples.items()) if values},
        },
    }


def _histogram(values: list[float]) -> dict[str, list]:
    """Linear bins, or log-spaced ones when the values are positive and span more than two decades
    (lengths, perplexities: heavy tails); the report draws the latter on a log axis."""
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    bins: int | np.ndarray = SCORE_BINS
    if array.size and array.min() > 0 and array.max() / array.min() > 100:
        bins = np.geomspace(array.min(), array.max(), SCORE_BINS + 1)
    counts, edges = np.histogram(array, bins=bins)
    return {"edges": edges.tolist(), "counts": counts.tolist()}
