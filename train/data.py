"""Corpus → cached token shards → packed rows that keep documents apart.

1. `tokenize_corpus` reads a corpus dir (parquet/jsonl with `text`, `messages` or
   `prompt`+`completion`, optional `weight` and `token_keep`), tokenizes it in batches (the fast
   tokenizer encodes a batch on all cores), holds out a seeded fraction of documents for eval, and
   writes flat numpy arrays per split: token ids (uint16 when the vocabulary fits, else uint32), a
   per-token loss mask (uint8: 1 = learn to predict this token), document offsets and per-document
   weights. The cache folder is keyed by a hash of the corpus files, the tokenizer and the data
   options, so a second run (or another rank) reuses it.
   With knowledge distillation (`kd=True`), the teacher's stored top-k ids and log-probabilities
   of each completion token (`teacher_topk_ids`/`teacher_topk_logprobs`, see `synth/distill.py`)
   are laid out per token too ([n_tokens, k], -inf where no teacher distribution exists). Where
   the record stores `teacher_token_ids`, those ids are the completion's tokens (plus EOS), so
   the top-k rows line up with them exactly instead of with a re-tokenization of the text. The
   prompt is the context the teacher scored in: its `teacher_prompt_ids` where stored, else its
   `teacher_messages` rendered by the chat template (so the student sees the teacher's template,
   system message and instructions, not the bare prompt text).
2. `PackedRows` cuts a split's token stream into rows of `seq_len` (no padding except the last row).
   For each row it gives position ids that restart at every document start, a document id per token
   (the attention mask lets a token see only earlier tokens of its own document), the targets, and a
   per-token loss weight: 0 where the target lies in another document or is masked out, else the
   document's `weight`.
3. `rows_for_step` is the data order: a seeded permutation of rows per epoch, cut into global
   batches; rank r of w takes its share of each micro-batch. It depends only on (seed, step), so
   resuming at a step continues the exact order, and 1 process × 2 micro-batches sees the same rows
   as 2 processes × 1.

Staged mixes: a `phase` column (the `mix` stage writes 1 on its annealing share, 0 elsewhere) is
honoured by writing the documents of each phase as one contiguous stretch of the token stream,
lowest phase first; each epoch then trains on all rows of phase 0 (shuffled among themselves)
before any row of phase 1, and so on. Only the row that straddles two phases mixes them.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import polars as pl

CACHE_VERSION = 4  # 2: KD completions are the teacher's own token ids; 3: documents grouped by phase;
# 4: KD prompts are the teacher's own context (teacher_prompt_ids / teacher_messages)
SPLITS = ("train", "eval")
RECORD, PHASE = "__record", "phase"


# ---------------------------------------------------------------------------------------------
# reading the corpus


def corpus_files(path: str | Path) -> list[Path]:
    """The parquet/jsonl files of a corpus: `<run dir>/shards/*`, or the folder's own files."""
    folder = Path(path)
    if (folder / "shards").is_dir():
        folder = folder / "shards"
    if folder.is_file():
        return [folder]
    files = sorted(p for p in folder.glob("*") if p.suffix in (".parquet", ".jsonl", ".json"))
    if not files:
        raise FileNotFoundError(f"no .parquet or .jsonl files in {folder} (a run dir's shards/, or a folder of them)")
    return files


def scan(file: Path) -> pl.LazyFrame:
    return pl.scan_parquet(file) if file.suffix == ".parquet" else pl.scan_ndjson(file)


def detect_format(columns: list[str], wanted: str) -> str:
    """text, messages or prompt_completion: `wanted`, or the first whose columns are present."""
    needs = {"text": ["text"], "messages": ["messages"], "prompt_completion": ["prompt", "completion"]}
    if wanted != "auto":
        missing = [c for c in needs[wanted] if c not in columns]
        if missing:
            raise ValueError(f"data.format is {wanted} but the corpus has no column {missing[0]!r} (has {columns})")
        return wanted
    for name in ("messages", "prompt_completion", "text"):
        if all(c in columns for c in needs[name]):
            return name
    raise ValueError(f"the corpus has none of the columns text, messages, prompt+completion (has {columns})")


# ---------------------------------------------------------------------------------------------
# tokenizing one batch of records → (token id lists, loss mask lists)


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def tokenize_text(tokenizer, frame: pl.DataFrame, options: dict) -> tuple[list[list[int]], list[list[int]]]:
    """Plain documents: the text's tokens then EOS, all learned."""
    eos = tokenizer.eos_token_id
    ids = [doc + [eos] for doc in encode(tokenizer, frame["text"].fill_null("").to_list())]
    return ids, [[1] * len(doc) for doc in ids]


def completion_tokens(tokenizer, frame: pl.DataFrame, options: dict) -> list[list[int]]:
    """Each record's completion tokens: with KD, the teacher's own generated ids
    (`teacher_token_ids`) where stored, else the tokenized `completion` text."""
    completions = encode(tokenizer, frame["completion"].fill_null("").to_list())
    if options.get("kd") and "teacher_token_ids" in frame.columns:
        completions = [c if t is None else list(t) for c, t in zip(completions, frame["teacher_token_ids"].to_list())]
    return completions


def prompt_tokens(tokenizer, frame: pl.DataFrame, options: dict) -> list[list[int]]:
    """Each record's prompt tokens: with KD, the context the teacher's top-k were computed in (its
    stored `teacher_prompt_ids`, else its `teacher_messages` rendered by the chat template with the
    generation prompt) where the record has it, else the tokenized `prompt` text."""
    prompts = encode(tokenizer, frame["prompt"].fill_null("").to_list())
    if not options.get("kd"):
        return prompts
    none = [None] * frame.height
    stored = frame["teacher_prompt_ids"].to_list() if "teacher_prompt_ids" in frame.columns else none
    chats = frame["teacher_messages"].to_list() if "teacher_messages" in frame.columns else none
    out = []
    for prompt, ids, chat in zip(prompts, stored, chats):
        if ids:
            out.append(list(ids))
        elif chat:
            turns = [{"role": m["role"], "content": m["content"]} for m in chat]
            out.append(encode(tokenizer, [tokenizer.apply_chat_template(turns, tokenize=False,
                                                                        add_generation_prompt=True)])[0])
        else:
            out.append(prompt)
    return out


def tokenize_prompt_completion(tokenizer, frame: pl.DataFrame, options: dict):
    """prompt + completion + EOS; the prompt is learned only with train_on_prompt."""
    eos = tokenizer.eos_token_id
    prompts = prompt_tokens(tokenizer, frame, options)
    completions = completion_tokens(tokenizer, frame, options)
    prompt_flag = int(options["train_on_prompt"])
    ids = [p + c + [eos] for p, c in zip(prompts, completions)]
    masks = [[prompt_flag] * len(p) + [1] * (len(c) + 1) for p, c in zip(prompts, completions)]
    return ids, masks


def chat_pieces(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """A conversation rendered by the chat template as (text, is_assistant_reply) pieces.

    Each assistant reply is the text between the template rendered up to its generation prompt
    and the template rendered through the reply (so the `<|im_start|>assistant` header is not
    learned, the reply and its end-of-turn marker are)."""
    def render(turns: list[dict], generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)

    pieces, done = [], ""
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        if i == 0:
            raise ValueError("a conversation starts with an assistant message; it needs a prompt before it")
        prompt, through = render(messages[:i], True), render(messages[: i + 1])
        if not (prompt.startswith(done) and through.startswith(prompt)):
            raise ValueError("the tokenizer's chat template does not render conversations prefix by prefix, "
                             "so assistant replies cannot be located; use prompt/completion data instead")
        pieces += [(prompt[len(done):], False), (through[len(prompt):], True)]
        done = through
    rest = render(messages)[len(done):]
    if rest:
        pieces.append((rest, False))
    return pieces


def tokenize_messages(tokenizer, frame: pl.DataFrame, options: dict):
    """Chat conversations through the chat template; only assistant replies are learned
    (with train_on_prompt, every token)."""
    conversations = [chat_pieces(tokenizer, m or []) for m in frame["messages"].to_list()]
    flat_ids = iter(encode(tokenizer, [text for pieces in conversations for text, _ in pieces]))
    ids, masks = [], []
    for pieces in conversations:
        doc_ids, doc_mask = [], []
        for _, learned in pieces:
            piece = next(flat_ids)
            doc_ids += piece
            doc_mask += [int(learned or options["train_on_prompt"])] * len(piece)
        ids.append(doc_ids)
        masks.append(doc_mask)
    return ids, masks


TOKENIZERS = {"text": tokenize_text, "prompt_completion": tokenize_prompt_completion, "messages": tokenize_messages}


APPENDS_EOS = {"text": True, "prompt_completion": True, "messages": False}


def apply_token_keep(frame: pl.DataFrame, ids: list[list[int]], masks: list[list[int]], appended_eos: bool) -> None:
    """Multiply the loss mask by the `token_keep` column (one 0/1 per token of the record, not
    counting the EOS we append); a row without one keeps every token."""
    for k, (record, keep) in enumerate(zip(frame[RECORD], frame["token_keep"].to_list())):
        if keep is None:
            continue
        body = len(ids[k]) - int(appended_eos)
        if len(keep) != body:
            raise ValueError(f"record {record}: token_keep has {len(keep)} entries but the record has "
                             f"{body} tokens with this tokenizer (it must come from the same tokenizer)")
        masks[k] = [m * int(bool(x)) for m, x in zip(masks[k], keep)] + masks[k][len(keep):]


# ---------------------------------------------------------------------------------------------
# the cache


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    template = getattr(tokenizer, "chat_template", None) or ""
    return hashlib.sha256((body + template + str(tokenizer.eos_token_id)).encode()).hexdigest()


def cache_key(files: list[Path], tokenizer, options: dict) -> str:
    listing = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    blob = json.dumps({"files": listing, "tokenizer": tokenizer_fingerprint(tokenizer), "options": options,
                       "version": CACHE_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class TokenSplit:
    """One split of a tokenized corpus, memory-mapped."""

    tokens: np.ndarray       # [n_tokens] uint16/uint32
    loss_mask: np.ndarray    # [n_tokens] uint8, 1 = learn to predict this token
    doc_offsets: np.ndarray  # [n_docs + 1] int64, document d is tokens[doc_offsets[d]:doc_offsets[d+1]]
    doc_weights: np.ndarray  # [n_docs] float32
    doc_phases: np.ndarray   # [n_docs] int64, non-decreasing: the documents of a phase are contiguous
    teacher_ids: np.ndarray | None = None       # [n_tokens, k] int32: the teacher's top-k ids for this token
    teacher_logprobs: np.ndarray | None = None  # [n_tokens, k] float32, -inf where there is no teacher

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_docs(self) -> int:
        return int(self.doc_weights.shape[0])

    @property
    def uniform_weights(self) -> bool:
        return bool(np.all(self.doc_weights == 1.0))

    def phase_token_starts(self) -> dict[int, int]:
        """{phase: offset of its first token}, lowest phase first."""
        phases, first_doc = np.unique(self.doc_phases, return_index=True)
        return {int(p): int(self.doc_offsets[d]) for p, d in zip(phases, first_doc)}


def load_split(folder: Path, split: str, dtype: str, kd_topk: int = 0) -> TokenSplit:
    offsets = np.load(folder / f"{split}.offsets.npy")
    n_tokens = int(offsets[-1])
    documents = {"doc_offsets": offsets, "doc_weights": np.load(folder / f"{split}.weights.npy"),
                 "doc_phases": np.load(folder / f"{split}.phases.npy")}
    teacher = {}
    if n_tokens == 0:
        if kd_topk:
            teacher = {"teacher_ids": np.zeros((0, kd_topk), np.int32), "teacher_logprobs": np.zeros((0, kd_topk), np.float32)}
        return TokenSplit(np.zeros(0, dtype), np.zeros(0, np.uint8), **documents, **teacher)
    if kd_topk:
        teacher = {"teacher_ids": np.memmap(folder / f"{split}.teacher_ids.bin", dtype=np.int32, mode="r",
                                            shape=(n_tokens, kd_topk)),
                   "teacher_logprobs": np.memmap(folder / f"{split}.teacher_logprobs.bin", dtype=np.float32, mode="r",
                                                 shape=(n_tokens, kd_topk))}
    return TokenSplit(
        tokens=np.memmap(folder / f"{split}.tokens.bin", dtype=dtype, mode="r", shape=(n_tokens,)),
        loss_mask=np.memmap(folder / f"{split}.mask.bin", dtype=np.uint8, mode="r", shape=(n_tokens,)),
        **documents,
        **teacher,
    )


class SplitWriter:
    """Appends tokenized documents of one split to flat files."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, kd: bool = False):
        self.folder, self.split, self.dtype = folder, split, dtype
        self.tokens = open(folder / f"{split}.tokens.bin", "wb")
        self.mask = open(folder / f"{split}.mask.bin", "wb")
        self.teacher = (open(folder / f"{split}.teacher_ids.bin", "wb"),
                        open(folder / f"{split}.teacher_logprobs.bin", "wb")) if kd else None
        self.lengths: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self.phases: list[np.ndarray] = []

    def add(self, ids: list[list[int]], masks: list[list[int]], weights: np.ndarray, phases: np.ndarray,
            teacher: list[tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        if not ids:
            return
        if self.teacher is not None:
            for topk_ids, topk_logprobs in teacher:
                self.teacher[0].write(topk_ids.astype(np.int32).tobytes())
                self.teacher[1].write(topk_logprobs.astype(np.float32).tobytes())
        self.tokens.write(np.fromiter(chain.from_iterable(ids), dtype=self.dtype).tobytes())
        self.mask.write(np.fromiter(chain.from_iterable(masks), dtype=np.uint8).tobytes())
        self.lengths.append(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)))
        self.weights.append(weights.astype(np.float32))
        self.phases.append(phases.astype(np.int64))

    def close(self) -> dict:
        self.tokens.close()
        self.mask.close()
        for file in self.teacher or ():
            file.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        np.save(self.folder / f"{self.split}.offsets.npy", offsets)
        np.save(self.folder / f"{self.split}.weights.npy",
                np.concatenate(self.weights) if self.weights else np.zeros(0, np.float32))
        phases = np.concatenate(self.phases) if self.phases else np.zeros(0, np.int64)
        np.save(self.folder / f"{self.split}.phases.npy", phases)
        tokens_per_phase = {int(p): int(lengths[phases == p].sum()) for p in np.unique(phases)}
        return {"docs": int(lengths.size), "tokens": int(offsets[-1]), "tokens_per_phase": tokens_per_phase}


def corpus_phases(files: list[Path]) -> list[int]:
    """The distinct `phase` values of the corpus, lowest first ([0] when no file has the column;
    a record without one is in phase 0)."""
    phases: set[int] = set()
    for file in files:
        if PHASE not in scan(file).collect_schema().names():
            phases.add(0)
            continue
        try:
            values = scan(file).select(pl.col(PHASE).fill_null(0).cast(pl.Int64, strict=True).unique()).collect()
        except pl.exceptions.PolarsError as error:
            raise ValueError(f"{file}: column 'phase' must hold whole numbers (the training phase): {error}") from None
        phases.update(values[PHASE].to_list())
    return sorted(phases)


def record_batches(files: list[Path], columns: list[str], batch_rows: int, phase: int) -> Iterator[pl.DataFrame]:
    """The records of `phase` in slices of `batch_rows`: `columns` (null where a file lacks one),
    their corpus-wide record number in `__record` and their `phase` (0 where missing)."""
    first = 0
    for file in files:
        names = scan(file).collect_schema().names()
        frame = (scan(file).with_row_index(RECORD, offset=first)
                 .select([RECORD] + [c for c in columns + [PHASE] if c in names]).collect())
        first += frame.height
        for extra in (c for c in columns + [PHASE] if c not in names):
            frame = frame.with_columns(pl.lit(None).alias(extra))
        frame = frame.with_columns(pl.col(PHASE).fill_null(0).cast(pl.Int64)).filter(pl.col(PHASE) == phase)
        yield from frame.iter_slices(batch_rows)


def tokenize_corpus(path: str | Path, tokenizer, *, format: str = "auto", train_on_prompt: bool = False,
                    eval_holdout: float = 0.01, seed: int = 0, cache_dir: str | Path | None = None,
                    batch_rows: int = 1024, kd: bool = False, log=print) -> dict[str, TokenSplit]:
    """{"train": TokenSplit, "eval": TokenSplit} for a corpus, tokenizing it on first use."""
    files = corpus_files(path)
    columns = scan(files[0]).collect_schema().names()
    fmt = detect_format(columns, format)
    options = {"format": fmt, "train_on_prompt": train_on_prompt, "eval_holdout": eval_holdout, "seed": seed}
    if kd:
        options["kd"] = True
        if fmt != "prompt_completion":
            raise ValueError(f"{path}: knowledge distillation (kd_weight > 0) needs prompt/completion records "
                             f"with teacher_topk_ids/teacher_topk_logprobs (distill with format: prompt_completion); "
                             f"this corpus is {fmt}")
    root = Path(cache_dir) if cache_dir else Path(path) / "tokens"
    folder = root / cache_key(files, tokenizer, options)
    dtype = "uint16" if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else "uint32"
    if not (folder / "meta.json").is_file():
        write_cache(files, tokenizer, fmt, options, folder, dtype, batch_rows, log)
    meta = json.loads((folder / "meta.json").read_text())
    return {split: load_split(folder, split, meta["dtype"], meta.get("kd_topk", 0)) for split in SPLITS}


def write_cache(files, tokenizer, fmt, options, folder: Path, dtype: str, batch_rows: int, log) -> None:
    n_records = sum(scan(f).select(pl.len()).collect().item() for f in files)
    is_eval = np.zeros(n_records, dtype=bool)
    if options["eval_holdout"] > 0 and n_records > 1:
        n_eval = min(n_records - 1, max(1, math.ceil(options["eval_holdout"] * n_records)))
        is_eval[np.random.default_rng(options["seed"]).choice(n_records, n_eval, replace=False)] = True
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        kd = options.get("kd", False)
        kd_topk = teacher_topk(files) if kd else 0
        kd_stats = {"records": 0, "aligned": 0, "positions": 0, "hits": 0}
        writers = {split: SplitWriter(staging, split, np.dtype(dtype), kd) for split in SPLITS}
        columns = {"text": ["text"], "messages": ["messages"], "prompt_completion": ["prompt", "completion"]}[fmt]
        extra = ["teacher_topk_ids", "teacher_topk_logprobs", "teacher_token_ids", "teacher_prompt_ids",
                 "teacher_messages"] if kd else []
        wanted = columns + ["weight", "token_keep"] + extra
        phases = corpus_phases(files)  # one pass over the files per phase, lowest first
        batches = chain.from_iterable(record_batches(files, wanted, batch_rows, phase) for phase in phases)
        for frame in batches:
            ids, masks = TOKENIZERS[fmt](tokenizer, frame, options)
            if frame["token_keep"].null_count() < frame.height:
                apply_token_keep(frame, ids, masks, APPENDS_EOS[fmt])
            teacher = teacher_rows(tokenizer, frame, ids, kd_topk, kd_stats, options) if kd else None
            weights = frame["weight"].cast(pl.Float32).fill_null(1.0).to_numpy()
            doc_phases = frame[PHASE].to_numpy()
            held = is_eval[frame[RECORD].to_numpy()]
            for split, take in (("train", ~held), ("eval", held)):
                picked = np.flatnonzero(take)
                writers[split].add([ids[i] for i in picked], [masks[i] for i in picked], weights[picked],
                                   doc_phases[picked], [teacher[i] for i in picked] if kd else None)
        if kd:
            check_teacher_alignment(kd_stats)
        counts = {split: writer.close() for split, writer in writers.items()}
        meta = {"dtype": dtype, "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
                "files": [str(f) for f in files], "options": options, "splits": counts, "kd_topk": kd_topk,
                "phases": phases, "kd": kd_stats if kd else None}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            staging.rename(folder)
        except OSError:  # another process finished the same cache first
            if not (folder / "meta.json").is_file():
                raise
        phased = "" if len(phases) == 1 else \
            f", phases {phases} trained in that order ({counts['train']['tokens_per_phase']} tokens)"
        log(f"tokenized {n_records} records ({fmt}) → {counts['train']['tokens']:,} train / "
            f"{counts['eval']['tokens']:,} eval tokens in {folder}{phased}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# teacher distributions for knowledge distillation


def teacher_topk(files: list[Path]) -> int:
    """k of the stored teacher top-k (the length of the first non-empty teacher_topk_ids entry)."""
    for file in files:
        names = scan(file).collect_schema().names()
        missing = [c for c in ("teacher_topk_ids", "teacher_topk_logprobs") if c not in names]
        if missing:
            raise ValueError(f"{file}: kd_weight > 0 needs column {missing[0]!r} (run `distill` with sampling.logprobs)")
        first = (scan(file).select(pl.col("teacher_topk_ids").list.first().list.len().alias("k"))
                 .drop_nulls().head(1).collect())
        if first.height and first["k"][0] > 0:
            return int(first["k"][0])
    raise ValueError(f"no record in {files[0].parent} has teacher top-k log-probabilities")


def teacher_rows(tokenizer, frame: pl.DataFrame, ids: list[list[int]], k: int, stats: dict,
                 options: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per record, [len(ids), k] teacher ids and log-probs: the teacher's i-th generated position
    lands on the i-th completion token (and its end-of-sequence position on the appended EOS).

    The completion tokens are the teacher's own `teacher_token_ids` when stored (exact alignment);
    only records without them fall back to re-tokenizing the completion text, which can split
    differently from what the teacher generated (such records get no KD)."""
    vocab = len(tokenizer)
    completions = completion_tokens(tokenizer, frame, options)
    out = []
    for record, doc, comp, tid, tlp in zip(frame[RECORD], ids, completions, frame["teacher_topk_ids"].to_list(),
                                           frame["teacher_topk_logprobs"].to_list()):
        topk_ids = np.zeros((len(doc), k), np.int32)
        topk_logprobs = np.full((len(doc), k), -np.inf, np.float32)
        out.append((topk_ids, topk_logprobs))
        if not tid:
            continue
        stats["records"] += 1
        try:
            t_ids = np.array(tid, dtype=np.int64)
            t_lp = np.array(tlp, dtype=np.float32)
        except ValueError:
            raise ValueError(f"record {record}: teacher_topk_ids must hold {k} ids per generated token") from None
        if t_ids.ndim != 2 or t_ids.shape[1] != k or t_lp.shape != t_ids.shape:
            raise ValueError(f"record {record}: teacher_topk_ids/teacher_topk_logprobs must both be "
                             f"[tokens, {k}], got {t_ids.shape} and {t_lp.shape}")
        if t_ids.max(initial=0) >= vocab or t_ids.min(initial=0) < 0:
            raise ValueError(f"record {record}: teacher token id {int(t_ids.max())} is outside the student's "
                             f"vocabulary of {vocab}; student and teacher must share one tokenizer")
        n = len(comp)
        if len(t_ids) not in (n, n + 1):
            continue  # the text re-tokenizes differently from what the teacher generated: no KD here
        first = len(doc) - 1 - n  # completion tokens sit just before the appended EOS
        topk_ids[first:first + len(t_ids)] = t_ids
        topk_logprobs[first:first + len(t_ids)] = t_lp
        stats["aligned"] += 1
        stats["positions"] += n
        stats["hits"] += int((t_ids[:n] == np.array(comp, dtype=np.int64)[:, None]).any(axis=1).sum())
    return out


def check_teacher_alignment(stats: dict) -> None:
    """Refuse teacher data that does not fit the student's tokenizer (checked on the tokens themselves:
    the generated completion's own tokens must be among the teacher's top-k at almost every position)."""
    if stats["records"] == 0:
        raise ValueError("kd_weight > 0 but no record has teacher top-k log-probabilities")
    aligned = stats["aligned"] / stats["records"]
    hit_rate = stats["hits"] / max(stats["positions"], 1)
    if aligned < 0.5 or hit_rate < 0.5:
        raise ValueError(
            f"the teacher's top-k tokens do not match the student's tokenizer: {stats['aligned']} of "
            f"{stats['records']} completions re-tokenize to the teacher's length and {hit_rate:.0%} of their tokens "
            "are in the teacher's top-k; student and teacher must share one tokenizer")


# ---------------------------------------------------------------------------------------------
# packing


@dataclass
class Batch:
    """Packed rows, as numpy arrays of shape [rows, seq_len]."""

    input_ids: np.ndarray     # int64
    position_ids: np.ndarray  # int64, restart at 0 at each document start
    doc_ids: np.ndarray       # int32, equal within a document (and within the padding)
    targets: np.ndarray       # int64, the next token
    weights: np.ndarray       # float32, the loss weight of each target (0: not learned)
    learned: np.ndarray       # float32, 1 where the target is learned (the loss denominator)
    teacher_ids: np.ndarray | None = None       # int64 [rows, seq_len, k], the target's teacher top-k ids
    teacher_logprobs: np.ndarray | None = None  # float32 [rows, seq_len, k]
    kd_weights: np.ndarray | None = None        # float32, the target's weight where it has a teacher, else 0

    def to_torch(self, device) -> dict[str, Any]:
        import torch

        names = ["input_ids", "position_ids", "doc_ids", "targets", "weights", "learned"]
        if self.teacher_ids is not None:
            names += ["teacher_ids", "teacher_logprobs", "kd_weights"]
        return {name: torch.from_numpy(getattr(self, name)).to(device, non_blocking=True) for name in names}


class PackedRows:
    """A split's token stream cut into rows of seq_len input tokens (each with its next-token
    targets); documents run across rows, a row's first partial document restarts at position 0."""

    def __init__(self, split: TokenSplit, seq_len: int):
        self.split, self.seq_len = split, seq_len
        self.n_rows = max(0, math.ceil((split.n_tokens - 1) / seq_len))

    @property
    def phase_starts(self) -> list[int]:
        """The first row of each phase, lowest phase first (a row belongs to the phase of its first
        token, so the row straddling a boundary counts to the earlier phase)."""
        starts = [math.ceil(token / self.seq_len) for token in self.split.phase_token_starts().values()]
        return [0] + [row for row in starts[1:] if 0 < row < self.n_rows]

    def batch(self, rows: np.ndarray) -> Batch:
        S, split = self.seq_len, self.split
        shape = (len(rows), S)
        input_ids = np.zeros(shape, np.int64)
        targets = np.zeros(shape, np.int64)
        position_ids = np.tile(np.arange(S, dtype=np.int64), (len(rows), 1))
        doc_ids = np.zeros(shape, np.int32)
        weights = np.zeros(shape, np.float32)
        learned = np.zeros(shape, np.float32)
        kd = split.teacher_ids is not None
        if kd:
            k = split.teacher_ids.shape[1]
            teacher_ids = np.zeros((*shape, k), np.int64)
            teacher_logprobs = np.full((*shape, k), -np.inf, np.float32)
        offsets = split.doc_offsets
        for i, row in enumerate(rows):
            start = int(row) * S
            stop = min(start + S, split.n_tokens - 1)
            n = stop - start
            where = np.arange(start, stop)
            doc = np.searchsorted(offsets, where, side="right") - 1
            target_doc = np.searchsorted(offsets, where + 1, side="right") - 1
            learn = (doc == target_doc) & (split.loss_mask[start + 1: stop + 1] > 0)
            input_ids[i, :n] = split.tokens[start:stop]
            targets[i, :n] = split.tokens[start + 1: stop + 1]
            position_ids[i, :n] = where - np.maximum(offsets[doc], start)
            doc_ids[i, :n] = doc - doc[0]
            doc_ids[i, n:] = doc[-1] - doc[0] + 1  # padding is a document of its own
            learned[i, :n] = learn
            weights[i, :n] = learn * split.doc_weights[target_doc]
            if kd:
                teacher_ids[i, :n] = split.teacher_ids[start + 1: stop + 1]
                teacher_logprobs[i, :n] = split.teacher_logprobs[start + 1: stop + 1]
        if not kd:
            return Batch(input_ids, position_ids, doc_ids, targets, weights, learned)
        kd_weights = weights * np.isfinite(teacher_logprobs).any(axis=-1)
        return Batch(input_ids, position_ids, doc_ids, targets, weights, learned, teacher_ids, teacher_logprobs,
                     kd_weights)


def epoch_order(n_rows: int, epoch: int, seed: int, phase_starts: Sequence[int] = (0,)) -> np.ndarray:
    """Every row once: the rows of each phase (from its start to the next phase's) shuffled among
    themselves, the phases in order."""
    rng = np.random.default_rng([seed, epoch])
    bounds = [*phase_starts, n_rows]
    return np.concatenate([start + rng.permutation(stop - start) for start, stop in zip(bounds, bounds[1:])])


def rows_for_step(n_rows: int, step: int, micro: int, rank: int, world: int, micro_batch: int,
                  grad_accum: int, seed: int, phase_starts: Sequence[int] = (0,)) -> np.ndarray:
    """The rows that `rank` trains on in micro-batch `micro` of optimizer step `step`."""
    global_batch = micro_batch * grad_accum * world
    first = step * global_batch + (micro * world + rank) * micro_batch
    positions = np.arange(first, first + micro_batch)
    epochs, index = np.divmod(positions, n_rows)
    rows = np.empty(micro_batch, np.int64)
    for epoch in np.unique(epochs):
        order = epoch_order(n_rows, int(epoch), seed, phase_starts)
        rows[epochs == epoch] = order[index[epochs == epoch]]
    return rows
