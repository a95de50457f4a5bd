"""GLAN (Li et al. 2024, "Synthetic Data (Almost) from Scratch"): a taxonomy of human knowledge →
subjects → syllabi → instructions, with no seed examples.

Input: disciplines, and optionally their subjects. A taxonomy file (YAML or JSON) maps disciplines
to subjects, `{Mathematics: [Algebra, Geometry], Biology: [Ecology]}`; a discipline listed without
subjects (`Chemistry:` or `Chemistry: []`, or a file that is just a list of disciplines) and every
name in `disciplines:` get their subjects from the LLM, the paper's step after the discipline
taxonomy: the generator is asked for `subjects_per_discipline` subjects a student of that
discipline should learn (synth/prompts/glan_subjects.txt, a numbered list); the list is parsed
(numbered or bulleted lines, markdown and trailing descriptions removed, names of more than
`max_subject_words` words skipped), deduplicated case- and space-insensitively and cut to
`subjects_per_discipline`; a reply with no subject is quarantined (`glan:no_subjects`).
For each subject the generator writes a syllabus of `sessions` class sessions, each a title with
its key concepts (synth/prompts/glan_syllabus.txt, "Session N: … / Key concepts: …"). For each
session it then writes `questions_per_session` homework questions, each built on a seeded random
sample of 1 to `max_concepts` of that session's key concepts (GLAN's way to make questions
varied), and answers each question. One shard per listed subject, and one per discipline whose
subjects the LLM proposes.
Columns: `instruction`, `output`, SFT columns, `text`, and the provenance `discipline`, `subject`,
`subject_source` (`taxonomy` or `llm`), `subject_model` (who proposed it; null from the taxonomy),
`session`, `session_index`, `key_concepts`, `glan_model`. Quarantined with a reason
(`glan:no_subjects`, `glan:no_syllabus` when no session parses, `glan:empty_question`,
`glan:empty_answer`).
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
from pydantic import Field, model_validator

from datamill.curate.engine.records import QUARANTINE_SCHEMA
from datamill.curate.engine.registry import register_source
from datamill.curate.engine.source import ShardSpec, Source, SourceBatch, SourceParams
from datamill.synth.factory import make_generator
from datamill.synth.generation import Generator, GeneratorSpec, SamplingParams
from datamill.synth.templates import SFTFormat, render, sft_columns, user_turn

SESSION = r"(?im)^\W*session\s*(\d+)\s*[:.\-–]\s*(.+?)\s*$"
CONCEPTS = r"(?im)^\W*key\s+concepts?\s*[:\-–]\s*(.+?)\s*$"
NUMBERED = r"^\s*\d+\s*[.):]\s*(.+?)\s*$"
BULLET = r"^\s*[-*•]\s+(.+?)\s*$"


class GlanParams(SourceParams):
    type: Literal["glan"] = "glan"
    taxonomy: str | None = Field(None, description="YAML/JSON file: {discipline: [subject, ...]}; a discipline "
                                 "without subjects (or a plain list of disciplines) gets them from the LLM.")
    disciplines: list[str] = Field(default_factory=list, description="Disciplines whose subjects the LLM proposes "
                                   "(besides or instead of a taxonomy file).")
    subjects_per_discipline: int = Field(5, ge=1, le=100, description="Subjects the LLM is asked for (and the most "
                                         "kept) per discipline without a subject list.")
    max_subject_words: int = Field(8, ge=1, description="A proposed subject name longer than this is not a subject.")
    sessions: int = Field(6, ge=1, le=50, description="Class sessions per syllabus.")
    questions_per_session: int = Field(2, ge=1, le=50)
    max_concepts: int = Field(2, ge=1, description="A question combines 1..max_concepts key concepts of its session.")
    generator: GeneratorSpec = Field(default_factory=GeneratorSpec)
    subject_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.7, max_new_tokens=256))
    syllabus_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.7, max_new_tokens=512))
    question_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=1.0, max_new_tokens=128))
    answer_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.7, max_new_tokens=384))
    format: SFTFormat = "messages"
    seed: int = 0

    @model_validator(mode="after")
    def _something_to_teach(self) -> GlanParams:
        if self.taxonomy is None and not self.disciplines:
            raise ValueError("glan needs a taxonomy file or a list of disciplines")
        if any(not d.strip() for d in self.disciplines):
            raise ValueError("glan: disciplines must be non-empty names")
        return self

    def check_paths(self, base_dir: str) -> list[str]:
        if self.taxonomy is None:
            return []
        path = Path(self.taxonomy).expanduser()
        path = path if path.is_absolute() else Path(base_dir) / path
        return [] if path.is_file() else [f"taxonomy: no such file {path}"]


def read_taxonomy(path: Path) -> list[tuple[str, str | None]]:
    """(discipline, subject) pairs of a taxonomy file, subject None for a discipline listed without
    subjects (the LLM proposes them); a malformed file raises naming file and key."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the taxonomy ({err})") from None
    if isinstance(doc, list):  # disciplines only
        if not doc or not all(isinstance(d, str) and d.strip() for d in doc):
            raise ValueError(f"{path}: a list taxonomy must list disciplines as non-empty strings")
        return [(d.strip(), None) for d in doc]
    if not isinstance(doc, dict) or not doc:
        raise ValueError(f"{path}: the taxonomy must map disciplines to lists of subjects (or list disciplines)")
    pairs: list[tuple[str, str | None]] = []
    for discipline, subjects in doc.items():
        if subjects is None or subjects == []:
            pairs.append((str(discipline), None))
            continue
        if isinstance(subjects, str):
            subjects = [subjects]
        if not isinstance(subjects, list) or not all(isinstance(s, str) and s.strip() for s in subjects):
            raise ValueError(f"{path}: {discipline!r} must list its subjects as non-empty strings")
        pairs += [(str(discipline), s.strip()) for s in subjects]
    return pairs


def parse_subjects(text: str, limit: int, max_words: int = 8) -> list[str]:
    """Subject names from an LLM's numbered list (or bulleted, when nothing is numbered: bullets
    under numbered items are their subtopics): markdown and a trailing description (after ':' or
    ' - ') removed, over-long names skipped, duplicates (case and spacing ignored) dropped, at most
    `limit`."""
    lines = text.splitlines()
    items = [m.group(1) for m in (re.match(NUMBERED, line) for line in lines) if m]
    if not items:
        items = [m.group(1) for m in (re.match(BULLET, line) for line in lines) if m]
    subjects: list[str] = []
    seen: set[str] = set()
    for item in items:
        name = re.sub(r"[*_`#]", "", item)
        name = re.split(r"\s*[:：]\s+|\s+[-–—]\s+", name, maxsplit=1)[0].strip().strip("\"'.,;").strip()
        key = " ".join(name.casefold().split())
        if not key or len(key.split()) > max_words or key in seen:
            continue
        seen.add(key)
        subjects.append(name)
        if len(subjects) == limit:
            break
    return subjects


def propose_subjects(generator: Generator, discipline: str, params: GlanParams) -> tuple[list[str], str]:
    """The LLM's subjects for one discipline (parsed, deduplicated), and its raw reply."""
    p = params
    reply = generator.generate([user_turn(render("glan_subjects", discipline=discipline,
                                                 count=str(p.subjects_per_discipline)))],
                               p.subject_sampling.model_copy(update={"n": 1, "seed": p.seed}))[0][0].text
    return parse_subjects(reply, p.subjects_per_discipline, p.max_subject_words), reply


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
    """Disciplines → (LLM-proposed) subjects → syllabi → homework-question instructions with answers (GLAN)."""

    type_name = "glan"
    Params = GlanParams

    def taxonomy_path(self) -> Path | None:
        if self.params.taxonomy is None:
            return None
        path = Path(self.params.taxonomy).expanduser()
        return path if path.is_absolute() else Path(self.base_dir) / path

    def plan(self) -> list[ShardSpec]:
        path = self.taxonomy_path()
        pairs = read_taxonomy(path) if path is not None else []
        pairs += [(d.strip(), None) for d in self.params.disciplines if (d.strip(), None) not in pairs]
        return [ShardSpec(self.index, f"glan: {d} / {s}" if s is not None else f"glan: {d} / subjects by the LLM",
                          {"discipline": d, "subject": s, "number": k})
                for k, (d, s) in enumerate(pairs)]

    def read(self, shard: ShardSpec, batch_rows: int) -> Iterator[SourceBatch]:
        p = self.params
        generator = make_generator(p.generator, getattr(self, "run_dir", None), probe=p.answer_sampling)
        discipline, subject = shard.payload["discipline"], shard.payload["subject"]
        number = shard.payload["number"]
        if subject is not None:
            subjects, source, proposer, prefixes = [subject], "taxonomy", None, [f"{number}"]
            dropped: list[tuple[str, str]] = []
        else:
            subjects, reply = propose_subjects(generator, discipline, p)
            source, proposer = "llm", generator.model_id
            prefixes = [f"{number}.{j}" for j in range(len(subjects))]
            dropped = [] if subjects else [("glan:no_subjects", f"{discipline}: no numbered subject list in {reply[:200]!r}")]
        frames = []
        for name, prefix in zip(subjects, prefixes):
            rows, lost = glan_instructions(generator, discipline, name, p)
            dropped += lost
            if rows.height:
                frames.append(rows.with_row_index("k").with_columns(
                    (pl.lit(f"{self.name}:{prefix}:") + pl.col("session_index").cast(pl.String)
                     + pl.lit(":") + pl.col("k").cast(pl.String)).alias("id")))
        rows = pl.concat(frames) if frames else pl.DataFrame()
        if p.limit is not None and rows.height:
            rows = rows.head(p.limit)
        path = self.taxonomy_path()
        quarantine = pl.DataFrame([{
            "source": self.name, "file": str(path) if path is not None else "disciplines", "line": None,
            "reason": reason, "detail": detail, "raw": json.dumps({"discipline": discipline, "subject": subject}),
            "raw_b64": None} for reason, detail in dropped], schema=QUARANTINE_SCHEMA)
        if rows.height == 0:
            yield SourceBatch(records=pl.DataFrame(schema={"id": pl.String, "source": pl.String, "text": pl.String,
                                                           "meta": pl.String}),
                              quarantine=quarantine, lines_read=1)
            return
        records = rows.select(
            "id", pl.lit(self.name).alias("source"),
            (pl.col("instruction") + pl.lit("\n\n") + pl.col("output")).alias("text"),
            pl.lit(None, dtype=pl.String).alias("meta"),
            "discipline", "subject", pl.lit(source).alias("subject_source"),
            pl.lit(proposer, dtype=pl.String).alias("subject_model"),
            "session", "session_index", "key_concepts", "instruction", "output",
            pl.lit(generator.model_id).alias("glan_model"),
            *sft_columns(pl.col("instruction"), pl.col("output"), p.format))
        yield SourceBatch(records=records, quarantine=quarantine, lines_read=1)
