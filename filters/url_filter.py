"""The `url_filter` stage: drop (or flag) rows whose `url` is on a block-list, unless an allow-list names it.

Lists are files the user names (none ship with datamill), in the formats block-lists come in:

- `domains`: one domain per line (`#` comments; hosts-file lines `0.0.0.0 example.com` work too).
  A domain blocks itself and every subdomain: `example.com` blocks `a.b.example.com`, not
  `notexample.com`.
- `urls`: one URL per line, matched exactly after normalizing both sides (scheme, `www.`, case of
  the host and a trailing `/` ignored), as in UT1's `urls` files.
- `substrings`: a URL containing any line (case-insensitive) matches (Aho-Corasick).
- `regex`: one regular expression per line (Rust `regex` syntax: no look-around), searched in the URL.
- `ut1`: the UT1 blacklists folder (`<category>/domains`, `<category>/urls`); `categories` picks
  some (default: all); the reason is the category.
- `adblock`: AdBlock Plus / uBlock Origin filter lists as Dolma's URL taggers use (OISD, Brave,
  EasyList style), read as a crawled page is: a first-party `document` request (see `adblock.py`).
  `||domain^` rules become domain entries, other network rules regexes (`||`, `|`, `*`, `^`);
  `$document`, `$domain=`, `$match-case`, `$important`, `$~third-party` and `$badfilter` are
  honoured; `@@` exceptions (with options too) keep a URL unless an `$important` rule blocks it.
  Rules that cannot decide about a page URL (cosmetic `##` rules, `$script`/`$image`… only,
  `$third-party`, `$csp=`/`$redirect=`…) are counted by why in the report's set-up line.

Paths may be URLs (`s3://`, `gs://`, `hf://`, `file://`); a UT1 folder at a URL is copied once into
datamill's cache. Every block list gives its reason (`name`, by default the file name or UT1 category), the first
matching list in order names a row's reason; a row matching any allow list is kept. Matching is
vectorized: hosts are expanded to their parent domains and joined against the domain table,
normalized URLs joined against the URL table, substrings and regexes run as polars expressions.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from pathlib import Path
from typing import ClassVar, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from datamill.curate.engine.paths import exists, is_dir, is_url, join, local_copy, read_bytes
from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import DROP_REASON, FilterParams, Stage
from datamill.filters.adblock import NetworkRule, badfilters, parse_adblock

REGEXES_PER_PATTERN = 500
"""AdBlock rules joined into one alternation (keeps each compiled regex well under its size limit)."""
MAX_CONSTRAINTS = 3
"""Host constraints (`domain=`, `to=`, `denyallow=`) a keyed AdBlock rule may carry; more: tested rule by rule."""
MIN_LITERAL = 3
"""AdBlock rules whose literal is this long are keyed by it (shorter ones: joined into alternations)."""
MAX_LABELS = 12
"""Parent domains tried per host (a.b.c.example.com has 5)."""
HOST = r"^(?:[A-Za-z][A-Za-z0-9+.-]*:)?//(?:[^@/?#]*@)?([^:/?#]+)"
HOSTS_FILE_LINE = re.compile(r"^(?:0\.0\.0\.0|127\.0\.0\.1|::1?)\s+(\S+)")


class UrlList(BaseModel):
    """One list file (or UT1 folder) and how to read it."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="File (optionally .gz), or the UT1 blacklists folder; relative to the recipe.")
    format: Literal["domains", "urls", "substrings", "regex", "adblock", "ut1"] = "domains"
    categories: list[str] | None = Field(None, description="ut1: the categories to use (default: all).")
    name: str | None = Field(None, description="Reason in the report (default: file name; ut1: the category).")

    @model_validator(mode="after")
    def _categories_only_for_ut1(self) -> UrlList:
        if self.categories is not None and self.format != "ut1":
            raise ValueError("`categories` is for format ut1")
        return self


class UrlFilterParams(FilterParams):
    block: list[UrlList] = Field(min_length=1, description="Block-lists, in order of precedence.")
    allow: list[UrlList] = Field(default_factory=list, description="Allow-lists: a URL on one is never blocked.")
    url_column: str = Field("url", description="Column holding the page URL.")
    missing_url: Literal["keep", "drop"] = Field("keep", description="Rows without a URL: keep, or drop as `no_url`.")

    def check_paths(self, base_dir: str) -> list[str]:
        problems = []
        for side in ("block", "allow"):
            for i, spec in enumerate(getattr(self, side)):
                path = join(base_dir, spec.path)
                if not (is_dir(path) if spec.format == "ut1" else exists(path)):
                    kind = "folder" if spec.format == "ut1" else "file"
                    where = "" if is_url(path) else f" (looked in {Path(base_dir).resolve()})"
                    problems.append(f"{side}[{i}].path: no {kind} {spec.path!r}{where}")
                elif spec.format == "ut1" and spec.categories:
                    missing = [c for c in spec.categories if not is_dir(f"{path.rstrip('/')}/{c}")]
                    if missing:
                        problems.append(f"{side}[{i}].categories: {missing} not in {spec.path!r}")
        return problems


class Rules:
    """Compiled lists of one side (block or allow): tables to join and expressions to run."""

    def __init__(self) -> None:
        self.domains: list[tuple[str, str, int]] = []
        self.urls: list[tuple[str, str, int]] = []
        self.substrings: list[tuple[list[str], str, int]] = []
        self.regexes: list[tuple[str, str, int]] = []
        self.indexed: list[tuple[str, str, tuple[tuple[str | None, str | None], ...], str, int]] = []
        """AdBlock rules with a literal every matching URL holds: (literal, URL regex, host
        constraints, reason, order), tested only on the URLs where one Aho-Corasick pass finds it."""
        self.constrained: list[tuple[str, tuple[tuple[str | None, str | None], ...], str, int]] = []
        """AdBlock rules limited to some page hosts: (URL regex, host constraints, reason, order)."""
        self.anchored: list[tuple[tuple[str, ...], str, tuple[tuple[str | None, str | None], ...], str, int]] = []
        """Host-limited AdBlock rules that name plain domains to include: (domains, URL regex, host
        constraints, reason, order), matched by joining hosts on the domains first."""
        self._keyed_tables: dict[str, tuple[pl.DataFrame, pl.DataFrame]] = {}
        self._compiled: dict[str, re.Pattern] = {}
        self.own_regexes: set[str] = set()
        """Patterns of the lists' own `/regex/` rules (Rust syntax: never compiled with `re`)."""
        self._literals: list[str] = []
        self._tables: tuple[pl.DataFrame | None, pl.DataFrame | None] | None = None

    def add_lines(self, kind: str, lines: list[str], reason: str, order: int, where: str) -> None:
        if kind == "domains":
            self.domains += [(d, reason, order) for d in domain_entries(lines)]
        elif kind == "urls":
            self.urls += [(normalize_url(u), reason, order) for u in entries(lines)]
        elif kind == "substrings":
            words = [w.lower() for w in entries(lines)]
            if words:
                self.substrings.append((words, reason, order))
        elif kind == "regex":
            patterns = entries(lines)
            for i, pattern in enumerate(patterns):
                check_regex(pattern, f"{where} entry {i + 1}")
            if patterns:
                self.regexes.append(("|".join(f"(?:{p})" for p in patterns), reason, order))

    def add_adblock(self, rules: list[NetworkRule], reason: str, order: int) -> None:
        """AdBlock network rules: bare hosts to the domain table; rules limited to named domains
        keyed by those domains, other rules with a literal keyed by it; the rest joined into
        alternations (one case-insensitive, one case-sensitive) or, host-limited, kept apart."""
        self.domains += [(rule.host, reason, order) for rule in rules if rule.host]
        unkeyed = {False: [], True: []}
        for r in rules:
            if r.host:
                continue
            pattern = ("" if r.case_sensitive else "(?i)") + r.pattern
            if r.regex:
                self.own_regexes.add(pattern)
            if r.anchors and len(r.hosts) <= MAX_CONSTRAINTS:
                self.anchored.append((r.anchors, pattern, r.hosts, reason, order))
            elif r.literal and len(r.literal) >= MIN_LITERAL and len(r.hosts) <= MAX_CONSTRAINTS:
                self.indexed.append((r.literal, pattern, r.hosts, reason, order))
            elif r.hosts:
                self.constrained.append((pattern, r.hosts, reason, order))
            else:
                unkeyed[r.case_sensitive].append(r.pattern)
        for case_sensitive, patterns in unkeyed.items():
            flag = "" if case_sensitive else "(?i)"
            for start in range(0, len(patterns), REGEXES_PER_PATTERN):
                for chunk in compilable(patterns[start:start + REGEXES_PER_PATTERN], flag):
                    self.regexes.append((flag + "|".join(f"(?:{p})" for p in chunk), reason, order))

    def match(self, frame: pl.DataFrame) -> pl.Series:
        """Per row of `frame` (see `url_frame`): the reason of the first matching list, or null."""
        found = []
        domains, urls = self.tables()
        if domains is not None:
            suffixes = frame.select("_row", pl.col("_parents").alias("_suffix")).explode("_suffix")
            found.append(suffixes.join(domains, on="_suffix").select("_row", "_reason", "_order"))
        if urls is not None:
            found.append(frame.select("_row", "_key").join(urls, on="_key").select("_row", "_reason", "_order"))
        lowered = pl.col("_url").str.to_lowercase()
        for words, reason, order in self.substrings:
            hit = frame.filter(lowered.str.contains_any(words, ascii_case_insensitive=True).fill_null(False))
            found.append(hit.select("_row", pl.lit(reason).alias("_reason"), pl.lit(order, dtype=pl.Int64).alias("_order")))
        for pattern, reason, order in self.regexes:
            hit = frame.filter(pl.col("_url").str.contains(pattern).fill_null(False))
            found.append(hit.select("_row", pl.lit(reason).alias("_reason"), pl.lit(order, dtype=pl.Int64).alias("_order")))
        if self.anchored:
            found.append(self.match_keyed(frame, "anchored"))
        if self.indexed:
            found.append(self.match_keyed(frame, "indexed"))
        for pattern, hosts, reason, order in self.constrained:
            condition = pl.col("_url").str.contains(pattern)
            for include, exclude in hosts:
                if include is not None:
                    condition &= pl.col("_site").str.contains(include)
                if exclude is not None:
                    condition &= ~pl.col("_site").str.contains(exclude)
            hit = frame.filter(condition.fill_null(False))
            found.append(hit.select("_row", pl.lit(reason).alias("_reason"), pl.lit(order, dtype=pl.Int64).alias("_order")))
        reasons = pl.Series("_reason", [None] * frame.height, dtype=pl.String)
        if not found:
            return reasons
        first = (pl.concat(found).sort("_order").group_by("_row").agg(pl.col("_reason").first()))
        return frame.select("_row").join(first, on="_row", how="left", maintain_order="left")["_reason"]

    def prepare(self) -> None:
        """Build the tables and compile the patterns now (set-up), not on the first batch."""
        self.tables()
        for kind in ("anchored", "indexed"):
            self.keyed_tables(kind)

    def keyed_tables(self, kind: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(key → rule, rule → pattern, constraints, reason, order) for `anchored` or `indexed` rules."""
        if kind not in self._keyed_tables:
            entries = self.anchored if kind == "anchored" else [((lit,), *rest) for lit, *rest in self.indexed]
            keys = pl.DataFrame([(k, i) for i, rule in enumerate(entries) for k in rule[0]],
                                schema={"_k": pl.String, "_rule": pl.Int64}, orient="row").unique()
            columns = {"_rule": list(range(len(entries))), "_pattern": [r[1] for r in entries],
                       "_reason": [r[3] for r in entries], "_order": [r[4] for r in entries]}
            for k in range(MAX_CONSTRAINTS):
                for side, name in ((0, "inc"), (1, "exc")):
                    columns[f"_{name}{k}"] = [r[2][k][side] if k < len(r[2]) else None for r in entries]
            schema = {"_rule": pl.Int64, "_pattern": pl.String, "_reason": pl.String, "_order": pl.Int64}
            rules = pl.DataFrame(columns, schema={**schema, **{c: pl.String for c in columns if c not in schema}})
            self._keyed_tables[kind] = (keys, rules)
            if kind == "indexed":
                self._literals = keys["_k"].unique().sort().to_list()
        return self._keyed_tables[kind]

    def match_keyed(self, frame: pl.DataFrame, kind: str) -> pl.DataFrame:
        """(`_row`, `_reason`, `_order`) of keyed rules: each row is paired with the rules whose key
        it holds (`anchored`: a parent domain of its host; `indexed`: a literal in its URL), then the
        rule's URL pattern and host constraints are tested per pair, with `re` (compiled once,
        when a pair first needs it: per-row patterns in polars compile each distinct pattern on
        every batch, ~0.3 ms each). A list's own `/regex/` rules (Rust regex syntax) run in polars."""
        keys, rules = self.keyed_tables(kind)
        if kind == "anchored":
            found = pl.col("_parents")
        else:
            found = pl.col("_url").str.extract_many(self._literals, ascii_case_insensitive=True, overlapping=True)
        pairs = (frame.select("_row", "_url", "_site", found.alias("_k")).explode("_k")
                 .with_columns(pl.col("_k").str.to_lowercase()).join(keys, on="_k").unique(["_row", "_rule"])
                 .join(rules, on="_rule"))
        own = pl.col("_pattern").is_in(sorted(self.own_regexes)) if self.own_regexes else pl.lit(False)
        theirs, pairs = pairs.filter(own), pairs.filter(~own)
        limits = [f"_{side}{k}" for k in range(MAX_CONSTRAINTS) for side in ("inc", "exc")]
        keep = [self.pair_matches(pattern, url, site, bounds) for pattern, url, site, *bounds in
                zip(*(pairs[c].to_list() for c in ("_pattern", "_url", "_site", *limits)))]
        condition = pl.col("_url").str.contains(pl.col("_pattern"))
        for k in range(MAX_CONSTRAINTS):
            condition &= pl.col(f"_inc{k}").is_null() | pl.col("_site").str.contains(pl.col(f"_inc{k}"))
            condition &= pl.col(f"_exc{k}").is_null() | ~pl.col("_site").str.contains(pl.col(f"_exc{k}"))
        return pl.concat([pairs.filter(pl.Series(keep, dtype=pl.Boolean)), theirs.filter(condition.fill_null(False))]
                         ).select("_row", "_reason", "_order")

    def pair_matches(self, pattern: str, url: str, site: str | None, bounds: list[str | None]) -> bool:
        """Whether `url` matches a generated rule `pattern` and its host `site` satisfies the
        (include, exclude, …) regexes in `bounds`."""
        if not self.search(pattern, url):
            return False
        for include, exclude in zip(bounds[::2], bounds[1::2]):
            if include is not None and (site is None or not self.search(include, site)):
                return False
            if exclude is not None and (site is None or self.search(exclude, site)):
                return False
        return True

    def search(self, regex: str, text: str) -> bool:
        compiled = self._compiled.get(regex)
        if compiled is None:
            compiled = self._compiled[regex] = re.compile(regex)
        return compiled.search(text) is not None

    def tables(self) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
        """The domain and URL tables (one row per entry, the first list naming it), built once."""
        if self._tables is None:
            def table(rows: list[tuple[str, str, int]], key: str) -> pl.DataFrame | None:
                if not rows:
                    return None
                frame = pl.DataFrame(rows, schema={key: pl.String, "_reason": pl.String, "_order": pl.Int64},
                                     orient="row")
                return frame.sort("_order").unique(key, keep="first", maintain_order=True)
            self._tables = (table(self.domains, "_suffix"), table(self.urls, "_key"))
        return self._tables

    def __len__(self) -> int:
        return (len(self.domains) + len(self.urls) + len(self.substrings) + len(self.regexes) + len(self.indexed)
                + len(self.constrained) + len(self.anchored))


@register_stage
class UrlFilter(Stage):
    """Drops rows whose URL is on a block-list (domain with subdomains, exact URL, substring, regex,
    UT1 category, AdBlock rule) unless an allow-list names it; the reason is the list."""

    type_name: ClassVar[str] = "url_filter"
    Params: ClassVar[type[UrlFilterParams]] = UrlFilterParams
    inputs: ClassVar[tuple[str, ...]] = ("url",)
    params: UrlFilterParams

    def __init__(self, params: UrlFilterParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        self.block: Rules | None = None
        self.allow: Rules | None = None
        self.important: Rules | None = None
        """AdBlock `$important` rules: they block even what an AdBlock exception keeps."""
        self.exceptions: Rules | None = None
        """AdBlock `@@` exceptions (a user's allow-lists are `allow` and win over everything)."""
        self.rule_counts: Counter = Counter()

    def setup(self) -> None:
        self.block, self.allow, self.important, self.exceptions = Rules(), Rules(), Rules(), Rules()
        self.rule_counts = Counter()
        texts: dict[str, list[str]] = {}
        disabled: set[str] = set()
        for spec in [*self.params.block, *self.params.allow]:
            if spec.format == "adblock":  # a `$badfilter` line disables its rule in every list
                texts[spec.path] = list_lines(spec, self.base_dir)
                disabled |= badfilters(texts[spec.path])
        for order, spec in enumerate(self.params.block):
            load_list(spec, self.base_dir, ListTargets(self.block, self.important, self.exceptions, self.rule_counts,
                                                       texts, disabled), order)
        for spec in self.params.allow:
            load_list(spec, self.base_dir, ListTargets(self.allow, self.allow, self.allow, self.rule_counts, texts,
                                                       disabled), 0)
        for rules in (self.block, self.allow, self.important, self.exceptions):
            rules.prepare()

    def facts(self) -> dict[str, int]:
        """AdBlock rules used, and those that cannot decide about a page URL, by why."""
        return dict(self.rule_counts)

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        if self.block is None:
            self.setup()
        column = self.params.url_column
        if column not in batch.columns:
            raise ValueError(f"url_filter: the batch has no column {column!r} (set `url_column`)")
        sides = (self.block, self.allow, self.important, self.exceptions)
        frame = url_frame(batch[column], keys=any(side.urls for side in sides))
        blocked = self.block.match(frame)
        if len(self.exceptions):
            excepted = self.exceptions.match(frame).is_not_null()
            important = self.important.match(frame) if len(self.important) else pl.Series([None] * batch.height, dtype=pl.String)
            blocked = pl.select(pl.when(pl.lit(excepted)).then(pl.lit(important)).otherwise(pl.lit(blocked))).to_series()
        allowed = self.allow.match(frame).is_not_null() if len(self.allow) else pl.Series([False] * batch.height)
        reason = pl.when(pl.lit(allowed)).then(None).otherwise(pl.lit(blocked))
        if self.params.missing_url == "drop":
            missing = frame["_url"].is_null() | (frame["_url"].str.strip_chars() == "")
            reason = pl.when(pl.lit(missing)).then(pl.lit("no_url")).otherwise(reason)
        return batch.with_columns(reason.cast(pl.String).alias(DROP_REASON))


class ListTargets:
    """Where one list's rules go: plain blocks, AdBlock `$important` blocks and `@@` exceptions,
    and the counter of AdBlock rules by use; AdBlock lists' lines already read (by path) and the
    rules that any list's `$badfilter` disables."""

    def __init__(self, block: Rules, important: Rules, exceptions: Rules, counts: Counter,
                 texts: dict[str, list[str]] | None = None, disabled: set[str] | None = None):
        self.block, self.important, self.exceptions, self.counts = block, important, exceptions, counts
        self.texts, self.disabled = texts or {}, disabled or set()


def load_list(spec: UrlList, base_dir: str, targets: ListTargets, order: int) -> None:
    """Read one list (a local path or a URL) into `targets`."""
    where = join(base_dir, spec.path)
    if spec.format == "ut1":
        if not is_dir(where):
            raise FileNotFoundError(f"url_filter: UT1 folder {spec.path!r} not found (looked in {where})")
        path = Path(local_copy(where))
        available = sorted(p.name for p in path.iterdir() if p.is_dir())
        wanted = spec.categories if spec.categories is not None else available
        unknown = [c for c in wanted if c not in available]
        if unknown:
            raise ValueError(f"url_filter: UT1 categories {unknown} not in {spec.path!r} (it has {available})")
        for category in wanted:
            for kind in ("domains", "urls"):
                for file in sorted((path / category).glob(f"{kind}*")):
                    if file.name in (kind, f"{kind}.gz"):
                        targets.block.add_lines(kind, read_lines(str(file)), spec.name or f"ut1:{category}", order, str(file))
        return
    reason = spec.name or where.rstrip("/").rsplit("/", 1)[-1].removesuffix(".gz")
    if spec.format == "adblock":
        lines = targets.texts.get(spec.path) or list_lines(spec, base_dir)
        parsed = parse_adblock(lines, lambda pattern: check_regex(pattern, ""), targets.disabled)
        blocks = [r for r in parsed.rules if not r.exception]
        targets.block.add_adblock(blocks, reason, order)
        targets.important.add_adblock([r for r in blocks if r.important], reason, order)
        targets.exceptions.add_adblock([r for r in parsed.rules if r.exception], reason, 0)
        targets.counts.update({"adblock_block_rules": len(blocks), "adblock_exception_rules": len(parsed.rules) - len(blocks)})
        targets.counts.update({f"adblock_not_applicable:{why}": n for why, n in parsed.not_applicable.items()})
        return
    targets.block.add_lines(spec.format, list_lines(spec, base_dir), reason, order, where)


def list_lines(spec: UrlList, base_dir: str) -> list[str]:
    """The lines of a list file (any format but ut1), or FileNotFoundError naming it."""
    where = join(base_dir, spec.path)
    if not exists(where):
        raise FileNotFoundError(f"url_filter: list {spec.path!r} not found (looked in {where})")
    return read_lines(where)


def read_lines(path: str) -> list[str]:
    data = read_bytes(path)
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8", "replace").splitlines()


def entries(lines: list[str]) -> list[str]:
    return [s for line in lines if (s := line.strip()) and not s.startswith("#")]


def domain_entries(lines: list[str]) -> list[str]:
    out = []
    for line in entries(lines):
        hosts = HOSTS_FILE_LINE.match(line)
        domain = (hosts.group(1) if hosts else line.split()[0]).lower().strip(".")
        if domain.startswith("*."):
            domain = domain[2:]
        if domain and domain not in ("localhost", "localhost.localdomain", "broadcasthost"):
            out.append(domain.removeprefix("www."))
    return out


def compilable(patterns: list[str], flag: str) -> list[list[str]]:
    """`patterns` split into groups whose alternation compiles (halved until under the regex size limit)."""
    if not patterns:
        return []
    try:
        check_regex(flag + "|".join(f"(?:{p})" for p in patterns), "")
        return [patterns]
    except ValueError:
        if len(patterns) == 1:
            return []  # cannot happen for a pattern that compiled alone; never fail the run for it
        half = len(patterns) // 2
        return compilable(patterns[:half], flag) + compilable(patterns[half:], flag)


def check_regex(pattern: str, where: str) -> None:
    try:
        pl.select(pl.lit("").str.contains(pattern))
    except pl.exceptions.ComputeError as error:
        raise ValueError(f"url_filter: bad regex in {where}: {pattern!r} ({error})") from None


def url_frame(urls: pl.Series, keys: bool = True) -> pl.DataFrame:
    """What the matchers read: `_row`, `_url`, `_host` and its `_parents` (for domain tables),
    `_site` (for AdBlock `domain=` constraints) and, with `keys`, `_key` (for exact URLs)."""
    key = url_key(pl.col("_url")) if keys else pl.lit(None, dtype=pl.String)
    frame = urls.cast(pl.String).alias("_url").to_frame().with_row_index("_row").with_columns(
        site_of(pl.col("_url")).alias("_site"), key.alias("_key"))
    frame = frame.with_columns(pl.col("_site").str.replace(r"^www\.", "").alias("_host"))
    parents = frame.select(pl.col("_host").unique()).with_columns(parent_domains(pl.col("_host")).alias("_parents"))
    return frame.join(parents, on="_host", how="left", maintain_order="left")  # a batch repeats its hosts


def site_of(url: pl.Expr) -> pl.Expr:
    """The URL's host, lowercased, without a trailing dot (a bare `host/path` works too)."""
    with_scheme = pl.when(url.str.contains("://")).then(url).otherwise(pl.lit("//") + url)
    return with_scheme.str.extract(HOST).str.to_lowercase().str.strip_chars_end(".")


def host_of(url: pl.Expr) -> pl.Expr:
    """The URL's host as domain lists name it: lowercased, without `www.` and a trailing dot."""
    return site_of(url).str.replace(r"^www\.", "")


def url_key(url: pl.Expr) -> pl.Expr:
    """A URL without scheme, `www.`, host case and trailing `/`, for exact matching."""
    host = host_of(url)
    rest = url.str.replace(r"^(?:[A-Za-z][A-Za-z0-9+.-]*:)?//", "").str.replace(r"^[^/?#]*", "")
    return (host + rest).str.strip_chars_end("/")


def normalize_url(url: str) -> str:
    return pl.select(url_key(pl.lit(url))).item()


def parent_domains(host: pl.Expr) -> pl.Expr:
    """`a.b.example.com` → [a.b.example.com, b.example.com, example.com, com]."""
    labels = host.str.split(".")
    return pl.concat_list([labels.list.slice(k).list.join(".") for k in range(MAX_LABELS)]).list.eval(
        pl.element().filter(pl.element() != "")).list.unique(maintain_order=True)
