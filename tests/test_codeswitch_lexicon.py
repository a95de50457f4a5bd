"""Lexicon loading: dictd (built here the way dictd does it), TEI, TSV/JSONL and entity tables."""

import gzip

import polars as pl
import pytest

from datamill.synth.codeswitch.dictd import b64_decode, b64_encode
from datamill.synth.codeswitch.lexicon import load_lexicon

ENTRIES = {
    "house": "house /haʊs/\n1. casa <n>\n2. hogar\n",
    "ice cream": "ice cream\nhelado\n",
    "red": "red /rɛd/\nrojo, roja; colorado\n",
}


def write_dictd(folder, compress):
    """A FreeDict-style pair: entries concatenated in .dict, offsets/lengths in dictd base64."""
    body, index_lines, offset = b"", [], 0
    for head in ["00-database-short", *ENTRIES]:
        data = (ENTRIES.get(head) or "English-Spanish test dictionary\n").encode()
        index_lines.append(f"{head}\t{b64_encode(offset)}\t{b64_encode(len(data))}")
        body += data
        offset += len(data)
    (folder / "eng-spa.index").write_text("\n".join(index_lines) + "\n", encoding="utf-8")
    if compress:
        (folder / "eng-spa.dict.dz").write_bytes(gzip.compress(body))
    else:
        (folder / "eng-spa.dict").write_bytes(body)
    return folder / "eng-spa.index"


def test_dictd_base64_matches_dictd_numbers():
    assert b64_encode(0) == "A" and b64_encode(63) == "/" and b64_encode(64) == "BA"
    assert b64_decode("B5") == 121 and b64_decode(b64_encode(123456789)) == 123456789
    with pytest.raises(ValueError, match="bad character"):
        b64_decode("A=")


@pytest.mark.parametrize("compress", [False, True])
def test_dictd_pair_reads_translations(tmp_path, compress):
    table = load_lexicon(write_dictd(tmp_path, compress), "en", "es")
    pairs = set(table.select("source_term", "target_term").iter_rows())
    assert pairs == {("house", "casa"), ("house", "hogar"), ("ice cream", "helado"),
                     ("red", "rojo"), ("red", "roja"), ("red", "colorado")}
    assert set(table["target_lang"]) == {"es"} and set(table["source_lang"]) == {"en"}
    assert table.filter(pl.col("target_term") == "casa")["pos"].item() == "noun"


def test_dictd_offsets_past_the_end_name_the_entry(tmp_path):
    index = write_dictd(tmp_path, False)
    (tmp_path / "eng-spa.dict").write_bytes(b"house\n")
    with pytest.raises(ValueError, match="'house' points past the end"):
        load_lexicon(index, "en", "es")


def test_tei_entries(tmp_path):
    tei = tmp_path / "eng-deu.tei"
    tei.write_text("""<?xml version="1.0" encoding="UTF-8"?>
<TEI xmlns="http://www.tei-c.org/ns/1.0"><text><body>
<entry><form><orth>dog</orth></form><gramGrp><pos>n</pos></gramGrp>
  <sense><cit type="trans"><quote>Hund</quote></cit><cit type="example"><quote>not this</quote></cit></sense></entry>
<entry><form><orth>train station</orth></form>
  <sense><cit type="trans"><quote>Bahnhof</quote></cit></sense><sense><cit type="trans"><quote>Station</quote></cit></sense></entry>
</body></text></TEI>""", encoding="utf-8")
    table = load_lexicon(tei, "en", "de")
    assert table.select("source_term", "target_term", "pos").rows() == [
        ("dog", "Hund", "noun"), ("train station", "Bahnhof", None), ("train station", "Station", None)]


def test_tables_and_entities(tmp_path):
    (tmp_path / "lex.jsonl").write_text('{"source_term": "cat", "target_lang": "es", "target_term": "gato"}\n')
    table = load_lexicon(tmp_path / "lex.jsonl", source_lang="en")
    assert table.row(0, named=True) == {"source_lang": "en", "source_term": "cat", "target_lang": "es",
                                        "target_term": "gato", "pos": None, "number": None, "rank": None,
                                        "type": "word"}
    (tmp_path / "ent.tsv").write_text("entity_id\tlang\tlabel\nQ64\ten\tBerlin\nQ64\tes\tBerlín\n")
    entities = load_lexicon(tmp_path / "ent.tsv")
    assert set(entities.select("source_lang", "target_term", "type").iter_rows()) == {
        ("en", "Berlín", "entity"), ("es", "Berlin", "entity")}
    shipped = load_lexicon("en-es.tsv")
    assert ("ice cream", "helado") in set(shipped.select("source_term", "target_term").iter_rows())


def test_bad_lexicons_name_file_record_and_field(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("source_term\ttarget_lang\ttarget_term\ncat\tes\tgato\ndog\tes\t\n")
    with pytest.raises(ValueError, match=r"bad.tsv: record 2: field 'target_term' is empty"):
        load_lexicon(bad)
    (tmp_path / "cols.tsv").write_text("word\ttranslation\ncat\tgato\n")
    with pytest.raises(ValueError, match=r"cols.tsv: missing column"):
        load_lexicon(tmp_path / "cols.tsv")
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        load_lexicon("nope.tsv")
    with pytest.raises(ValueError, match="need source_lang and target_lang"):
        load_lexicon(write_dictd(tmp_path, False))


FREEDICT_DEU = {  # index key → entry body, the shapes of Debian's freedict-eng-deu (Ding) entries
    "free": ("free /fɹˈiː/\nfrei <adj>\n         Note: von\n      \"free from defects\"  - frei von Mängeln\n"
             " see: {freer}, {freest}, {unfree}\n"),
    "licence": ("licence /lˈaɪsəns/\nLizenz <fem>, Genehmigung <fem> [adm.]\n   Synonym: {license}\n\n"
                " see: {licences}\n         Note: for sth.\n"),
    "licences": "licences /lˈaɪsənsɪz/\nLizenzen <pl>, Genehmigungen <pl>\n   Synonyms: {licenses}\n",
    "a": "amp /ˈamp/ (A /ˈeɪ/)\nAmpere <neut> [electr.] A,  /ˈeɪ/\n   Synonym: {ampere}\n",  # an alias key
    "key": ("key /kˈiː/\nSchlüssel <masc>\n see: {keys}\n\nkey /kˈiː/\nTaste <fem> [comp.]\n"
            "   Synonyms: {button}\n"),
    "run": "run /ɹˈʌn/ <v>\nlaufen, rennen <v, intr>\n      \"to run fast\"  - schnell laufen\n",
}


def write_freedict(folder, entries, extra_index=()):
    body, index_lines, offset = b"", [], 0
    for head in ["00databaseinfo", "00-database-short", *entries]:
        data = (entries.get(head) or "English-German FreeDict dictionary\n").encode()
        index_lines.append(f"{head}\t{b64_encode(offset)}\t{b64_encode(len(data))}")
        body += data
        offset += len(data)
    index_lines += list(extra_index)
    (folder / "eng-deu.index").write_text("\n".join(index_lines) + "\n", encoding="utf-8")
    (folder / "eng-deu.dict.dz").write_bytes(gzip.compress(body))
    return folder / "eng-deu.index"


def test_freedict_entries_give_only_sense_translations_with_pos_number_and_rank(tmp_path):
    from datamill.synth.codeswitch.dictd import parse_dictd

    empty_headwords = ["\tFVrr\tDD", "\tA\tB"]  # as in Debian's eng-deu: 7 index lines with no headword
    index = write_freedict(tmp_path, FREEDICT_DEU, empty_headwords)
    rows, counts = parse_dictd(index, "en", "de")
    got = {(r["source_term"], r["target_term"], r["pos"], r["number"]) for r in rows.iter_rows(named=True)}
    assert got == {("free", "frei", "adj", None), ("licence", "Lizenz", "noun", "sg"),
                   ("licence", "Genehmigung", "noun", "sg"), ("licences", "Lizenzen", "noun", "pl"),
                   ("licences", "Genehmigungen", "noun", "pl"), ("amp", "Ampere", "noun", "sg"),
                   ("key", "Schlüssel", "noun", "sg"), ("key", "Taste", "noun", "sg"),
                   ("run", "laufen", "verb", None), ("run", "rennen", "verb", None)}
    # notes, synonyms, see-also and examples are never translations
    assert not rows.filter(pl.col("target_term").str.contains(r"[{}:\"]|^von$|Mängeln|schnell")).height
    assert counts["empty_headword"] == 2 and counts["metadata"] == 2 and counts["annotation_lines"] == 11
    # the general sense before the domain one ([comp.]): Schlüssel is key's rank 1
    assert rows.filter((pl.col("source_term") == "key") & (pl.col("rank") == 1))["target_term"].item() == "Schlüssel"
    table = load_lexicon(index, "en", "de")  # empty headwords no longer fail the whole dictionary
    assert {"number", "rank"} <= set(table.columns) and table.height == len(got)


def test_freedict_phrase_entries_that_lost_their_words_are_skipped(tmp_path):
    from datamill.synth.codeswitch.dictd import parse_dictd

    entries = {"a": "a /ə/\n1. a, dentro de\n2. un, una\n", "a day": "a /ədei/\naldía\n",
               "basket": "basket /bɑːskit/\ncesto\n"}
    rows, counts = parse_dictd(write_freedict(tmp_path, entries), "en", "es")
    assert counts["mangled_entries"] == 1 and "aldía" not in rows["target_term"].to_list()
    assert sorted(rows.filter(pl.col("source_term") == "a")["target_term"]) == ["a", "dentro de", "un", "una"]
