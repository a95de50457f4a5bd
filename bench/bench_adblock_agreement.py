"""Benchmark: `url_filter`'s AdBlock matcher against Brave's adblock-rust engine (the `adblock` package Dolma uses).

Generates AdBlock lists in the shapes EasyList/EasyPrivacy/UT1-style lists hold (no third-party
list ships: the rules are built around hosts and path words of the URLs found on this machine),
and a set of page URLs grepped from /usr/share/doc, man pages and the venv's package files, plus
variations that hit the rules (subdomains, look-alike hosts, ports, case, query strings). Every
URL is decided by datamill and by Brave's engine, in three readings:

- `page`: datamill's documented semantics, asked of Brave: a block rule that applies to a page
  fetched from itself as an `other` or a `document` request, unless an exception does (the same
  two ways), unless an `$important` block does. Computed with three engines (blocks, exceptions
  turned into blocks, important blocks) so one reading's exception never hides the other's block.
  Disagreements here are bugs or deliberate differences, listed by rule kind.
- `document`: a browser navigating to the page (`check_network_urls(url, url, "document")`):
  untyped rules with a path do not block a top-level document there (ABP/uBO semantics).
- `dolma`: as Dolma's url taggers call it (`url.strip().lower()`, no source URL, no request type).

Prints agreement, disagreements by rule kind with examples, and URLs/s of both (datamill over the
batch; Brave one call per URL, as Dolma calls it).

    python bench/bench_adblock_agreement.py --urls 60000 --repeat 5
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

URL = re.compile(rb"https?://[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]+")
GOOD = re.compile(r"^https?://(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}(?::\d{1,5})?(?:[/?#][^\s]*)?$", re.IGNORECASE)
SEGMENT = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{2,20}$")
ROOTS = ["/usr/share/doc", "/usr/share/man", sys.prefix + "/lib"]


def real_urls(limit_files: int = 60000) -> list[str]:
    """Page URLs found in text on this machine (docs, man pages, package metadata and sources)."""
    found: set[str] = set()
    seen = 0
    for root in ROOTS:
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                if not name.endswith((".gz", ".txt", ".md", ".rst", ".html", "METADATA", "copyright", "changelog",
                                      ".py", "README", "NEWS")) and not root.endswith("man"):
                    continue
                path = os.path.join(folder, name)
                try:
                    if os.path.getsize(path) > 2_000_000 or os.path.islink(path):
                        continue
                    data = Path(path).read_bytes()
                    if name.endswith(".gz"):
                        data = gzip.decompress(data)
                except (OSError, EOFError, gzip.BadGzipFile):
                    continue
                seen += 1
                for match in URL.findall(data):
                    url = match.decode("ascii", "ignore").rstrip(".,;:)]}'\"!?*>")
                    if GOOD.match(url) and "%s" not in url:
                        found.add(url)
                if seen >= limit_files:
                    return sorted(found)
    return sorted(found)


def split(url: str) -> tuple[str, list[str]]:
    rest = url.split("://", 1)[1]
    host = re.split(r"[/?#:]", rest, maxsplit=1)[0].lower()
    path = rest[len(host):].split("?")[0].split("#")[0]
    return host, [s for s in path.split("/") if SEGMENT.match(s)]


def make_rules(urls: list[str], rng: random.Random) -> dict[str, list[str]]:
    """Rules by kind, built around the hosts and path words of `urls`."""
    hosts = Counter(split(u)[0] for u in urls)
    words = Counter(s for u in urls for s in split(u)[1])
    host_list = sorted(h for h in hosts if h.count(".") >= 1 and hosts[h] <= 200)
    rng.shuffle(host_list)
    pool = iter(host_list)
    ranked = [w for w, n in words.most_common(1500) if n >= 3]
    common, mid = ranked[300:320], ranked[320:]  # the 300 most frequent words ("html", "en") would block most pages
    rare = sorted(w for w, n in words.items() if n <= 2)
    rng.shuffle(mid)
    rng.shuffle(rare)
    word = iter(mid + rare)
    by_host = {}
    for u in urls:
        h, s = split(u)
        if s and hosts[h] <= 200:  # one entry per host, big sites (github.com) left to the path rules
            by_host.setdefault(h, (h, s))
    seg_hosts = [by_host[h] for h in sorted(by_host)]
    rng.shuffle(seg_hosts)
    segs = iter(seg_hosts)
    under = Counter()
    for h, n in hosts.items():
        under[".".join(h.split(".")[-2:])] += n

    def parent(h: str) -> str:
        """The host's last two labels, unless that is a hosting suffix (github.io, readthedocs.io)."""
        labels = h.split(".")
        top = ".".join(labels[-2:])
        return top if len(labels) > 2 and under[top] <= 200 else h

    def reg(text: str) -> str:
        return re.escape(text).replace("/", r"\/")

    kinds: dict[str, list[str]] = defaultdict(list)
    for _ in range(500):
        h = next(pool)
        kinds["host"].append(f"||{parent(h) if rng.random() < 0.5 else h}^")
    for _ in range(40):
        h = next(pool)
        kinds["host"].append(f"||{h}")  # no `^`: also blocks hosts that merely start like it
    for _ in range(60):  # a www. rule as written in real lists
        h = next(pool)
        kinds["host_www"].append(f"||www.{h.removeprefix('www.')}^")
    for _ in range(300):
        h, s = next(segs)
        kinds["host_path"].append(rng.choice([f"||{h}/{s[0]}/", f"||{h}/{s[0]}^", f"||{h.removeprefix('www.')}/{s[0]}"]))
    for _ in range(150):
        h, s = next(segs)
        kinds["url_start"].append(rng.choice([f"|https://{h}/{s[0]}", f"|http://{h}/", f"|https://{h}/{s[0]}/"]))
    for _ in range(300):
        a, b = next(word), next(word)
        kinds["wildcard"].append(rng.choice([f"/{a}/*/{b}", f"/{a}/*.html", f"*/{a}-*", f"-{a}-", f"/{a}*{b}", f"{a}.",
                                             f"_{a}_", f"/{a}/"]))
    for _ in range(150):
        a = next(word)
        kinds["separator"].append(rng.choice([f"^{a}^", f"/{a}^", f"?{a}=", f"&{a}=", f".{a}^"]))
    for _ in range(60):
        a = next(word)
        kinds["url_end"].append(rng.choice([f"/{a}|", f"/{a}/|", f".{a}|"]))
    for _ in range(100):
        h, s = next(segs)
        a = next(word)
        kinds["regex"].append(rng.choice([f"/^https?:\\/\\/([a-z0-9-]+\\.)*{reg(parent(h))}\\/{reg(s[0])}/",
                                          f"/\\/v[0-9]+\\/{reg(a)}/", f"/[?&]{reg(a)}=[0-9]+/",
                                          f"/{reg(a)}[0-9]{{2,}}/", f"/\\/{reg(s[0])}\\/[^\\/]+\\.(html|php)$/"]))
    for _ in range(150):
        h = next(pool)
        kinds["domain"].append(rng.choice([f"||{h}^$domain={h}", f"/{next(word)}/$domain={parent(h)}|~www.{parent(h)}",
                                           f"*$domain={h}", f"||{parent(h)}^$domain=~{h}",
                                           f"-{next(word)}-$domain=example.org|{parent(h)}"]))
    for _ in range(120):
        h = next(pool)
        kinds["document"].append(rng.choice([f"||{h}^$document", f"||{h}^$doc", f"/{next(word)}/$document",
                                             f"||{parent(h)}/*$document,~third-party"]))
    for _ in range(100):
        h = next(pool)
        kinds["party"].append(rng.choice([f"||{h}^$third-party", f"||{h}^$~third-party", f"||{h}^$1p",
                                          f"||{h}^$first-party", f"/{next(word)}/$third-party,image",
                                          f"||{h}^$3p"]))
    for _ in range(150):
        h = next(pool)
        kinds["resource_type"].append(rng.choice([f"||{h}^$script", f"||{h}^$image,stylesheet", f"||{h}^$~script",
                                                  f"/{next(word)}/$xmlhttprequest", f"||{h}^$subdocument",
                                                  f"||{h}^$~image,~font", f"||{h}^$popup"]))
    for _ in range(60):  # important blocks with exceptions that try to undo them
        h, s = next(segs)
        kinds["important"] += [f"||{h}^$important", f"@@||{h}/{s[0]}^"]
    for _ in range(60):  # the rule in one list, its `$badfilter` in another (as uBO's "unbreak" list does)
        h = next(pool)
        rule, bad = rng.choice([(f"||{h}^", f"||{h}^$badfilter"),
                                (f"||{parent(h)}^$document", f"||{parent(h)}^$document,badfilter"),
                                (f"||{h}^", f"||{h}^$domain=x.org,badfilter")])
        kinds["badfiltered"].append(rule)
        kinds["badfilter"].append(bad)
    case_words = [w for w in words if w != w.lower() and w != w.upper()][:300]
    rng.shuffle(case_words)
    for w in case_words[:60]:
        kinds["match_case"].append(rng.choice([f"/{w}/$match-case", f"/{w}$match-case", f"/{w.lower()}/$match-case"]))
    for _ in range(200):  # exceptions: subdomains / paths of blocked hosts, $document exceptions
        rule = rng.choice(kinds["host"] + kinds["host_path"])
        host = rule.lstrip("|").split("^")[0].split("/")[0]
        a = next(word)
        kinds["exception"].append(rng.choice([f"@@||{a}.{host}^", f"@@|https://{host}/{a}", f"@@||{host}/{a}/",
                                              f"@@||{host}^$document", f"@@/{a}/$domain={host}",
                                              f"@@||{host}/*{a}"]))
    for w in common:  # path rules hit by many pages, and page-type exceptions for some of them
        kinds["exception"].append(f"@@/{w}/$document,domain={next(pool)}")
        kinds["wildcard"].append(f"/{w}/*$~third-party")
    for _ in range(500):
        h = next(pool)
        kinds["cosmetic"].append(rng.choice([f"{h}##.ad-banner", "##.sponsored-links", f"{h}#@#.ad-box", "###ad_top",
                                             f"{h}##+js(aopr, ads)", f"{h}#?#div:has(> .ad)", f"{h}#$#body {{ overflow: auto }}",
                                             f"{h},{parent(h)}##div[id^=\"banner\"]", f"{h}#@#+js()",
                                             f"{h}$$script[tag-content=ads]", f"@@||{h}^$elemhide",
                                             f"@@||{h}^$generichide"]))
    for _ in range(40):  # options the peer version does not know (it drops those rules)
        h = next(pool)
        kinds["peer_unsupported"].append(rng.choice([f"||{h}^$all", f"||{h}^$from={h}", f"||{parent(h)}^$to={h}",
                                                     f"||{parent(h)}^$denyallow=x.{parent(h)}", f"/{reg(h)}\\//i",
                                                     f"||{h}^$domain={parent(h).split('.')[0]}.*"]))
    for _ in range(40):
        h = next(pool)
        kinds["modifier"].append(rng.choice([f"||{h}^$csp=script-src 'none'", f"||{h}^$removeparam=utm_source",
                                             f"||{h}^$redirect=noopjs", f"||{h}^$redirect-rule=nooptext"]))
    return dict(kinds)


def variations(urls: list[str], rules: dict[str, list[str]], n: int, rng: random.Random) -> list[str]:
    """URLs that hit (or nearly hit) the rules: subdomains, look-alike hosts, ports, case, queries."""
    hosts, paths = [], []
    for kind, items in rules.items():
        for rule in items:
            body = rule.removeprefix("@@").split("$")[0]
            if body.startswith("||"):
                host = re.split(r"[\^/*|]", body[2:], maxsplit=1)[0]
                if host:
                    hosts.append(host)
                    if "/" in body:
                        paths.append(body[2:].split("^")[0].replace("*", "x"))
            elif body.startswith("|http"):
                paths.append(body[1:].split("://", 1)[1])
            elif kind in ("wildcard", "separator", "url_end", "match_case", "exception", "document", "domain"):
                paths.append(body.replace("*", "x").replace("^", "/").rstrip("|"))
    out = []
    for _ in range(n):
        r = rng.random()
        base = rng.choice(urls)
        if r < 0.35:
            h = rng.choice(hosts)
            out.append(rng.choice([f"https://{h}/", f"https://cdn.{h}/a/b?c=1", f"http://{h}:8080/page",
                                   f"https://{h}.evil.net/", f"https://not{h}/", f"https://{h.upper()}/X",
                                   f"https://{h}", f"https://www.{h}/index.html", f"https://{h}#frag",
                                   f"https://{h}?q=1", f"https://{h}/{rng.choice(['ads', 'Ads', 'download'])}/"]))
        elif r < 0.75:
            p = rng.choice(paths)
            if p.startswith(("/", ".", "-", "_", "?", "&")) or "/" not in p:
                host = split(base)[0]
                out.append(f"https://{host}/x{p}" if not p.startswith("/") else f"https://{host}{p}")
            else:
                out.append(f"https://{p}")
        else:
            words = base.split("/")
            if len(words) > 3 and rng.random() < 0.5:
                words[3] = words[3].upper() if rng.random() < 0.5 else words[3].lower()
            out.append("/".join(words) + rng.choice(["", "?utm_source=x", "/", "#top", "/index.html"]))
    return out


def our_rule(url: str, kind: str, rules: dict[str, list[str]], cache: dict) -> str | None:
    """The first rule of list `kind` whose pattern matches `url` (to explain a disagreement)."""
    from datamill.filters.adblock import parse_adblock

    if kind not in cache:
        cache[kind] = []
        for text in rules.get(kind, []):
            parsed = parse_adblock([text]).rules
            if parsed and not parsed[0].exception:
                cache[kind].append((text, re.compile(parsed[0].pattern, 0 if parsed[0].case_sensitive else re.IGNORECASE)))
    return next((text for text, regex in cache[kind] if regex.search(url)), None)


def cause(side: str, kind: str, url: str, brave: str | None, ours: str | None, rules: dict[str, list[str]]) -> str:
    """Why the engines differ on a URL in the `page` reading, when it is a known difference."""
    host = re.split(r"[/?#:]", url.split("://", 1)[1], maxsplit=1)[0]
    if host != host.lower():  # Brave misses the rule (only datamill) or the exception (only Brave)
        return "Brave: no match on an upper-case host"
    if kind == "peer_unsupported":
        return "Brave 0.6: option unknown, rule dropped"
    if side == "only Brave" and kind == "match_case":
        return "Brave: $match-case ignored"
    if "||www." in (brave or ""):  # the block rule (only Brave) or the exception (only datamill)
        return "Brave: ||www.x^ read as ||x^"
    if side == "only Brave" and kind == "url_end" and (brave or "").startswith("/") and (brave or "").endswith("/|"):
        return "Brave: /x/| read as regex /x/"
    if side == "only datamill" and ours and ours.endswith("$/"):
        return "Brave: a /regex$/ is cut at its $"
    if side == "only datamill" and ours:
        body = ours.split("$")[0]
        labels = host.lower().split(".")
        if any(f"||www.{'.'.join(labels[i:])}^$badfilter" in rules.get("badfilter", []) for i in range(len(labels))):
            return "Brave: ||www.x^$badfilter also disables ||x^"
        literal = max(re.split(r"[*^|]+", body), key=len).lower()
        at = url.lower().find(literal)
        if not body.startswith("|") and at > 0 and url[at - 1].isalnum() and literal[:1].isalnum():
            return "Brave: a pattern starts at a token boundary only"
    return "unexplained"


def main() -> None:
    import adblock
    import polars as pl

    from datamill.curate.engine.stage import DROP_REASON
    from datamill.filters.url_filter import UrlFilter, UrlFilterParams, url_frame

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=60000, help="page URLs in all (real ones plus variations)")
    parser.add_argument("--examples", type=int, default=3, help="examples printed per disagreement kind")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes (the fastest counts)")
    parser.add_argument("--dump", help="write every disagreement here (JSON lines)")
    args = parser.parse_args()
    rng = random.Random(0)
    start = time.time()
    found = real_urls()
    print(f"{len(found):,} distinct real URLs found in {time.time() - start:.0f} s")
    real = rng.sample(found, min(len(found), args.urls * 2 // 3))
    rules = make_rules(found, rng)
    urls = real + variations(real, rules, args.urls - len(real), rng)
    kind_of = {rule: kind for kind, items in rules.items() for rule in items}
    all_rules = [rule for items in rules.values() for rule in items]
    print(f"{len(all_rules):,} rules: " + ", ".join(f"{k} {len(v)}" for k, v in rules.items()))
    print(f"{len(urls):,} URLs: {len(real):,} real, {len(urls) - len(real):,} variations")

    with tempfile.TemporaryDirectory() as tmp:
        for kind, items in rules.items():
            (Path(tmp) / kind).write_text("[Adblock Plus 2.0]\n! generated\n" + "\n".join(items) + "\n")
        stage = UrlFilter(UrlFilterParams(block=[{"path": kind, "format": "adblock"} for kind in rules]))
        stage.base_dir = tmp
        t0 = time.process_time()
        stage.setup()
        ours_setup = time.process_time() - t0
        batch = pl.DataFrame({"url": urls})
        ours_time = float("inf")
        for _ in range(args.repeat):
            t0 = time.process_time()
            out = stage.process(batch)
            ours_time = min(ours_time, time.process_time() - t0)
        ours_exception = stage.exceptions.match(url_frame(batch["url"])).to_list()
    ours = out[DROP_REASON].to_list()

    def engine(lines: list[str], optimize: bool = False):
        filters = adblock.FilterSet(debug=True)
        filters.add_filters(lines)
        return adblock.Engine(filters, optimize=optimize)

    t0 = time.process_time()
    brave = engine(all_rules, optimize=True)
    brave_setup = time.process_time() - t0
    badfilters = [r for r in all_rules if "badfilter" in r]
    blocks = engine([r for r in all_rules if not r.startswith("@@")])
    excepts = engine([r[2:] for r in all_rules if r.startswith("@@")] + [r[2:] for r in badfilters if r.startswith("@@")])
    importants = engine([r for r in all_rules if "important" in r and not r.startswith("@@")] + badfilters)

    brave_time = dolma_time = float("inf")
    for _ in range(args.repeat):
        t0 = time.process_time()
        as_document = [brave.check_network_urls(u, u, "document") for u in urls]
        brave_time = min(brave_time, time.process_time() - t0)
        t0 = time.process_time()
        as_dolma = [brave.check_network_urls(u.strip().lower(), "", "") for u in urls]
        dolma_time = min(dolma_time, time.process_time() - t0)

    def page(u: str):
        hit = [blocks.check_network_urls(u, u, t) for t in ("other", "document")]
        block = next((r.filter for r in hit if r.matched), None)
        if block is None:
            return False, None, None
        excepted = next((r.filter for t in ("other", "document") if (r := excepts.check_network_urls(u, u, t)).matched), None)
        important = any(importants.check_network_urls(u, u, t).matched for t in ("other", "document"))
        return (excepted is None or important), block + (f" / exception {excepted}" if excepted else ""), excepted

    as_page = [page(u) for u in urls]
    readings = {"page": [p[0] for p in as_page], "document": [r.matched for r in as_document],
                "dolma": [r.matched for r in as_dolma]}
    why = {"page": [p[1] for p in as_page], "document": [r.filter for r in as_document],
           "dolma": [r.filter for r in as_dolma]}
    mine = [r is not None for r in ours]
    dump = open(args.dump, "w") if args.dump else None
    cache: dict = {}
    explained: Counter = Counter()
    print(f"\ndatamill blocks {sum(mine):,} of {len(urls):,} URLs "
          f"({sum(1 for r in ours_exception if r is not None):,} match an exception)")
    for name, theirs in readings.items():
        agree = sum(a == b for a, b in zip(mine, theirs))
        either = sum(a or b for a, b in zip(mine, theirs))
        both = sum(a and b for a, b in zip(mine, theirs))
        on_real = sum(a == b for a, b in zip(mine[:len(real)], theirs[:len(real)])) / len(real)
        print(f"\n[{name}] Brave blocks {sum(theirs):,}; agreement {agree / len(urls):.4%} "
              f"({len(urls) - agree} differ; {on_real:.4%} on the {len(real):,} real URLs alone); "
              f"on URLs either blocks: {both}/{either} = {both / max(either, 1):.2%}")
        by_kind: dict[tuple[str, str], list[int]] = defaultdict(list)
        explain = engine(all_rules)  # not optimized: names the one rule that decided
        for i, (a, b) in enumerate(zip(mine, theirs)):
            if name != "page" and a != b:
                r = explain.check_network_urls(*((urls[i], urls[i], "document") if name == "document"
                                                 else (urls[i].strip().lower(), "", "")))
                why[name][i] = r.filter
            if a and not b:
                by_kind[("only datamill", ours[i])].append(i)
            elif b and not a:
                by_kind[("only Brave", kind_of.get(why[name][i].split(" / ")[0], "?"))].append(i)
        for (side, kind), rows in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
            print(f"  {side:13} {kind:16} {len(rows):5}")
            if name == "page":
                ours_rule = {i: our_rule(urls[i], kind, rules, cache) if side == "only datamill" else None for i in rows}
                row_cause = {i: cause(side, kind, urls[i], why[name][i], ours_rule[i], rules) for i in rows}
                causes = Counter(row_cause.values())
                print("      why: " + "; ".join(f"{c} {k}" for c, k in causes.most_common()))
                explained.update({c: k for c, k in causes.items()})
            for i in rows if dump else ():
                extra = {"ours": ours_rule[i], "cause": row_cause[i]} if name == "page" else {}
                dump.write(json.dumps({"reading": name, "side": side, "kind": kind, "url": urls[i],
                                       "brave": why[name][i], "ours_exception": ours_exception[i], **extra}) + "\n")
            for i in rows[:args.examples]:
                print(f"      {urls[i][:110]}  brave={why[name][i]!r} ours_exc={ours_exception[i]!r}")
    if dump:
        dump.close()
    unexplained = explained.pop("unexplained", 0)
    print(f"\npage reading: {sum(explained.values())} disagreements have a known cause, {unexplained} do not")
    n = len(urls)
    print(f"\nset-up: datamill {ours_setup:.2f} CPU s, Brave {brave_setup:.2f} CPU s ({len(all_rules):,} rules)")
    print(f"datamill url_filter: {ours_time:.2f} CPU s, {n / ours_time:,.0f} URLs/s (whole batch)")
    print(f"Brave adblock, document: {brave_time:.2f} CPU s, {n / brave_time:,.0f} URLs/s (one call per URL)")
    print(f"Brave adblock, as Dolma: {dolma_time:.2f} CPU s, {n / dolma_time:,.0f} URLs/s")
    print(f"speed ratio datamill / Brave: x{brave_time / ours_time:.2f} (document), x{dolma_time / ours_time:.2f} (Dolma)")


if __name__ == "__main__":
    main()
