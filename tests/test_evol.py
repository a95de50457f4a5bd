"""evol_instruct on pre-written generations: each of WizardLM's elimination rules drops its
evolution with its reason, a failed evolution leaves the parent in the pool for the next round,
methods are picked per record and round, and the original is kept as round 0."""

from __future__ import annotations

import polars as pl

from datamill.synth.evol import EvolInstructStage, EvolParams, elimination_reasons, pick_method

from scripted_generator import ScriptedGenerator


def test_each_elimination_rule():
    params = EvolParams()
    parents = ["Describe rain."] * 6
    evolved = ["", "#Rewritten Prompt#: Describe rain in detail.", "Describe: rain!",
               "Describe acid rain and how it forms over industrial regions.",
               "Describe monsoon rain and its effect on farming in South Asia.",
               "Explain why rain falls more often in the mountains than on the plains."]
    responses = [None, None, None, "I'm sorry, I cannot help with that.", "The, and of it!",
                 "Air rises over mountains, cools, and its water vapour condenses into rain."]
    assert elimination_reasons(parents, evolved, responses, params) == [
        "evol_empty", "evol_copied_prompt_words", "evol_no_information_gain", "evol_response_sorry",
        "evol_response_degenerate", None]
    # the paper's own equality test, when the generator was asked
    assert elimination_reasons(parents[:1], evolved[5:], responses[5:], params, [True]) == ["evol_no_information_gain"]


def evolver(text: str, k: int, params) -> str:
    """Evolution prompts: a copy of the prompt for "bread" in round 1 (params.seed is the round),
    an unchanged parent once it has steps, else a longer instruction; anything else is answered."""
    if "#The Given Prompt#:" in text or "#Given Prompt#:" in text:
        given = text.split("Prompt#:\n")[1].split("\n\n#")[0]
        if "bread" in given and params.seed == 1:
            return given.rstrip(".") + " the way #The Given Prompt# says."
        if "steps" in given:
            return given
        return given.rstrip(".") + " in several clear steps with one concrete example each time."
    return "A helpful answer that explains the idea with care and gives a worked example."


def test_rounds_keep_the_parent_after_a_failure():
    stage = EvolInstructStage(EvolParams(rounds=2, methods=["constraints"]))
    stage.generator = ScriptedGenerator(evolver)
    batch = pl.DataFrame({"id": ["r", "b"], "source": ["s", "s"],
                          "instruction": ["Describe rain.", "Explain bread."], "output": ["Rain is water.", ""]})
    out = stage.process(batch)
    assert out["id"].to_list() == ["r", "r/evol1", "r/evol2", "b", "b/evol1", "b/evol2"]
    assert out["_drop_reason"].to_list() == [None, None, "evol_no_information_gain",
                                             None, "evol_copied_prompt_words", None]
    # round 2 of "b" evolved the original again, since round 1 failed
    assert out.filter(pl.col("id") == "b/evol2")["evolved_from"].item() == "Explain bread."
    assert out["evol_method"].to_list()[1] == "constraints" and out["source"].to_list() == ["s"] * 6
    kept = out.filter(pl.col("_drop_reason").is_null())
    assert kept["messages"].to_list()[1][0]["content"].startswith("Describe rain in several clear steps")
    assert kept.filter(pl.col("id") == "b")["output"].item().startswith("A helpful answer")  # answered when empty


def test_methods_are_seeded_per_record_and_round():
    methods = ["constraints", "deepen", "concretize", "reasoning", "breadth"]
    picks = {pick_method(methods, f"r{i}", r, 0) for i in range(20) for r in range(1, 5)}
    assert picks == set(methods)
    assert pick_method(methods, "r1", 1, 0) == pick_method(methods, "r1", 1, 0)


def data_adder(text: str, k: int, params) -> str:
    """complicate_input prompts: the instruction with a block of the data kind it was asked for."""
    if "#The Given Prompt#:" in text:
        kind = text.split("small, concrete piece of ")[1].split(" that the task")[0]
        given = text.split("Prompt#:\n")[1].split("\n\n#")[0]
        return f"{given.rstrip('.')} for the records below, using every field.\nData ({kind}): id=1 name=ada; id=2 name=bob"
    return "Record 1 is ada and record 2 is bob, so both names are listed and used in the answer."


def test_complicate_input_adds_data_of_a_seeded_kind():
    params = EvolParams(rounds=2, methods=["complicate_input"], input_formats=["XML data", "CSV data"])
    stage = EvolInstructStage(params)
    stage.generator = ScriptedGenerator(data_adder)
    batch = pl.DataFrame({"id": [f"r{i}" for i in range(6)], "instruction": [f"List the names {i}." for i in range(6)]})
    out = stage.process(batch).filter(pl.col("evol_round") > 0)
    assert out["evol_method"].unique().to_list() == ["complicate_input"]
    assert set(out["evol_input_format"]) == {"XML data", "CSV data"}  # picked per record and round
    assert out["_drop_reason"].null_count() == out.height
    for row in out.iter_rows(named=True):
        assert f"Data ({row['evol_input_format']})" in row["instruction"]
    asked = [a for a in stage.generator.asked if "#The Given Prompt#:" in a]
    assert len(asked) == 12 and all("10 to 20 words" not in a for a in asked)  # its own template, not the depth one
    again = EvolInstructStage(params)
    again.generator = ScriptedGenerator(data_adder)
    assert again.process(batch).filter(pl.col("evol_round") > 0)["evol_input_format"].to_list() == \
        out["evol_input_format"].to_list()
    # the default method list holds all five in-depth operations and in-breadth
    assert EvolParams().methods == ["constraints", "deepen", "concretize", "reasoning", "complicate_input", "breadth"]
