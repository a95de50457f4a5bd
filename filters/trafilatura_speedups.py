"""Output-identical speed-ups for trafilatura, active only while the `html_extract` stage runs.

trafilatura spends about half of its time evaluating its XPath rules (measured on real pages,
bench/bench_warc.py), and most of that goes where it need not. Its rules test `@id`/`@class`/`@style` with EXSLT regular expressions (`re:test(@class, '…')`).
lxml runs every `re:test` as a Python callback, for every element the rule visits — also for
elements that have no such attribute, where the test reads an empty string. A rule here is the
same XPath with each `re:test(ATTRS, 'PATTERN')` guarded as `((ATTRS) and re:test(…))`, so the
callback runs only where an attribute exists. That is exact when PATTERN cannot match the empty
string (lxml tests the string value of the node-set's first node, '' for an empty one); a pattern
that can is left unguarded. Rules that select elements are also compiled with
`smart_strings=False`, which only changes string results (they return none) and spares lxml
building "smart" strings for the callback's arguments.

`faster_trafilatura()` swaps the faster rules into trafilatura's rule lists (in place, so every
trafilatura module sees them) and into module attributes holding a single rule, and puts the
originals back on exit, so trafilatura behaves as shipped for any other user in the process (a
benchmark comparing against plain trafilatura stays fair). tests/test_html_extract.py checks that
the extracted text equals plain `trafilatura.extract` page for page.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from lxml.etree import XPath

REGEXP_NS = "http://exslt.org/regular-expressions"
RE_TEST = re.compile(r"re:test\(\s*(@[\w:-]+(?:\s*\|\s*@[\w:-]+)*)\s*,\s*'([^']*)'\s*(?:,\s*'([^']*)'\s*)?\)")
SELECTS_STRINGS = re.compile(r"(/@[\w:-]+|text\(\)|string\([^)]*\))\s*\)?(\[\d+\])?\s*$")


def guarded_rule(path: str) -> str:
    """`path` with every `re:test(ATTRS, 'PATTERN'[, 'FLAGS'])` whose pattern cannot match the
    empty string guarded by `(ATTRS) and`; other text unchanged."""

    def guard(match: re.Match) -> str:
        attributes, pattern, flags = match.group(1), match.group(2), match.group(3) or ""
        try:
            matches_empty = re.compile(pattern, re.IGNORECASE if "i" in flags else 0).search("") is not None
        except re.error:
            return match.group(0)
        return match.group(0) if matches_empty else f"(({attributes}) and {match.group(0)})"

    return RE_TEST.sub(guard, path)


def faster_rule(rule: XPath) -> XPath:
    """The guarded, callback-sparing equivalent of one of trafilatura's XPath rules."""
    return XPath(guarded_rule(rule.path), namespaces={"re": REGEXP_NS},
                 smart_strings=SELECTS_STRINGS.search(rule.path) is not None)


def trafilatura_modules() -> list:
    """trafilatura's loaded modules (after importing the ones that hold rules)."""
    for name in ("trafilatura.core", "trafilatura.xpaths", "trafilatura.settings", "trafilatura.external"):
        importlib.import_module(name)
    return [module for name, module in list(sys.modules.items())
            if module is not None and (name == "trafilatura" or name.startswith("trafilatura."))]


class Swaps:
    """The faster versions of trafilatura's rules, and where each goes."""

    def __init__(self):
        self.lists: list[tuple[list, list, list]] = []  # (the rule list, originals, faster)
        self.names: list[tuple[object, str, object, object]] = []  # (module, attribute, original, faster)
        faster: dict[int, XPath] = {}  # one faster rule per original, wherever it is referenced

        def faster_of(rule: XPath) -> XPath:
            if id(rule) not in faster:
                faster[id(rule)] = faster_rule(rule)
            return faster[id(rule)]

        seen_lists: set[int] = set()
        modules = trafilatura_modules()
        for module in modules:
            for attribute, value in list(vars(module).items()):
                if isinstance(value, list) and id(value) not in seen_lists and value and \
                        all(isinstance(rule, XPath) for rule in value) and any("re:test" in r.path for r in value):
                    seen_lists.add(id(value))
                    new = [faster_of(rule) if "re:test" in rule.path else rule
                           for rule in value]
                    self.lists.append((value, list(value), new))
                elif isinstance(value, XPath) and "re:test" in value.path:
                    self.names.append((module, attribute, value, faster_of(value)))

    def apply(self, faster: bool) -> None:
        for rules, originals, new in self.lists:
            rules[:] = new if faster else originals
        for module, attribute, original, new in self.names:
            setattr(module, attribute, new if faster else original)


@functools.cache
def swaps() -> Swaps:
    """The process's one set of swaps (rules are compiled once)."""
    return Swaps()


@contextmanager
def faster_trafilatura() -> Iterator[None]:
    """trafilatura with the faster rules inside the block, as shipped after it."""
    swaps().apply(True)
    try:
        yield
    finally:
        swaps().apply(False)
