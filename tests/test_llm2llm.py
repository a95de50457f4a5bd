"""LLM2LLM on pre-written generations: the student (really fine-tuned, a tiny model) is evaluated
on the seed set only, the teacher writes variants of exactly the examples it got wrong, duplicates
of the pool and unparsable replies are dropped, and the pool grows over two iterations."""

from __future__ import annotations

import json

import polars as pl
import pytest

from datamill.synth import llm2llm
from datamill.synth.llm2llm import parse_variants, run_llm2llm

from scripted_generator import ScriptedGenerator, one_torch_thread, tiny_model_folder  # noqa: F401


def test_variant_parsing():
    assert parse_variants(["Question: What is 3 + 9?\nAnswer: 12", "question: Name a river\n\nCorrect answer: Nile.",
                           "I cannot think of one."]) == [("What is 3 + 9?", "12"), ("Name a river", "Nile."), None]


pytestmark = pytest.mark.usefixtures("one_torch_thread")

def test_two_iterations_target_only_wrong_seed_examples(tmp_path, tiny_model_folder, monkeypatch):
    seed = [{"id": "s1", "question": "What is 2 + 2?", "answer": "4"},
            {"id": "s2", "question": "What is 17 + 25?", "answer": "42"},
            {"id": "s3", "question": "What is 3 + 1?", "answer": "4"}]
    (tmp_path / "seed.jsonl").write_text("\n".join(json.dumps(s) for s in seed))
    asked_student = []

    def student(model, cfg, out_dir):
        def reply(text: str, k: int, params) -> str:
            asked_student.append(text)
            a, b = [int(x) for x in text.split("What is ")[1].split("?")[0].split(" + ")]
            return f"Answer: {a + b if a + b < 10 else a + b + 1}"  # wrong on the big sum only
        return ScriptedGenerator(reply, "student")

    def teacher(cfg, out_dir):
        def reply(text: str, k: int, params) -> str:
            if k == 0:
                return "Question: What is 18 + 26?\nAnswer: 44"  # the same variant every iteration: a duplicate later
            if k == 1:
                return ["Question: What is 20 + 32?\nAnswer: 52",
                        "Question: A farmer has 21 cows and buys 32 more. How many cows are there now?\nAnswer: 53"
                        ][params.seed]  # the teacher's sampling seed is the iteration
            return "Let me think about it."
        return ScriptedGenerator(reply, "teacher")

    monkeypatch.setattr(llm2llm, "student_generator", student)
    monkeypatch.setattr(llm2llm, "teacher_generator", teacher)
    config = {"seed_data": "seed.jsonl", "student": str(tiny_model_folder), "out_dir": str(tmp_path / "out"),
              "iterations": 2, "variants": 3,
              "train": {"max_steps": 1, "micro_batch_size": 2, "seq_len": 64}}
    summary = run_llm2llm(config, base_dir=tmp_path, log=lambda *a: None)
    first, second = summary["iterations"]
    assert first["targeted_ids"] == ["s2"] and first["seed_accuracy"] == pytest.approx(2 / 3)
    assert first["added"] == 2 and first["dropped"] == {"unparsed": 1, "duplicate": 0}
    assert second["targeted_ids"] == ["s2"]  # evaluated on the seed set only, never on added variants
    assert second["added"] == 1 and second["dropped"] == {"unparsed": 1, "duplicate": 1}
    assert len(asked_student) == 6  # 3 seed questions per iteration
    pool = pl.read_parquet(tmp_path / "out" / "iter-1" / "pool.parquet")
    assert pool.height == 6 and set(pool["origin"].drop_nulls()) == {"s2"}
    assert summary["final"]["pool"] == 6 and (tmp_path / "out" / "final" / "train" / "final" / "config.json").is_file()
