"""html_extract's own HTML parsing (C-level element classes) gives exactly trafilatura's text, also on the pages its fallbacks handle."""

from __future__ import annotations

import pytest

from datamill.filters.html_extract import HtmlExtractParams, trafilatura_extractor, trafilatura_parser
from warc_files import page

trafilatura = pytest.importorskip("trafilatura")

PROSE = ["The harbour committee met on Tuesday to review the proposed changes to the fishing quotas and the bylaws.",
         "Several members argued that the new limits would hurt small family boats far more than the big fleet.",
         "After a long debate the proposal was sent back for another round of consultation with the residents."]
FORM = ("<html><head><title>Contact</title></head><body><!-- a comment --><nav><a href='/'>Home</a></nav>"
        "<article><p>" + "</p><p>".join(PROSE) + "</p><form action='/s'><label for='q'>Search the archive</label>"
        "<input id='q' name='q' value='quotas'><select name='y'><option>2023</option><option selected>2024</option>"
        "</select><textarea name='t'>Write to the committee about the quotas here</textarea></form></article>"
        "<footer>Privacy policy</footer></body></html>")
PAGES = [
    page("Quotas", PROSE),
    FORM,
    '<?xml version="1.0" encoding="utf-8"?>\n<html><body><article><p>' + PROSE[0] + "</p></article></body></html>",
    "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Strict//EN\">\n<html><body><p>" + PROSE[1] + "</p></body></html>",
    "<html/>\n<body><p>" + PROSE[2] + "</p></body>",
    "<html><body><p>" + PROSE[0].replace("harbour", "har\x0bbour\x00") + "</p></body></html>",
    "<p>only a fragment: " + PROSE[1] + "</p>",
    "",
    "plain words, no markup at all, " + PROSE[2],
]


def test_the_text_is_trafilaturas_on_every_kind_of_page():
    from trafilatura.deduplication import LRU_TEST

    params = HtmlExtractParams()
    ours = trafilatura_extractor(params)
    options = dict(favor_precision=True, include_comments=False, include_tables=True, deduplicate=True, fast=False)
    for html in PAGES:
        LRU_TEST.clear()
        expected = trafilatura.extract(html, **options) if html else None
        LRU_TEST.clear()
        assert ours(html)[0] == expected, html[:60]


def test_trees_match_load_html_and_have_no_form_subclasses():
    from lxml import etree
    from trafilatura.utils import load_html

    parse = trafilatura_parser()
    for html in PAGES:
        mine, theirs = parse(html), load_html(html)
        assert (mine is None) == (theirs is None), html[:60]
        if mine is not None:
            assert etree.tostring(mine) == etree.tostring(theirs)
    tree = parse(FORM)
    assert {type(el).__name__ for el in tree.iter("input", "form", "select")} == {"HtmlElement"}
