"""The `html_extract` stage: main text and title with trafilatura or resiliparse, drops, time limit."""

from __future__ import annotations

import time

import polars as pl
import pytest
from pydantic import ValidationError

from datamill.curate.engine.stage import DROP_REASON
from datamill.filters.html_extract import HtmlExtract, HtmlExtractParams
from warc_files import page

ARTICLE = [
    "The river flooded the lower town twice this spring, and the council has finally agreed to pay for a "
    "new embankment along the eastern bank of the valley.",
    "Engineers say the work will take two years, during which the footpath along the water will be closed "
    "to walkers and cyclists for most of the summer months.",
    "Residents who lost property in the floods can apply for compensation at the town hall until the end "
    "of September, the mayor said in a statement on Monday.",
]
NO_TEXT = "<html><head><title>Empty</title></head><body><script>var tracking = 1;</script></body></html>"


def extract(rows: list[tuple[str, str | None]], **params) -> pl.DataFrame:
    stage = HtmlExtract(HtmlExtractParams(**params))
    stage.setup()
    batch = pl.DataFrame({"id": [str(i) for i in range(len(rows))], "text": [r[0] for r in rows],
                          "content_type": [r[1] for r in rows]}, schema={"id": pl.String, "text": pl.String,
                                                                         "content_type": pl.String})
    return stage.process(batch)


@pytest.mark.parametrize("engine", ["trafilatura", "resiliparse"])
def test_main_text_without_boilerplate_and_title(engine):
    out = extract([(page("Flood defences approved", ARTICLE), "text/html")], engine=engine)
    text = out["text"][0]
    for paragraph in ARTICLE:
        assert paragraph in text
    for boilerplate in ("tracking", "color: red", "About us", "Privacy policy"):
        assert boilerplate not in text
    assert out["title"][0] == "Flood defences approved"
    assert out[DROP_REASON][0] is None
    assert "html" not in out.columns


@pytest.mark.parametrize("engine", ["trafilatura", "resiliparse"])
def test_no_main_text_is_dropped_and_plain_text_passes(engine):
    out = extract([(NO_TEXT, "text/html"), ("already plain text", "text/plain"),
                   (page("t", ARTICLE), None)], engine=engine, keep_html=True)
    assert out[DROP_REASON].to_list() == ["no_text", None, None]
    assert out["text"][1] == "already plain text"
    assert ARTICLE[0] in out["text"][2]
    assert out["html"].to_list()[:2] == [NO_TEXT, "already plain text"]


def test_trafilatura_output_is_datatroves():
    trafilatura_extractor = pytest.importorskip("datatrove.pipeline.extractors").Trafilatura()
    pages = [page(f"Page {i}", ARTICLE[i:] + ARTICLE[:i]) for i in range(3)]
    pages.append("<html><body><table><tr><td>Name</td><td>Value</td></tr><tr><td>Height of the tower in metres"
                 "</td><td>324</td></tr></table><p>" + ARTICLE[0] + "</p></body></html>")
    from trafilatura.deduplication import LRU_TEST

    LRU_TEST.clear()
    expected = [trafilatura_extractor.extract(html) for html in pages]
    out = extract([(html, "text/html") for html in pages])
    assert out["text"].to_list() == expected


def test_deduplication_is_per_batch():
    """trafilatura drops a page whose text it has seen more than twice; that memory is cleared at
    every batch, so the same batch gives the same output whatever ran before it."""
    stage = HtmlExtract(HtmlExtractParams())
    stage.setup()
    batch = pl.DataFrame({"text": [page("Same", ARTICLE)] * 5})
    first = stage.process(batch)
    assert first[DROP_REASON].to_list() == [None, None, None, "no_text", "no_text"]
    assert stage.process(batch).equals(first)
    kept = HtmlExtract(HtmlExtractParams(deduplicate=False))
    kept.setup()
    assert kept.process(batch)[DROP_REASON].to_list() == [None] * 5


def test_a_page_over_the_time_limit_is_dropped_and_the_next_one_runs():
    stage = HtmlExtract(HtmlExtractParams(timeout=0.2))
    stage.setup()
    real = stage._extract

    def pathological(html):
        if "SLOW" in html:
            while True:
                time.sleep(0.01)
        return real(html)

    stage._extract = pathological
    batch = pl.DataFrame({"text": ["<html><body><p>SLOW</p></body></html>", page("ok", ARTICLE)]})
    started = time.monotonic()
    out = stage.process(batch)
    assert time.monotonic() - started < 5
    assert out[DROP_REASON].to_list() == ["extract_timeout", None]
    assert ARTICLE[1] in out["text"][1]


def test_extractor_errors_drop_the_page():
    stage = HtmlExtract(HtmlExtractParams())
    stage.setup()

    def broken(html):
        raise ValueError("parser exploded")

    stage._extract = broken
    out = stage.process(pl.DataFrame({"text": ["<p>x</p>"]}))
    assert out[DROP_REASON].to_list() == ["extract_error"]


def test_params_are_checked():
    with pytest.raises(ValidationError):
        HtmlExtractParams(engine="readability")
    with pytest.raises(ValidationError):
        HtmlExtractParams(timeout=0)
