"""The `warc` source: WARC/WET/ARC files written byte by byte, read into documents, skips and quarantine."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from pydantic import ValidationError

from datamill.curate.sources.warc import WarcParams, WarcSource
from warc_files import (arc_file, http_request, http_response, page, record_id, warc_record, wet_conversion,
                        write_warc)

PROSE = [
    "The committee met on Tuesday to review the proposed changes to the harbour bylaws and the fishing quotas.",
    "Several members argued that the new limits would hurt small family boats more than the industrial fleet.",
    "After a long debate the proposal was sent back for another round of consultation with local residents.",
]


def read_all(path, **params) -> tuple[pl.DataFrame, pl.DataFrame, dict, int]:
    params = {"path": str(path), **params} if "paths_file" not in params else params
    source = WarcSource(WarcParams(**params), index=0, base_dir=str(Path(path).parent))
    records, quarantine, skipped, read = [], [], {}, 0
    for spec in source.plan():
        for batch in source.read(spec, batch_rows=4):
            records.append(batch.records)
            quarantine.append(batch.quarantine)
            read += batch.lines_read
            for reason, n in batch.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + n
    return pl.concat(records), pl.concat(quarantine), skipped, read


def crawl(n: int = 3, site: str = "news") -> list[bytes]:
    records = []
    for i in range(n):
        url = f"https://{site}.example.org/story/{i}"
        records += [http_request(url), http_response(url, page(f"Story {i}", PROSE).encode())]
    return records


def test_response_records_become_documents_with_warc_columns(tmp_path):
    path = write_warc(tmp_path / "crawl.warc.gz", crawl(3))
    records, quarantine, skipped, read = read_all(path)
    assert records["url"].to_list() == [f"https://news.example.org/story/{i}" for i in range(3)]
    assert records["id"].to_list() == [record_id(u, "response") for u in records["url"]]
    assert records["warc_record_id"].to_list() == records["id"].to_list()
    assert set(records["content_type"]) == {"text/html"}
    assert set(records["http_status"]) == {200}
    assert set(records["warc_date"]) == {"2024-03-01T12:00:00Z"}
    assert records["text"][0].startswith("<!DOCTYPE html>")
    assert skipped == {"record_type:request": 3}
    assert read == 6 and quarantine.height == 0


def test_non_html_and_non_200_are_skipped_by_reason_not_quarantined(tmp_path):
    body = page("ok", PROSE).encode()
    path = write_warc(tmp_path / "mixed.warc", [
        http_response("https://a.example/ok", body),
        http_response("https://a.example/missing", body, status=404),
        http_response("https://a.example/moved", b"", status=301),
        http_response("https://a.example/doc.pdf", b"%PDF-1.7 binary", content_type="application/pdf"),
        http_response("https://a.example/pic", b"\x89PNG\r\n", content_type="image/png"),
        http_response("https://a.example/empty", b"   "),
        warc_record("metadata", "https://a.example/ok", b"fetchTimeMs: 12\r\n", "application/warc-fields"),
    ])
    records, quarantine, skipped, read = read_all(path)
    assert records["url"].to_list() == ["https://a.example/ok"]
    assert skipped == {"http_status:404": 1, "http_status:301": 1, "mime_type:application/pdf": 1,
                       "mime_type:image/png": 1, "empty_body": 1, "record_type:metadata": 1}
    assert quarantine.height == 0 and read == 7


def test_statuses_and_types_are_configurable_and_payload_type_wins(tmp_path):
    path = write_warc(tmp_path / "t.warc", [
        http_response("https://a.example/404", page("gone", PROSE).encode(), status=404),
        # Common Crawl's sniffed type overrides a wrong HTTP header
        http_response("https://a.example/mislabelled", page("x", PROSE).encode(), content_type="text/plain",
                      extra={"WARC-Identified-Payload-Type": "text/html"}),
        http_response("https://a.example/notype", page("y", PROSE).encode(), content_type=None),
    ])
    records, _, skipped, _ = read_all(path, http_status=[200, 404])
    assert records["url"].to_list() == ["https://a.example/404", "https://a.example/mislabelled",
                                        "https://a.example/notype"]
    assert records["http_status"].to_list() == [404, 200, 200]
    assert records["content_type"].to_list() == ["text/html"] * 3
    assert skipped == {}


def test_charsets_declared_in_header_or_meta_or_detected(tmp_path):
    latin = page("Café", ["Les élèves ont mangé des crêpes à la crème près du château."]).encode("cp1252")
    russian = page("Новости", ["Это очень длинное предложение на русском языке о погоде в Москве сегодня."] * 3,
                   charset="windows-1251").encode("cp1251")
    japanese = page("ニュース", ["今日は天気がとても良いので、公園で散歩をしました。桜がきれいに咲いています。"] * 3,
                    charset="shift_jis").encode("shift_jis")
    utf8_mislabelled = page("Zürich", ["Grüße aus Zürich, wo die Straßen sauber sind."]).encode("utf-8")
    path = write_warc(tmp_path / "charsets.warc.gz", [
        http_response("https://fr.example/", latin, content_type="text/html; charset=windows-1252"),
        http_response("https://ru.example/", russian, content_type="text/html"),
        http_response("https://jp.example/", japanese, content_type="text/html"),
        http_response("https://de.example/", utf8_mislabelled, content_type="text/html; charset=iso-8859-1"),
    ])
    records, quarantine, _, _ = read_all(path)
    text = dict(zip(records["url"], records["text"]))
    assert "crêpes à la crème près du château" in text["https://fr.example/"]
    assert "русском языке о погоде" in text["https://ru.example/"]
    assert "公園で散歩をしました" in text["https://jp.example/"]
    assert "Grüße aus Zürich" in text["https://de.example/"]
    assert quarantine.height == 0


def test_lf_only_http_headers_from_old_crawls(tmp_path):
    html = page("Old", PROSE).encode()
    block = b"HTTP/1.0 200 OK\nContent-Type: text/html\n\n" + html
    path = write_warc(tmp_path / "old.warc", [warc_record("response", "http://old.example/", block,
                                                          "application/http; msgtype=response")])
    records, quarantine, _, _ = read_all(path)
    assert records["text"].to_list() == [html.decode()] and quarantine.height == 0


def test_chunked_and_gzip_encoded_payloads_are_decoded(tmp_path):
    html = page("Encoded", PROSE).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(html[i:i + 100]), html[i:i + 100]) for i in range(0, len(html), 100))
    chunked += b"0\r\n\r\n"
    path = write_warc(tmp_path / "enc.warc", [
        http_response("https://c.example/chunked", chunked, http_headers={"Transfer-Encoding": "chunked"}),
        http_response("https://c.example/gzip", gzip.compress(html), http_headers={"Content-Encoding": "gzip"}),
    ])
    records, quarantine, _, _ = read_all(path)
    assert records["text"].to_list() == [html.decode()] * 2
    assert quarantine.height == 0


def test_wet_conversion_records_with_language_hint(tmp_path):
    path = write_warc(tmp_path / "crawl.warc.wet.gz", [
        warc_record("warcinfo", "", b"software: test\r\n", "application/warc-fields"),
        wet_conversion("https://a.example/", "Plain text of the page.\nSecond line.", "eng"),
        wet_conversion("https://b.example/", "Texte en français et en anglais.", "fra,eng"),
        wet_conversion("https://c.example/", "No hint here.", None),
    ])
    records, _, skipped, _ = read_all(path)
    assert records["text"].to_list() == ["Plain text of the page.\nSecond line.", "Texte en français et en anglais.",
                                         "No hint here."]
    assert records["language"].to_list() == ["eng", "fra,eng", None]
    assert set(records["content_type"]) == {"text/plain"}
    assert records["http_status"].to_list() == [None] * 3
    assert skipped == {"record_type:warcinfo": 1}


def test_common_crawl_metadata_records_give_the_language_hint(tmp_path):
    def metadata(url: str, languages: str) -> bytes:
        block = f"fetchTimeMs: 120\r\ncharset-detected: UTF-8\r\nlanguages-cld2: {languages}\r\n".encode()
        return warc_record("metadata", url, block, "application/warc-fields",
                           {"WARC-Concurrent-To": record_id(url, "response")})

    cld2 = ('{"reliable":true,"text-bytes":3842,"languages":[{"code":"de","code-iso-639-3":"deu",'
            '"text-covered":0.8},{"code":"en","code-iso-639-3":"eng","text-covered":0.2}]}')
    path = write_warc(tmp_path / "cc.warc.gz", [
        http_request("https://de.example/"), http_response("https://de.example/", page("x", PROSE).encode()),
        metadata("https://de.example/", cld2),
        http_response("https://none.example/", page("y", PROSE).encode()),
        metadata("https://other.example/", cld2),  # about another record
        http_response("https://last.example/", page("z", PROSE).encode()),
    ])
    records, _, skipped, _ = read_all(path)
    assert records["language"].to_list() == ["deu,eng", None, None]
    assert skipped == {"record_type:request": 1, "record_type:metadata": 2}


@pytest.mark.parametrize("name", ["old.arc.gz", "old.arc"])
def test_arc_files(tmp_path, name):
    path = arc_file(tmp_path / name, [("http://old.example/a", page("A", PROSE).encode()),
                                      ("http://old.example/b", page("B", PROSE[:1]).encode())])
    records, quarantine, skipped, _ = read_all(path)
    assert records["url"].to_list() == ["http://old.example/a", "http://old.example/b"]
    assert records["warc_date"].to_list() == ["2024-03-01T12:00:00Z"] * 2
    assert records["id"].n_unique() == 2 and all(i.startswith(f"warc:{name}:") for i in records["id"])
    assert "harbour bylaws" in records["text"][0]
    assert skipped == {"record_type:warcinfo": 1} and quarantine.height == 0


def test_gzip_member_cut_short_is_quarantined_and_earlier_records_kept(tmp_path):
    data = write_warc(tmp_path / "full.warc.gz", crawl(4)).read_bytes()
    for cut in (40, 400):
        path = tmp_path / f"cut{cut}.warc.gz"
        path.write_bytes(data[:-cut])
        records, quarantine, _, _ = read_all(path)
        assert records["url"].to_list()[:3] == [f"https://news.example.org/story/{i}" for i in range(3)]
        assert quarantine["reason"].to_list() == ["truncated_file"]
        assert quarantine["file"].to_list() == [path.name]
        assert "cut short" in quarantine["detail"][0] or "ends inside" in quarantine["detail"][0]


def test_plain_warc_cut_inside_a_record(tmp_path):
    data = write_warc(tmp_path / "full.warc", crawl(2)).read_bytes()
    path = tmp_path / "cut.warc"
    path.write_bytes(data[:-200])
    records, quarantine, _, _ = read_all(path)
    assert records["url"].to_list() == ["https://news.example.org/story/0"]
    assert quarantine["reason"].to_list() == ["truncated_file"]


def test_malformed_records_are_quarantined_and_reading_goes_on(tmp_path):
    good = crawl(3)
    bad_http = warc_record("response", "https://bad.example/", b"this is not an HTTP response",
                           "application/http; msgtype=response")
    no_id = warc_record("response", "https://noid.example/", b"HTTP/1.1 200 OK\r\n\r\n<html>x</html>",
                        "application/http", rid="")
    garbage = b"WARC/1.0\r\nthis line is not a header\r\n\r\n"
    for name in ("bad.warc", "bad.warc.gz"):
        path = write_warc(tmp_path / name, good[:2] + [bad_http, no_id, garbage] + good[2:])
        records, quarantine, _, _ = read_all(path)
        assert records["url"].to_list() == [f"https://news.example.org/story/{i}" for i in range(3)], name
        assert quarantine["reason"].to_list() == ["malformed_record"] * 3, name
        assert "HTTP" in quarantine["detail"][0] and "WARC-Record-ID" in quarantine["detail"][1]


def test_limit_counts_response_records(tmp_path):
    write_warc(tmp_path / "a.warc.gz", crawl(3, "a"))
    write_warc(tmp_path / "b.warc.gz", crawl(3, "b"))
    records, _, _, _ = read_all(tmp_path / "*.warc.gz", limit=4)
    assert records["url"].to_list() == [f"https://a.example.org/story/{i}" for i in range(3)] + [
        "https://b.example.org/story/0"]


def test_paths_file_with_prefix(tmp_path):
    crawl_dir = tmp_path / "cc" / "crawl-data" / "segments" / "warc"
    crawl_dir.mkdir(parents=True)
    write_warc(crawl_dir / "one.warc.gz", crawl(1))
    write_warc(crawl_dir / "two.warc.gz", crawl(2))
    listing = tmp_path / "warc.paths.gz"
    listing.write_bytes(gzip.compress(b"crawl-data/segments/warc/one.warc.gz\ncrawl-data/segments/warc/two.warc.gz\n"))
    params = {"paths_file": "warc.paths.gz", "paths_prefix": "cc"}
    assert WarcParams(**params).check_paths(str(tmp_path)) == []
    records, _, _, _ = read_all(tmp_path / "x", **params)
    assert records.height == 3
    listing.write_bytes(gzip.compress(b"crawl-data/segments/warc/three.warc.gz\n"))
    problems = WarcParams(**params).check_paths(str(tmp_path))
    assert len(problems) == 1 and "three.warc.gz" in problems[0]


def test_params_are_checked():
    with pytest.raises(ValidationError, match="either `path` or `paths_file`"):
        WarcParams()
    with pytest.raises(ValidationError, match="either `path` or `paths_file`"):
        WarcParams(path="a.warc", paths_file="warc.paths")
    with pytest.raises(ValidationError, match="leave `columns` unset"):
        WarcParams(path="a.warc", columns={"url": "str"})


# --- a whole run ----------------------------------------------------------------------------------


def web_recipe(tmp_path: Path, out: Path, files: int = 5, pages: int = 10) -> Path:
    raw = tmp_path / "raw"
    if not raw.exists():
        raw.mkdir()
        for f in range(files):
            records = []
            for i in range(pages):
                url = f"https://site{f}.example/page/{i}"
                body = page(f"Page {f}-{i}", [f"{p} Item {f}.{i}." for p in PROSE] + [
                    f"Write to editor{i}@site{f}.example.com for corrections."]).encode()
                records += [http_request(url), http_response(url, body)]
            records.append(http_response(f"https://site{f}.example/gone", b"nope", status=404))
            data = b"".join(gzip.compress(r) for r in records)
            (raw / f"crawl-{f}.warc.gz").write_bytes(data if f != 3 else data[:-150])
    recipe = {
        "name": "web-test",
        "sources": [{"type": "warc", "path": "raw/*.warc.gz"}],
        "stages": [{"type": "html_extract"}, {"type": "pii"}],
        "output": {"dir": str(out), "shard_rows": 10},
        "executor": {"batch_rows": 4},
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def datamill(recipe: Path, *extra: str) -> subprocess.Popen:
    cli = [sys.executable, "-c", "from datamill.curate.cli import main; main()"]
    return subprocess.Popen([*cli, "run", str(recipe), *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes()
            for folder in ("shards", "quarantine") for p in sorted((out / folder).rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_run_from_warc_is_the_same_with_two_workers_and_after_sigkill(tmp_path):
    one = tmp_path / "one"
    proc = datamill(web_recipe(tmp_path, one), "--workers", "1")
    assert proc.wait() == 0, proc.stdout.read().decode()
    expected = snapshot(one)
    stats = json.loads((one / "stats.json").read_text())
    (source,) = stats["sources"]
    assert source["skipped"] == {"http_status:404": 4, "record_type:request": 50}
    assert stats["quarantine"]["by_reason"] == {"truncated_file": 1}
    corpus = pl.read_parquet(one / "shards")
    assert corpus.height == 50 and set(corpus["title"].str.slice(0, 5)) == {"Page "}
    assert not corpus["text"].str.contains("tracking|Privacy policy").any()
    assert corpus["text"].str.contains(r"\|\|\|EMAIL_ADDRESS\|\|\|").all()
    pii = next(stage for stage in stats["stages"] if stage["name"] == "pii")
    assert pii["tallies"] == {"pii_email": 50}
    report = (one / "report.md").read_text()
    assert "Counted by stage pii: pii\\_email 50" in report or "Counted by stage pii: pii_email 50" in report
    assert "http\\_status:404 4" in report or "http_status:404 4" in report

    # two workers, killed with SIGKILL mid-run and run again: the same bytes as one clean worker
    killed = tmp_path / "killed"
    recipe = web_recipe(tmp_path, killed)
    proc = datamill(recipe, "--workers", "2")
    done = killed / "state" / "done"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if done.exists() and len(list(done.glob("*.json"))) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert not (killed / "stats.json").exists(), "the run finished before it could be killed"
    proc = datamill(recipe, "--workers", "2")
    assert proc.wait() == 0, proc.stdout.read().decode()
    assert snapshot(killed) == expected


def test_packaged_web_recipe_validates_next_to_a_crawl(tmp_path):
    from importlib import resources

    from datamill.curate.engine.recipe import RecipeError, load_recipe

    text = resources.files("datamill.recipes").joinpath("web.yaml").read_text()
    (tmp_path / "web.yaml").write_text(text)
    with pytest.raises(RecipeError, match="paths_file"):
        load_recipe(tmp_path / "web.yaml")
    segment = tmp_path / "commoncrawl" / "crawl-data" / "CC-MAIN-2024-10" / "warc"
    segment.mkdir(parents=True)
    write_warc(segment / "a.warc.gz", crawl(1))
    (tmp_path / "warc.paths.gz").write_bytes(gzip.compress(b"crawl-data/CC-MAIN-2024-10/warc/a.warc.gz\n"))
    with pytest.raises(RecipeError, match=r"stages\[1\]\.block\[0\]\.path: no folder 'blocklists/ut1'"):
        load_recipe(tmp_path / "web.yaml")
    (tmp_path / "blocklists" / "ut1" / "adult").mkdir(parents=True)
    with pytest.raises(RecipeError, match=r"block\[0\]\.categories: \['phishing', 'malware'\]"):
        load_recipe(tmp_path / "web.yaml")
    for category in ("phishing", "malware"):
        (tmp_path / "blocklists" / "ut1" / category).mkdir()
    recipe = load_recipe(tmp_path / "web.yaml")
    assert [t for t, _ in recipe.stage_params()][:3] == ["html_extract", "url_filter", "language"]
