"""Benchmark decontamination: verbatim eval questions inside training prose are caught, paraphrases are not."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from conftest import recipe_dict, write_jsonl
from datamill.curate.executors.run import run_recipe
from datamill.curate.engine.recipe import RecipeError, validate_recipe
from datamill.filters.decontaminate import Decontaminate, DecontaminateParams, item_hits  # registers "decontaminate"
from datamill.filters.ngrams import ngram_hashes, normalized_words

BAKERY = (
    "A bakery sells muffins for $3 each and cookies for $1.50 each. On Saturday it sold 42 muffins "
    "and 60 cookies. How much money did the bakery make on Saturday?"
)
BAKERY_ANSWER = (
    "The muffins brought in 42 times 3, which is 126 dollars, and the cookies 60 times 1.5, which is "
    "90 dollars, so the bakery made 216 dollars in total."
)
AGES = "Tom is twice as old as his sister Mia. In six years the sum of their ages will be 42. How old is Mia now?"
MATH = [
    {"question": BAKERY, "answer": BAKERY_ANSWER},
    {"question": AGES, "answer": "Mia is 10 years old, because 3 times 10 plus 12 is 42."},
    {
        "question": "A train leaves the station at 9:15 in the morning and travels at 80 kilometres per hour. "
        "How far has it travelled by 11:45?",
        "answer": "It travels for two and a half hours, so it covers 200 kilometres.",
    },
    {
        "question": "A rectangular garden is 12 metres long and 7 metres wide. A path one metre wide runs all "
        "the way around the outside of it. What is the area of the path?",
        "answer": "The outer rectangle is 14 by 9, which is 126 square metres, so the path is 126 - 84 = 42.",
    },
]
IRON = "Which chemical element has the symbol Fe on the periodic table, and what is its atomic number?"
BERLIN = "In which year did the Berlin Wall fall, marking the start of German reunification?"
SHORTEST_DAY = "Which planet in our solar system has the shortest day?"  # 10 words: whole with short_items
MONA_LISA = "Who painted the Mona Lisa?"  # 5 words: too short to index
TRIVIA = [{"question": q} for q in (IRON, BERLIN, SHORTEST_DAY, MONA_LISA)]

DOCS = {
    "math_verbatim": f"Here is a warm-up problem from my tutoring session last week. {BAKERY} "
    "Try it yourself before you read the worked solution further down the page.",
    "trivia_restyled": "Quiz night, round two! IN WHICH YEAR did the Berlin Wall fall -- marking the start of "
    "German reunification?? Teams had two minutes to write down an answer.",
    "both": f"Revision sheet. First: {AGES} Second, for the chemistry fans: {IRON} Answers are on the back.",
    "short_item": f"Astronomy club notes: {SHORTEST_DAY} Jupiter, with a day of under ten hours.",
    "generic_phrase": f"{MONA_LISA} Leonardo da Vinci, who worked on it for many years.",
    "paraphrase_ages": "My sister is half my age. Six years from now our ages will add up to forty-two. "
    "How old is she today?",
    "paraphrase_bakery": "The muffins at the bakery cost three dollars and its cookies a dollar fifty; on "
    "Saturday they sold forty-two muffins and sixty cookies, so what were the takings?",
    "unrelated": "The river rose overnight and flooded the low fields near the old mill. Farmers moved "
    "their cattle to higher ground before the storm arrived.",
}


@pytest.fixture
def evals(tmp_path: Path) -> dict[str, dict]:
    """Two benchmark sources, as jsonl files, keyed by benchmark name."""
    write_jsonl(tmp_path / "evals" / "math.jsonl", MATH)
    write_jsonl(tmp_path / "evals" / "trivia.jsonl", TRIVIA)
    return {
        name: {"type": "jsonl", "path": str(tmp_path / "evals" / f"{name}.jsonl"), "text_field": "question"}
        for name in ("math", "trivia")
    }


def benchmarks(sources: dict[str, dict], **extra) -> list[dict]:
    return [{"name": name, "source": source, **extra} for name, source in sources.items()]


def scored(benchmark_list: list[dict], docs: dict[str, str], **params) -> dict[str, dict]:
    """Run the stage on the docs; one result row per doc name."""
    stage = Decontaminate(DecontaminateParams(benchmarks=benchmark_list, **params))
    stage.setup()
    out = stage.process(pl.DataFrame({"name": list(docs), "text": list(docs.values())}))
    return {row["name"]: row for row in out.iter_rows(named=True)}


def test_verbatim_questions_are_caught_and_paraphrases_are_not(evals):
    rows = scored(benchmarks(evals), DOCS)
    hits = {name: (row["contaminated_by"], row["_drop_reason"]) for name, row in rows.items()}
    assert hits == {
        "math_verbatim": (["math"], "contaminated:math"),
        "trivia_restyled": (["trivia"], "contaminated:trivia"),
        "both": (["math", "trivia"], "contaminated:math"),
        "short_item": ([], None),  # shorter than 13 words: matched only with short_items
        "generic_phrase": ([], None),
        "paraphrase_ages": ([], None),
        "paraphrase_bakery": ([], None),
        "unrelated": ([], None),
    }
    # the bakery question has 31 words after normalization ("$1.50" is "1 50"): 19 distinct 13-grams
    assert rows["math_verbatim"]["contamination_ngrams"] == 19
    assert rows["math_verbatim"]["contaminated_items"] == ["math#0"]
    assert rows["both"]["contaminated_items"] == ["math#1", "trivia#0"]
    assert rows["short_item"]["contamination_ngrams"] == 0
    assert rows["unrelated"]["contamination_ngrams"] == 0


def test_listed_order_decides_the_drop_reason(evals):
    reordered = {"trivia": evals["trivia"], "math": evals["math"]}
    rows = scored(benchmarks(reordered), {"both": DOCS["both"]})
    assert rows["both"]["contaminated_by"] == ["trivia", "math"]
    assert rows["both"]["_drop_reason"] == "contaminated:trivia"


def test_min_overlap_counts_distinct_shared_ngrams(evals):
    fourteen_words = "for $3 each and cookies for $1.50 each. On Saturday it sold 42"
    docs = {
        "partial": f"I only remember the shop had {fourteen_words} of something, nothing more.",
        "repeated": f"{BAKERY} Once more, slowly: {BAKERY}",
    }
    loose = scored(benchmarks(evals), docs)
    strict = scored(benchmarks(evals), docs, min_overlap=3)
    assert loose["partial"]["contamination_ngrams"] == 2 and loose["partial"]["contaminated_by"] == ["math"]
    assert strict["partial"]["contamination_ngrams"] == 2 and strict["partial"]["contaminated_by"] == []
    assert strict["partial"]["_drop_reason"] is None
    assert strict["repeated"]["contamination_ngrams"] == 19  # a repeat adds no new n-grams
    assert strict["repeated"]["contaminated_by"] == ["math"]


def test_short_items_are_matched_whole_only_when_asked(evals):
    docs = {"short_item": DOCS["short_item"], "generic_phrase": DOCS["generic_phrase"]}
    default = scored(benchmarks(evals), docs)  # open-instruct's and datatrove's n-gram behaviour
    assert default["short_item"]["contaminated_by"] == []
    whole = scored(benchmarks(evals), docs, short_items=True)  # 8 words at least
    assert whole["short_item"]["contaminated_by"] == ["trivia"]
    assert whole["short_item"]["contamination_ngrams"] == 1
    assert whole["short_item"]["contaminated_items"] == ["trivia#2"]
    assert whole["generic_phrase"]["contaminated_by"] == []  # 5 words: below min_item_tokens
    loose = scored(benchmarks(evals), docs, short_items=True, min_item_tokens=5)
    assert loose["generic_phrase"]["contaminated_by"] == ["trivia"]


GREEK = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron"


def test_glued_punctuation_does_not_hide_an_ngram(tmp_path):
    write_jsonl(tmp_path / "greek.jsonl", [{"question": GREEK}])
    source = {"type": "jsonl", "path": str(tmp_path / "greek.jsonl"), "text_field": "question"}
    glued = {
        sep: "Notes: " + GREEK.replace("epsilon zeta", f"epsilon{sep}zeta") + " end."
        for sep in (",", "/", ".", ";", "-", "(", "—", "+", ", ")
    }
    glued["apart"] = "Notes: alpha beta gamma delta epsilon zetaeta theta iota kappa lambda mu nu xi omicron"
    rows = scored([{"name": "greek", "source": source}], glued)
    assert {sep: row["contaminated_by"] for sep, row in rows.items()} == {
        **{sep: ["greek"] for sep in glued if sep != "apart"},
        "apart": [],
    }


def test_item_hits_names_the_eval_item_that_removed_most(tmp_path):
    generic = "what is the name of the largest city in the world"
    write_jsonl(tmp_path / "qa.jsonl", [{"question": GREEK}, {"question": generic.capitalize() + "?"}])
    source = {"type": "jsonl", "path": str(tmp_path / "qa.jsonl"), "text_field": "question"}
    docs = {f"quiz{i}": f"Round {i}: {generic}? Answers below." for i in range(3)}
    docs["greek"] = f"Letters: {GREEK}."
    docs["clean"] = DOCS["unrelated"]
    stage = Decontaminate(DecontaminateParams(benchmarks=[{"name": "qa", "source": source}], short_items=True))
    stage.setup()
    out = stage.process(pl.DataFrame({"text": list(docs.values())}))
    assert item_hits(out).to_dicts() == [
        {"benchmark": "qa", "item": 1, "records": 3},
        {"benchmark": "qa", "item": 0, "records": 1},
    ]


def test_parquet_benchmark_with_several_fields(tmp_path):
    path = tmp_path / "math.parquet"
    pl.DataFrame(MATH).write_parquet(path)
    source = {"type": "parquet", "path": str(path), "text_field": "question"}
    leaked_answer = f"Solution key, problem 1. {BAKERY_ANSWER} Check your units."
    docs = {"answer": leaked_answer, "question": DOCS["math_verbatim"], "unrelated": DOCS["unrelated"]}
    questions_only = scored([{"name": "math", "source": source}], docs)
    with_answers = scored([{"name": "math", "source": source, "fields": ["question", "answer"]}], docs)
    assert [questions_only[d]["contaminated_by"] for d in docs] == [[], ["math"], []]
    assert [with_answers[d]["contaminated_by"] for d in docs] == [["math"], ["math"], []]


def test_ngrams_never_span_two_documents():
    words = pl.select(normalized_words(pl.lit(pl.Series(["The cat sat.", "On a MAT!", "x"])))).to_series()
    assert words.to_list() == [["the", "cat", "sat"], ["on", "a", "mat"], ["x"]]
    glued = pl.select(normalized_words(pl.lit(pl.Series(["epsilon,zeta/eta (theta)--iota's"])))).to_series()
    assert glued.to_list() == [["epsilon", "zeta", "eta", "theta", "iota", "s"]]
    grams = ngram_hashes(words, [2])
    assert grams["doc"].to_list() == [0, 0, 1, 1]
    alone = ngram_hashes(pl.Series([["cat", "sat"]]), [2])
    assert alone["hash"].item() == grams["hash"][1]  # "cat sat" hashes the same in any document
    assert grams["hash"].n_unique() == 4


def test_invalid_benchmark_source_fails_recipe_validation(tmp_path, evals):
    def stage(source: dict, name: str = "math") -> dict:
        return {"type": "decontaminate", "benchmarks": [{"name": name, "source": source}]}

    missing_path = stage({"type": "jsonl", "text_field": "question"})
    with pytest.raises(RecipeError) as err:
        validate_recipe(recipe_dict(str(tmp_path / "*.jsonl"), str(tmp_path / "out"), [missing_path]))
    assert "stages[0].benchmarks[0].source.path: required key is missing" in str(err.value)

    unknown_type = stage({"type": "jsnl", "path": "evals/math.jsonl"})
    with pytest.raises(RecipeError) as err:
        validate_recipe(recipe_dict(str(tmp_path / "*.jsonl"), str(tmp_path / "out"), [unknown_type]))
    assert "stages[0].benchmarks[0].source: " in str(err.value) and "'jsnl' is not known" in str(err.value)

    misspelled = stage({"type": "jsonl", "path": "evals/math.jsonl", "text_feld": "question"})
    with pytest.raises(RecipeError) as err:
        validate_recipe(recipe_dict(str(tmp_path / "*.jsonl"), str(tmp_path / "out"), [misspelled]))
    assert "stages[0].benchmarks[0].source.text_feld: 'question': unknown key; allowed keys: type, name, text_field" in str(
        err.value
    )

    twice = {"type": "decontaminate", "benchmarks": benchmarks(evals) + [{"name": "math", "source": evals["trivia"]}]}
    with pytest.raises(RecipeError, match="repeated: math"):
        validate_recipe(recipe_dict(str(tmp_path / "*.jsonl"), str(tmp_path / "out"), [twice]))


def test_unreadable_benchmark_is_named_at_setup(tmp_path):
    missing = {"type": "jsonl", "path": str(tmp_path / "nowhere.jsonl"), "text_field": "question"}
    with pytest.raises(ValueError, match="benchmark 'gsm8k': cannot read its source"):
        Decontaminate(DecontaminateParams(benchmarks=[{"name": "gsm8k", "source": missing}])).setup()
    write_jsonl(tmp_path / "tiny.jsonl", [{"question": MONA_LISA}])
    tiny = {"type": "jsonl", "path": str(tmp_path / "tiny.jsonl"), "text_field": "question"}
    with pytest.raises(ValueError, match="benchmark 'tiny' gives nothing to compare with"):
        Decontaminate(DecontaminateParams(benchmarks=[{"name": "tiny", "source": tiny}])).setup()


@pytest.mark.parametrize("action", ["drop", "flag"])
def test_run_reports_contamination_per_benchmark(tmp_path, evals, action):
    write_jsonl(tmp_path / "raw" / "train.jsonl", [{"text": t, "label": n} for n, t in DOCS.items()])
    stages = [{"type": "decontaminate", "benchmarks": benchmarks(evals), "short_items": True, "action": action}]
    recipe = validate_recipe(recipe_dict(str(tmp_path / "raw" / "*.jsonl"), str(tmp_path / "out"), stages))
    stats = run_recipe(recipe, workers=1)
    corpus = pl.read_parquet(sorted((tmp_path / "out" / "shards").glob("*.parquet")))
    counts = {"contaminated:math": 2, "contaminated:trivia": 2}  # "both" counts for math, listed first
    kept = {"generic_phrase", "paraphrase_ages", "paraphrase_bakery", "unrelated"}
    labels = set(corpus["meta"].str.json_path_match("$.label"))
    if action == "drop":
        assert stats["stages"][0]["dropped"] == counts
        assert labels == kept
        assert corpus["contaminated_by"].list.len().max() == 0
    else:
        assert stats["stages"][0]["flagged"] == counts
        assert labels == set(DOCS)
        flagged = corpus.filter(pl.col("decontaminate_reason").is_not_null())
        assert set(flagged["meta"].str.json_path_match("$.label")) == set(DOCS) - kept
