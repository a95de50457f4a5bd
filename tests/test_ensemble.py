"""ensemble_instruct on pre-written generations from three "models": the ROUGE-L consensus keeps
the output the others agree with, majority voting keeps the most common final answer, and
disagreement, empty outputs and answerless outputs are dropped with their reasons."""

from __future__ import annotations

import polars as pl
import pytest

from datamill.synth.ensemble import EnsembleInstructStage, EnsembleParams

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


def test_one_generator_is_not_an_ensemble():
    with pytest.raises(ValueError, match="at least two generators"):
        EnsembleParams(generators=[{"model": "a"}])
