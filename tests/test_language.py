"""Language identification: fastText labels and scores, scripts, keep lists, thresholds, models, mixed text."""

from __future__ import annotations


import polars as pl
import pytest
from pydantic import ValidationError

from conftest import recipe_dict, write_jsonl
from datamill.curate.executors.run import run_recipe
from datamill.curate.engine.recipe import validate_recipe
from datamill.curate.engine.stage import DROP_REASON
from datamill.filters.language import LanguageFilter, LanguageParams
from datamill.filters.scripts import dominant_script

SENTENCES = {
    "en": "The children walked to school along the river while their grandmother baked bread for the whole family.",
    "de": "Die Kinder gingen am Fluss entlang zur Schule, während ihre Großmutter Brot für die ganze Familie backte.",
    "fr": "Les enfants marchaient vers l'école le long de la rivière pendant que leur grand-mère préparait du pain.",
    "es": "Los niños caminaban hacia la escuela junto al río mientras su abuela horneaba pan para toda la familia.",
    "ru": "Дети шли в школу вдоль реки, пока их бабушка пекла хлеб для всей семьи.",
    "zh": "孩子们沿着河边走去上学，而他们的奶奶在家里为全家人烤面包。",
    "ar": "كان الأطفال يمشون إلى المدرسة على طول النهر بينما كانت جدتهم تخبز الخبز للعائلة كلها.",
    "hi": "बच्चे नदी के किनारे स्कूल जा रहे थे, जबकि उनकी दादी पूरे परिवार के लिए रोटी बना रही थीं।",
}
SCRIPTS = {"en": "Latin", "de": "Latin", "fr": "Latin", "es": "Latin", "ru": "Cyrillic", "zh": "Han",
           "ar": "Arabic", "hi": "Devanagari"}

ENGLISH_SPANISH = [
    "I moved to Madrid three years ago to study architecture at the university.",
    "Al principio no entendía casi nada de lo que decían mis vecinos en la escalera.",
    "Every morning I bought a coffee and a croissant at the small bakery on the corner.",
    "La dueña siempre me preguntaba cómo iban mis clases y si ya tenía amigos.",
    "By the second winter I could follow most conversations without asking for help.",
    "Ahora sueño en español y a veces olvido cómo se dicen las cosas en inglés.",
]
ENGLISH_ONLY = (
    "The library opens at nine on weekdays. Visitors can borrow up to ten books at a time. "
    "The reading room on the second floor is quiet and has large windows over the park."
)


def lid_path() -> str:
    return str(LanguageFilter().model_path())


def scored(texts: list[str], **params) -> pl.DataFrame:
    stage = LanguageFilter(LanguageParams(**params))
    stage.setup()
    return stage.process(pl.DataFrame({"text": texts}))


@pytest.fixture(scope="module")
def eight_languages() -> pl.DataFrame:
    return scored(list(SENTENCES.values()))


def test_language_and_script_of_sentences_in_eight_languages(eight_languages):
    assert eight_languages["lang"].to_list() == list(SENTENCES)
    assert eight_languages["script"].to_list() == [SCRIPTS[lang] for lang in SENTENCES]
    assert eight_languages["lang_score"].min() > 0.65
    assert eight_languages["lang_score"].max() <= 1.0
    assert eight_languages[DROP_REASON].null_count() == len(SENTENCES)  # keep: null keeps every language


def test_keep_list_drops_other_languages_as_not_kept():
    result = scored(list(SENTENCES.values()), keep=["en", "de"])
    reasons = dict(zip(result["lang"], result[DROP_REASON]))
    assert reasons == {lang: None if lang in ("en", "de") else "language_not_kept" for lang in SENTENCES}


def test_newlines_do_not_break_prediction():
    text = SENTENCES["fr"].replace(" ", "\n", 5) + "\n\n" + SENTENCES["fr"]
    assert scored([text])["lang"].item() == "fr"


def test_per_language_minimum_score():
    english, german = "My name is Anna.", "Radio, Film und Musik."  # short: the model is less sure
    plain = scored([english, german, SENTENCES["en"]], min_score=0.0)
    assert plain["lang"].to_list() == ["en", "de", "en"]
    assert 0.6 < plain["lang_score"][0] < 0.8 < plain["lang_score"][1] < 0.9 < plain["lang_score"][2]

    per_language = scored([english, german, SENTENCES["en"]], keep=["en", "de"], min_score={"en": 0.6, "de": 0.9})
    assert per_language[DROP_REASON].to_list() == [None, "language_low_score", None]
    one_minimum = scored([english, german, SENTENCES["en"]], keep=["en", "de"], min_score=0.8)
    assert one_minimum[DROP_REASON].to_list() == ["language_low_score", None, None]


def test_threshold_params_are_validated():
    with pytest.raises(ValidationError, match="fr"):
        LanguageParams(keep=["en"], min_score={"en": 0.5, "fr": 0.5})
    with pytest.raises(ValidationError):
        LanguageParams(min_score=1.5)
    with pytest.raises(ValidationError):
        LanguageParams(keep=[])


def test_model_param_loads_the_given_file(eight_languages):
    own = scored(list(SENTENCES.values()), model=lid_path())
    assert own["lang"].to_list() == eight_languages["lang"].to_list()
    assert own["lang_score"].to_list() == pytest.approx(eight_languages["lang_score"].to_list())


def test_missing_model_file_fails_in_setup_naming_the_path(tmp_path):
    missing = tmp_path / "models" / "glotlid.bin"
    stage = LanguageFilter(LanguageParams(model=str(missing)))  # nothing is loaded on construction
    with pytest.raises(FileNotFoundError, match=str(missing)):
        stage.setup()
    with pytest.raises(RuntimeError, match="setup"):
        stage.process(pl.DataFrame({"text": ["Hello there, how are you today?"]}))


def test_top_k_lists_the_best_labels_in_order():
    result = scored([SENTENCES["es"], "Good morning, Klaus."], k=3)
    assert "lang_top" in LanguageFilter(LanguageParams(k=3)).outputs
    for row in result.iter_rows(named=True):
        top = row["lang_top"]
        assert len(top) == 3 and top[0] == {"lang": row["lang"], "score": row["lang_score"]}
        assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    assert result["lang_top"][1][1]["lang"] == "de"  # a German name in English: German comes second


def test_mix_finds_both_languages_in_alternating_english_spanish():
    paragraph = " ".join(ENGLISH_SPANISH)
    result = scored([paragraph, ENGLISH_ONLY, "", "¡Sí!"], mix=True)
    mix = result["lang_mix"].to_list()
    assert [m["lang"] for m in mix[0]] in (["en", "es"], ["es", "en"])
    assert all(0.35 < m["fraction"] < 0.65 for m in mix[0])
    assert sum(m["fraction"] for m in mix[0]) == pytest.approx(1.0)
    assert mix[1] == [{"lang": "en", "fraction": 1.0}]
    assert mix[2] == [] and mix[3] == []  # nothing long enough to predict
    assert result["lang_switches"].to_list() == [len(ENGLISH_SPANISH) - 1, 0, 0, 0]


def test_mix_by_line_and_sentence_agree_on_one_sentence_per_line():
    text = "\n".join(ENGLISH_SPANISH)
    by_line = scored([text], mix=True, segment="line")
    by_sentence = scored([text], mix=True, segment="sentence")
    assert by_line["lang_mix"].to_list() == by_sentence["lang_mix"].to_list()
    assert by_line["lang_switches"].item() == len(ENGLISH_SPANISH) - 1


def test_dominant_script_counts_characters():
    texts = pl.Series(
        [
            "Ελληνικά γράμματα",
            "한국어 문장입니다",
            "これはひらがなのぶんです",
            "Москва is the capital, said Анна",  # 10 Cyrillic letters, 16 Latin
            "2024-01-01 12:00 !!",
            None,
        ]
    )
    assert dominant_script(texts).to_list() == ["Greek", "Hangul", "Hiragana", "Latin", None, None]


def test_recipe_drops_or_flags_by_language(tmp_path):
    rows = [{"text": text} for text in SENTENCES.values()]
    source = write_jsonl(tmp_path / "raw" / "docs.jsonl", rows)
    stage = {"type": "language", "keep": ["en", "ru"]}

    dropped = run_recipe(validate_recipe(recipe_dict(str(source), str(tmp_path / "drop"), [stage])), workers=1)
    corpus = pl.read_parquet(sorted((tmp_path / "drop" / "shards").glob("*.parquet")))
    assert sorted(corpus["lang"]) == ["en", "ru"]
    assert dropped["stages"][0]["dropped"] == {"language_not_kept": len(SENTENCES) - 2}

    flag = {**stage, "action": "flag"}
    run_recipe(validate_recipe(recipe_dict(str(source), str(tmp_path / "flag"), [flag])), workers=1)
    flagged = pl.read_parquet(sorted((tmp_path / "flag" / "shards").glob("*.parquet")))
    assert flagged.height == len(SENTENCES)
    assert flagged.filter(pl.col("language_reason").is_null())["lang"].sort().to_list() == ["en", "ru"]
    assert set(flagged["script"]) == set(SCRIPTS.values())
