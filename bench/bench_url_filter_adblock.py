"""Benchmark: `url_filter` with a large AdBlock list (set-up time, URLs/s, rules counted as not applicable).

The list is generated in EasyList's proportions of rule kinds (no third-party list ships with
datamill): bare `||host^` rules, path rules, `||host/path^` rules, `$script` rules (not for pages),
`$domain=` rules (include and exclude), cosmetic `##` rules and `@@` exceptions; the URLs mix hits
and misses of every kind.

    python bench/bench_url_filter_adblock.py --rules 20000 --urls 20000
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path


def make_list(n: int, rng: random.Random) -> list[str]:
    share = {"host": 0.30, "path": 0.15, "host_path": 0.15, "script": 0.10, "domain": 0.10, "cosmetic": 0.18,
             "exception": 0.02}
    rules = []
    for kind, fraction in share.items():
        for i in range(int(n * fraction)):
            rules.append({"host": f"||ads{i}.example^", "path": f"/banner{i}/*",
                          "host_path": f"||trk{i}.io/pixel^", "script": f"||cdn{i}.net/*.js$script",
                          "domain": f"/promo{i}/$domain=shop{i}.com|~safe.shop{i}.com",
                          "cosmetic": f"site{i}.com##.ad-{i}", "exception": f"@@||ads{i}.example/ok^"}[kind])
    rng.shuffle(rules)
    return rules


def make_urls(n: int, rules: int, rng: random.Random) -> list[str]:
    k = max(1, rules // 5)
    kinds = [lambda: f"https://ads{rng.randrange(2 * k)}.example/x", lambda: f"https://a.org/banner{rng.randrange(2 * k)}/1",
             lambda: f"https://trk{rng.randrange(2 * k)}.io/pixel?id=1", lambda: f"https://shop{rng.randrange(2 * k)}.com/promo{rng.randrange(2 * k)}/",
             lambda: "https://clean.example.net/article/1"]
    return [rng.choice(kinds)() for _ in range(n)]


def main() -> None:
    import polars as pl

    from datamill.curate.engine.stage import DROP_REASON
    from datamill.filters.url_filter import UrlFilter, UrlFilterParams

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=20000)
    parser.add_argument("--urls", type=int, default=20000)
    args = parser.parse_args()
    rng = random.Random(0)
    rules = make_list(args.rules, rng)
    urls = make_urls(args.urls, args.rules, rng)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "list.txt").write_text("\n".join(rules) + "\n")
        stage = UrlFilter(UrlFilterParams(block=[{"path": "list.txt", "format": "adblock"}]))
        stage.base_dir = tmp
        start = time.process_time()
        stage.setup()
        setup = time.process_time() - start
        batch = pl.DataFrame({"url": urls})
        start = time.process_time()
        out = stage.process(batch)
        match = time.process_time() - start
    blocked = out[DROP_REASON].is_not_null().sum()
    print(f"{len(rules)} rules: set-up {setup:.2f} CPU s; rule counts {stage.facts()}")
    print(f"{len(urls)} URLs: {match:.2f} CPU s, {len(urls) / match:,.0f} URLs/s, {blocked} blocked")


if __name__ == "__main__":
    main()
