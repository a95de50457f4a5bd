"""The synthesis pipelines end to end with the embedded SmolLM2-135M-Instruct: the self_instruct
recipe runs on generations written into its cache beforehand (a 135M model cannot invent tasks),
so each instruction filter's drop reason lands in quarantine, plus one short real-model smoke run;
distill votes and stores top-k log-probs with the teacher's own token ids; reflect keeps a rewrite
only when IFD prefers it and reversed IFD says it is aligned; the trainer learns from both
outputs. Real generations share one cache folder for the module; they are short to keep it fast
on a CPU."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from datamill.curate.executors.run import run_recipe
from datamill.curate.engine.recipe import validate_recipe
from datamill.synth.cache import GenerationCache, entry_key
from datamill.synth.distill import DistillParams, DistillStage, extract_answer
from datamill.synth.factory import make_generator
from datamill.synth.generation import Completion, GeneratorSpec, SamplingParams
from datamill.synth.reflect import ReflectParams, ReflectStage
from datamill.synth.rouge import rouge_l_matrix, rouge_tokens
from datamill.synth.self_instruct import SelfInstructParams, read_seed_tasks, shipped_seed_file
from datamill.synth.templates import render, user_turn
from datamill.train import train
from datamill.train.metrics import read_run_log

TINY = {"preset": "llama-20m", "overrides": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                            "num_attention_heads": 4, "num_key_value_heads": 2}}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("generations")


def shipped_recipe(name: str, run_dir: Path, cache: Path, edit) -> object:
    """A built-in recipe with the test's output dir, generation cache and edits applied."""
    raw = yaml.safe_load(resources.files("datamill.recipes").joinpath(f"{name}.yaml").read_text())
    raw["output"]["dir"] = str(run_dir)
    edit(raw)
    return validate_recipe(raw, where=name)


def read_frames(folder: Path) -> pl.DataFrame:
    """All parquet and jsonl files under a folder as one frame (empty when there are none)."""
    files = sorted(folder.rglob("*.parquet")) + sorted(folder.rglob("*.jsonl"))
    frames = [pl.read_parquet(f) if f.suffix == ".parquet" else pl.read_ndjson(f) for f in files]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def read_run(run_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(records, quarantined rows) of a finished run."""
    return read_frames(run_dir / "shards"), read_frames(run_dir / "quarantine")


SCRIPTED_TASKS = [  # (one sampled reply to the task prompt, its finish reason, the reason it is dropped)
    ("Describe how a river slowly changes the land around it.", "stop", None),
    ("Explain why bread dough rises when it is left somewhere warm.", "stop", None),  # its output is empty
    ("Give three reasons why people keep a diary every day.", "stop", "count_reached"),
    ("Name one.", "stop", "too_short"),
    ("Draw a simple map of the village near the river.", "stop", "blacklisted_keyword"),
    ("Write a program that sorts the numbers in a list.", "stop", "program_request"),
    ("\"Quoted\" tasks are not allowed to start this way.", "stop", "starts_with_punctuation"),
    ("Écris une courte lettre à un ami qui habite loin.", "stop", "starts_non_ascii"),
    ("Suggest three ways to reduce food waste at home.", "stop", "similar_to_pool"),
    ("Describe the long journey of a salmon from the sea back", "length", "truncated"),
]
SCRIPTED_OUTPUTS = ["Water wears away soft rock and carries soil downstream, so the valley deepens and the banks move.", ""]


@pytest.fixture(scope="module")
def self_instruct_run(tmp_path_factory) -> Path:
    """The shipped recipe, one round, with the generator's replies written into its cache first:
    the pipeline mechanics (parsing, every instruction filter, ROUGE-L, count, output filters,
    records and quarantine) on known generations, as a 135M model cannot invent usable tasks."""
    from datamill.synth.cache import GenerationCache
    from datamill.synth.self_instruct import SelfInstructSource
    from datamill.synth.templates import instruction_prompt

    run_dir, cache = tmp_path_factory.mktemp("self_instruct"), tmp_path_factory.mktemp("scripted_generations")

    def edit(raw):
        raw["sources"][0].update(count=2, prompts_per_round=1, new_per_prompt=len(SCRIPTED_TASKS), max_rounds=1,
                                 input_mode="without_input", generator={"cache_dir": str(cache)},
                                 instruction_sampling={"temperature": 1.0, "max_new_tokens": 32},
                                 output_sampling={"temperature": 0, "max_new_tokens": 24})

    recipe = shipped_recipe("self_instruct", run_dir, cache, edit)
    p = SelfInstructParams.model_validate(recipe.sources[0])
    model_id = make_generator(p.generator).model_id
    store = GenerationCache(cache)
    # the round-0 task prompt, built exactly as the source builds it (same seed, same seed tasks)
    source = SelfInstructSource(p, index=0)
    seeds = read_seed_tasks(shipped_seed_file())
    plain = seeds.filter(seeds["input"].str.strip_chars() == "")["instruction"].to_list()
    chat = user_turn(source._task_prompt("without_input", plain, [], np.random.default_rng(p.seed)))
    asked = p.instruction_sampling.model_copy(update={"n": len(SCRIPTED_TASKS), "seed": p.seed * 1_000_003})
    for k, (text, finish, _) in enumerate(SCRIPTED_TASKS):
        store.put(entry_key(model_id, chat, asked, k), Completion(text, finish, 12))
    answered = p.output_sampling.model_copy(update={"n": 1, "seed": p.seed * 1_000_003})
    kept = pl.DataFrame({"i": [t for t, _, r in SCRIPTED_TASKS if r is None], "n": ["", ""]})
    for prompt, output in zip(kept.select(instruction_prompt(pl.col("i"), pl.col("n"))).to_series(), SCRIPTED_OUTPUTS):
        store.put(entry_key(model_id, user_turn(prompt), answered, 0), Completion(output, "stop", 20))
    run_recipe(recipe, workers=1, resume=False)
    return run_dir


def test_self_instruct_recipe_writes_filtered_sft_records(self_instruct_run):
    records, dropped = read_run(self_instruct_run)
    assert records["instruction"].to_list() == [SCRIPTED_TASKS[0][0]]
    for messages in records["messages"].to_list():
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert [m["content"] for m in messages] == [SCRIPTED_TASKS[0][0], SCRIPTED_OUTPUTS[0]]
    pool = [rouge_tokens(t) for t in read_seed_tasks(shipped_seed_file())["instruction"].to_list()]
    assert rouge_l_matrix([rouge_tokens(SCRIPTED_TASKS[0][0])], pool, workers=1).max() < 0.7
    # every dropped candidate is in quarantine with its reason and the candidate itself
    expected = {text: reason for text, _, reason in SCRIPTED_TASKS if reason} | {SCRIPTED_TASKS[1][0]: "empty_output"}
    got = dict(zip([json.loads(raw)["instruction"] for raw in dropped["raw"].to_list()],
                   dropped["reason"].str.strip_prefix("self_instruct:").to_list()))
    assert got == expected and dropped["reason"].str.starts_with("self_instruct:").all()


def test_self_instruct_smoke_run_with_the_real_model(tmp_path, cache):
    """SmolLM2-135M end to end: the run completes and every candidate is a record or a quarantine row."""
    def edit(raw):
        raw["sources"][0].update(count=1, prompts_per_round=1, new_per_prompt=2, max_rounds=1,
                                 generator={"cache_dir": str(cache)},
                                 instruction_sampling={"temperature": 1.0, "max_new_tokens": 16},
                                 output_sampling={"temperature": 0, "max_new_tokens": 8})

    run_recipe(shipped_recipe("self_instruct", tmp_path / "run", cache, edit), workers=1, resume=False)
    records, dropped = read_run(tmp_path / "run")
    assert records.height + dropped.height >= 2  # two samples, each at least one candidate
    assert records.height <= 1
    if dropped.height:
        assert dropped["reason"].str.starts_with("self_instruct:").all() and dropped["detail"].str.len_chars().min() > 0
        assert all(json.loads(raw)["instruction"].strip() for raw in dropped["raw"].to_list())


def test_train_two_steps_on_self_instruct_output(self_instruct_run, tmp_path):
    result = train({"data": {"path": str(self_instruct_run), "eval_holdout": 0}, "model": TINY,
                    "out_dir": str(tmp_path / "run"), "seq_len": 64, "micro_batch_size": 2, "max_steps": 2,
                    "progress": False, "save_final": False, "tensorboard": False})
    assert result.steps == 2 and result.train_loss is not None and result.train_loss > 0


ARITHMETIC = "Tom has 3 apples and buys 4 more. How many apples does he have now?"


@pytest.fixture(scope="module")
def distilled(cache) -> tuple[DistillStage, pl.DataFrame]:
    stage = DistillStage(DistillParams(generator=GeneratorSpec(cache_dir=str(cache)), rationale=True, vote=True,
                                       sampling=SamplingParams(n=3, temperature=0.7, max_new_tokens=40, logprobs=5),
                                       format="prompt_completion"))
    stage.setup()
    batch = pl.DataFrame({"id": ["math", "story"], "source": ["t", "t"],
                          "text": [ARITHMETIC, "Give one tip for sleeping better."]})
    return stage, stage.score(batch)


def test_distill_votes_and_stores_teacher_topk(distilled):
    stage, out = distilled
    assert out["teacher_model"].to_list() == [stage.generator.model_id] * 2
    assert out["prompt"][0].startswith(ARITHMETIC) and out["completion"].str.len_chars().min() > 0
    # the majority vote, checked against the three cached samples themselves
    asked = [user_turn(render("distill_rationale", prompt=ARITHMETIC))]
    samples = stage.generator.generate(asked, stage.params.sampling)[0]
    complete = pl.Series([c.finish_reason == "stop" for c in samples])
    answers = pl.DataFrame({"t": [c.text.strip() for c in samples]}).select(extract_answer(pl.col("t"))).to_series()
    answers = answers.zip_with(complete, pl.Series([None] * 3, dtype=pl.String))  # a cut reply does not vote
    chosen = out["answer"][0]
    if chosen is None:  # no complete sample gave an "Answer:" line: the record is dropped (truncated / no_answer)
        assert out["agreement"][0] == 0 and answers.null_count() == 3
    else:
        assert out["agreement"][0] == pytest.approx((answers == chosen).sum() / 3)
        assert out["agreement"][0] == pytest.approx(answers.drop_nulls().value_counts()["count"].max() / 3)
    assert out["completion"][0] in [c.text.strip() for c in samples]
    # top-k: k ids per generated token, log-probs sorted and ≤ 0, the sampled token among them
    from datamill.train.model import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    for completion, ids, logprobs in out.select("completion", "teacher_topk_ids", "teacher_topk_logprobs").iter_rows():
        tokens = tokenizer(completion, add_special_tokens=False)["input_ids"]
        assert len(ids) in (len(tokens), len(tokens) + 1) and all(len(row) == 5 for row in ids)
        assert all(lp[0] <= 0 and lp == sorted(lp, reverse=True) for lp in logprobs)
        assert sum(t in row for t, row in zip(tokens, ids)) >= 0.8 * len(tokens)
    # the teacher's own generated ids: one per top-k row (plus the EOS row), almost all among its
    # row's top-5 (a temperature-0.7 sample may fall outside them)
    for ids, generated in out.select("teacher_topk_ids", "teacher_token_ids").iter_rows():
        assert len(generated) > 0 and len(ids) in (len(generated), len(generated) + 1)
        assert sum(t in row for t, row in zip(generated, ids)) >= 0.8 * len(generated)


def test_train_two_steps_with_kd_on_distill_output(distilled, tmp_path):
    _, out = distilled
    (tmp_path / "corpus" / "shards").mkdir(parents=True)
    out.write_parquet(tmp_path / "corpus" / "shards" / "part-00000.parquet")
    result = train({"data": {"path": str(tmp_path / "corpus"), "eval_holdout": 0}, "model": TINY,
                    "out_dir": str(tmp_path / "run"), "seq_len": 64, "micro_batch_size": 2, "max_steps": 2,
                    "log_every": 1, "progress": False, "save_final": False, "tensorboard": False, "kd_weight": 0.5})
    log = read_run_log(tmp_path / "run")
    kd = [r["kd_loss"] for r in log if r["kind"] == "train"]
    assert result.steps == 2 and len(kd) == 2 and all(k > 0 for k in kd)


PAIRS = [  # (instruction, response, the teacher's reply)
    # the original's instruction already contains its response (IFD near 0); the rewrite is a real task
    ("Repeat this sentence: The river floods every spring.", "The river floods every spring.",
     "[New Instruction]\nExplain why rivers often flood in spring.\n[New Response]\nIn spring, snow melts in the "
     "mountains and rain falls on wet ground, so more water reaches the river than its banks can hold."),
    # the rewrite's response has nothing to do with its instruction: its IFD is higher than the
    # original's but still < 1 for a 135M scorer; its reversed IFD is ≥ 1 (misaligned): reverted
    ("Explain why rivers often flood in spring.", "Melting snow and spring rain bring more water than the banks hold.",
     "[New Instruction]\nName the capital of France.\n[New Response]\nMy grandmother keeps three goats and a "
     "bicycle in the old barn behind the church."),
    # an unparseable reply: reverted, no IFD for the rewrite
    ("Give one tip for sleeping better.", "Go to bed at the same time every night.", "I like this answer."),
]


def test_reflect_keeps_a_rewrite_only_when_ifd_prefers_it(tmp_path):
    spec = GeneratorSpec(cache_dir=str(tmp_path / "teacher"))
    stage = ReflectStage(ReflectParams(generator=spec, sampling=SamplingParams(max_new_tokens=64),
                                       format="prompt_completion"))
    # precompute the teacher's replies in its cache: the stage reads them as generations
    model_id = make_generator(spec).model_id
    teacher = GenerationCache(tmp_path / "teacher")
    for q, a, reply in PAIRS:
        chat = user_turn(render("reflect", instruction=q, response=a))
        teacher.put(entry_key(model_id, chat, stage.params.sampling, 0), Completion(reply, "stop", 20))
    stage.setup()
    batch = pl.DataFrame({"id": ["a", "b", "c"], "source": ["t"] * 3,
                          "prompt": [q for q, _, _ in PAIRS], "completion": [a for _, a, _ in PAIRS]})
    out = stage.process(batch)
    assert out["reflected"].to_list() == [True, False, False]
    assert out["ifd_rewrite"][0] > out["ifd_original"][0] and out["rifd_rewrite"][0] < 1.0
    assert out["ifd_rewrite"][1] > out["ifd_original"][1] and out["rifd_rewrite"][1] >= 1.0
    assert out["ifd_rewrite"][2] is None and out["rifd_rewrite"][2] is None
    assert out["prompt"].to_list() == ["Explain why rivers often flood in spring.", PAIRS[1][0], PAIRS[2][0]]
    assert out["completion"][0].startswith("In spring, snow melts") and out["completion"][1] == PAIRS[1][1]
    assert out["id"].to_list() == ["a", "b", "c"]


def test_self_instruct_marks_only_a_cut_sentence_truncated():
    from datamill.synth.self_instruct import parse_numbered

    replies = pl.DataFrame({"text": ["Describe the long journey of a salmon from the sea back",  # cut mid-sentence
                                     "Write a short poem about rain.",  # hit the limit right at the sentence end
                                     "Explain tides in one paragraph.\nTides are caused by the",  # the first line is whole
                                     "1. Name a bird.\n2. Name a tree that", "1. Name a bird.\n2. Name a tree that"],
                            "finish_reason": ["length"] * 4 + ["stop"]})
    got = parse_numbered(replies).select("instruction", "cut_off").rows()
    assert got == [("Describe the long journey of a salmon from the sea back", True),
                   ("Write a short poem about rain.", False), ("Explain tides in one paragraph.", False),
                   ("Name a bird.", False), ("Name a tree that", True), ("Name a bird.", False),
                   ("Name a tree that", False)]


class Scripted:
    """A generator whose replies to each chat are given (text, finish reason) pairs, in order."""

    model_id = "scripted"

    def __init__(self, replies: list[list[tuple[str, str]]]):
        self.replies = replies

    def generate(self, chats, params):
        assert len(chats) == len(self.replies)
        return [[Completion(text, finish, 20) for text, finish in row] for row in self.replies]


def test_distill_drops_truncated_completions_and_reads_only_the_declared_answer():
    """max_new_tokens cut every reasoning short of its "Answer:" line: no list number becomes a label."""
    stage = DistillStage(DistillParams(rationale=True, vote=True, sampling=SamplingParams(n=3, max_new_tokens=24)))
    stage.generator = Scripted([
        [("1. Count the apples.\n2. Add the", "length")] * 3,  # all cut: the record is dropped as truncated
        [("3 + 4 = 7.\nAnswer: 7", "stop"), ("3 + 4 = 7.\nAnswer: 7", "stop"), ("Tom had 3, then 4", "length")],
        [("Step 1 has 2 parts and step 2 has 3.", "stop")] * 3,  # complete, but no declared answer
    ])
    batch = pl.DataFrame({"id": ["cut", "ok", "none"], "source": ["t"] * 3, "text": [ARITHMETIC] * 3})
    out = stage.process(batch)
    assert out["_drop_reason"].to_list() == ["truncated", None, "no_answer"]
    assert out["label"].to_list() == [None, "7", None]
    assert out["agreement"][1] == pytest.approx(2 / 3)  # the cut sample does not vote


class Echo:
    """A backend that answers every chat with its last message reversed, counting what it generates."""

    model_id = "echo"

    def __init__(self):
        self.generated = 0

    def generate(self, chats, params, on_completion=None):
        rows = []
        for i, chat in enumerate(chats):
            rows.append([Completion(chat[-1]["content"][::-1], "stop", 5) for _ in range(params.n)])
            self.generated += params.n
            for s, completion in enumerate(rows[-1]):
                if on_completion is not None:
                    on_completion(i, s, completion)
        return rows


def test_generation_cache_lives_in_the_run_dir_and_fresh_regenerates(tmp_path, monkeypatch):
    from tests.conftest import recipe_dict, write_jsonl

    echo = Echo()
    monkeypatch.setattr("datamill.synth.factory.load_backend", lambda spec: echo)
    monkeypatch.setenv("DATAMILL_CACHE", str(tmp_path / "home_cache"))
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": f"Question {i}: why is the sky blue?"} for i in range(3)])
    recipe = validate_recipe(recipe_dict(str(tmp_path / "in" / "*.jsonl"), str(tmp_path / "run"),
                                         [{"type": "distill", "format": "prompt_completion"}]), where="test")
    run_recipe(recipe, workers=1, resume=False)
    cache = tmp_path / "run" / "state" / "generation_cache"
    assert echo.generated == 3 and len(list(cache.rglob("*.json"))) == 3
    assert not (tmp_path / "home_cache").exists()  # nothing shared between runs unless asked for
    records, _ = read_run(tmp_path / "run")
    assert sorted(records["completion"].to_list()) == sorted(f"Question {i}: why is the sky blue?"[::-1] for i in range(3))
    run_recipe(recipe, workers=1, resume=False)  # --fresh: the run's cache goes with the rest of its state
    assert echo.generated == 6
    (tmp_path / "run" / "stats.json").unlink()
    shutil.rmtree(tmp_path / "run" / "state" / "done")  # a resumed run whose shards must be redone
    run_recipe(recipe, workers=1, resume=True)
    assert echo.generated == 6  # answered from the run's cache
    # the report's synthesis section sums this run dir's tallies: 3 generated after --fresh, then 3 cache hits
    from datamill.curate.report.render import Table
    from datamill.curate.report.synthesis import synthesis_blocks

    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    [table] = [b for b in synthesis_blocks(tmp_path / "run", stats, tmp_path) if isinstance(b, Table)]
    [row] = table.rows
    assert row[0].text == "distill" and row[1:5] == ["6", "50.0%", "3", "15"] and row[6] == "0.0%"
    assert "## Synthesis" in (tmp_path / "run" / "report.md").read_text()


def test_synthesis_report_counts_truncation_votes_and_parse_failures(tmp_path, monkeypatch):
    from datamill.curate.report.render import Facts, Table
    from datamill.curate.report.synthesis import synthesis_blocks
    from tests.conftest import recipe_dict, write_jsonl

    class Voting(Echo):
        def generate(self, chats, params, on_completion=None):
            replies = [("3 + 4 = 7.\nAnswer: 7", "stop"), ("3 + 4 = 7.\nAnswer: 7", "stop"), ("Tom had 3", "length")]
            rows = [[Completion(t, f, 10) for t, f in replies] if "apples" in chat[-1]["content"] else
                    [Completion("1. Count the", "length", 10)] * 3 for chat in chats]
            for i, row in enumerate(rows):
                for s, c in enumerate(row):
                    on_completion(i, s, c)
            return rows

    monkeypatch.setattr("datamill.synth.factory.load_backend", lambda spec: Voting())
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": ARITHMETIC}, {"text": "Count the birds in the tree."}])
    recipe = validate_recipe(recipe_dict(str(tmp_path / "in" / "*.jsonl"), str(tmp_path / "run"), [
        {"type": "distill", "rationale": True, "vote": True, "sampling": {"n": 3, "max_new_tokens": 10}}]), where="t")
    stats = run_recipe(recipe, workers=1, resume=False)
    blocks = synthesis_blocks(tmp_path / "run", stats, tmp_path)
    [table] = [b for b in blocks if isinstance(b, Table)]
    assert table.rows[0][1:8] == ["6", "0.0%", "6", "60", "—" if table.rows[0][5] == "—" else table.rows[0][5],
                                  "66.7%", "truncated 1"]
    facts = dict(next(b for b in blocks if isinstance(b, Facts)).items)
    assert facts["Records with an agreement (vote) score"] == "1" and facts["Mean agreement"] == "0.667"
