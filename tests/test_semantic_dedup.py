"""Semantic dedup: near-copies and paraphrases of a document go, documents on other topics stay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import recipe_dict, write_jsonl
from datamill.curate.models.embeddings import embedding_series, load_embedder, pooling_mode, resolve_embedding_model
from datamill.curate.dedup.semantic import greedy_near_duplicates  # importing it registers semantic_dedup
from datamill.curate.executors.run import run_recipe
from datamill.curate.engine.recipe import validate_recipe

TOPICS = [
    "Honeybees communicate the location of flowers through a waggle dance. The angle of the dance on the comb "
    "tells the other workers the direction relative to the sun, and its length signals the distance.",
    "The Roman aqueducts carried water across valleys on arches of stone. Engineers kept a gentle, constant slope "
    "over dozens of kilometres so that gravity alone moved the water into the city fountains.",
    "Sourdough bread rises because wild yeasts and lactic acid bacteria ferment the flour. A starter must be fed "
    "regularly with fresh flour and water to keep the culture active.",
    "Black holes form when massive stars collapse at the end of their lives. Nothing, not even light, can escape "
    "from inside the event horizon.",
    "Regular strength training helps older adults keep their muscle mass and bone density. Even two short "
    "sessions a week reduce the risk of falls.",
    "The violin has four strings tuned in fifths. Players change the pitch by pressing the strings against the "
    "fingerboard and produce sound by drawing a bow across them.",
    "Compound interest means that interest is earned on previously earned interest. Over several decades, even "
    "small monthly savings can grow into a substantial sum.",
    "Coral reefs are built by tiny animals called polyps that secrete calcium carbonate skeletons. Rising sea "
    "temperatures cause bleaching, when the corals expel the algae living in their tissues.",
    "A compiler translates source code written in a high-level language into machine instructions. Optimizing "
    "compilers also rearrange the code so that it runs faster.",
    "The French Revolution began in 1789 with the storming of the Bastille. It ended the absolute monarchy and "
    "spread ideas of citizenship and equal rights across Europe.",
    "Tomatoes need at least six hours of direct sunlight a day. Water them deeply at the base of the plant rather "
    "than on the leaves to prevent fungal diseases.",
    "Chess openings are sequences of moves that aim to control the centre of the board. Players study them so "
    "they can develop their pieces quickly and safely.",
    "Volcanic eruptions can cool the global climate for a year or two. Sulphur dioxide reaches the stratosphere "
    "and forms droplets that reflect sunlight back into space.",
    "Marathon runners eat meals rich in carbohydrates in the days before a race. The extra glycogen stored in "
    "their muscles delays the point at which they run out of energy.",
    "The printing press with movable type, developed by Gutenberg around 1440, made books far cheaper. Literacy "
    "rose as printed pamphlets and bibles spread across the continent.",
    "Cats sleep for twelve to sixteen hours a day. Their hunting instinct makes them most active at dawn and "
    "dusk, when their prey is also moving.",
    "Vaccines train the immune system to recognise a pathogen without causing the disease. Memory cells then "
    "respond quickly if the real infection ever arrives.",
    "Wind turbines convert the kinetic energy of moving air into electricity. Offshore wind farms benefit from "
    "stronger and steadier winds than those on land.",
    "Origami is the Japanese art of folding paper into shapes such as cranes and flowers. Traditional models are "
    "made from a single square sheet without cuts or glue.",
    "Glaciers carve U-shaped valleys as they slowly move downhill. When they retreat, they leave behind moraines "
    "of rock and sediment.",
]
PARAPHRASES = {  # topic index -> the same content in other words (cosine about 0.8-0.9)
    0: "Worker honeybees tell each other where flowers are by performing a waggle dance. The direction of the "
    "dance relative to the sun shows where to fly, and the duration shows how far away the food is.",
    3: "When a very massive star dies, it can collapse into a black hole. Inside the event horizon, gravity is so "
    "strong that nothing can get out, not even light.",
    9: "In 1789 the French Revolution started when crowds stormed the Bastille. The revolution abolished absolute "
    "monarchy and carried the ideas of equal rights and citizenship throughout Europe.",
    16: "A vaccine teaches the body's immune system to identify a germ without making the person ill. If the "
    "actual infection comes later, memory cells react to it rapidly.",
}
NEAR_COPIES = {  # topic index -> the same text with a few words changed (cosine above 0.99)
    2: "Sourdough bread rises because wild yeasts and lactic acid bacteria ferment the flour. The starter must be "
    "fed regularly with fresh flour and water to keep the culture alive.",
    7: "Coral reefs are built by tiny animals called polyps, which secrete calcium carbonate skeletons. Rising sea "
    "temperatures cause bleaching, when corals expel the algae that live in their tissues.",
    12: "Volcanic eruptions can cool the global climate for one or two years. Sulphur dioxide reaches the "
    "stratosphere and forms droplets that reflect sunlight back to space.",
    17: "Wind turbines convert the kinetic energy of moving air into electricity. Offshore wind farms benefit from "
    "stronger, steadier winds than those found on land.",
}
CORPUS = TOPICS + list(PARAPHRASES.values()) + list(NEAR_COPIES.values())


def run_semantic(tmp_path: Path, name: str, files: int, **params) -> tuple[pl.DataFrame, dict]:
    """Run a one-stage recipe over CORPUS split into `files` consecutive jsonl shards."""
    raw = tmp_path / name / "raw"
    bounds = np.linspace(0, len(CORPUS), files + 1).astype(int)
    for k in range(files):
        write_jsonl(raw / f"part{k}.jsonl", [{"text": t} for t in CORPUS[bounds[k]:bounds[k + 1]]])
    out = tmp_path / name / "out"
    recipe = validate_recipe(recipe_dict(str(raw / "*.jsonl"), str(out), [{"type": "semantic_dedup", **params}]))
    stats = run_recipe(recipe, workers=1)
    return pl.read_parquet(sorted((out / "shards").glob("*.parquet"))), stats


def test_embeddings_are_unit_vectors_that_place_paraphrases_closest():
    embedder = load_embedder("all-minilm-l6-v2")
    texts = [TOPICS[0], PARAPHRASES[0], TOPICS[5], "Cats sleep a lot."]
    vectors = embedder.embed(texts)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.85  # a paraphrase
    assert similarity[0, 2] < 0.4 and similarity[1, 2] < 0.4  # bees vs violins
    # length-sorted batching gives every text its own vector back, whatever its neighbours
    np.testing.assert_allclose(embedder.embed([texts[3]])[0], vectors[3], atol=1e-5)
    assert embedding_series("e", vectors).dtype == pl.Array(pl.Float32, 384)
    assert embedder.embed([]).shape == (0, 384)


def test_missing_model_folder_is_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        resolve_embedding_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_embedding_model(str(tmp_path / "empty"))


def test_pooling_comes_from_the_model_folder(tmp_path):
    assert pooling_mode(resolve_embedding_model("all-minilm-l6-v2")) == "mean"
    assert pooling_mode(tmp_path) == "mean"  # a plain transformers folder
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text('[{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]')
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true, "include_prompt": true}')
    assert pooling_mode(tmp_path) == "cls"
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_lasttoken": true}')
    with pytest.raises(ValueError, match="pooling_mode_lasttoken"):
        pooling_mode(tmp_path)


def test_near_copies_go_across_shards_with_the_same_decisions_for_any_split(tmp_path):
    three, stats = run_semantic(tmp_path, "three", files=3)
    texts = set(three["text"])
    assert stats["stages"][0]["dropped"] == {"semantic_duplicate": len(NEAR_COPIES)}
    assert three.height == len(CORPUS) - len(NEAR_COPIES)
    for index, copy in NEAR_COPIES.items():  # one of each pair stays (the one farthest from its centroid)
        assert (TOPICS[index] in texts) != (copy in texts)
    assert set(PARAPHRASES.values()) <= texts  # 0.8-0.9 similar: not duplicates at the default 0.95
    assert {TOPICS[i] for i in range(len(TOPICS)) if i not in NEAR_COPIES} <= texts
    survivors = three.filter(pl.col("semantic_max_sim").is_not_null())["semantic_max_sim"]
    assert survivors.max() <= 0.95
    assert three["semantic_cluster"].null_count() == 0 and three["semantic_cluster"].n_unique() > 1

    one, _ = run_semantic(tmp_path, "one", files=1)
    columns = ["text", "semantic_cluster"]
    assert one.select(columns).sort("text").equals(three.select(columns).sort("text"))
    np.testing.assert_allclose(
        one.sort("text")["semantic_max_sim"].fill_null(-1).to_numpy(),
        three.sort("text")["semantic_max_sim"].fill_null(-1).to_numpy(), atol=1e-5)


def test_lower_threshold_flags_paraphrases_and_keep_first_keeps_the_originals(tmp_path):
    corpus, stats = run_semantic(tmp_path, "flag", files=2, threshold=0.75, keep="first", action="flag")
    assert corpus.height == len(CORPUS)  # flag keeps every row
    flagged = corpus.filter(pl.col("semantic_dedup_reason").is_not_null())
    assert set(flagged["text"]) == set(PARAPHRASES.values()) | set(NEAR_COPIES.values())
    assert set(flagged["semantic_dedup_reason"]) == {"semantic_duplicate"}
    assert (flagged["semantic_max_sim"] > 0.75).all()
    assert stats["stages"][0]["flagged"] == {"semantic_duplicate": 8}


def test_only_kept_documents_knock_out_later_ones():
    # A≈B and B≈C but A and C are further apart: B goes, C stays (NeMo would drop C too)
    angles = np.radians([0.0, 16.0, 32.0, 90.0])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    kept, max_sim = greedy_near_duplicates(vectors, threshold=0.95)
    assert kept.tolist() == [True, False, True, True]
    assert np.isnan(max_sim[0])
    np.testing.assert_allclose(max_sim[1:], np.cos(np.radians([16, 32, 58])), atol=1e-6)
