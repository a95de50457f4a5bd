"""GLAN (Li et al. 2024, "Synthetic Data (Almost) from Scratch"): a taxonomy of human knowledge →
syllabi → instructions, with no seed examples.

Input: a small taxonomy file (YAML or JSON) mapping disciplines to subjects,
  {Mathematics: [Algebra, Geometry], Biology: [Ecology]}
(GLAN builds this with an LLM and human checks; here the user supplies it). For each subject the
generator writes a syllabus of `sessions` class sessions, each a title with its key concepts
(synth/prompts/glan_syllabus.txt, "Session N: … / Key concepts: …"). For each session it then
writes `questions_per_session` homework questions, each built on a seeded random sample of 1 to
`max_concepts` of that session's key concepts (GLAN's way to make questions varied), and answers
each question. One shard per subject.
Columns: `instruction`, `output`, SFT columns, `text`, and the provenance `discipline`, `subject`,
`session`, `session_index`, `key_concepts`, `glan_model`. Quarantined with a reason
(`glan:no_syllabus` when no session parses, `glan:empty_question`, `glan:empty_answer`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import yaml
from pydantic import Field

from datamill.curate.engine.records import QUARANTINE_SCHEMA
from datamill.curate.engine.registry import register_source
from datamill.curate.engine.source import ShardSpec, Source, SourceBatch, SourceParams
from datamill.synth.factory import make_generator
from datamill.synth.generation import Generator, GeneratorSpec, SamplingParams
from datamill.synth.templates import SFTFormat, render, sft_columns, user_turn

SESSION = r"(?im)^\W*session\s*(\d+)\s*[:.\-–]\s*(.+?)\s*$"
CONCEPTS = r"(?im)^\W*key\s+concepts?\s*[:\-–]\s*(.+?)\s*$"


class GlanParams(SourceParams):
    type: Literal["glan"] = "glan"
    taxonomy: str = Field(description="YAML/JSON file: {discipline: [subject, ...]}.")
    sessions: int = Field(6, ge=1, le=50, description="Class sessions per syllabus.")
    questions_per_session: int = Field(2, ge=1, le=50)
    max_concepts: int = Field(2, ge=1, description="A question combines 1..max_concepts key concepts of its session.")
    generator: GeneratorSpec = Field(default_factory=GeneratorSpec)
    syllabus_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.7, max_new_tokens=512))
    question_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=1.0, max_new_tokens=128))
    answer_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.7, max_new_tokens=384))
    format: SFTFormat = "messages"
    seed: int = 0


def read_taxonomy(path: Path) -> list[tuple[str, str]]:
    """(discipline, subject) pairs of a taxonomy file; a malformed one raises naming file and key."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the taxonomy ({err})") from None
    if not isinstance(doc, dict) or not doc:
        raise ValueError(f"{path}: the taxonomy must map disciplines to lists of subjects")
    pairs = []
    for discipline, subjects in doc.items():
        if isinstance(subjects, str):
            subjects = [subjects]
        if not isinstance(subjects, list) or not subjects or not all(isinstance(s, str) and s.strip() for s in subjects):
            raise ValueError(f"{path}: {discipline!r} must list its subjects as non-empty strings")
        pairs += [(str(discipline), s.strip()) for s in subjects]
    return pairs


def parse_syllabus(text: str) -> list[tuple[str, list[str]]]:
    """(session title, key concepts) in order; a session without a concepts line uses its title."""
    sessions = []
    lines = text.splitlines()
    for k, line in enumerate(lines):
        found = re.match(SESSION, line)
        if not found:
            continue
        title = found.group(2).strip().strip("*").strip()
        concepts: list[str] = []
        for after in lines[k + 1:k + 4]:
            if re.match(SESSION, after):
                break
            listed = re.match(CONCEPTS, after)
            if listed:
                concepts = [c.strip().strip("*.").strip() for c in re.split(r"[,;]", listed.group(1)) if c.strip()]
                break
        if title:
            sessions.append((title, concepts or [title]))
    return sessions


def glan_instructions(generator: Generator, discipline: str, subject: str, params: GlanParams,
                      ) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
    """(rows of discipline, subject, session, session_index, key_concepts, instruction, output;
    dropped (reason, detail) pairs) for one subject."""
    p = params
    syllabus = generator.generate([user_turn(render("glan_syllabus", subject=subject, discipline=discipline,
                                                    sessions=str(p.sessions)))],
                                  p.syllabus_sampling.model_copy(update={"n": 1, "seed": p.seed}))[0][0].text
    sessions = parse_syllabus(syllabus)[:p.sessions]
    if not sessions:
        return pl.DataFrame(), [("glan:no_syllabus", f"{discipline} / {subject}: no 'Session N: …' line in "
                                 f"{syllabus[:200]!r}")]
    digest = hashlib.sha256(f"{p.seed}:{discipline}:{subject}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    asks, meta = [], []
    for index, (title, concepts) in enumerate(sessions):
        for _ in range(p.questions_per_session):
            k = int(rng.integers(1, min(p.max_concepts, len(concepts)) + 1))
            picked = [concepts[i] for i in sorted(rng.choice(len(concepts), k, replace=False))]
            asks.append(user_turn(render("glan_question", subject=subject, discipline=discipline, session=title,
                                         concepts=", ".join(picked))))
            meta.append((title, index, picked))
    questions = [g[0].text.strip() for g in generator.generate(asks, p.question_sampling.model_copy(
        update={"n": 1, "seed": p.seed}))]
    dropped = [("glan:empty_question", f"{discipline} / {subject} / {m[0]}") for q, m in zip(questions, meta) if not q]
    live = [k for k, q in enumerate(questions) if q]
    answers = [g[0].text.strip() for g in generator.generate([user_turn(questions[k]) for k in live],
                                                             p.answer_sampling.model_copy(update={"n": 1, "seed": p.seed}))]
    rows = []
    for k, answer in zip(live, answers):
        if not answer:
            dropped.append(("glan:empty_answer", f"{discipline} / {subject}: {questions[k][:120]}"))
            continue
        title, index, picked = meta[k]
        rows.append({"discipline": discipline, "subject": subject, "session": title, "session_index": index,
                     "key_concepts": picked, "instruction": questions[k], "output": answer})
    return pl.DataFrame(rows, schema={"discipline": pl.String, "subject": pl.String, "session": pl.String,
                                      "session_index": pl.Int64, "key_concepts": pl.List(pl.String),
                                      "instruction": pl.String, "output": pl.String}), dropped


@register_source
class GlanSource(Source):
    """Taxonomy → syllabi → homework-question instructions with answers (GLAN)."""

    type_name = "glan"
    Params = GlanParams

    def taxonomy_path(self) -> Path:
        path = Path(self.params.taxonomy).expanduser()
        return path if path.is_absolute() else Path(self.base_dir) / path

    def plan(self) -> list[ShardSpec]:
        pairs = read_taxonomy(self.taxonomy_path())
        return [ShardSpec(self.index, f"glan: {d} / {s}", {"discipline": d, "subject": s, "number": k})
                for k, (d, s) in enumerate(pairs)]

    def read(self, shard: ShardSpec, batch_rows: int) -> Iterator[SourceBatch]:
        p = self.params
        generator = make_generator(p.generator, getattr(self, "run_dir", None), probe=p.answer_sampling)
        discipline, subject = shard.payload["discipline"], shard.payload["subject"]
        rows, dropped = glan_instructions(generator, discipline, subject, p)
        if p.limit is not None and rows.height:
            rows = rows.head(p.limit)
        quarantine = pl.DataFrame([{
            "source": self.name, "file": str(self.taxonomy_path()), "line": None, "reason": reason, "detail": detail,
            "raw": json.dumps({"discipline": discipline, "subject": subject}), "raw_b64": None}
            for reason, detail in dropped], schema=QUARANTINE_SCHEMA)
        if rows.height == 0:
            yield SourceBatch(records=pl.DataFrame(schema={"id": pl.String, "source": pl.String, "text": pl.String,
                                                           "meta": pl.String}),
                              quarantine=quarantine, lines_read=1)
            return
        records = rows.with_row_index("k").select(
            (pl.lit(f"{self.name}:{shard.payload['number']}:") + pl.col("session_index").cast(pl.String)
             + pl.lit(":") + pl.col("k").cast(pl.String)).alias("id"),
            pl.lit(self.name).alias("source"),
            (pl.col("instruction") + pl.lit("\n\n") + pl.col("output")).alias("text"),
            pl.lit(None, dtype=pl.String).alias("meta"),
            "discipline", "subject", "session", "session_index", "key_concepts", "instruction", "output",
            pl.lit(generator.model_id).alias("glan_model"),
            *sft_columns(pl.col("instruction"), pl.col("output"), p.format))
        yield SourceBatch(records=records, quarantine=quarantine, lines_read=1)
