"""The `url_filter` stage: domain, URL, substring, regex, UT1 and AdBlock lists, allow-lists, reasons."""

from __future__ import annotations

import gzip

import polars as pl
import pytest
from pydantic import ValidationError

from datamill.curate.engine.stage import DROP_REASON
from datamill.filters.url_filter import UrlFilter, UrlFilterParams

URLS = [
    "https://example.com/",                      # 0 domain itself
    "https://a.b.example.com/page?x=1",          # 1 subdomain
    "http://www.example.com",                    # 2 www
    "https://notexample.com/",                   # 3 not a subdomain
    "https://good.example.com/ok",               # 4 allow-listed subdomain
    "https://news.site.org/2024/01/story.html",  # 5 exact URL
    "https://NEWS.site.org/2024/01/story.html/", # 6 same URL, other case and trailing slash
    "https://news.site.org/2024/01/other.html",  # 7 same site, other page
    "https://shop.net/casino-bonus",             # 8 substring
    "https://x.io/item/12345/buy",               # 9 regex
    "https://clean.dev/",                        # 10 nothing
    None,                                        # 11 no URL
]


def run(tmp_path, urls=URLS, **params) -> list[str | None]:
    stage = UrlFilter(UrlFilterParams(**params))
    stage.base_dir = str(tmp_path)
    stage.setup()
    out = stage.process(pl.DataFrame({"id": [str(i) for i in range(len(urls))], "url": urls},
                                     schema={"id": pl.String, "url": pl.String}))
    return out[DROP_REASON].to_list()


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_every_list_kind_with_reasons_and_allow_list(tmp_path):
    write(tmp_path / "domains.txt", "# my list\nexample.com\n\n0.0.0.0 tracker.biz\n")
    write(tmp_path / "urls.txt.gz", "news.site.org/2024/01/story.html\n")
    write(tmp_path / "words.txt", "casino\n")
    write(tmp_path / "patterns.txt", r"/item/\d+/buy$" + "\n")
    write(tmp_path / "allow.txt", "good.example.com\n")
    reasons = run(tmp_path, block=[
        {"path": "domains.txt", "name": "bad_domains"}, {"path": "urls.txt.gz", "format": "urls"},
        {"path": "words.txt", "format": "substrings"}, {"path": "patterns.txt", "format": "regex"},
    ], allow=[{"path": "allow.txt"}])
    assert reasons == ["bad_domains", "bad_domains", "bad_domains", None, None, "urls.txt", "urls.txt", None,
                       "words.txt", "patterns.txt", None, None]


def test_first_list_in_order_names_the_reason_and_missing_urls(tmp_path):
    write(tmp_path / "one.txt", "b.example.com\n")
    write(tmp_path / "two.txt", "example.com\n")
    reasons = run(tmp_path, block=[{"path": "one.txt"}, {"path": "two.txt"}], missing_url="drop")
    assert reasons[:2] == ["two.txt", "one.txt"]
    assert reasons[-1] == "no_url"


def test_ut1_folder_with_chosen_categories(tmp_path):
    root = tmp_path / "blacklists"
    write(root / "adult" / "domains", "example.com\n")
    write(root / "gambling" / "domains", "shop.net\n")
    write(root / "gambling" / "urls", "x.io/item/12345/buy\n")
    write(root / "press" / "domains", "site.org\n")
    reasons = run(tmp_path, block=[{"path": "blacklists", "format": "ut1", "categories": ["gambling", "adult"]}])
    assert reasons == ["ut1:adult"] * 3 + [None, "ut1:adult", None, None, None, "ut1:gambling", "ut1:gambling",
                                            None, None]
    everything = run(tmp_path, block=[{"path": "blacklists", "format": "ut1"}])
    assert everything[5] == "ut1:press"
    with pytest.raises(ValueError, match="categories \\['games'\\]"):
        run(tmp_path, block=[{"path": "blacklists", "format": "ut1", "categories": ["games"]}])


def test_adblock_list(tmp_path):
    write(tmp_path / "easylist.txt", "\n".join([
        "[Adblock Plus 2.0]", "! comment", "||example.com^", "@@||good.example.com^", "||shop.net/casino*",
        "/item\\/\\d+\\/buy/", "example.com##.banner", "||clean.dev^$third-party", "|https://news.site.org/2024/01/other",
    ]))
    reasons = run(tmp_path, block=[{"path": "easylist.txt", "format": "adblock", "name": "easylist"}])
    assert reasons == ["easylist"] * 3 + [None, None, None, None, "easylist", "easylist", "easylist", None, None]


def test_flag_keeps_rows(tmp_path):
    write(tmp_path / "d.txt", "example.com\n")
    stage = UrlFilter(UrlFilterParams(block=[{"path": "d.txt"}], action="flag"))
    assert stage.params.action == "flag"
    assert run(tmp_path, block=[{"path": "d.txt"}], action="flag")[0] == "d.txt"


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValidationError):
        UrlFilterParams(block=[])
    with pytest.raises(ValidationError, match="categories"):
        UrlFilterParams(block=[{"path": "x", "categories": ["a"]}])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        run(tmp_path, block=[{"path": "missing.txt"}])
    write(tmp_path / "bad.txt", "ok\n(unclosed\n")
    with pytest.raises(ValueError, match="bad.txt entry 2"):
        run(tmp_path, block=[{"path": "bad.txt", "format": "regex"}])
    write(tmp_path / "d.txt", "example.com\n")
    stage = UrlFilter(UrlFilterParams(block=[{"path": "d.txt"}], url_column="link"))
    stage.base_dir = str(tmp_path)
    with pytest.raises(ValueError, match="no column 'link'"):
        stage.process(pl.DataFrame({"url": ["https://example.com"]}))


# Found by bench/bench_adblock_agreement.py (datamill vs Brave's adblock-rust on real URLs)

def test_adblock_www_host_rule_blocks_that_host_only(tmp_path):
    write(tmp_path / "l.txt", "||www.example.com^\n")
    urls = ["https://www.example.com/a", "https://a.www.example.com/", "https://example.com/", "https://docs.example.com/"]
    assert run(tmp_path, urls, block=[{"path": "l.txt", "format": "adblock"}]) == ["l.txt", "l.txt", None, None]


def test_adblock_domain_option_keeps_www(tmp_path):
    write(tmp_path / "l.txt", "||amd.com^$domain=~www.amd.com\n/promo/$domain=www.shop.com\n")
    urls = ["https://rocm.docs.amd.com/x", "https://www.amd.com/x", "https://shop.com/promo/", "https://www.shop.com/promo/"]
    assert run(tmp_path, urls, block=[{"path": "l.txt", "format": "adblock"}]) == ["l.txt", None, None, "l.txt"]


def test_adblock_host_rule_without_separator_matches_host_prefixes(tmp_path):
    write(tmp_path / "l.txt", "||tracker.com\n||ads.\n")
    urls = ["https://tracker.com/", "https://tracker.com.evil.net/", "https://tracker.community/", "https://nottracker.com/",
            "https://ads.site.org/"]
    assert run(tmp_path, urls, block=[{"path": "l.txt", "format": "adblock"}]) == ["l.txt"] * 3 + [None, "l.txt"]


def test_adblock_badfilter_disables_a_rule_of_another_list(tmp_path):
    write(tmp_path / "easylist.txt", "||one.com^\n||two.com^$document\n||three.com^\n")
    write(tmp_path / "unbreak.txt", "||one.com^$badfilter\n||two.com^$document,badfilter\n||three.com^$domain=x.org,badfilter\n")
    urls = ["https://one.com/", "https://two.com/", "https://three.com/"]
    lists = [{"path": "easylist.txt", "format": "adblock"}, {"path": "unbreak.txt", "format": "adblock"}]
    assert run(tmp_path, urls, block=lists) == [None, None, "easylist.txt"]


def test_adblock_rules_no_url_holds_the_literal_of(tmp_path):
    write(tmp_path / "l.txt", "||a.com^\n@@/nowhere/*\n/absent/*$domain=~b.com\n")
    assert run(tmp_path, ["https://a.com/x", "https://c.com/y"], block=[{"path": "l.txt", "format": "adblock"}]) == [
        "l.txt", None]
