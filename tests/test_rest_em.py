"""ReST-EM on an arithmetic problem set the test generates (known answers): two iterations of
sample → verify → fine-tune the base model, pass@1 reported per iteration, resumable; answer and
code checkers (the code runs in a subprocess with time and memory limits and no sockets)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from datamill.synth import rest_em
from datamill.synth.rest_em import check_solutions, keep_correct, run_rest_em

from scripted_generator import ScriptedGenerator, one_torch_thread, tiny_model_folder  # noqa: F401


def test_answer_checks():
    solutions = ["3 + 4 = 7\nAnswer: 7", "It is 7.0", "Answer: 8", "no idea", "Answer: 1,000"]
    assert check_solutions(solutions, ["7", "7", "7", "7", "1000"], "numeric") == [True, True, False, False, True]
    assert check_solutions(["Answer: Paris.", "answer: paris"], ["Paris", "Lyon"], "exact") == [True, False]


def test_code_runs_with_limits():
    tests = "assert add(2, 3) == 5"
    good = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```"
    assert check_solutions([good, "def add(a, b):\n    return a - b", "while True:\n    pass",
                            "import socket\nsocket.socket()\ndef add(a, b):\n    return a + b",
                            "x = bytearray(2_000_000_000)\ndef add(a, b):\n    return a + b"],
                           [tests] * 5, "code", timeout_s=2, memory_mb=256) == [True, False, False, False, False]


def test_cap_per_problem_keeps_distinct_correct_solutions():
    samples = pl.DataFrame({"id": ["a"] * 4 + ["b"] * 2, "sample": [0, 1, 2, 3, 0, 1],
                            "solution": ["x", "x", "y", "z", "p", "q"], "correct": [True, True, True, True, False, True]})
    kept = keep_correct(samples, cap=2)
    assert kept.select("id", "solution").rows() == [("a", "x"), ("a", "y"), ("b", "q")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")

def test_two_iterations_report_pass_at_1(tmp_path, tiny_model_folder, monkeypatch):
    problems = [{"id": f"p{a}{b}", "question": f"What is {a} + {b}?", "answer": str(a + b)}
                for a, b in [(2, 3), (4, 4), (7, 5), (9, 1)]]
    (tmp_path / "problems.jsonl").write_text("\n".join(json.dumps(p) for p in problems))
    used = []

    def student(model: str, cfg, out_dir):
        """The base model gets the first two problems right on samples 0 and 1; a fine-tuned one
        (trained on those) gets every problem right on samples 0-2 — a stand-in for learning."""
        used.append(model)
        tuned = model != str(tiny_model_folder)

        def reply(text: str, k: int, params) -> str:
            a, b = [int(x) for x in text.split("What is ")[1].split("?")[0].split(" + ")]
            right = (k < 3) if tuned else (k < 2 and a + b < 9)
            return f"{a} + {b} = {a + b if right else a + b + 1}\nAnswer: {a + b if right else a + b + 1}"
        return ScriptedGenerator(reply, model)

    monkeypatch.setattr(rest_em, "generator_for", student)
    config = {"problems": "problems.jsonl", "model": str(tiny_model_folder), "out_dir": str(tmp_path / "out"),
              "iterations": 2, "samples": 4, "max_per_problem": 1,
              "train": {"max_steps": 2, "micro_batch_size": 2, "seq_len": 64, "save_final": True}}
    summary = run_rest_em(config, base_dir=tmp_path, log=lambda *a: None)
    assert summary["pass_at_1"] == [pytest.approx(0.25), pytest.approx(0.75), pytest.approx(0.75)]
    first = summary["iterations"][0]
    assert first["kept"] == 2 and first["problems_solved"] == 2  # capped at one per problem
    sft = pl.read_parquet(tmp_path / "out" / "iter-0" / "sft" / "part-00000.parquet")
    assert sft["messages"].to_list()[0][-1]["content"].endswith("Answer: 5")
    second = summary["iterations"][1]
    assert second["kept"] == 4 and (tmp_path / "out" / "iter-1" / "train" / "final" / "config.json").is_file()
    assert used[1] == first["next_model"] and used[1] != used[0]
    used.clear()
    again = run_rest_em(config, base_dir=tmp_path, log=lambda *a: None)  # finished: nothing runs again
    assert again["pass_at_1"] == summary["pass_at_1"] and used == []
