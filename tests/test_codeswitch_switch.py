"""Lexicon / entity switching and selective transliteration on small hand-written sentences."""

import polars as pl
import pytest
from pydantic import ValidationError

from datamill.synth.codeswitch.switch import LexiconSwitch, SwitchParams
from datamill.synth.codeswitch.transliterate import SelectiveTransliterate, TransliterateParams

SENTENCES = pl.DataFrame({
    "id": ["a", "b", "c", "d"],
    "text": ["The Ice cream shop near the river sells coffee.",
             "We visited the Prado Museum in Madrid and then Berlin.",
             "My DOG and the cat sleep in the kitchen. The house is quiet.",
             "Nothing here matches anything."],
})


def run(**params):
    stage = LexiconSwitch(SwitchParams(**params), seed=3)
    stage.setup()
    return stage.process(SENTENCES)


def test_spans_point_at_the_switched_text_and_case_is_kept():
    out = run(target_langs=["es"], p=1.0)
    for row in out.iter_rows(named=True):
        for span in row["cs_spans"]:
            assert span["lang"] == "es"
            assert span["source_term"] in row["source_text"]
            assert row["text"][span["start"]:span["end"]] != span["source_term"]
    first = out.row(0, named=True)
    assert first["text"] == "The Helado tienda near the río sells café."
    assert [s["source_term"] for s in first["cs_spans"]] == ["Ice cream", "shop", "river", "coffee"]
    assert "PERRO" in out["text"][2]  # UPPER stays upper
    assert out["text"][3] == SENTENCES["text"][3] and out["cs_switches"][3] == 0
    assert "the" in out["text"][0].split()  # stop words are never switched, though en-es.tsv has the→el


def test_seeded_and_batch_independent():
    a = run(p=0.5)
    stage = LexiconSwitch(SwitchParams(p=0.5), seed=3)
    stage.setup()
    pieces = pl.concat([stage.process(SENTENCES[i:i + 1]) for i in range(SENTENCES.height)])
    assert a["text"].to_list() == pieces["text"].to_list()
    assert run(p=0.0)["cs_switches"].sum() == 0


def test_ratio_switches_at_most_that_share_of_tokens():
    out = run(ratio=0.25, target_langs=["es"])
    words = SENTENCES["text"].str.count_matches(r"\w+")
    switched = out["cs_spans"].list.eval(pl.element().struct.field("source_term").str.count_matches(r"\w+")).list.sum()
    assert (switched <= (words * 0.25).floor()).all() and switched.sum() > 0


def test_one_target_language_per_sentence():
    text = "The dog sleeps in the kitchen. The cat drinks coffee by the river."
    batch = pl.DataFrame({"id": [f"r{i}" for i in range(12)], "text": [text] * 12})
    stage = LexiconSwitch(SwitchParams(p=1.0, target_per="sentence", target_langs=["es", "de"]))
    stage.setup()
    seen = set()
    for row in stage.process(batch).iter_rows(named=True):
        cut = row["text"].index(". ") + 1
        first = [s["lang"] for s in row["cs_spans"] if s["end"] <= cut]
        second = [s["lang"] for s in row["cs_spans"] if s["start"] > cut]
        assert len(first) == 2 and len(second) == 3 and len(set(first)) == 1 and len(set(second)) == 1
        seen.update(first + second)
    assert seen == {"es", "de"}


def test_entities_mode_switches_only_entities():
    out = run(units="entities", target_langs=["es"], p=1.0)
    assert out["text"][1] == "We visited the Museo del Prado in Madrid and then Berlín."
    assert out["text"][0] == SENTENCES["text"][0]  # words are not entities
    with pytest.raises(ValidationError, match="never switches function words"):
        SwitchParams(units="entities", skip_stopwords=False)


def test_selective_transliteration_by_script_and_origin():
    stage = SelectiveTransliterate(TransliterateParams(scripts=["Cyrillic"], word_list="mt-origin.tsv", origins=["english"]))
    stage.setup()
    batch = pl.DataFrame({"text": ["Il-friġġ ħdejn il-ħobż.", "Он said привет.", None]})
    out = stage.process(batch)
    assert out["text"].to_list() == ["Il-frigg ħdejn il-ħobż.", "On said privet.", ""]
    spans = out["translit_spans"][1].to_list()
    assert [(s["tag"], out["text"][1][s["start"]:s["end"]]) for s in spans] == [("Cyrillic", "On"), ("Cyrillic", "privet")]
    with pytest.raises(ValidationError, match="at least one rule"):
        TransliterateParams()


LEXICON = ("source_term\ttarget_lang\ttarget_term\tpos\tnumber\trank\n"
           "key\tde\tTaste\tnoun\tsg\t2\nkey\tde\tSchlüssel\tnoun\tsg\t1\nrun\tde\tlaufen\tverb\t\t1\n"
           "run\tde\tLauf\tnoun\tsg\t2\nlicense\tde\tLizenz\tnoun\tsg\t1\nlicense\tde\tLizenzen\tnoun\tpl\t2\n"
           "licenses\tde\tLizenzen\tnoun\tpl\t1\nx\tde\tix\tnoun\t\t1\nmp3\tde\tMP3-Datei\tnoun\t\t1\n"
           "free\tde\tfrei\tadj\t\t1\n")


def switch_all(tmp_path, texts):
    (tmp_path / "lex.tsv").write_text(LEXICON, encoding="utf-8")
    stage = LexiconSwitch(SwitchParams(lexicons=[str(tmp_path / "lex.tsv")], p=1.0), seed=1)
    stage.setup()
    return stage.process(pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts}))


def test_code_options_letters_digits_and_other_parts_of_speech_are_not_switched(tmp_path):
    out = switch_all(tmp_path, [
        "Use --proxy-key-type or key_file, a/key, key.pem and `the key` to set the key.",
        "Run it first; the run was free and x marks mp3 files.",
        "Two licenses and one license.",
    ])
    assert out["text"].to_list() == [
        "Use --proxy-key-type or key_file, a/key, key.pem and `the key` to set the Schlüssel.",  # most frequent sense
        "Run it first; the Lauf was free and x marks mp3 files.",  # a verb/noun term only after "the"; no adj
        "Two Lizenzen and one Lizenz.",  # plural → plural, singular → singular
    ]
    spans = out["cs_spans"].to_list()
    assert [[(s["source_term"], out["text"][i][s["start"]:s["end"]]) for s in row] for i, row in enumerate(spans)] == [
        [("key", "Schlüssel")], [("run", "Lauf")], [("licenses", "Lizenzen"), ("license", "Lizenz")]]


def test_cmi_and_switch_points_come_exactly_from_the_spans(tmp_path):
    from datamill.synth.codeswitch.metrics import span_metrics

    out = switch_all(tmp_path, ["Two licenses and one license.", "Nothing to switch here.", "the key key"])
    # 5 tokens, 2 in German: CMI = 100 × (1 − 3/5); en|de|en|de → 3 switch points
    assert out["cs_cmi"].to_list() == pytest.approx([40.0, 0.0, 100 * (1 - 2 / 3)])
    assert out["cs_switch_points"].to_list() == [3, 0, 1]
    spans = pl.Series([[{"start": 0, "end": 4, "lang": "es"}, {"start": 5, "end": 9, "lang": "de"}]])
    exact = span_metrics(pl.Series(["casa Haus big"]), spans, "en").row(0, named=True)
    assert exact["switch_points"] == 2 and exact["cs_cmi"] == pytest.approx(100 * (1 - 1 / 3))


def test_function_words_are_not_switched_even_by_an_untagged_dictionary(tmp_path):
    # FreeDict eng-spa has no part-of-speech tags, so modals and correlatives reach the switch as terms
    rows = ["source_lang\tsource_term\ttarget_lang\ttarget_term",
            "en\tmust\tes\ttener que", "en\tneither\tes\tnadie", "en\twhether\tes\tsi", "en\tfile\tes\tarchivo"]
    (tmp_path / "lex.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    stage = LexiconSwitch(SwitchParams(lexicons=[str(tmp_path / "lex.tsv")], p=1.0), seed=1)
    stage.setup()
    out = stage.process(pl.DataFrame({"id": ["0"], "text": ["Neither copy must change whether the file is open."]}))
    assert out["text"].to_list() == ["Neither copy must change whether the archivo is open."]


def test_an_untagged_dictionary_borrows_parts_of_speech_from_a_tagged_one(tmp_path):
    # like FreeDict eng-deu (tagged) beside eng-spa (untagged): the English side's parts of speech decide
    tagged = ["source_lang\tsource_term\ttarget_lang\ttarget_term\tpos",
              "en\tset\tde\tSatz\tnoun", "en\tset\tde\tsetzen\tverb", "en\tsure\tde\tsicher\tadj",
              "en\tfile\tde\tDatei\tnoun"]
    untagged = ["source_lang\tsource_term\ttarget_lang\ttarget_term",
                "en\tset\tes\tgrupo", "en\tsure\tes\tcierto", "en\tfile\tes\tarchivo", "en\tzebra\tes\tcebra"]
    (tmp_path / "en-de.tsv").write_text("\n".join(tagged) + "\n", encoding="utf-8")
    (tmp_path / "en-es.tsv").write_text("\n".join(untagged) + "\n", encoding="utf-8")
    text = "Make sure you set the set of file names; a zebra is sure."
    batch = pl.DataFrame({"id": ["0"], "text": [text]})

    def switched(**params):
        stage = LexiconSwitch(SwitchParams(target_langs=["es"], p=1.0, **params), seed=1)
        stage.setup()
        return stage.process(batch)["text"][0]

    # alone, the untagged dictionary switches the adjective and the verb
    assert switched(lexicons=[str(tmp_path / "en-es.tsv")]) == (
        "Make cierto you grupo the grupo of archivo names; a cebra is cierto.")
    # with the tagged one as a part-of-speech source: only nouns, `set` only in a noun context;
    # a term the tagged dictionary does not know (zebra) keeps working
    expected = "Make sure you set the grupo of archivo names; a cebra is sure."
    assert switched(lexicons=[str(tmp_path / "en-es.tsv")], pos_from=[str(tmp_path / "en-de.tsv")]) == expected
    # a tagged lexicon listed for switching lends its parts of speech too (targets limited to es here)
    assert switched(lexicons=[str(tmp_path / "en-es.tsv"), str(tmp_path / "en-de.tsv")]) == expected
    assert switched(lexicons=[str(tmp_path / "en-es.tsv")], pos_from=[str(tmp_path / "en-de.tsv")], pos=None) == (
        "Make cierto you grupo the grupo of archivo names; a cebra is cierto.")
