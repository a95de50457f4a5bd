"""Self-Instruct pieces a user relies on: ROUGE-L equal to rouge-score's, numbered-list parsing,
the published instruction filters with a reason per dropped candidate, and the shipped seed set."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from rouge_score import rouge_scorer

from datamill.synth.rouge import RougePool, rouge_l_matrix, rouge_tokens
from datamill.synth.self_instruct import (
    SelfInstructParams, first_reason, instruction_rules, parse_numbered, read_seed_tasks, shipped_seed_file,
)

SENTENCES = ["Explain why the sky looks blue during the day.",
             "Explain why the sky looks blue in the daytime.",
             "Write a short poem about the first snow of winter.",
             "List three ways to reduce food waste at home!",
             "Give a synonym for the word happy."]


def test_rouge_l_matches_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    tokens = [rouge_tokens(s) for s in SENTENCES]
    ours = rouge_l_matrix(tokens, tokens, workers=1)
    for i, a in enumerate(SENTENCES):
        for j, b in enumerate(SENTENCES):
            assert ours[i, j] == pytest.approx(scorer.score(b, a)["rougeL"].fmeasure, abs=1e-12)


def test_pool_admits_only_dissimilar_candidates_including_within_a_batch():
    pool = RougePool(SENTENCES[:1])
    admitted, best, similar = pool.admit([SENTENCES[1], SENTENCES[2], "Write a short poem about the first snow."], 0.7)
    assert admitted.tolist() == [False, True, False]
    assert similar[0] == SENTENCES[0] and similar[2] == SENTENCES[2]
    assert best[0] >= 0.7 and len(pool) == 2


def test_numbered_lists_are_parsed_and_a_cut_off_last_item_is_marked():
    completions = pl.DataFrame({
        "text": ["4. Describe a sunset over the sea.\n5) Task: Name two rivers in Europe:\nnot an item\n6. Summarize",
                 "Sure!\n4. Tell me a joke about cats."],
        "finish_reason": ["length", "stop"], "kind": ["without_input", "with_input"]})
    items = parse_numbered(completions)
    assert items["instruction"].to_list() == ["Describe a sunset over the sea.", "Name two rivers in Europe",
                                              "Summarize", "Tell me a joke about cats."]
    assert items["cut_off"].to_list() == [False, False, True, False]


def test_published_filters_name_a_reason_per_candidate():
    frame = pl.DataFrame({"instruction": [
        "Describe the water cycle in simple terms.", "Name rivers.", "Draw a map of your town.",
        "Write a program that sorts numbers.", '"Quoted" tasks start with punctuation here.',
        "Écris une phrase sur la pluie et le vent.", " ".join(["word"] * 151), "Plot the sales figures for March."],
        "cut_off": [False] * 8})
    reasons = frame.select(first_reason(instruction_rules(SelfInstructParams()))).to_series().to_list()
    assert reasons == [None, "too_short", "blacklisted_keyword", "program_request", "starts_with_punctuation",
                       "starts_non_ascii", "too_long", "blacklisted_keyword"]


def test_shipped_seed_set_has_tasks_with_and_without_input(tmp_path):
    seeds = read_seed_tasks(shipped_seed_file())
    assert seeds.height == 30
    with_input = (seeds["input"] != "").sum()
    assert 10 <= with_input <= 20 and seeds["output"].str.len_chars().min() > 0
    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"instruction": "Say hi.", "input": "", "output": "Hi"}\n{"instruction": 3}\n')
    with pytest.raises(ValueError, match=r"seeds.jsonl:2: field 'instruction'"):
        read_seed_tasks(bad)


def test_a_reply_without_a_list_gives_its_first_line_as_one_task():
    completions = pl.DataFrame({"text": ["- New task: Name three birds that live near rivers.\nThey are common.", "  \n"],
                                "finish_reason": ["stop", "length"], "kind": ["without_input"] * 2})
    items = parse_numbered(completions)
    assert items["instruction"].to_list() == ["Name three birds that live near rivers."]
    assert items["cut_off"].to_list() == [False]
