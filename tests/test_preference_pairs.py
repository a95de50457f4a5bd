"""preference_pairs on pre-written generations: best vs worst by judge score, ties and unscored
prompts dropped with their reasons, the ranked list, RSO's rejection sampler, both output formats;
and the pairs are what the DPO trainer reads."""

from __future__ import annotations

import re

import numpy as np
import polars as pl

from datamill.synth.preference import PreferencePairsParams, PreferencePairsStage, rso_accept

from scripted_generator import ScriptedGenerator

SAMPLES = {  # prompt → the policy's 4 samples
    "Describe rain.": ["Rain.", "Water falls from clouds.", "Water falls from clouds in drops when air cools.", ""],
    "Say hi.": ["Hi.", "Hi.", "Hi.", "Hi."],                       # a tie
    "Name a colour.": ["Blue.", "Red is a colour.", "Green.", "Teal."],  # the judge fails on all of these
    "Count to three.": ["1 2 3", "one, two, three", "1", "3"],       # only one sample scores
}


def policy(text: str, k: int, params) -> str:
    return SAMPLES[text][k]


def judge(text: str, k: int, params) -> str:
    response = re.search(r"\[Response\]\n(.*)\n\nReply with", text, re.S).group(1)
    if "colour" in text or ("Count" in text and response != "one, two, three"):
        return "I am not sure."
    return f"Rating: {min(10, len(response.split()) + 1)}"


def stage(**params) -> PreferencePairsStage:
    s = PreferencePairsStage(PreferencePairsParams(judge={"aspects": ["overall"]}, **params))
    s.generator = ScriptedGenerator(policy, "policy")
    s.judge = ScriptedGenerator(judge, "judge")
    return s


def batch() -> pl.DataFrame:
    return pl.DataFrame({"id": [f"r{i}" for i in range(len(SAMPLES))], "prompt": list(SAMPLES)})


def test_best_and_worst_become_chosen_and_rejected_with_reasons_for_the_rest():
    out = stage().process(batch())
    assert out["_drop_reason"].to_list() == [None, "pair_tie", "pair_all_failed", "pair_one_scored"]
    first = out.row(0, named=True)
    assert first["prompt"] == [{"role": "user", "content": "Describe rain."}]
    assert first["chosen"] == [{"role": "assistant", "content": SAMPLES["Describe rain."][2]}]
    assert first["rejected"] == [{"role": "assistant", "content": "Rain."}]
    assert (first["chosen_score"], first["rejected_score"], first["score_margin"]) == (10.0, 2.0, 8.0)
    assert [r["score"] for r in first["ranked"]] == [10.0, 5.0, 2.0]  # the empty sample is unscored
    assert first["n_scored"] == 3 and first["pair_policy"] == "policy" and first["pair_scorer"] == "judge"


def test_standard_format_and_min_margin():
    out = stage(format="standard", min_margin=9).process(batch())
    assert out["prompt"][0] == "Describe rain." and out["chosen"][0] == SAMPLES["Describe rain."][2]
    assert out["_drop_reason"][0] == "pair_small_margin"


def test_rso_accepts_near_the_best_reward_and_is_seeded():
    scores = np.array([0.0, 1.0, 5.0, 5.2, 4.9, -3.0])
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    low_beta = rso_accept(scores, beta=0.1, k=3, rng=rng())
    assert set(low_beta.tolist()) <= {2, 3, 4}  # exp(-5/0.1) never accepts the low ones
    assert np.array_equal(low_beta, rso_accept(scores, beta=0.1, k=3, rng=rng()))
    assert len(rso_accept(scores, beta=1e6, k=6, rng=rng())) == 6  # a huge beta accepts everything
    out = stage(selection="rso", rso_beta=0.01, rso_accept=2).process(batch())
    assert out["_drop_reason"][0] == "pair_rso_too_few"  # only the best sample survives a tiny beta


def test_pairs_are_what_the_dpo_trainer_reads():
    from datamill.train.dpo import tokenize_pairs
    from datamill.train.model import load_tokenizer

    out = stage().process(batch())
    kept = out.filter(pl.col("_drop_reason").is_null())
    pairs, skipped = tokenize_pairs(load_tokenizer("smollm2-135m"), kept, seq_len=256)
    assert len(pairs) == 1 and not skipped
    assert len(pairs.chosen[0]) > len(pairs.rejected[0])  # the long answer vs "Rain."


def test_smoke_with_the_built_in_model(tmp_path):
    """The one real-model run of this feature: SmolLM2-135M samples, MiniLM relevance scores.
    One torch thread: on a box shared with other jobs, spinning intra-op threads make this ~10x slower."""
    import torch

    from datamill.synth.generation import GeneratorSpec

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        params = PreferencePairsParams(generator=GeneratorSpec(cache_dir=str(tmp_path / "cache")),
                                       sampling={"n": 3, "temperature": 1.0, "max_new_tokens": 12}, scorer="relevance")
        real = PreferencePairsStage(params)
        real.setup()
        out = real.process(pl.DataFrame({"id": ["a", "b"], "prompt": ["Give one tip for sleeping well.",
                                                                      "Name a large animal that lives in the sea."]}))
    finally:
        torch.set_num_threads(threads)
    assert "smollm2" in out["pair_policy"][0].lower() and out["pair_scorer"][0] == "relevance:all-minilm-l6-v2"
    for row in out.iter_rows(named=True):
        assert row["n_scored"] >= 1 and all(-1 <= r["score"] <= 1 for r in row["ranked"])
        if row["_drop_reason"] is None:
            assert row["chosen_score"] > row["rejected_score"] and row["chosen"] != row["rejected"]
        else:
            assert row["_drop_reason"] in ("pair_tie", "pair_one_scored")
