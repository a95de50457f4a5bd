"""judge and reward stages on pre-written generations: rating parsing and failure counts, per-aspect
UltraFeedback templates, pairwise verdicts that must survive the position swap, and a local
sequence-classification reward model scored in batches."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from datamill.synth.judge import JudgeParams, JudgeStage, compare, parse_ratings, rate
from datamill.synth.generation import SamplingParams

from scripted_generator import ScriptedGenerator


def test_ratings_are_read_in_the_forms_judges_write_them():
    replies = ["Rating: 7\nRationale: clear.", "**Rating:** 9", "I would give it 8/10.", "Score = 4", "6",
               "Rating: 11", "Rating: 0", "The answer is fine.", "rating (1-10): 3.5", ""]
    parsed = pl.select(parse_ratings(pl.Series(replies), 10).alias("r"))["r"].to_list()
    assert parsed == [7, 9, 8, 4, 6, None, None, None, 3.5, None]


def judge_by_aspect(text: str, k: int, params) -> str:
    """Rates by the response's length, but garbles its honesty ratings and refuses truthfulness."""
    response = text.split("[Response]\n")[1].split("\n\nReply with")[0]
    if "honesty of the response" in text:
        return "Rating: twelve"
    if "truthfulness of the response" in text:
        return "I cannot judge this."
    return f"Rating: {min(10, 1 + len(response.split()))}\nRationale: longer is better here."


def test_absolute_ratings_per_aspect_with_failures_counted():
    generator = ScriptedGenerator(judge_by_aspect)
    table = rate(generator, ["Say hi.", "Describe rain."], ["Hi.", "Water falls from clouds in drops."],
                 ["helpfulness", "honesty", "instruction_following", "truthfulness"], 10, SamplingParams())
    assert table["judge_helpfulness"].to_list() == [2.0, 7.0]
    assert table["judge_honesty"].to_list() == [None, None]
    assert table["judge_failures"].to_list() == [2, 2]
    assert table["judge_score"].to_list() == [2.0, 7.0]  # the mean of the aspects that parsed
    assert len(generator.asked) == 8 and sum("UltraFeedback" in a for a in generator.asked) == 8
    assert "(N from 1 to 10)" in generator.asked[0] and "Score 6: correct and meets" in generator.asked[0]


def test_judge_stage_drops_unparsed_and_low_scores():
    stage = JudgeStage(JudgeParams(aspects=["helpfulness", "truthfulness"], min_score=3))
    stage.generator = ScriptedGenerator(judge_by_aspect)
    batch = pl.DataFrame({"id": ["a", "b"], "prompt": ["Say hi.", "Describe rain."],
                          "completion": ["Hi.", "Water falls from clouds in drops."]})
    out = stage.process(batch)
    assert out["_drop_reason"].to_list() == ["judge_low_score", None]
    stage = JudgeStage(JudgeParams(aspects=["truthfulness"]))
    stage.generator = ScriptedGenerator(judge_by_aspect)
    assert stage.process(batch)["_drop_reason"].to_list() == ["judge_unparsed", "judge_unparsed"]


def pairwise_reply(prefers: str):
    def reply(text: str, k: int, params) -> str:
        a = re.search(r"Assistant A's Answer\]\n(.*)\n\[The End of Assistant A", text, re.S).group(1)
        b = re.search(r"Assistant B's Answer\]\n(.*)\n\[The End of Assistant B", text, re.S).group(1)
        if prefers == "first_slot":
            return "Assistant A is more detailed. [[A]]"
        if prefers == "tie":
            return "Both are equally good. [[C]]"
        if prefers == "none":
            return "Both answers have merit."
        return "The longer one is better. " + ("[[A]]" if len(a) > len(b) else "[[B]]")
    return reply


@pytest.mark.parametrize("prefers,verdicts", [
    ("longer", ["b", "a"]), ("first_slot", ["inconsistent", "inconsistent"]), ("tie", ["tie", "tie"]),
    ("none", ["unparsed", "unparsed"])])
def test_pairwise_verdict_counts_only_if_it_survives_the_swap(prefers, verdicts):
    generator = ScriptedGenerator(pairwise_reply(prefers))
    table = compare(generator, ["Describe rain.", "Say hi."], ["Rain.", "Hello there, nice to meet you!"],
                    ["Water falls from clouds in drops.", "Hi."], SamplingParams())
    assert table["judge_verdict"].to_list() == verdicts
    assert len(generator.asked) == 4  # each pair asked in both orders
    assert "[The Start of Assistant A's Answer]\nRain." in generator.asked[0]
    assert "[The Start of Assistant A's Answer]\nWater falls" in generator.asked[2]


def test_pairwise_stage_drops_inconsistent_verdicts():
    stage = JudgeStage(JudgeParams(mode="pairwise", drop_inconsistent=True))
    stage.generator = ScriptedGenerator(pairwise_reply("first_slot"))
    batch = pl.DataFrame({"id": ["x"], "prompt": ["Say hi."], "response_a": ["Hi."], "response_b": ["Hello!"]})
    out = stage.process(batch)
    assert out["judge_verdict"].to_list() == ["inconsistent"] and out["_drop_reason"].to_list() == ["judge_inconsistent"]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A tiny randomly initialized Llama sequence classifier with SmolLM2's tokenizer, saved as a folder."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from datamill.train.model import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("rm")
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_reward_model_scores_do_not_depend_on_batching(reward_model_dir):
    from datamill.synth.reward import RewardModel, RewardParams, RewardStage

    chats = [[{"role": "user", "content": q}] for q in ("Say hi.", "Describe rain in one long sentence please.", "2+2?")]
    responses = ["Hi.", "Water falls from clouds in drops when the air cools.", "4"]
    one = RewardModel(str(reward_model_dir), batch_size=1).score(chats, responses)
    three = RewardModel(str(reward_model_dir), batch_size=3).score(chats, responses)
    assert np.allclose(one, three, atol=1e-4) and len(set(np.round(one, 5))) == 3
    stage = RewardStage(RewardParams(model=str(reward_model_dir), min_reward=float(np.median(one))))
    stage.setup()
    out = stage.process(pl.DataFrame({"id": ["a", "b", "c"], "prompt": [c[0]["content"] for c in chats],
                                      "completion": responses}))
    assert np.allclose(out["reward"].to_numpy(), one, atol=1e-4)
    assert out["_drop_reason"].null_count() == 2  # one below the median
