"""Inputs other than sources on an S3-compatible store (moto's server on 127.0.0.1): eval sets, fastText
models, lexicons, block-lists, LSH indexes and a crawl's paths file read from `s3://` like local files."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil

import polars as pl
import pytest

from conftest import write_jsonl
from datamill.curate.engine.paths import download_dir, local_copy
from datamill.curate.engine.recipe import path_problems, validate_recipe
from datamill.curate.engine.stage import DROP_REASON
from datamill.curate.executors.run import run_recipe

s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (pip install datamill[s3])")
pytest.importorskip("moto.server", reason="moto[server] is not installed (dev extra)")
from test_object_store import s3_endpoint  # noqa: E402,F401  (the S3 server fixture)
from warc_files import http_request, http_response, page, write_warc  # noqa: E402

BUCKET = "inputs"
QUESTION = ("A farmer has seventeen sheep and all but nine run away through a hole in the fence; "
            "how many sheep does the farmer have left at the end of the day?")


@pytest.fixture(scope="module")
def store(s3_endpoint):
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    return fs


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAMILL_CACHE", str(tmp_path / "cache"))


def put(store, local, key: str) -> str:
    store.put(str(local), f"{BUCKET}/{key}", recursive=local.is_dir())
    store.invalidate_cache()
    return f"s3://{BUCKET}/{key}"


def test_decontaminate_with_an_eval_set_on_s3(store, tmp_path):
    write_jsonl(tmp_path / "evals.jsonl", [{"question": QUESTION}])
    url = put(store, tmp_path / "evals.jsonl", "evals/riddles.jsonl")
    write_jsonl(tmp_path / "docs.jsonl", [{"text": f"Warm-up riddle for the class: {QUESTION} Answer below."},
                                          {"text": "The river rose overnight and flooded the fields near the mill."}])
    spec = {"name": "s3evals", "output": {"dir": str(tmp_path / "out")},
            "sources": [{"type": "jsonl", "path": str(tmp_path / "docs.jsonl")}],
            "stages": [{"type": "decontaminate", "benchmarks": [
                {"name": "riddles", "source": {"type": "jsonl", "path": url, "text_field": "question"}}]}]}
    assert path_problems(validate_recipe(spec)) == []
    stats = run_recipe(validate_recipe(spec), workers=1)
    assert stats["stages"][0]["dropped"] == {"contaminated:riddles": 1}
    spec["stages"][0]["benchmarks"][0]["source"]["path"] = f"s3://{BUCKET}/evals/missing.jsonl"
    assert any("missing.jsonl" in p for p in path_problems(validate_recipe(spec)))


def test_fasttext_language_model_and_classifier_on_s3(store, tmp_path):
    import fasttext

    from datamill.filters.classifier import ClassifierFilter, ClassifierParams
    from datamill.filters.language import LanguageFilter, LanguageParams

    lid = LanguageFilter().model_path()
    url = put(store, lid, "models/lid.176.ftz")
    stage = LanguageFilter(LanguageParams(model=url))
    stage.setup()
    langs = stage.predict(pl.Series(["The weather is lovely today and we walk to the sea.",
                                     "Das Wetter ist heute schön und wir gehen ans Meer."]))["langs"].list.first()
    assert langs.to_list() == ["en", "de"]
    assert len(list(download_dir().iterdir())) == 1
    LanguageFilter(LanguageParams(model=url)).setup()  # a second load reuses the copy
    assert len(list(download_dir().iterdir())) == 1

    rows = [f"__label__{'cook' if i % 2 else 'code'} " + ("stir the onions in butter until golden" if i % 2
                                                         else "compile the module and run the tests") for i in range(40)]
    (tmp_path / "train.txt").write_text("\n".join(rows) + "\n")
    model = fasttext.train_supervised(input=str(tmp_path / "train.txt"), epoch=20, lr=1.0, thread=1, seed=1)
    model.save_model(str(tmp_path / "topic.bin"))
    topic = put(store, tmp_path / "topic.bin", "models/topic.bin")
    classifier = ClassifierFilter(ClassifierParams(model=topic, label="cook", min_score=0.5))
    classifier.setup()
    out = classifier.process(pl.DataFrame({"text": ["stir the onions in butter", "compile the module"]}))
    assert out[DROP_REASON].is_null().to_list() == [True, False]
    assert ClassifierParams(model=topic).check_paths(str(tmp_path)) == []
    assert "no classifier file or folder" in ClassifierParams(model=topic + ".gone").check_paths(str(tmp_path))[0]
    assert LanguageParams(model=url + ".gone").check_paths(str(tmp_path))


def test_a_changed_object_gets_a_fresh_local_copy(store, tmp_path):
    (tmp_path / "words.txt").write_text("first\n")
    url = put(store, tmp_path / "words.txt", "changing/words.txt")
    first = local_copy(url)
    assert local_copy(url) == first
    (tmp_path / "words.txt").write_text("second version\n")
    put(store, tmp_path / "words.txt", "changing/words.txt")
    second = local_copy(url)
    assert second != first and open(second).read() == "second version\n" and open(first).read() == "first\n"


def test_lexicons_on_s3_tables_and_dictd_pairs(store, tmp_path):
    from datamill.synth.codeswitch.dictd import b64_encode
    from datamill.synth.codeswitch.lexicon import data_path, load_lexicon
    from datamill.synth.codeswitch.switch import SwitchParams

    (tmp_path / "en-es.tsv").write_text("source_term\ttarget_lang\ttarget_term\thouse\tes\tcasa\n".replace(
        "term\thouse", "term\nhouse"))
    tsv = put(store, tmp_path / "en-es.tsv", "lexicons/en-es.tsv")
    assert load_lexicon(tsv)["target_term"].to_list() == ["casa"]
    folder = tmp_path / "freedict"
    folder.mkdir()
    entries = {"00-database-short": "test dictionary\n", "red": "red /rɛd/\n<adj>\nrojo, roja\n"}
    body, index, offset = b"", [], 0
    for head, text in entries.items():
        data = text.encode()
        index.append(f"{head}\t{b64_encode(offset)}\t{b64_encode(len(data))}")
        body, offset = body + data, offset + len(data)
    (folder / "eng-spa.index").write_text("\n".join(index) + "\n")
    (folder / "eng-spa.dict.dz").write_bytes(gzip.compress(body))
    put(store, folder, "lexicons/freedict")
    table = load_lexicon(f"s3://{BUCKET}/lexicons/freedict/eng-spa.index", "en", "es")
    assert set(table["target_term"]) == {"rojo", "roja"}
    params = SwitchParams(lexicons=[tsv, f"s3://{BUCKET}/lexicons/nothing.tsv"])
    assert params.check_paths(str(tmp_path)) == [
        f"lexicons[1]: lexicon 's3://{BUCKET}/lexicons/nothing.tsv' not found (neither a path nor a file in "
        f"{data_path('')})"]


def test_block_lists_on_s3_in_a_run_with_rule_counts_in_the_report(store, tmp_path):
    (tmp_path / "easylist.txt").write_text("||ads.example^\nexample.org##.banner\n||cdn.example^$script\n"
                                           "/promo/$domain=shop.example\n")
    adblock = put(store, tmp_path / "easylist.txt", "lists/easylist.txt")
    (tmp_path / "ut1" / "gambling").mkdir(parents=True)
    (tmp_path / "ut1" / "gambling" / "domains").write_text("casino.example\n")
    put(store, tmp_path / "ut1", "lists/ut1")
    urls = ["https://ads.example/a", "https://shop.example/promo/1", "https://www.casino.example/",
            "https://cdn.example/lib.js", "https://clean.example/"]
    write_jsonl(tmp_path / "pages.jsonl", [{"text": f"page {i} " * 5, "url": u} for i, u in enumerate(urls)])
    spec = {"name": "lists", "output": {"dir": str(tmp_path / "out")},
            "sources": [{"type": "jsonl", "path": str(tmp_path / "pages.jsonl"), "columns": {"url": "str"}}],
            "stages": [{"type": "url_filter", "block": [
                {"path": adblock, "format": "adblock", "name": "easylist"},
                {"path": f"s3://{BUCKET}/lists/ut1", "format": "ut1", "categories": ["gambling"]}]}]}
    assert path_problems(validate_recipe(spec)) == []
    stats = run_recipe(validate_recipe(spec), workers=1)
    stage = stats["stages"][0]
    assert stage["dropped"] == {"easylist": 2, "ut1:gambling": 1}
    assert stage["facts"] == {"adblock_block_rules": 2, "adblock_exception_rules": 0,
                              "adblock_not_applicable:cosmetic": 1, "adblock_not_applicable:resource_type": 1}
    report = (tmp_path / "out" / "report.md").read_text().replace("\\_", "_")
    assert "Set-up of stage url_filter: adblock_block_rules 2" in report and "adblock_not_applicable:cosmetic 1" in report
    kept = pl.read_parquet(tmp_path / "out" / "shards")["url"].to_list()
    assert kept == ["https://cdn.example/lib.js", "https://clean.example/"]
    spec["stages"][0]["block"][1]["categories"] = ["adult"]
    spec["stages"][0]["block"][0]["path"] = adblock + ".gone"
    assert [p.split(":")[0] for p in path_problems(validate_recipe(spec))] == [
        "stages[0].block[0].path", "stages[0].block[1].categories"]


def test_lsh_index_saved_to_and_read_from_s3(store, tmp_path):
    docs = [shutil.copytree.__doc__, json.dumps.__doc__]
    write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in docs])
    index = f"s3://{BUCKET}/indexes/lsh.pkl"

    def spec(out, **stage):
        return validate_recipe({"name": "lsh", "output": {"dir": str(tmp_path / out)},
                                "sources": [{"type": "jsonl", "path": str(tmp_path / "docs.jsonl")}],
                                "stages": [{"type": "minhash_lsh_index", **stage}]})

    assert any(p.startswith("stages[0].index:") for p in path_problems(spec("x", index=index)))
    assert run_recipe(spec("first", save_index=index), workers=1)["stages"][0]["dropped"] == {}
    store.invalidate_cache()
    assert len(pickle.loads(store.cat_file(index[5:])).keys) == 2
    second = run_recipe(spec("second", index=index), workers=1)
    assert second["stages"][0]["dropped"] == {"indexed_duplicate": 2}


def test_warc_paths_file_on_s3_with_relative_and_url_entries(store, tmp_path):
    from datamill.curate.sources.warc import WarcParams, WarcSource

    for name in ("one", "two"):
        url = f"https://{name}.example.org/story"
        write_warc(tmp_path / f"{name}.warc.gz", [http_request(url), http_response(url, page(name, [
            "The committee met on Tuesday to review the proposed changes to the harbour bylaws."]).encode())])
        put(store, tmp_path / f"{name}.warc.gz", f"crawl-data/segments/warc/{name}.warc.gz")
    (tmp_path / "warc.paths.gz").write_bytes(gzip.compress(
        b"crawl-data/segments/warc/one.warc.gz\n" + f"s3://{BUCKET}/crawl-data/segments/warc/two.warc.gz\n".encode()))
    listing = put(store, tmp_path / "warc.paths.gz", "crawl-data/warc.paths.gz")
    params = WarcParams(paths_file=listing, paths_prefix=f"s3://{BUCKET}/")
    assert params.check_paths(str(tmp_path)) == []
    source = WarcSource(params, index=0, base_dir=str(tmp_path))
    urls = [url for spec in source.plan() for batch in source.read(spec, batch_rows=8) for url in batch.records["url"]]
    assert sorted(urls) == ["https://one.example.org/story", "https://two.example.org/story"]
    (tmp_path / "warc.paths.gz").write_bytes(gzip.compress(b"crawl-data/segments/warc/three.warc.gz\n"))
    put(store, tmp_path / "warc.paths.gz", "crawl-data/warc.paths.gz")
    problems = WarcParams(paths_file=listing, paths_prefix=f"s3://{BUCKET}/").check_paths(str(tmp_path))
    assert len(problems) == 1 and f"s3://{BUCKET}/crawl-data/segments/warc/three.warc.gz" in problems[0]
    assert "no file" in WarcParams(paths_file=listing + ".gone").check_paths(str(tmp_path))[0]


def test_a_crawl_sized_paths_file_is_planned_without_a_request_per_object(store, tmp_path, monkeypatch):
    import datamill.curate.engine.paths as paths
    from datamill.curate.sources.warc import WarcParams, WarcSource

    url = "https://one.example.org/story"
    write_warc(tmp_path / "one.warc.gz", [http_request(url), http_response(url, page("one", [
        "The committee met on Tuesday to review the proposed changes to the harbour bylaws."]).encode())])
    put(store, tmp_path / "one.warc.gz", "crawl/one.warc.gz")
    names = ["one"] + [f"gone-{i:05d}" for i in range(2_000)]  # listed, never uploaded
    (tmp_path / "warc.paths.gz").write_bytes(gzip.compress("".join(f"crawl/{n}.warc.gz\n" for n in names).encode()))
    listing = put(store, tmp_path / "warc.paths.gz", "crawl/warc.paths.gz")
    source = WarcSource(WarcParams(paths_file=listing, paths_prefix=f"s3://{BUCKET}/"), index=0, base_dir=str(tmp_path))
    calls = []
    real_filesystem = paths.filesystem
    monkeypatch.setattr(paths, "filesystem", lambda target: calls.append(target) or real_filesystem(target))
    shards = source.plan()
    assert len(shards) == 2_001 and calls == [listing]  # only the listing itself was read
    first, gone = shards[-1], shards[0]  # sorted: "gone-…" before "one"
    records = [b.records for b in source.read(first, batch_rows=8)]
    assert [u for r in records for u in r["url"]] == [url]
    quarantined = [b.quarantine for b in source.read(gone, batch_rows=8)]
    assert [q["reason"][0] for q in quarantined if q is not None and q.height] == ["missing_file"]


def test_a_transformers_model_folder_on_s3_is_copied_once(store, tmp_path):
    from datamill.curate.models.params import causal_lm_problem
    from datamill.curate.models.resolve import resolve_model

    folder = tmp_path / "tiny"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "sub" / "tokenizer.json").write_text("{}")
    url = put(store, folder, "models/tiny")
    assert causal_lm_problem("model", url) == []
    local = resolve_model(url)
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*")) == ["config.json", "sub", "sub/tokenizer.json"]
    assert resolve_model(url + "/") == local
    assert "neither a built-in model" in causal_lm_problem("model", f"s3://{BUCKET}/models/none")[0]
    with pytest.raises(FileNotFoundError, match="no folder at that URL"):
        resolve_model(f"s3://{BUCKET}/models/none")


def test_embedding_model_valid_set_and_stop_words_on_s3(store, tmp_path):
    from datamill.curate.models.embeddings import resolve_embedding_model
    from datamill.curate.selection.ds_weight import DSWeightParams, read_valid_set
    from datamill.synth.codeswitch.switch import load_stopwords

    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text('{"model_type": "bert"}')
    url = put(store, encoder, "models/encoder")
    assert (resolve_embedding_model(url) / "config.json").read_text() == '{"model_type": "bert"}'
    with pytest.raises(FileNotFoundError, match="no folder at that URL"):
        resolve_embedding_model(f"s3://{BUCKET}/models/no-encoder")

    pl.DataFrame({"text": ["A held-out record.", "Another one."]}).write_parquet(tmp_path / "valid.parquet")
    valid = put(store, tmp_path / "valid.parquet", "valid/valid.parquet")
    assert read_valid_set(valid)["text"].to_list() == ["A held-out record.", "Another one."]
    assert DSWeightParams(valid_path=valid).check_paths(".") == []
    missing = f"s3://{BUCKET}/valid/none.parquet"
    assert "does not exist" in DSWeightParams(valid_path=missing).check_paths(".")[0]

    (tmp_path / "stop.txt").write_text("Widget\nsprocket\n", encoding="utf-8")
    words = put(store, tmp_path / "stop.txt", "lists/stop.txt")
    assert load_stopwords("en", {"en": words}) == ["sprocket", "widget"]
