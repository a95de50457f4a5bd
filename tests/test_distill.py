"""Distillation pieces: final-answer extraction, the self-consistency majority, rationale split,
and the IFD-based reflection's reply parsing."""

from __future__ import annotations

import polars as pl

from datamill.synth.distill import extract_answer, majority, split_rationale
from datamill.synth.reflect import parse_rewrites


def test_final_answers_are_extracted_and_normalized():
    texts = ["6 rows of 7 chairs.\nAnswer: 42.", "First 10, then 1,250 more makes 1,260", "No number here",
             "Step 1: add.\nThe final answer is: Paris"]
    answers = pl.DataFrame({"t": texts}).select(extract_answer(pl.col("t"), number_fallback=True)).to_series().to_list()
    assert answers == ["42", "1260", None, "paris"]
    # by default only the declared "Answer: …" format counts: a list number is not an answer
    declared = pl.DataFrame({"t": texts + ["1. Use a map.\n2. Ask someone.\n3"]}).select(extract_answer(pl.col("t")))
    assert declared.to_series().to_list() == ["42", None, None, "paris", None]
    rationale = pl.DataFrame({"t": texts[:1]}).select(split_rationale(pl.col("t"))).item()
    assert rationale == "6 rows of 7 chairs."


def test_majority_vote_keeps_the_first_sample_of_the_most_common_answer():
    samples = pl.DataFrame({"row": [0, 0, 0, 0, 1, 1, 1, 1], "sample": [0, 1, 2, 3, 0, 1, 2, 3],
                            "answer": ["12", "13", "13", None, None, None, "7", "8"]})
    chosen = majority(samples, 4)
    assert chosen["sample"].to_list() == [1, 2]
    assert chosen["agreement"].to_list() == [0.5, 0.25]


def test_reflection_reply_parsing():
    replies = pl.Series(["[New Instruction]\nName three rivers in France.\n[New Response]\nThe Seine, the Loire and the Rhône.",
                         "I cannot help with that."])
    q, a = parse_rewrites(pl.lit(replies))
    parsed = pl.select(q.alias("q"), a.alias("a"))
    assert parsed.row(0) == ("Name three rivers in France.", "The Seine, the Loire and the Rhône.")
    assert parsed.row(1) == (None, None)
