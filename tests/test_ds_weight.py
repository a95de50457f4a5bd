"""DS weight (IWSI) with the real SmolLM2-135M on CPU: shifted self-consistent samples are dropped."""

from __future__ import annotations

import random
import string

import polars as pl
import pytest
import torch

from conftest import make_documents, write_jsonl
from datamill.curate.selection.ds_weight import DSWeightParams, DSWeightSelect
from datamill.curate.engine.stage import DROP_REASON, POSITION


def junk(seed: int) -> str:
    rng = random.Random(seed)
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8))) for _ in range(12))


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("valid")
    write_jsonl(folder / "valid.jsonl", [{"text": make_documents(30, 2)[29]}])
    params = DSWeightParams(valid_path=str(folder / "valid.jsonl"), drop_fraction=0.1, consistent_column="agrees",
                            max_tokens=48)
    stage = DSWeightSelect(params)
    stage.setup()
    return stage


def test_highest_shift_self_consistent_samples_are_dropped(stage):
    texts = make_documents(19, 2) + [junk(1), junk(2)]
    batch = pl.DataFrame({"text": texts, "agrees": [True] * 18 + [False] + [True, True]})
    batch = batch.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(POSITION))
    summary = pl.concat([stage.summarize(batch[:10]), stage.summarize(batch[10:])])  # two shards
    decision = stage.reduce(summary.lazy())
    reasons = decision[DROP_REASON].to_list()
    assert reasons[18] == "not_self_consistent"
    assert reasons[19] == reasons[20] == "distribution_shift"  # round(0.1 × 20 consistent) = 2 dropped
    assert reasons.count(None) == 18
    weight = decision["ds_weight"].to_numpy()
    assert max(weight[19], weight[20]) < weight[:18].min()  # junk is far harder than the valid note
    assert stage.reduce(summary.reverse().lazy()).equals(decision)
    applied = stage.apply(batch, decision)
    assert applied["ds_weight"].to_list() == decision["ds_weight"].to_list()


def test_a_valid_set_over_five_percent_of_the_data_is_refused(stage):
    batch = pl.DataFrame({"text": make_documents(5, 2), "agrees": [True] * 5, POSITION: list(range(5))})
    with pytest.raises(ValueError, match="valid set has 1 records, more than max_valid_fraction=0.05 of the 5"):
        stage.reduce(stage.summarize(batch).lazy())


def test_a_missing_consistency_column_is_named(stage):
    with pytest.raises(ValueError, match="consistent_column 'agrees' is not a column"):
        stage.summarize(pl.DataFrame({"text": ["A short note."], POSITION: [0]}))
