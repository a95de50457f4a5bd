"""ensemble_instruct on pre-written generations from three "models": the ROUGE-L consensus keeps
the output the others agree with, majority voting keeps the most common final answer, and
disagreement, empty outputs and answerless outputs are dropped with their reasons."""

from __future__ import annotations

import polars as pl
import pytest

from datamill.synth.ensemble import EnsembleInstructStage, EnsembleParams, greedy_consensus

from scripted_generator import ScriptedGenerator

ANSWERS = {  # prompt → what models a, b and c reply
    "Why is the sky blue?": ["Air scatters blue light more than red light, so the sky looks blue.",
                             "Blue light is scattered more by the air than red light, so we see a blue sky.",
                             "Because of the ocean."],
    "What is 6 times 7?": ["6 times 7 is 42.", "Answer: 42", "I think it is 48."],
    "Name a fruit.": ["Apple.", "Zebra crossing lights blink at night.", "Quantum chromodynamics explains quarks."],
    "Say nothing.": ["", "", ""],
}


def stage(**params) -> EnsembleInstructStage:
    s = EnsembleInstructStage(EnsembleParams(generators=[{"model": "a"}, {"model": "b"}, {"model": "c"}], **params))
    s.generators = [ScriptedGenerator(lambda text, k, p, m=m: ANSWERS[text][m], f"model-{'abc'[m]}") for m in range(3)]
    return s


def batch() -> pl.DataFrame:
    return pl.DataFrame({"id": [str(i) for i in range(len(ANSWERS))], "prompt": list(ANSWERS)})


def test_rouge_consensus_keeps_the_agreed_output():
    out = stage(format="prompt_completion", min_agreement=0.3).process(batch())
    assert out["_drop_reason"].to_list() == [None, "ensemble_disagree", "ensemble_disagree", "ensemble_empty"]
    assert out["ensemble_model"][0] in ("model-a", "model-b")  # the two that agree, never "the ocean"
    assert out["completion"][0] == ANSWERS["Why is the sky blue?"]["abc".index(out["ensemble_model"][0][-1])]
    assert out["ensemble_agreement"][0] > 0.3 and out["ensemble_outputs"][0].to_list() == ANSWERS["Why is the sky blue?"]


def test_majority_keeps_the_most_common_answer():
    out = stage(consensus="majority", min_agreement=0.6).process(batch())
    assert out["ensemble_model"][1] == "model-a" and out["ensemble_agreement"][1] == pytest.approx(2 / 3)
    assert out["messages"][1].to_list()[-1] == {"role": "assistant", "content": "6 times 7 is 42."}
    assert out["_drop_reason"].to_list()[1:] == [None, "ensemble_no_answer", "ensemble_empty"]


def test_greedy_is_the_papers_rule_exact_match_then_best_rouge_sum_with_a_worst_pair_floor():
    out = stage(consensus="greedy").process(batch())
    assert out["_drop_reason"].to_list() == [None, "ensemble_disagree", "ensemble_disagree", "ensemble_empty"]
    assert out["ensemble_model"][0] in ("model-a", "model-b")  # highest summed ROUGE-L, never "the ocean"
    assert 0.01 < out["ensemble_agreement"][0] < 0.2  # the worst pair (the ocean vs the others) clears 0.01
    assert stage(consensus="greedy", min_agreement=0.5).process(batch())["_drop_reason"][0] == "ensemble_disagree"
    picks, agreement = greedy_consensus([["No idea.", "The answer is 42!", "the answer is  42"], ["", "", "x"]])
    assert picks == [1, 2] and agreement[0] == 1.0  # an exact match after normalization wins outright


def test_one_generator_is_not_an_ensemble():
    with pytest.raises(ValueError, match="at least two generators"):
        EnsembleParams(generators=[{"model": "a"}])


PROPOSALS = {  # the seed shown first in the proposal prompt → what models a, b and c propose
    "Summarize the text.": ["Instruction: Translate the sentence into French.\nInput: The cat sleeps.\nOutput: Le chat dort.",
                            "Instruction: Rewrite this in the past tense.\nInput: The dog runs.",
                            "Instruction: Count the words in the sentence."],  # no input for an input task
    "Give three tips for sleeping well.": ["Instruction: Give three tips for sleeping well at night.",  # the seed again
                                           "Sure! Write a poem.",  # no Instruction: line
                                           "**Instruction:** Write a short poem about the sea.\nInput: <noinput>"],
    "Name a prime number.": ["Instruction: List two countries in Africa.\nInstruction: Name a bird.",
                             "Instruction: List two countries in Africa.",  # the same as model a's
                             "Instruction: Explain how rainbows form."],
}
REPLIES = {
    "Translate the sentence into French.\n\nThe cat sleeps.": ["Le chat dort.", "Le chat dort.", "Die Katze schläft."],
    "Rewrite this in the past tense.\n\nThe dog runs.": ["The dog ran.", "The dog ran.", "The dog ran."],
    "Write a short poem about the sea.": ["The sea is wide and blue.", "The sea is wide and blue today.", ""],
    "List two countries in Africa.": ["Kenya and Ghana.", "Kenya and Ghana.", "Peru and Chile."],
    "Explain how rainbows form.": ["Sunlight bends in raindrops and splits into colours.",
                                   "Light bends in raindrops and splits into its colours.", "Bananas are yellow."],
}


def proposer(m: int):
    def reply(text: str, k: int, params) -> str:
        if text.startswith("Below are example tasks"):
            first = text.split("Instruction: ")[1].split("\n")[0]
            return PROPOSALS[first][m]
        return REPLIES[text][m]
    return reply


def proposal_stage(**params) -> EnsembleInstructStage:
    s = EnsembleInstructStage(EnsembleParams(generators=[{"model": "a"}, {"model": "b"}, {"model": "c"}],
                                             propose_instructions=True, **params))
    s.generators = [ScriptedGenerator(proposer(m), f"model-{'abc'[m]}") for m in range(3)]
    return s


def seeds() -> pl.DataFrame:
    return pl.DataFrame({"id": ["s1", "s2", "s3"], "source": ["seed"] * 3, "instruction": list(PROPOSALS),
                         "input": ["Cats sleep a lot.", None, ""]})


def test_generators_propose_tasks_that_are_parsed_checked_for_novelty_and_answered_by_all():
    stage = proposal_stage(min_agreement=0.4)
    out = stage.process(seeds())
    assert out["id"].to_list() == ["s1/ens0", "s1/ens1", "s1/ens2", "s2/ens0", "s2/ens1", "s2/ens2",
                                   "s3/ens0", "s3/ens1", "s3/ens2"]
    assert out["_drop_reason"].to_list() == [
        None, None, "ensemble_instruction_unparsed",
        "ensemble_instruction_duplicate", "ensemble_instruction_unparsed", None,
        None, "ensemble_instruction_duplicate", None]
    kept = out.filter(pl.col("_drop_reason").is_null())
    assert kept["instruction"].to_list()[0] == "Translate the sentence into French."  # its Output: line cut off
    assert kept["input"].to_list() == ["The cat sleeps.", "The dog runs.", "", "", ""]
    assert kept["instruction"].to_list()[3] == "List two countries in Africa."  # only the first task of a reply
    assert kept["ensemble_proposer"].to_list() == ["model-a", "model-b", "model-c", "model-a", "model-c"]
    assert kept["seed_id"].to_list() == ["s1", "s1", "s2", "s3", "s3"] and set(kept["source"]) == {"seed"}
    assert kept["messages"].to_list()[0] == [{"role": "user", "content": "Translate the sentence into French.\n\nThe cat sleeps."},
                                             {"role": "assistant", "content": "Le chat dort."}]
    assert kept["ensemble_outputs"].to_list()[1] == ["The dog ran."] * 3
    assert kept["text"][1] == "Rewrite this in the past tense.\n\nThe dog runs.\n\nThe dog ran."
    assert out.filter(pl.col("id") == "s2/ens1")["text"].item() == "Sure! Write a poem."
    assert out.filter(pl.col("id") == "s2/ens0")["instruction_novelty_rouge"].item() >= 0.7
    # the type of each seed picks the template: input tasks are shown with their input
    asked = stage.generators[0].asked
    assert "Input: Cats sleep a lot." in asked[0] and "Input:" not in asked[1].split("in exactly this format")[0]


def test_output_disagreement_still_drops_a_kept_task():
    out = proposal_stage(min_agreement=0.9).process(seeds())
    assert out.filter(pl.col("id") == "s3/ens2")["_drop_reason"].item() == "ensemble_disagree"


def test_instruction_consensus_keeps_the_proposal_the_generators_agree_on():
    out = proposal_stage(instruction_consensus="rouge", instruction_min_agreement=0.2).process(seeds())
    assert out["_drop_reason"].to_list() == [
        None, "ensemble_instruction_outvoted", "ensemble_instruction_unparsed",
        "ensemble_instruction_disagree", "ensemble_instruction_unparsed", "ensemble_instruction_disagree",
        None, "ensemble_instruction_outvoted", "ensemble_instruction_outvoted"]
    s3 = out.filter(pl.col("seed_id") == "s3")["instruction_agreement"].to_list()
    assert s3[0] == pytest.approx(s3[1]) and s3[0] > s3[2]


def test_a_recipe_run_writes_kept_tasks_and_keeps_dropped_proposals_with_reasons(tmp_path, monkeypatch):
    from datamill.curate.engine.recipe import validate_recipe
    from datamill.curate.executors.run import run_recipe

    seeds().write_ndjson(tmp_path / "seeds.jsonl")
    made = iter(ScriptedGenerator(proposer(m), f"model-{'abc'[m]}") for m in range(3))
    monkeypatch.setattr("datamill.synth.ensemble.make_generator", lambda *a, **k: next(made))
    recipe = validate_recipe({
        "name": "ensemble", "sources": [{"type": "jsonl", "path": str(tmp_path / "seeds.jsonl"), "text_field": "instruction",
                                         "columns": {"instruction": "str", "input": "str"}}],
        "stages": [{"type": "ensemble_instruct", "generators": [{"model": "a"}, {"model": "b"}, {"model": "c"}],
                    "propose_instructions": True, "min_agreement": 0.4}],
        "output": {"dir": str(tmp_path / "run"), "keep_removed": True}}, where="test")
    run_recipe(recipe, workers=1, resume=False)
    kept = pl.concat([pl.read_parquet(f) for f in sorted((tmp_path / "run" / "shards").rglob("*.parquet"))])
    removed = pl.concat([pl.read_parquet(f) for f in sorted((tmp_path / "run" / "removed").rglob("*.parquet"))])
    assert sorted(kept["id"].str.split("/").list.last()) == ["ens0", "ens0", "ens1", "ens2", "ens2"]
    assert kept["seed_id"].n_unique() == 3 and kept["messages"].list.len().min() == 2
    assert removed.height == 4 and set(removed["ensemble_status"]) == {"ensemble_instruction_unparsed",
                                                                      "ensemble_instruction_duplicate"}
