"""AdBlock `$` options as a crawled page sees them (a first-party document request), and the rules that cannot apply counted, not lost."""

from __future__ import annotations

import polars as pl

from datamill.curate.engine.stage import DROP_REASON
from datamill.filters.adblock import parse_adblock
from datamill.filters.url_filter import UrlFilter, UrlFilterParams


def reasons_for(tmp_path, rules: list[str], urls: list[str], allow: list[str] | None = None) -> tuple[dict, dict]:
    (tmp_path / "list.txt").write_text("\n".join(rules) + "\n")
    params = {"block": [{"path": "list.txt", "format": "adblock", "name": "ads"}]}
    if allow:
        (tmp_path / "mine.txt").write_text("\n".join(allow) + "\n")
        params["allow"] = [{"path": "mine.txt"}]
    stage = UrlFilter(UrlFilterParams(**params))
    stage.base_dir = str(tmp_path)
    stage.setup()
    out = stage.process(pl.DataFrame({"url": urls}))
    return dict(zip(urls, out[DROP_REASON].to_list())), stage.facts()


def test_type_options_decide_whether_a_page_url_is_blocked(tmp_path):
    rules = ["||scripts.com^$script", "||images.com^$image,font", "||page.com^$document", "||mixed.com^$script,document",
             "||notscript.com^$~script", "||notdoc.com^$~document", "||everything.com^$all", "||doc.net^$doc"]
    urls = ["https://scripts.com/a.js", "https://cdn.images.com/x", "https://page.com/", "https://mixed.com/p",
            "https://notscript.com/", "https://notdoc.com/", "https://everything.com/", "https://doc.net/"]
    got, facts = reasons_for(tmp_path, rules, urls)
    assert [got[u] for u in urls] == [None, None, "ads", "ads", "ads", None, "ads", "ads"]
    assert facts["adblock_not_applicable:resource_type"] == 3
    assert facts["adblock_block_rules"] == 5


def test_domain_option_includes_excludes_and_wildcard_tlds(tmp_path):
    rules = ["/promo/$domain=a.com|b.org", "/promo/$domain=~safe.a.com|a.com", "/tracking/$domain=~c.com",
             "/deals/$domain=shop.*"]
    urls = ["https://a.com/promo/1", "https://www.b.org/promo", "https://x.a.com/promo",  # included (and a subdomain)
            "https://safe.a.com/promo", "https://other.net/promo",  # excluded by the second rule; not included at all
            "https://d.net/tracking/", "https://c.com/tracking/", "https://sub.c.com/tracking/",  # only an exclusion
            "https://shop.de/deals/", "https://shop.co.uk/deals/", "https://myshop.de/deals/"]  # entity wildcard
    got, _ = reasons_for(tmp_path, rules, urls)
    assert [got[u] for u in urls] == ["ads", "ads", "ads", "ads", None, "ads", None, None, "ads", "ads", None]
    # `safe.a.com` is excluded by the second rule but still included by the first (a.com covers subdomains)
    got, _ = reasons_for(tmp_path, rules[1:2], ["https://safe.a.com/promo", "https://a.com/promo"])
    assert list(got.values()) == [None, "ads"]


def test_match_case_party_and_important_against_exceptions(tmp_path):
    rules = ["/Banner/$match-case", "||third.com^$third-party", "||first.com^$~third-party", "||one.com^$1p",
             "||imp.org^$important", "@@||imp.org^", "||plain.org^", "@@||plain.org/ok^", "@@||plain.org/doc$document",
             "@@||plain.org/js$script"]
    urls = ["https://s.com/Banner/1", "https://s.com/banner/1", "https://third.com/", "https://first.com/",
            "https://one.com/", "https://imp.org/", "https://plain.org/x", "https://plain.org/ok", "https://plain.org/doc",
            "https://plain.org/js"]
    got, facts = reasons_for(tmp_path, rules, urls)
    assert [got[u] for u in urls] == ["ads", None, None, "ads", "ads", "ads", "ads", None, None, "ads"]
    assert facts["adblock_not_applicable:third_party"] == 1
    assert facts["adblock_not_applicable:resource_type"] == 1  # the $script exception
    assert facts["adblock_exception_rules"] == 3


def test_a_users_allow_list_wins_even_over_important(tmp_path):
    got, _ = reasons_for(tmp_path, ["||imp.org^$important"], ["https://imp.org/", "https://keep.imp.org/"],
                         allow=["keep.imp.org"])
    assert list(got.values()) == ["ads", None]


def test_cosmetic_modifier_badfilter_and_unknown_rules_are_counted(tmp_path):
    rules = ["example.com##.ad", "##.banner", "example.com#@#.ad", "site.org#?#div:-abp-has(.ad)",
             "example.com##+js(set-constant, x, 1)", "example.com#$#body { color: red }", "example.com$$script[data-x]",
             "||csp.com^$csp=script-src 'none'", "||redir.com/a.js$redirect=noopjs", "||bad.com^", "||bad.com^$badfilter",
             "@@||page.com^$elemhide", "@@||page.com^$generichide", "||odd.com^$sitekey=abc", "||weird.com^$frobnicate",
             "/(?<=x)y/", "||kept.com^"]
    urls = ["https://example.com/", "https://csp.com/", "https://redir.com/a.js", "https://bad.com/", "https://page.com/",
            "https://weird.com/", "https://kept.com/", "https://xy.com/xy"]
    got, facts = reasons_for(tmp_path, rules, urls)
    # `$redirect=` blocks, then serves a stand-in to subresources (uBO; adblock-rust blocks the page too)
    assert [got[u] for u in urls] == [None, None, "ads", None, None, None, "ads", None]
    assert {k.removeprefix("adblock_not_applicable:"): v for k, v in facts.items() if "not_applicable" in k} == {
        "cosmetic": 7, "modifier": 1, "badfilter": 2, "cosmetic_exception": 2, "unsupported_option": 2, "bad_regex": 1}
    assert facts["adblock_block_rules"] == 2


def test_options_parse_without_eating_pattern_dollars():
    parsed = parse_adblock(["/price\\$[0-9]+$/", "||x.com/pay$/now", "||y.com^$DOMAIN=Foo.com|~Bar.Foo.com,Important"])
    assert parsed.rules[0].pattern == "price\\$[0-9]+$"
    assert parsed.rules[1].pattern.endswith("pay\\$/now") and not parsed.not_applicable
    third = parsed.rules[2]
    assert third.important and third.hosts == ((r"(?:^|\.)(?:foo\.com)$", r"(?:^|\.)(?:bar\.foo\.com)$"),)


def test_to_from_and_denyallow_constrain_the_page_host(tmp_path):
    rules = ["/landing/$to=offers.com|~safe.offers.com", "/go/$from=links.net", "*$denyallow=ok.org|fine.org,domain=hub.io"]
    urls = ["https://offers.com/landing/", "https://safe.offers.com/landing/", "https://links.net/go/1",
            "https://other.net/go/1", "https://hub.io/x", "https://ok.org/x"]
    got, _ = reasons_for(tmp_path, rules, urls)
    assert [got[u] for u in urls] == ["ads", None, "ads", None, "ads", None]


def test_host_limited_rules_give_the_same_answer_joined_on_their_domains_or_rule_by_rule(tmp_path, monkeypatch):
    from datamill.filters import url_filter

    rules = [f"/promo{i}/$domain=shop{i}.com|~safe.shop{i}.com" for i in range(30)]
    rules += [f"/x{i}/$domain=a{i}.org|b{i}.org,to=~c.a{i}.org" for i in range(20)]
    rules += ["/Deal/$match-case,domain=m.com", "/any/$domain=~no.com", "/g/$domain=g.*", "@@/promo1/$domain=ok.shop1.com",
              "/\\/deal[0-9]+\\//$domain=m.com"]
    urls = [f"https://{sub}shop{i}.com/promo{j}/" for i in range(0, 32, 3) for j in (i, i + 1) for sub in ("", "safe.", "ok.")]
    urls += [f"https://{sub}a{i}.org/x{i}/" for i in range(0, 22, 4) for sub in ("", "c.", "d.")]
    urls += ["https://m.com/Deal/", "https://m.com/deal/", "https://y.com/any/", "https://no.com/any/", "https://g.de/g/",
             "https://www.b7.org/x7/", "https://m.com/deal42/", "https://n.com/deal42/"]
    joined, _ = reasons_for(tmp_path, rules, urls)
    monkeypatch.setattr(url_filter, "MAX_CONSTRAINTS", 0)  # every host-limited rule tested on every row
    one_by_one, _ = reasons_for(tmp_path, rules, urls)
    assert joined == one_by_one
    # shopN and ok.shopN for the 10 rules hit (not safe.): 20; aN and d.aN (not c.aN, excluded by to=): 10;
    # m.com/Deal, y.com/any, g.de/g (entity wildcard), www.b7.org, m.com/deal42 (a regex rule): 5
    assert sum(r is not None for r in joined.values()) == 35
    assert joined["https://safe.shop3.com/promo3/"] is None and joined["https://c.a4.org/x4/"] is None


def test_rules_keyed_by_their_literal_give_the_same_answer_as_one_alternation(tmp_path, monkeypatch):
    from datamill.filters import url_filter

    rules = ["/banner/*/ad", "^track^", "/ads/*", "/ads/banner", "-promo-", ".swf|", "|https://cdn.x.io/lib", "||y.net/pix^",
             "||z.org", "/Deal/$match-case", "/img*.gif$domain=~safe.com", "/promo/*$domain=~ok.ads.com|~fine.net",
             "@@/ads/keep", "@@||y.net/pix/ok^", "pop.up", "*/spacer.", "/ad_\\d+/"]
    urls = ["https://a.com/banner/1/ad", "https://a.com/BANNER/x/AD", "https://t.com/x?track&y=1", "https://t.com/tracker",
            "https://b.com/ads/", "https://b.com/ads/keep", "https://b.com/adsx", "https://c.com/get-promo-now",
            "https://d.com/f.swf", "https://d.com/f.swf?x", "https://cdn.x.io/lib.js", "http://cdn.x.io/lib.js",
            "https://a.y.net/pix/1", "https://y.net/pix/ok/", "https://z.org.evil.net/", "https://notz.org/",
            "https://m.com/Deal/", "https://m.com/deal/", "https://e.com/img7.gif", "https://safe.com/img7.gif",
            "https://ok.ads.com/promo/", "https://fine.net/promo/", "https://x.com/promo/", "https://pop.up.com/", "https://s.com/x/spacer.gif",
            "https://r.com/ad_12/", "https://r.com/AD_/", None]
    keyed, _ = reasons_for(tmp_path, rules, urls)
    monkeypatch.setattr(url_filter, "MIN_LITERAL", 10 ** 6)  # no rule keyed: alternations and one pass per rule
    plain, _ = reasons_for(tmp_path, rules, urls)
    assert keyed == plain
    assert [u for u, r in keyed.items() if r is None] == [
        "https://t.com/tracker", "https://b.com/ads/keep", "https://b.com/adsx", "https://d.com/f.swf?x",
        "http://cdn.x.io/lib.js", "https://y.net/pix/ok/", "https://notz.org/", "https://m.com/deal/",
        "https://safe.com/img7.gif", "https://ok.ads.com/promo/", "https://fine.net/promo/", "https://r.com/AD_/", None]
