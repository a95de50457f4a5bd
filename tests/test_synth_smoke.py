"""One real run of each synthesis stage and loop phase with the packaged SmolLM2-135M-Instruct.

A 135M model cannot judge, evolve or invent tasks well, so these runs check what a user sees
whatever the model writes: the run completes, rows carry the documented columns and provenance,
and every model failure (an unparsable rating, an evolution the elimination rules reject, a
proposal that is not a task, a syllabus without sessions, a wrong answer) is counted or
quarantined with its reason, never raised. One SmolLM2 generator is loaded for the module and
shared by every test; generations are a few tokens long. The LLM2LLM student and the second
ensemble member are a tiny random-weight model; the reward model is a tiny random classifier.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from datamill.synth import llm2llm, rest_em
from datamill.synth.ensemble import INSTRUCTION_REASONS, OUTPUT_REASONS, EnsembleInstructStage, EnsembleParams
from datamill.synth.evol import METHODS, REASONS, EvolInstructStage, EvolParams
from datamill.synth.generation import GeneratorSpec, load_backend
from datamill.synth.glan import GlanParams, GlanSource
from datamill.synth.judge import JudgeParams, JudgeStage
from datamill.synth.reward import RewardParams, RewardStage

from scripted_generator import one_torch_thread, tiny_model_folder  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = ["Give one tip for sleeping well.", "Name a large animal that lives in the sea."]


@pytest.fixture(scope="module")
def smollm(one_torch_thread):  # noqa: F811
    """The packaged SmolLM2-135M-Instruct (converted once into the user cache), uncached."""
    return load_backend(GeneratorSpec(model="smollm2-135m"))


@pytest.fixture(scope="module")
def tiny_generator(tiny_model_folder):  # noqa: F811
    return load_backend(GeneratorSpec(model=str(tiny_model_folder)))


@pytest.fixture(scope="module")
def evolved(smollm) -> pl.DataFrame:
    stage = EvolInstructStage(EvolParams(rounds=1, sampling={"max_new_tokens": 12},
                                         response_sampling={"max_new_tokens": 6}))
    stage.generator = smollm
    return stage.process(pl.DataFrame({"id": ["q0"], "source": ["s"], "instruction": QUESTIONS[:1],
                                       "output": ["Go to bed at the same time every night."]}))


def test_evol_instruct(evolved, smollm):
    assert evolved["id"].to_list() == ["q0", "q0/evol1"]
    assert evolved["evol_round"].to_list() == [0, 1] and set(evolved["evol_model"]) == {smollm.model_id}
    rounds = evolved.filter(pl.col("evol_round") == 1)
    assert set(rounds["evol_method"]) <= set(METHODS) and rounds["evolved_from"].to_list() == QUESTIONS[:1]
    assert set(rounds["_drop_reason"].drop_nulls()) <= set(REASONS)  # a rejected evolution is dropped, not raised
    for row in evolved.filter(pl.col("_drop_reason").is_null()).iter_rows(named=True):
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] and row["output"].strip()


def test_judge_absolute_and_pairwise(evolved, smollm):
    stage = JudgeStage(JudgeParams(aspects=["helpfulness"], sampling={"temperature": 0, "max_new_tokens": 5}))
    stage.generator = smollm
    originals = evolved.filter(pl.col("evol_round") == 0).select("id", "instruction", "output")
    rated = stage.process(originals)
    assert set(rated["judge_model"]) == {smollm.model_id}
    assert rated["judge_failures"].to_list() == rated["judge_helpfulness"].is_null().cast(pl.Int64).to_list()
    assert rated.filter(pl.col("judge_failures") == 1)["_drop_reason"].to_list() == \
        ["judge_unparsed"] * int(rated["judge_failures"].sum())
    assert rated["judge_score"].drop_nulls().is_between(1, 10).all()
    pairwise = JudgeStage(JudgeParams(mode="pairwise", sampling={"temperature": 0, "max_new_tokens": 5}))
    pairwise.generator = smollm
    verdicts = pairwise.process(pl.DataFrame({"id": ["p"], "prompt": [QUESTIONS[0]],
                                              "response_a": ["Keep a regular bedtime and a dark, cool room."],
                                              "response_b": ["Fish."]}))
    assert verdicts["judge_verdict"].to_list()[0] in ("a", "b", "tie", "inconsistent", "unparsed")
    assert {"judge_verdict_first", "judge_verdict_swapped", "judge_model"} <= set(verdicts.columns)


@pytest.fixture(scope="module")
def reward_folder(tmp_path_factory):
    """A tiny random-weight AutoModelForSequenceClassification (one label) with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from datamill.train.model import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, num_labels=1,
                                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("reward")
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_reward_scores_smollm_outputs(evolved, reward_folder):
    rows = evolved.filter(pl.col("_drop_reason").is_null()).select("id", "messages")
    stage = RewardStage(RewardParams(model=str(reward_folder), batch_size=2))
    stage.setup()
    scored = stage.process(rows)
    assert scored["reward"].is_finite().all() and scored.height == rows.height
    assert set(scored["reward_model"]) == {f"reward:{reward_folder.name}"}


def test_ensemble_instruct_outputs_and_proposals(smollm, tiny_generator):
    def stage(**params) -> EnsembleInstructStage:
        s = EnsembleInstructStage(EnsembleParams(generators=[{"model": "smollm2-135m"}, {"model": "tiny"}],
                                                 sampling={"max_new_tokens": 6}, **params))
        s.generators = [smollm, tiny_generator]
        return s

    answered = stage().process(pl.DataFrame({"id": ["a"], "prompt": [QUESTIONS[1]]}))
    assert len(answered["ensemble_outputs"][0]) == 2 and 0 <= answered["ensemble_agreement"][0] <= 1
    assert answered["_drop_reason"].to_list()[0] in (None, *OUTPUT_REASONS)
    seeds = pl.DataFrame({"id": ["s1", "s2"], "instruction": ["Summarize the text in one sentence.", QUESTIONS[0]],
                          "input": ["Cats sleep up to sixteen hours a day and hunt at night.", ""]})
    proposed = stage(propose_instructions=True, instruction_sampling={"max_new_tokens": 12}).process(seeds)
    assert proposed["id"].to_list() == ["s1/ens0", "s1/ens1", "s2/ens0", "s2/ens1"]
    assert proposed["ensemble_proposer"].to_list() == [smollm.model_id, tiny_generator.model_id] * 2
    assert proposed["seed_id"].to_list() == ["s1", "s1", "s2", "s2"]
    assert set(proposed["_drop_reason"].drop_nulls()) <= {*INSTRUCTION_REASONS, *OUTPUT_REASONS}
    for row in proposed.filter(pl.col("_drop_reason").is_null()).iter_rows(named=True):
        assert row["instruction"] and row["messages"][-1]["role"] == "assistant"


def test_glan_from_a_discipline(smollm, tmp_path, monkeypatch):
    monkeypatch.setattr("datamill.synth.glan.make_generator", lambda *a, **k: smollm)
    params = GlanParams(disciplines=["Biology"], subjects_per_discipline=1, sessions=1, questions_per_session=1,
                        subject_sampling={"temperature": 0, "max_new_tokens": 12},
                        syllabus_sampling={"temperature": 0, "max_new_tokens": 20},
                        question_sampling={"max_new_tokens": 10}, answer_sampling={"max_new_tokens": 4})
    source = GlanSource(params, index=0, base_dir=str(tmp_path))
    (shard,) = source.plan()
    (batch,) = list(source.read(shard, 100))
    assert set(batch.quarantine["reason"]) <= {"glan:no_subjects", "glan:no_syllabus", "glan:empty_question",
                                               "glan:empty_answer"}
    assert batch.records.height + batch.quarantine.height >= 1  # something came of it, either way
    if batch.records.height:
        assert set(batch.records["subject_source"]) == {"llm"} and set(batch.records["subject_model"]) == {smollm.model_id}
        assert set(batch.records["discipline"]) == {"Biology"} and batch.records["instruction"].str.len_chars().min() > 0
        assert {"subject", "session", "session_index", "key_concepts", "glan_model", "messages"} <= set(batch.records.columns)


def test_llm2llm_with_the_real_teacher(smollm, tiny_model_folder, tmp_path, monkeypatch):  # noqa: F811
    (tmp_path / "seed.jsonl").write_text("\n".join(json.dumps(s) for s in [
        {"id": "s1", "question": "What is 12 + 30?", "answer": "42"},
        {"id": "s2", "question": "What is 7 + 8?", "answer": "15"}]))
    monkeypatch.setattr(llm2llm, "teacher_generator", lambda cfg, out_dir: smollm)
    summary = llm2llm.run_llm2llm({
        "seed_data": "seed.jsonl", "student": str(tiny_model_folder), "out_dir": str(tmp_path / "out"),
        "iterations": 1, "variants": 1, "student_sampling": {"temperature": 0, "max_new_tokens": 4},
        "teacher_sampling": {"max_new_tokens": 16}, "train": {"max_steps": 1, "micro_batch_size": 2, "seq_len": 32}},
        base_dir=tmp_path, log=lambda *a: None)
    (first,) = summary["iterations"]
    assert 0 <= first["seed_accuracy"] <= 1 and first["targeted"] == len(first["targeted_ids"])
    assert first["added"] + sum(first["dropped"].values()) == first["targeted"]  # one variant per targeted example
    pool = pl.read_parquet(tmp_path / "out" / "iter-0" / "pool.parquet")
    assert pool.columns == ["id", "question", "answer", "solution", "origin", "iteration"]
    assert pool.height == 2 + first["added"] and set(pool["origin"].drop_nulls()) <= set(first["targeted_ids"])
    assert summary["final"]["pool"] == pool.height


def test_rest_em_with_the_real_model(smollm, tmp_path, monkeypatch):
    (tmp_path / "problems.jsonl").write_text(json.dumps({"id": "p1", "question": "What is 2 + 3?", "answer": "5"}))
    original = rest_em.generator_for
    used = []

    def generator_for(model, cfg, out_dir):
        used.append(model)
        return smollm if model == "smollm2-135m" else original(model, cfg, out_dir)

    monkeypatch.setattr(rest_em, "generator_for", generator_for)
    summary = rest_em.run_rest_em({
        "problems": "problems.jsonl", "model": "smollm2-135m", "out_dir": str(tmp_path / "out"), "iterations": 1,
        "samples": 2, "sampling": {"temperature": 0.7, "max_new_tokens": 6},
        "train": {"max_steps": 1, "micro_batch_size": 1, "seq_len": 32}}, base_dir=tmp_path, log=lambda *a: None)
    assert len(summary["pass_at_1"]) == 2 and all(0 <= p <= 1 for p in summary["pass_at_1"])
    first = summary["iterations"][0]
    samples = pl.read_parquet(tmp_path / "out" / "iter-0" / "samples.parquet")
    assert samples.columns == ["id", "sample", "solution", "correct"] and samples.height == 2
    assert first["pass_at_1"] == pytest.approx(float(np.mean(samples["correct"].to_list())))
    assert first["kept"] == samples.filter(pl.col("correct"))["solution"].n_unique()  # distinct correct ones, cap 2
    assert used[1] == first["next_model"] and (first["kept"] == 0) == (used[1] == "smollm2-135m")
