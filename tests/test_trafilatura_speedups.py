"""trafilatura's XPath rules in their faster form select the same elements and give the same text."""

from __future__ import annotations

import pytest
from lxml.etree import XPath

from datamill.filters.html_extract import HtmlExtractParams, trafilatura_extractor, trafilatura_parser
from datamill.filters.trafilatura_speedups import REGEXP_NS, faster_trafilatura, guarded_rule, swaps

ARTICLE = (
    "The harbour authority has approved a second ferry berth, which should end the long queues of lorries "
    "that form along the coast road every summer weekend.",
    "Construction starts in March; the old fish market will move to the northern quay while the work goes on.",
)


def boilerplate_page(title: str) -> str:
    """A page whose blocks carry the id/class/style/role names trafilatura's rules look for, in both
    attribute orders, with empty attributes and many classless elements."""
    paragraphs = "".join(f"<p>{text}</p>" for text in ARTICLE)
    code = "".join(f'<span class="kw">let</span> <span>x{i}</span> = {i};<br>' for i in range(40))
    return (
        f"<html><head><title>{title}</title></head><body>"
        '<div role="Navigation"><a href="/">Home</a> <a href="/news">News</a></div>'
        '<div id="cookie-consent" class="banner">We use cookies to improve your experience.</div>'
        f'<div class="main-content" id="content"><h1>{title}</h1>{paragraphs}<pre>{code}</pre></div>'
        '<div id="" class="">An empty id and class around a line of text that stays in the page.</div>'
        '<section class="related-posts" id="reply-box"><p>Related: five more stories about ferries.</p></section>'
        '<div id="comments" class="discussion"><p>First! Great article about the harbour.</p></div>'
        '<div class="sidebar hidden"><p>Subscribe to the newsletter for weekly updates.</p></div>'
        '<div style="display:none"><p>Invisible tracking text that a browser never shows.</p></div>'
        '<div aria-hidden="true"><p>Screen-reader-hidden decoration.</p></div>'
        '<footer class="site-footer"><p>Copyright the harbour gazette. All rights reserved.</p></footer>'
        "</body></html>"
    )


PAGES = [boilerplate_page("Second ferry berth approved"),
         boilerplate_page("Fish market moves north").replace('id="comments" class', 'class="comments" id'),
         "<html><body><article><p>" + " ".join(ARTICLE) + "</p></article><div class='share-buttons'>Share"
         "</div></body></html>"]


def rules_in_use() -> list[tuple[XPath, XPath]]:
    """(original, faster) for every rule the swaps replace."""
    found = swaps()
    pairs = [pair for _, originals, faster in found.lists for pair in zip(originals, faster) if pair[0] is not pair[1]]
    return pairs + [(original, faster) for _, _, original, faster in found.names]


def test_every_faster_rule_selects_the_same_elements():
    parse = trafilatura_parser()
    pairs = rules_in_use()
    assert len(pairs) >= 10  # trafilatura's re:test rules were found
    for html in PAGES:
        tree = parse(html)
        for original, faster in pairs:
            assert original.path != faster.path
            assert faster(tree) == original(tree), original.path[:80]


def test_extracted_text_equals_plain_trafilatura_and_the_rules_are_restored():
    from trafilatura import xpaths
    from trafilatura.deduplication import LRU_TEST

    extract = trafilatura_extractor(HtmlExtractParams())
    shipped = list(xpaths.OVERALL_DISCARD_XPATH)
    LRU_TEST.clear()
    expected = [extract(html) for html in PAGES]
    LRU_TEST.clear()
    with faster_trafilatura():
        assert xpaths.OVERALL_DISCARD_XPATH != shipped
        faster = [extract(html) for html in PAGES]
    assert faster == expected
    assert ARTICLE[0] in faster[0][0] and "newsletter" not in faster[0][0]
    assert all(a is b for a, b in zip(xpaths.OVERALL_DISCARD_XPATH, shipped))


@pytest.mark.parametrize("pattern", ["^", "nav|", "(?:side)?", "x*"])
def test_a_pattern_that_matches_the_empty_string_is_not_guarded(pattern):
    path = f".//*[re:test(@class, '{pattern}')]"
    assert guarded_rule(path) == path
    tree = trafilatura_parser()("<html><body><div><p>no class here, the empty string is tested</p></div></body></html>")
    assert XPath(path, namespaces={"re": REGEXP_NS})(tree)  # why the guard would be wrong there


def test_a_pattern_that_cannot_match_empty_is_guarded_with_its_attributes():
    assert guarded_rule(".//*[re:test(@id|@class, '^nav|menu', 'i')]") == \
        ".//*[((@id|@class) and re:test(@id|@class, '^nav|menu', 'i'))]"
