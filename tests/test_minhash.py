"""MinHash LSH near-duplicate removal: datasketch-identical signatures, clustering, keep rules,
shard independence and Jaccard verification."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import xxhash
from datasketch import MinHash
from datasketch.lsh import _optimal_param
from pydantic import ValidationError

from datamill.curate.dedup.components import connected_components
from datamill.curate.dedup.minhash import MinHasher, band_hashes, optimal_bands_rows, text_signatures
from datamill.curate.dedup.minhash_stage import MinHashDedup, MinHashDedupParams
from datamill.curate.dedup.shingles import Shingler

LIBRARY = (
    "The city council voted on Tuesday evening to extend the opening hours of the central library, which "
    "will now stay open until nine o'clock on weekdays and until six on Saturdays. Librarians said the change "
    "follows a survey in which more than two thousand residents asked for evening access, mostly students "
    "preparing for exams and parents who work late shifts. The extra hours will be paid for by savings from a "
    "new heating system installed last winter, and no additional staff will be hired before the end of the year."
)
BREAD = (
    "To bake a simple loaf of bread, mix five hundred grams of flour with ten grams of salt and seven grams of "
    "dried yeast, then add about three hundred and fifty millilitres of warm water. Knead the dough for ten "
    "minutes until it feels smooth and elastic, cover it with a damp cloth and leave it somewhere warm for an "
    "hour. When it has doubled in size, shape it gently, place it in a greased tin and bake it at two hundred "
    "degrees for thirty to thirty five minutes, then let it cool on a rack before you slice it."
)
MOON = (
    "Astronomers have found that the small moon orbiting the distant dwarf planet is far darker than expected, "
    "reflecting less than five percent of the sunlight that reaches it. The team used observations made over "
    "three years with a large ground-based telescope and compared them with earlier images from a space probe. "
    "They believe the surface is covered with a thin layer of dust rich in carbon compounds, and they plan to "
    "test this idea when the moon passes in front of a bright star next spring."
)
BICYCLE = (
    "Before you replace the chain on a bicycle, count the links on the old one and check which kind of "
    "drivetrain you have, because chains for eleven-speed gears are narrower than those for eight-speed gears. "
    "Shift onto the smallest cog at the back, open the quick link or push out a pin with a chain tool, and "
    "thread the new chain through the derailleur exactly as the old one ran. Finally, check that the gears "
    "change smoothly before taking the bike out on the road."
)
DISTINCT = [
    "The museum reopened its east wing after two years of repairs to the roof and the old glass ceiling.",
    "Most tomato plants need at least six hours of direct sunlight a day and deep watering twice a week.",
    "She missed the last train home, so she walked along the river and watched the lights of the bridge.",
    "A prime number has exactly two divisors: one and itself. The number one is therefore not prime.",
    "The recipe calls for two eggs, a cup of milk and a pinch of nutmeg, whisked until the batter is smooth.",
    "Our hotel room overlooked the harbour, where fishing boats came in every morning just after dawn.",
    "If the printer reports a paper jam, open the rear panel and gently pull out any sheet that is stuck.",
    "The treaty was signed in the spring of that year, ending a dispute over fishing rights that had lasted decades.",
    "Children learn languages faster when they hear them spoken at home, according to a long study of families.",
    "He replaced the kitchen tap himself, though it took three trips to the hardware store to find the right washer.",
    "The orchestra closed the concert with a slow movement that left the hall completely silent for a moment.",
    "Volcanic soil is often very fertile, which is why farms cling to the slopes of active volcanoes.",
    "Please remember to bring a packed lunch, a water bottle and sturdy shoes for the school trip on Friday.",
    "The software update fixes a bug that caused the calendar to show meetings one hour late after the clocks changed.",
    "Bees communicate the direction of flowers to each other through a short dance inside the hive.",
    "The marathon route passes the cathedral, crosses the old stone bridge twice and finishes in the main square.",
    "When the power went out, the whole street gathered on the pavement and someone brought out a guitar.",
    "Interest rates were left unchanged this month, but the bank warned that prices are still rising quickly.",
    "The lighthouse keeper wrote in his log every night, noting the wind, the weather and every passing ship.",
    "Good morning, everyone.",
    "Wash the lentils, simmer them with onion and cumin for twenty minutes, and season with lemon juice at the end.",
    "The committee will publish its final report in March, after hearing evidence from farmers and scientists.",
    "A good night's sleep improves memory, mood and concentration more than any supplement on the market.",
    "The ferry to the island runs three times a day in summer but only once on winter weekdays.",
]
LIBRARY_EDITED = LIBRARY.replace("Tuesday", "Monday").replace("two thousand", "three thousand")
BREAD_EDITED = BREAD.replace("Knead the dough for ten", "Knead the dough for twelve")
MOON_EDITED = MOON.replace("three years", "four years").replace("next spring", "next autumn")
BICYCLE_LONGER = BICYCLE + " Wipe off any extra oil with a clean rag."

PLANTED = {
    # first occurrence (kept) → copies placed later in the corpus (dropped)
    "library": [LIBRARY, LIBRARY_EDITED],
    "bread": [BREAD, BREAD_EDITED, BREAD],
    "moon": [MOON, MOON, MOON_EDITED],
}


def corpus() -> pl.DataFrame:
    """Distinct texts with the planted copies spread between them (each group's original first);
    `group` names each text's origin, `_pos` are sparse dataset positions."""
    planted = [(name, text) for name, copies in PLANTED.items() for text in copies]
    rows = []
    for i, text in enumerate(DISTINCT):
        rows.append((f"distinct{i}", text))
        if i % 3 == 2 and planted:
            rows.append(planted.pop(0))
    rows.extend(planted)
    groups, texts = zip(*rows)
    positions = pl.Series(np.arange(len(texts), dtype=np.uint64) * 3 + 100)
    return pl.DataFrame({"text": texts, "group": groups, "_pos": positions})


def run_stage(stage: MinHashDedup, parts: list[pl.DataFrame]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """What the executor does: summarize every part, reduce once, apply to every part."""
    summaries = pl.concat([stage.summarize(part) for part in parts])
    decision = stage.reduce(summaries.lazy())
    applied = pl.concat([stage.apply(part, decision) for part in parts])
    return decision, applied


def datasketch_signature(shingles: list[str], num_perm: int, seed: int, scheme: str) -> np.ndarray:
    sketch = MinHash(num_perm=num_perm, seed=seed, scheme=scheme)
    for shingle in shingles:
        sketch.update(shingle.encode("utf-8"))
    return sketch.hashvalues


# --- shingles ---------------------------------------------------------------------------------


def test_word_shingles_are_normalized_n_grams_and_short_texts_get_one():
    texts = pl.Series(["The  Cat sat\non the MAT.", "Hello there", "   ", None])
    table = Shingler("word", 3).table(texts)
    assert table.rows() == [
        (0, "the cat sat"),
        (0, "cat sat on"),
        (0, "sat on the"),
        (0, "on the mat."),
        (1, "hello there"),
    ]
    no_punct = Shingler("word", 3, punctuation=True).table(texts.head(1))
    assert no_punct["shingle"].to_list()[-1] == "on the mat"


def test_char_shingles_count_characters_not_bytes():
    table = Shingler("char", 4, lowercase=False).table(pl.Series(["Café  au", "Été"]))
    assert table.rows() == [(0, "Café"), (0, "afé "), (0, "fé a"), (0, "é au"), (1, "Été")]


# --- signatures -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, ngram", [("word", 5), ("word", 2), ("char", 5), ("char", 9)])
@pytest.mark.parametrize("num_perm, seed", [(112, 1), (64, 7), (256, 12345)])
@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_signatures_equal_datasketch(kind, ngram, num_perm, seed, engine):
    texts = pl.Series([LIBRARY, BREAD, *DISTINCT[:8], "Good morning, everyone.", "", "  \n ", "Ünïcödé tèxt — ok ✓"])
    shingler = Shingler(kind, ngram)
    # chunk_shingles=150 makes the numpy engine work in several chunks
    signatures, has_shingles = text_signatures(texts, shingler, MinHasher(num_perm, seed), chunk_shingles=150, engine=engine)
    table = shingler.table(texts)
    for i in range(texts.len()):
        shingles = table.filter(pl.col("doc") == i)["shingle"].to_list()
        expected = datasketch_signature(shingles, num_perm, seed, "affine32")
        assert signatures.dtype == expected.dtype
        np.testing.assert_array_equal(signatures[i], expected)
        assert has_shingles[i] == bool(shingles)
    assert (signatures[-3:-1] == np.iinfo(np.uint32).max).all()  # empty texts: untouched datasketch value


@pytest.mark.parametrize("scheme", ["legacy", "affine64"])
@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_other_datasketch_schemes_are_matched(scheme, engine):
    texts = pl.Series([MOON, DISTINCT[3], ""])
    shingler = Shingler("word", 4)
    signatures, _ = text_signatures(texts, shingler, MinHasher(96, 3, scheme), engine=engine)
    table = shingler.table(texts)
    for i in range(texts.len()):
        shingles = table.filter(pl.col("doc") == i)["shingle"].to_list()
        np.testing.assert_array_equal(signatures[i], datasketch_signature(shingles, 96, 3, scheme))


def test_signature_blocks_do_not_change_the_result():
    hasher = MinHasher(32, 5)
    table = Shingler("char", 3).table(pl.Series([BREAD, "tiny", MOON]))
    hashes = hasher.hash_shingles(table["shingle"].cast(pl.Binary).to_list())
    doc = table["doc"].to_numpy()
    whole = hasher.signatures(hashes, doc, 3)
    np.testing.assert_array_equal(hasher.signatures(hashes, doc, 3, block_rows=7), whole)


def test_band_hashes_are_xxh64_of_band_bytes():
    signatures, _ = text_signatures(pl.Series([LIBRARY, BREAD]), Shingler(), MinHasher(112, 1))
    hashes = band_hashes(signatures, bands=9, rows=12)
    for doc in range(2):
        for band in range(9):
            data = signatures[doc, band * 12 : (band + 1) * 12].astype("<u4").tobytes()
            assert hashes[doc, band] == xxhash.xxh64_intdigest(data)
    wide, _ = text_signatures(pl.Series([MOON]), Shingler(), MinHasher(21, 1, "affine64"))
    wide_hashes = band_hashes(wide, bands=3, rows=7)
    assert wide_hashes[0, 2] == xxhash.xxh64_intdigest(wide[0, 14:21].astype("<u8").tobytes())


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
@pytest.mark.parametrize("num_perm", [16, 112, 128])
def test_band_layout_matches_datasketch_optimizer(threshold, num_perm):
    assert optimal_bands_rows(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)


def test_params_layout_from_bands_rows_or_threshold():
    assert MinHashDedupParams(num_perm=112, bands=14).band_layout() == (14, 8)
    assert MinHashDedupParams(num_perm=128, rows=8).band_layout() == (16, 8)
    assert MinHashDedupParams(threshold=0.8).band_layout() == _optimal_param(0.8, 112, 0.5, 0.5)
    with pytest.raises(ValidationError, match="exceeds num_perm"):
        MinHashDedupParams(num_perm=64, bands=10, rows=8)


# --- components -------------------------------------------------------------------------------


def test_components_label_each_node_with_its_smallest_member():
    src = np.array([50, 7, 9, 300, 12])
    dst = np.array([9, 50, 8, 301, 300])
    nodes, labels = connected_components(src, dst)
    assert dict(zip(nodes.tolist(), labels.tolist())) == {
        7: 7, 8: 7, 9: 7, 50: 7, 12: 12, 300: 12, 301: 12,
    }
    order = np.array([3, 0, 4, 2, 1])
    assert connected_components(dst[order], src[order])[1].tolist() == labels.tolist()


# --- the stage --------------------------------------------------------------------------------


def test_planted_duplicates_are_clustered_and_all_but_the_first_dropped():
    data = corpus()
    stage = MinHashDedup(MinHashDedupParams(threshold=0.6))
    decision, out = run_stage(stage, [data])
    assert out["_pos"].to_list() == data["_pos"].to_list()
    for name, copies in PLANTED.items():
        group = out.filter(pl.col("group") == name).sort("_pos")
        assert group["dup_cluster"].n_unique() == 1
        assert group["dup_cluster"][0] == group["_pos"][0]
        assert (group["dup_cluster_size"] == len(copies)).all()
        assert group["_drop_reason"].to_list() == [None] + ["near_duplicate"] * (len(copies) - 1)
    distinct = out.filter(pl.col("group").str.starts_with("distinct"))
    assert distinct["_drop_reason"].null_count() == distinct.height
    assert (distinct["dup_cluster_size"] == 1).all()
    assert (distinct["dup_cluster"] == distinct["_pos"]).all()
    assert decision.height == sum(len(copies) for copies in PLANTED.values())


def test_flag_action_and_texts_without_shingles_are_never_clustered():
    params = MinHashDedupParams(punctuation=True, action="flag", threshold=0.6)
    batch = pl.DataFrame(
        {"text": ["!!!", "???", "...", DISTINCT[0]], "_pos": pl.Series([0, 1, 2, 3], dtype=pl.Int64)}
    )
    decision, out = run_stage(MinHashDedup(params), [batch])
    assert decision.height == 0
    assert out["dup_cluster"].to_list() == [0, 1, 2, 3]
    assert out.schema["dup_cluster"] == pl.Int64


def test_keep_longest_and_keep_by_score_column():
    batch = pl.DataFrame(
        {
            "text": [BICYCLE, DISTINCT[5], BICYCLE_LONGER, BICYCLE],
            "quality": [0.2, 0.9, 0.5, 0.7],
            "_pos": pl.Series([10, 11, 12, 13], dtype=pl.UInt64),
        }
    )
    _, longest = run_stage(MinHashDedup(MinHashDedupParams(keep="longest", threshold=0.6)), [batch])
    assert longest["_drop_reason"].to_list() == ["near_duplicate", None, None, "near_duplicate"]
    assert longest["dup_cluster"].to_list() == [10, 11, 10, 10]
    _, by_quality = run_stage(MinHashDedup(MinHashDedupParams(keep="quality", threshold=0.6)), [batch])
    assert by_quality["_drop_reason"].to_list() == ["near_duplicate", None, "near_duplicate", None]
    tied = batch.with_columns(pl.lit(1.0).alias("quality"))
    _, first_on_tie = run_stage(MinHashDedup(MinHashDedupParams(keep="quality", threshold=0.6)), [tied])
    assert first_on_tie["_drop_reason"].to_list() == [None, None, "near_duplicate", "near_duplicate"]
    with pytest.raises(ValueError, match="names no column"):
        MinHashDedup(MinHashDedupParams(keep="stars")).summarize(batch)


def test_decisions_do_not_depend_on_how_rows_are_split_into_shards():
    data = corpus()
    stage = MinHashDedup(MinHashDedupParams(threshold=0.6, keep="longest"))
    whole_decision, whole = run_stage(stage, [data])
    shuffled = data.sample(fraction=1.0, shuffle=True, seed=3)
    parts = [shuffled[:9], shuffled[9:14], shuffled[14:]]
    split_decision, split = run_stage(stage, parts)
    assert split_decision.equals(whole_decision)
    assert split.sort("_pos").equals(whole.sort("_pos"))
    assert split["_pos"].to_list() == shuffled["_pos"].to_list()  # apply keeps each part's order


def test_verify_jaccard_removes_a_false_candidate_pair():
    # One band per permutation: two texts sharing a single phrase almost surely meet in a bucket.
    overlap_a = "The annual report was approved by the board of directors at the meeting held in Oslo last week."
    overlap_b = "Nobody expected it, but the board of directors at the meeting voted to sell the old warehouse."
    batch = pl.DataFrame(
        {"text": [overlap_a, overlap_b, MOON, MOON_EDITED], "_pos": pl.Series([0, 1, 2, 3], dtype=pl.UInt64)}
    )
    loose = MinHashDedupParams(num_perm=64, bands=64, rows=1, ngram=3)
    _, unverified = run_stage(MinHashDedup(loose), [batch])
    assert unverified["dup_cluster"].to_list() == [0, 0, 2, 2]
    verified_params = loose.model_copy(update={"verify_jaccard": 0.7})
    _, verified = run_stage(MinHashDedup(verified_params), [batch])
    assert verified["dup_cluster"].to_list() == [0, 1, 2, 2]
    assert verified["_drop_reason"].to_list() == [None, None, None, "near_duplicate"]


def test_verify_jaccard_finds_a_true_pair_in_a_bucket_headed_by_an_unrelated_document():
    # Hand-built band hashes: one bucket holds an unrelated first document and a true pair after it.
    stage = MinHashDedup(MinHashDedupParams(num_perm=8, bands=1, rows=8, verify_jaccard=0.7))
    summaries = pl.DataFrame({
        "_pos": pl.Series([0, 1, 2, 3], dtype=pl.UInt64),
        "band_0": pl.Series([7, 7, 7, 9], dtype=pl.UInt64),
        "text": [LIBRARY, MOON, MOON_EDITED, BREAD],
    }).lazy()

    decision = stage.reduce(summaries)

    assert decision["_pos"].to_list() == [1, 2]
    assert decision["dup_cluster"].to_list() == [1, 1]
    assert decision["_drop_reason"].to_list() == [None, "near_duplicate"]


def test_verify_jaccard_clusters_only_checked_pairs():
    # A bucket of three where only the first two are similar: the third is not pulled in through the first.
    stage = MinHashDedup(MinHashDedupParams(num_perm=8, bands=1, rows=8, verify_jaccard=0.7))
    summaries = pl.DataFrame({
        "_pos": pl.Series([0, 1, 2], dtype=pl.UInt64),
        "band_0": pl.Series([5, 5, 5], dtype=pl.UInt64),
        "text": [BREAD, BREAD_EDITED, BICYCLE],
    }).lazy()

    assert stage.reduce(summaries)["_pos"].to_list() == [0, 1]


def test_verify_window_bounds_the_pairs_checked_in_a_huge_bucket():
    stage = MinHashDedup(MinHashDedupParams(num_perm=8, bands=1, rows=8, verify_jaccard=0.7, verify_window=2))
    summaries = pl.DataFrame({"_pos": pl.Series(range(10), dtype=pl.UInt64),
                              "band_0": pl.Series([1] * 10, dtype=pl.UInt64), "text": ["x"] * 10}).lazy()

    pairs = stage.bucket_pairs(summaries).sort("src", "dst")

    assert pairs.filter(pl.col("src") == 9)["dst"].to_list() == [0, 7, 8]
    assert pairs.height == 1 + 2 + 7 * 3  # src 1: {0}; src 2: {0, 1}; src 3..9: {0, s-2, s-1}


def test_verified_keep_first_drops_only_documents_with_a_verified_earlier_partner():
    # B is like C only, C is like A and B: A and B are kept (neither has an earlier look-alike), C goes.
    stage = MinHashDedup(MinHashDedupParams(num_perm=8, bands=1, rows=8, verify_jaccard=0.4))
    words = [f"w{i}" for i in range(40)]
    a = " ".join(words[:20])
    c = " ".join(words[6:26])
    b = " ".join(words[12:32])
    summaries = pl.DataFrame({"_pos": pl.Series([0, 1, 2], dtype=pl.UInt64),
                              "band_0": pl.Series([3, 3, 3], dtype=pl.UInt64), "text": [a, b, c]}).lazy()

    decision = stage.reduce(summaries)

    assert decision["dup_cluster"].to_list() == [0, 0, 0]
    assert decision["_drop_reason"].to_list() == [None, None, "near_duplicate"]
