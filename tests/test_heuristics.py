"""Gopher quality/repetition, C4 and FineWeb heuristic filters: scores, drop reasons, C4 line removal."""

from __future__ import annotations

import random

import polars as pl
import pytest

from datamill.curate.engine.registry import stage_types
from datamill.curate.engine.stage import DROP_REASON
from datamill.filters import text_stats as ts
from datamill.filters.c4 import C4Quality, C4QualityParams
from datamill.filters.fineweb import FineWebQuality
from datamill.filters.gopher import (
    GopherQuality,
    GopherQualityParams,
    GopherRepetition,
    GopherRepetitionParams,
)

HARBOUR = (
    "The old harbour town sits at the mouth of a slow river, where fishing boats have tied up beside "
    "the stone quay for more than three hundred years. In the early morning the air smells of salt and "
    "diesel, and gulls argue over scraps while the crews unload their catch into wooden crates."
)
MERCHANTS = (
    "Most of the houses along the waterfront were built by merchants who traded wool and timber with "
    "ports across the North Sea. Their narrow fronts hide long gardens that run back towards the hill, "
    "and several of them still have the iron hooks that once lifted goods into the attic stores."
)
VIEW = (
    "Visitors who climb the path behind the church are rewarded with a view of the whole estuary. On a "
    "clear day you can follow the channel as it bends between the sandbanks, watch the tide creep over "
    "the mudflats, and see the lighthouse on the point blink into life as the light begins to fade."
)
GOOD_ARTICLE = "\n\n".join([HARBOUR, MERCHANTS, VIEW])

ALL_FILTERS = (GopherQuality, GopherRepetition, C4Quality, FineWebQuality)


def run(stage, *texts: str) -> pl.DataFrame:
    return stage.process(pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": list(texts)}))


def reasons(stage, *texts: str) -> list[str | None]:
    return run(stage, *texts)[DROP_REASON].to_list()


@pytest.mark.parametrize("stage_class", ALL_FILTERS)
def test_good_prose_passes_every_filter_with_all_scores(stage_class):
    stage = stage_class()
    out = run(stage, GOOD_ARTICLE)
    assert out[DROP_REASON].to_list() == [None]
    assert set(stage.outputs) <= set(out.columns)
    numeric = [c for c in stage.outputs if c != "text"]
    assert out.select(pl.col(numeric).is_null().any()).row(0) == (False,) * len(numeric)
    # C4 keeps every sentence line but, like datatrove, drops the blank lines between paragraphs
    expected = GOOD_ARTICLE.replace("\n\n", "\n") if stage_class is C4Quality else GOOD_ARTICLE
    assert out["text"].item() == expected


def test_filters_are_registered_under_their_recipe_types():
    types = stage_types()
    for name, cls in [
        ("gopher_quality", GopherQuality),
        ("gopher_repetition", GopherRepetition),
        ("c4_quality", C4Quality),
        ("fineweb_quality", FineWebQuality),
    ]:
        assert types[name] is cls


def test_words_split_punctuation_but_keep_numbers_abbreviations_and_contractions_lengths():
    text = "Mr. Smith paid $1,000.50 for the well-known U.S. map (e.g. in 3.14 hours), didn't he..."
    tokens = pl.select(ts.words(pl.lit(text))).item().to_list()
    assert tokens == [
        "Mr.", "Smith", "paid", "$", "1,000.50", "for", "the", "well", "-", "known", "U.S.", "map",
        "(", "e.g.", "in", "3.14", "hours", ")", ",", "didn", "'t", "he", "...",
    ]


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("speci\u2010 fied, re- enable", ["speci\u2010", "fied", ",", "re-", "enable"]),  # groff's line-break hyphens
        ("(foo-) a-b- c--d", ["(", "foo-", ")", "a", "-", "b-", "c", "--", "d"]),
        ("l'utilisateur n'est qu'un O'Reilly", ["l'utilisateur", "n'est", "qu'un", "O'Reilly"]),
        ("we cannot, and/or C++.", ["we", "can", "not", ",", "and/or", "C++", "."]),
        ("see gnome-shell.desktop, X.25 or a@b.org.", ["see", "gnome-shell.desktop", ",", "X.25", "or", "a@b.org", "."]),
        ("''quoted'' x. ls(1):", ["''", "quoted", "''", "x.", "ls(1", "):"]),
    ],
)
def test_words_follow_spacy_on_hyphens_elisions_and_exceptions(text, tokens):
    assert pl.select(ts.words(pl.lit(text))).item().to_list() == tokens
    assert pl.select(ts.token_count(pl.lit(text))).item() == len(tokens)


def test_sentence_count_ignores_abbreviations_decimals_and_ellipses():
    text = 'Dr. Jones came at 5 p.m. with 2.5 kilos of apples. Was it enough? "Yes," she said... Then we ate.'
    assert pl.select(ts.sentence_count(ts.words(pl.lit(text)))).item() == 3


def test_gopher_quality_scores_follow_datatrove_definitions():
    text = "The cat and the dog sat with The owl... #fun"
    out = run(GopherQuality(), text).row(0, named=True)
    # tokens: The cat and the dog sat with The owl ... # fun -> 12 tokens, 10 words (not "...", "#")
    assert out["gopher_word_count"] == 10
    words = "The cat and the dog sat with The owl fun".split()
    assert out["gopher_mean_word_length"] == pytest.approx(sum(map(len, words)) / 10)
    assert out["gopher_hash_ratio"] == pytest.approx(1 / 12)
    assert out["gopher_ellipsis_ratio"] == pytest.approx(1 / 12)
    assert out["gopher_alpha_words_ratio"] == pytest.approx(10 / 12)
    assert out["gopher_stop_words"] == 3  # "the", "and", "with": distinct and case-sensitive
    assert out[DROP_REASON] == "gopher_short_doc"


def test_gopher_quality_drop_reasons():
    bullets = "\n".join(
        f"• {item}"
        for item in [
            "Fresh bread from the bakery on the corner of the square",
            "Two litres of milk and a dozen free range eggs",
            "A bag of apples with a few pears for the children",
            "Coffee beans from the market stall near the station",
            "Washing powder and a new sponge for the kitchen",
            "Birthday card for grandmother with a stamp to post it",
        ]
    )
    trailing = "\n".join(
        [
            "She opened the door and looked out into the dark garden...",
            "Somewhere beyond the hedge a fox was calling to its mate...",
            "The wind moved through the apple trees like a slow tide...",
            "Nobody had walked down that path since the end of summer...",
            "Still she waited with the lamp held high above her head...",
            "Then at last the gate creaked open and a figure stepped in...",
        ]
    )
    hashtags = (
        "Sunset over the harbour tonight with the whole family and a picnic by the water. "
        "#sunset #harbour #family #picnic #summer #travel #photography #nature #evening #sky "
        "#ocean #boats #golden #light #weekend #holiday #coast #beautiful #view #memories "
        "Best evening of the year so far and we have more plans for tomorrow with friends."
    )
    rainfall = "Rainfall in millimetres for each year of the survey and the station that recorded it. "
    rainfall += " ".join(f"{year} {812 + 7 * k} {31 + k}" for k, year in enumerate(range(1990, 2010)))
    tags = "\n".join(
        [
            "handmade ceramic mug blue glaze dishwasher safe microwave safe",
            "gift idea coffee lover kitchen decor pottery studio stoneware cup",
            "tea mug rustic style farmhouse kitchen birthday present housewarming gift",
            "wedding favour artisan made glazed interior large handle holds twelve ounces",
            "shipped carefully eco packaging small business unique design signed base",
        ]
    )
    short = "The meeting is moved to Thursday afternoon."
    out = reasons(GopherQuality(), short, bullets, trailing, hashtags, rainfall, tags)
    assert out == [
        "gopher_short_doc",
        "gopher_too_many_bullets",
        "gopher_too_many_end_ellipsis",
        "gopher_too_many_hashes",
        "gopher_below_alpha_threshold",
        "gopher_few_stop_words",
    ]


def test_gopher_quality_thresholds_are_params_and_null_turns_a_rule_off():
    short = "The meeting is moved to Thursday afternoon because of the storm."
    assert reasons(GopherQuality(GopherQualityParams(min_doc_words=5)), short) == [None]
    no_length_rules = GopherQualityParams(min_doc_words=None, min_stop_words=None)
    assert reasons(GopherQuality(no_length_rules), short) == [None]
    assert "gopher_short_doc" not in dict(GopherQuality(GopherQualityParams(min_doc_words=None)).drop_rules())


def test_gopher_repetition_drop_reasons():
    repeated_lines = "\n".join(
        [
            "Our spring collection has arrived in the shop this week.",
            "Subscribe to our newsletter for weekly offers.",
            "Every coat is made from recycled wool in our own workshop.",
            "Subscribe to our newsletter for weekly offers.",
            "Delivery is free for orders above fifty pounds.",
            "Subscribe to our newsletter for weekly offers.",
            "Subscribe to our newsletter for weekly offers.",
        ]
    )
    repeated_paragraphs = "\n\n".join([HARBOUR, MERCHANTS, HARBOUR, HARBOUR])
    spam = (
        "Cheap flights to Rome, cheap flights to Paris, cheap flights to Madrid and cheap flights to "
        "Lisbon: book cheap flights today because cheap flights sell out fast."
    )
    sentence_twice = f"{MERCHANTS} {MERCHANTS}"
    out = reasons(GopherRepetition(), repeated_lines, repeated_paragraphs, spam, sentence_twice)
    assert out == ["gopher_dup_line_frac", "gopher_dup_para_frac", "gopher_top_2_gram", "gopher_dup_5_gram"]


def test_gopher_repetition_scores_count_repeats_after_the_first():
    text = "alpha beta gamma\nalpha beta gamma\nalpha beta gamma\ndelta"
    out = run(GopherRepetition(), text).row(0, named=True)
    assert out["gopher_dup_line_frac"] == pytest.approx(2 / 4)
    assert out["gopher_dup_line_char_frac"] == pytest.approx(2 * 16 / len(text))
    assert out["gopher_dup_para_frac"] == 0.0
    # the most frequent 2-gram "alpha beta" (10 chars) occurs 3 times
    assert out["gopher_top_2_gram_char_frac"] == pytest.approx(30 / len(text))


def test_gopher_repetition_ngram_sizes_are_params_and_name_their_columns():
    stage = GopherRepetition(GopherRepetitionParams(top_n_grams={2: 0.5}, dup_n_grams={3: 0.1}))
    out = run(stage, f"{MERCHANTS} {MERCHANTS}")
    ngram_columns = [c for c in out.columns if "gram" in c]
    assert ngram_columns == ["gopher_top_2_gram_char_frac", "gopher_dup_3_gram_char_frac"]
    assert set(stage.outputs) <= set(out.columns)
    assert out[DROP_REASON].item() == "gopher_dup_3_gram"


def datatrove_repeated_chars(words: list[str], n: int) -> int:
    """datatrove's `find_all_duplicate`: n-grams keyed by their tokens joined with no separator,
    a repeat counted in full and followed by a jump of n positions (jumped n-grams are not added)."""
    seen, repeated, i = set(), 0, 0
    while i < len(words) - n + 1:
        gram = "".join(words[i : i + n])
        if gram in seen:
            repeated += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return repeated


@pytest.mark.parametrize(
    "words",
    [
        "a b c d e f g a b c d e f g".split(),
        "one two three four five six one two three four five six seven one two three four five".split(),
        "x y z".split(),
        [],
        "the cat sat on the mat and the cat sat on the mat again and again and again".split(),
    ],
)
def test_repeated_ngram_chars_match_datatrove_scan(words):
    counts = ts.ngram_char_counts(pl.Series([words], dtype=pl.List(pl.String)), [], [5, 6, 7])
    for n in (5, 6, 7):
        assert counts[f"dup_{n}"].item() == datatrove_repeated_chars(words, n)


def test_repeated_ngram_scan_is_exact_on_adversarial_sequences():
    # the jump skips n-grams that then never enter the set: "a b b a b" repeats once, at 5 characters
    assert datatrove_repeated_chars("a b b a b a b b a b b a".split(), 5) == 5
    # n-grams are keys of joined tokens: "ab c" and "a bc" are the same 2-gram
    assert datatrove_repeated_chars(["ab", "c", "x", "a", "bc"], 2) == 3
    rng = random.Random(7)
    docs = [
        [rng.choice(alphabet[: rng.randint(1, len(alphabet))]) for _ in range(rng.randint(0, 80))]
        for alphabet in [["a", "b", "ab", "ba", "é", "bé"]] * 400
    ]
    docs += [["a", "b", "b", "a", "b", "a", "b", "b", "a", "b", "b", "a"], ["ab", "c", "x", "a", "bc"]]
    ns = [2, 3, 5, 6, 7, 8, 9, 10]
    counts = ts.ngram_char_counts(pl.Series(docs, dtype=pl.List(pl.String)), [], ns)
    for n in ns:
        assert counts[f"dup_{n}"].to_list() == [datatrove_repeated_chars(d, n) for d in docs], n


def test_c4_removes_bad_lines_and_keeps_the_rest():
    page = "\n".join(
        [
            "Home",
            "About us | Contact",
            HARBOUR,
            "Please enable JavaScript in your browser to see the map of the town.",
            MERCHANTS.replace("North Sea.", "North Sea[12]."),
            "This website uses cookies to improve your experience.",
            VIEW,
        ]
    )
    out = run(C4Quality(), page).row(0, named=True)
    assert out[DROP_REASON] is None
    assert out["text"] == "\n".join([HARBOUR, MERCHANTS, VIEW])
    assert out["c4_lines"] == 7
    assert out["c4_lines_kept"] == 3
    assert out["c4_lines_no_terminal_punct"] == 2
    assert out["c4_lines_javascript"] == 1
    assert out["c4_lines_policy"] == 1
    assert out["c4_sentences"] == 6


def test_c4_doc_level_drop_reasons():
    lorem = "\n".join([HARBOUR, "Lorem ipsum dolor sit amet, consectetur adipiscing elit.", MERCHANTS, VIEW])
    code = "\n".join([HARBOUR, 'Set the option like this: {"debug": true, "port": 8080}.', VIEW])
    scripted = "\n".join(
        [
            "This site needs JavaScript to show the timetable.",
            "Turn on JavaScript and reload the page to continue.",
            "The ferry leaves at nine. It returns at noon.",
        ]
    )
    menu = "Home\nNews\nSport\nWeather\nOur town in pictures\nContact the editor"
    out = reasons(C4Quality(), lorem, code, scripted, menu)
    assert out == ["c4_lorem_ipsum", "c4_curly_brace", "c4_too_few_sentences", "c4_too_few_sentences"]


def test_c4_dropped_documents_keep_their_original_text():
    code = "\n".join([HARBOUR, "Title without a full stop", 'Config: {"debug": true}.', VIEW])
    out = run(C4Quality(), code)
    assert out["text"].item() == code


def test_c4_without_line_removal_only_scores():
    page = "\n".join(["Home", HARBOUR, "Please enable JavaScript to see the map.", MERCHANTS, VIEW])
    stage = C4Quality(C4QualityParams(remove_lines=False))
    out = run(stage, page).row(0, named=True)
    assert "text" not in stage.outputs and "text" in C4Quality().outputs
    assert out["text"] == page
    assert out[DROP_REASON] is None
    assert out["c4_lines_kept"] == 3
    assert out["c4_lines_javascript"] == 1


def test_fineweb_drop_reasons():
    headings = "\n".join(
        [
            "Local news from the harbour and the hills",
            "Weather warnings for the coming weekend",
            "Ferry timetable changes during the winter",
            "Letters to the editor about the new bridge",
            "Results from the county football league",
            "Recipes for a cold evening by the fire",
            "Photographs sent in by our readers this month",
            "Upcoming concerts in the old church hall",
            "Where to find fresh fish on a Sunday morning.",
        ]
    )
    recipe = "\n".join(
        [
            "Soup for four people.",
            "Peel the carrots.",
            "Chop the onions.",
            "Melt the butter.",
            "Add the vegetables.",
            "Pour in the stock.",
            "Simmer for an hour.",
            "Season to taste.",
            "Serve with warm bread and a little grated cheese on top.",
        ]
    )
    share = "Share this article with your friends."
    repeated = "\n".join([HARBOUR, share, MERCHANTS, share, VIEW])
    glossary = "\n\n".join(
        [
            "Intergovernmental negotiations.",
            "Telecommunications infrastructure.",
            "Environmental sustainability.",
            "Internationalisation guidelines.",
            "Decentralisation programmes.",
            "Superconductivity experiments.",
            "Electroencephalography recordings.",
        ]
    )
    out = reasons(FineWebQuality(), headings, recipe, repeated, glossary)
    assert out == [
        "fineweb_line_punct_ratio",
        "fineweb_short_line_ratio",
        "fineweb_char_dup_ratio",
        "fineweb_list_ratio",
    ]


def test_process_marks_rows_and_keeps_them_all():
    texts = [GOOD_ARTICLE, "Too short to keep."]
    out = run(GopherQuality(), *texts)
    assert out["id"].to_list() == ["0", "1"]
    assert out[DROP_REASON].to_list() == [None, "gopher_short_doc"]


def test_same_keep_or_drop_as_datatrove_on_these_documents():
    pytest.importorskip("spacy")
    filters = pytest.importorskip("datatrove.pipeline.filters")
    from datatrove.data import Document

    texts = [
        GOOD_ARTICLE,
        "\n".join(["Home", HARBOUR, "Please enable JavaScript to see the map.", MERCHANTS, VIEW]),
        "\n\n".join([HARBOUR, MERCHANTS, HARBOUR, HARBOUR]),
        f"{MERCHANTS} {MERCHANTS}",
        "\n".join([HARBOUR, 'Set the option like this: {"debug": true}.', VIEW]),
        "Soup for four.\nPeel the carrots.\nChop the onions.\nServe it hot with bread.",
    ]
    pairs = [
        (filters.GopherQualityFilter(), GopherQuality()),
        (filters.GopherRepetitionFilter(), GopherRepetition()),
        (filters.C4QualityFilter(), C4Quality()),
        (filters.FineWebQualityFilter(), FineWebQuality()),
    ]
    for theirs, ours in pairs:
        docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
        their_keep = [theirs.filter(d) is True for d in docs]
        out = run(ours, *texts)
        assert out[DROP_REASON].is_null().to_list() == their_keep, type(ours).__name__
        if isinstance(ours, C4Quality):
            kept = [d.text for d, keep in zip(docs, their_keep) if keep]
            assert out.filter(pl.col(DROP_REASON).is_null())["text"].to_list() == kept
