"""AdBlock filter lists read for page URLs: which network rules block (or except) a crawled document, and why the rest do not apply.

A crawled page is a top-level `document` request to its own site, so of the AdBlock Plus / uBlock
Origin / AdGuard syntax this keeps what can decide about such a URL:

- network rules (`||host^`, `|https://…`, `*`, `^`, `/regex/`) with no options, or with options
  that admit a document: `$document` (`doc`, `all`), negated types that do not negate `document`
  (`$~script`), `$~third-party` / `$first-party` / `$1p` (a page is first-party to itself),
  `$domain=a.com|~b.com` (also `from=`; the page's own host is the source), `$to=` and
  `$denyallow=` (the page's host is also the target), `$match-case`, `$important`;
- `@@` exceptions with the same options; `$important` blocks win over exceptions;
- `$badfilter` disables the rule it names, in every list the stage reads (uBO's "unbreak" lists
  disable EasyList rules that way).

Everything else is counted, never silently dropped: `cosmetic` (`##`, `#@#`, `#?#`, `#$#`,
scriptlets, `$$` HTML filters: they hide page elements, they never block a URL), `resource_type`
(only `script`, `image`, … — a page is not one), `third_party` (a page is never third-party to
itself), `modifier` (`csp=`, `redirect-rule=`, `removeparam=`…: they rewrite a request instead of
blocking it; `redirect=` blocks first, so it counts as a block), `cosmetic_exception`
(`@@…$elemhide`, `$generichide`…), `unsupported_option`, `bad_regex` (JavaScript-only regex
syntax), `empty_pattern` (`*`, `|` or `||` alone, without a host constraint: it would block every
page) and `badfilter` (disabled).

Where Brave's adblock-rust (the `adblock` package Dolma's url taggers call) decides otherwise, this
follows the ABP/uBO syntax on purpose (bench/bench_adblock_agreement.py counts each case): rules
without a type apply to the page (Dolma asks with no type, a browser's `document` request would
skip path rules); `$match-case` is honoured; host names match in any case; `||www.a.com^` does
not block `a.com` or `docs.a.com`; a plain pattern matches inside a word (`type.` in
`sonatype.org`); `/x/|` is a pattern ending the URL, not a regex; `/…$/` is a regex ending the URL.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

DOCUMENT_TYPES = frozenset({"document", "doc", "all"})
RESOURCE_TYPES = frozenset({
    "script", "image", "stylesheet", "css", "object", "object-subrequest", "xmlhttprequest", "xhr",
    "subdocument", "frame", "ping", "beacon", "media", "font", "websocket", "webrtc", "other", "popup",
    "popunder", "csp_report", "inline-script", "inline-font", "fetch", "webbundle"})
FIRST_PARTY = frozenset({"~third-party", "first-party", "1p", "~3p", "strict1p", "strict-first-party"})
THIRD_PARTY = frozenset({"third-party", "3p", "~first-party", "~1p", "strict3p", "strict-third-party"})
REDIRECTS = frozenset({"redirect", "empty", "mp4"})
"""uBO's `$redirect=` (and its old aliases): block the request, then serve a stand-in resource to
subresources; for a page that is a block (adblock-rust blocks too). `$redirect-rule=` is not."""
MODIFIERS = frozenset({
    "csp", "redirect-rule", "removeparam", "queryprune", "replace", "rewrite", "header",
    "removeheader", "permissions", "cookie", "hls", "jsonprune", "json-prune", "uritransform", "urltransform",
    "urlskip", "network", "app", "referrerpolicy", "stealth", "cname", "xmlprune"})
COSMETIC_EXCEPTIONS = frozenset({
    "elemhide", "ehide", "generichide", "ghide", "specifichide", "shide", "genericblock", "content",
    "jsinject", "extension", "urlblock", "sitekey"})
DOMAIN_OPTIONS = ("domain", "from", "to", "denyallow")
COSMETIC = re.compile(r"^[^\s/|@$]*?(?:#[@?$%]{0,2}#|#@[$?]#|\$@?\$)")
OPTION = re.compile(r"~?[a-z0-9][a-z0-9_-]*(?:=.*)?")
HOST_ONLY = re.compile(r"\|\|([a-z0-9.-]+)\^")  # `||a.com` alone also blocks a.com.evil.net; `^|` needs the end


@dataclass(frozen=True)
class NetworkRule:
    """One network rule that can decide about a page URL."""

    pattern: str
    """A regex searched in the full URL (no case flag: see `case_sensitive`)."""
    exception: bool = False
    important: bool = False
    case_sensitive: bool = False
    host: str | None = None
    """Set for a bare `||example.com^` rule without constraints: matched by domain table instead of regex."""
    hosts: tuple[tuple[str | None, str | None], ...] = ()
    """(regex the page's host must match, regex it must not match) per `domain=`/`to=`/`denyallow=`."""
    regex: bool = False
    """A `/regex/` rule of the list (Rust regex syntax); else the pattern is made by `pattern_to_regex`."""
    literal: str | None = None
    """The longest piece of text every matching URL contains (lower case), when the rule is not a
    regex: the matcher runs a rule's regex only on URLs holding it (one Aho-Corasick pass)."""
    anchors: tuple[str, ...] = ()
    """Plain domains (without `www.`) one of which the page's host must be (or be under), when a
    constraint lists such includes: the matcher joins on them instead of testing the rule against every row."""


@dataclass
class AdblockList:
    """A parsed list: the rules that apply to page URLs and counts of the rules that do not, by why."""

    rules: list[NetworkRule] = field(default_factory=list)
    not_applicable: Counter = field(default_factory=Counter)


def badfilters(lines: list[str]) -> set[str]:
    """The rules that the list's `$badfilter` lines disable (as written, without `badfilter`): a
    `$badfilter` disables its rule in every list the stage reads, as in uBlock Origin."""
    out = set()
    for raw in lines:
        rule = raw.strip()
        if rule and not rule.startswith(("!", "[")) and not COSMETIC.match(rule):
            body, options = split_options(rule)
            if "badfilter" in options:
                out.add(body + join_options([o for o in options if o != "badfilter"]))
    return out


def parse_adblock(lines: list[str], check_regex=None, disabled: set[str] | frozenset[str] = frozenset()) -> AdblockList:
    """The document-applicable rules of an AdBlock list; `check_regex(pattern)` raises ValueError
    for a pattern the matcher cannot run (counted as `bad_regex`); `disabled`: rules that other
    lists' `$badfilter` lines disable (this list's own are read here)."""
    out = AdblockList()
    disabled = set(disabled) | badfilters(lines)
    candidates: list[tuple[str, NetworkRule]] = []
    for raw in lines:
        rule = raw.strip()
        if not rule or rule.startswith(("!", "[")):
            continue
        if COSMETIC.match(rule):
            out.not_applicable["cosmetic"] += 1
            continue
        body, options = split_options(rule)
        if "badfilter" in options:
            out.not_applicable["badfilter"] += 1
            continue
        parsed = parse_rule(body, options)
        if isinstance(parsed, str):
            out.not_applicable[parsed] += 1
            continue
        candidates.append((rule, parsed))
    runnable = valid_patterns([("" if r.case_sensitive else "(?i)") + r.pattern for _, r in candidates], check_regex)
    for (text, parsed), ok in zip(candidates, runnable):
        if not ok:
            out.not_applicable["bad_regex"] += 1
        elif text in disabled:
            out.not_applicable["badfilter"] += 1
        else:
            out.rules.append(parsed)
    return out


def valid_patterns(patterns: list[str], check_regex, chunk: int = 500) -> list[bool]:
    """Which patterns `check_regex` accepts, compiling `chunk` of them as one alternation and
    checking one by one only in a chunk that fails (one compile per rule took seconds on big lists)."""
    ok = [True] * len(patterns)
    if check_regex is None:
        return ok
    for start in range(0, len(patterns), chunk):
        part = patterns[start:start + chunk]
        try:
            check_regex("|".join(f"(?:{p})" for p in part))
            continue
        except ValueError:
            pass
        for i, pattern in enumerate(part):
            try:
                check_regex(pattern)
            except ValueError:
                ok[start + i] = False
    return ok


def split_options(rule: str) -> tuple[str, list[str]]:
    """(`@@…pattern`, options in lower case); a `$` not followed by an option list is pattern text."""
    at = rule.rfind("$")
    if at <= 0 or (rule.startswith(("/", "@@/")) and rule.rfind("/") > at):
        return rule, []
    items = rule[at + 1:].split(",")
    if not all(OPTION.fullmatch(item.lower()) for item in items):
        return rule, []
    return rule[:at], [item if item.lower().startswith(("domain=", "from=", "to=", "denyallow="))
                       else item.lower() for item in items]


def join_options(options: list[str]) -> str:
    return "$" + ",".join(options) if options else ""


def parse_rule(body: str, options: list[str]) -> NetworkRule | str:
    """A NetworkRule, or the reason the rule does not apply to page URLs."""
    exception = body.startswith("@@")
    body = body[2:] if exception else body
    if not body or body in ("|", "||"):
        return "empty_pattern"
    important = case_sensitive = False
    positive, negative, constraints, anchors = set(), set(), [], ()
    for option in options:
        name, _, value = option.partition("=")
        key = name.lower()
        if key in DOMAIN_OPTIONS:
            constraint = host_constraint(value, negate_all=key == "denyallow")
            if constraint is None:
                return "unsupported_option"
            constraints.append(constraint)
            includes = tuple(d.lstrip("~").lower().removeprefix("www.") for d in value.split("|")
                             if key != "denyallow" and not d.startswith("~"))
            if includes and not anchors and not any("*" in d for d in includes):
                anchors = includes
        elif key == "important":
            important = True
        elif key == "match-case":
            case_sensitive = True
        elif key in FIRST_PARTY:
            continue
        elif key in THIRD_PARTY:
            return "third_party"
        elif key.lstrip("~") in DOCUMENT_TYPES or key.lstrip("~") in RESOURCE_TYPES:
            (negative if key.startswith("~") else positive).add(key.lstrip("~"))
        elif key in REDIRECTS:
            continue
        elif key in MODIFIERS:
            return "modifier"
        elif key in COSMETIC_EXCEPTIONS:
            return "cosmetic_exception" if exception else "unsupported_option"
        else:
            return "unsupported_option"
    if body.strip("*") == "" and not constraints:  # `*` alone would block every page
        return "empty_pattern"
    if positive and not positive & DOCUMENT_TYPES:
        return "resource_type"
    if not positive and negative & DOCUMENT_TYPES:
        return "resource_type"
    is_regex = body.startswith("/") and body.endswith("/") and len(body) > 2
    pattern = body[1:-1] if is_regex else pattern_to_regex(body)
    bare = HOST_ONLY.fullmatch(body.lower()) if not is_regex else None
    # the domain table holds hosts without `www.`: a `||www.…^` rule, which must not block the bare
    # host or its other subdomains, runs as a regex over the URL instead
    host = bare.group(1) if bare and not constraints and not bare.group(1).startswith("www.") else None
    literal = None if is_regex else max(re.split(r"[*^|]+", body), key=len).lower()
    literal = literal if literal and literal.isascii() else None  # the prefilter folds ASCII case only
    return NetworkRule(pattern, exception, important, case_sensitive, host, tuple(constraints), anchors=anchors,
                       literal=literal, regex=is_regex)


def host_constraint(value: str, negate_all: bool = False) -> tuple[str | None, str | None] | None:
    """`a.com|~b.com|google.*` as (regex the page's host must match, regex it must not match), on the
    host in lower case as the URL has it (`www.` kept: `~www.a.com` must not exempt `docs.a.com`);
    a domain matches itself and its subdomains. None when malformed."""
    include, exclude = [], []
    for entry in value.split("|"):
        entry = entry.strip().lower()
        negated = entry.startswith("~") or negate_all
        name = entry.lstrip("~")
        if not re.fullmatch(r"[a-z0-9*][a-z0-9.*-]*", name or "-"):
            return None
        regex = re.escape(name).replace(r"\*", r"[^.]+(?:\.[^.]+)?" if name.endswith("*") else "[^.]*")
        (exclude if negated else include).append(regex)

    def suffix(names: list[str]) -> str | None:
        return r"(?:^|\.)(?:" + "|".join(names) + ")$" if names else None
    return suffix(include), suffix(exclude)


def pattern_to_regex(rule: str) -> str:
    """One AdBlock pattern as a regex over the full URL (`||` host anchor, `|` ends, `*`, `^`)."""
    start, end = "", ""
    if rule.startswith("||"):
        start, rule = r"^[a-z][a-z0-9+.-]*://(?:[^/?#]*\.)?", rule[2:]
    elif rule.startswith("|"):
        start, rule = "^", rule[1:]
    if rule.endswith("|"):
        end, rule = "$", rule[:-1]
    # `^`: a separator, anything but an ASCII letter, digit or `_-.%` (uBlock's definition), or the end
    body = "".join(".*" if c == "*" else r"(?:[^0-9A-Za-z_.%-]|$)" if c == "^" else re.escape(c) for c in rule)
    return f"{start}{body}{end}"
