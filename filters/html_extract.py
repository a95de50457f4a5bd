"""The `html_extract` stage: the main text of HTML pages, with trafilatura or resiliparse.

`engine: trafilatura` (FineWeb's choice) calls `trafilatura.extract` with datatrove's
`Trafilatura` extractor settings by default: `favor_precision=True`, `include_comments=False`,
`deduplicate=True`, tables kept (trafilatura's own default), fallback extractors on, plain-text
output, 1 s per page; its XPath rules run in a faster form that selects the same elements
(filters/trafilatura_speedups.py). trafilatura's deduplication remembers paragraphs across pages in a
process-wide cache; it is cleared at the start of every batch so that the output depends only on
the recipe (datatrove clears it per task, i.e. per input file). `engine: resiliparse` (DCLM's
choice) calls `extract_plain_text(main_content=True, preserve_formatting=True)` on resiliparse's
HTML tree; it is about 18x faster (bench/bench_warc.py) and keeps more navigation text.

Only rows whose `content_type` says HTML are extracted (all rows when there is no such column),
so WET `text/plain` records pass through unchanged. `title` is the page's `<title>`. Rows whose
page has no main text are dropped with reason `no_text`; a page that takes longer than `timeout`
seconds is dropped as `extract_timeout` (the limit is a SIGALRM timer, so it holds in the main
thread of a process, which is where the local and Ray executors run stages; elsewhere pages run
without a limit); a page the extractor fails on is dropped as `extract_error`. The raw HTML is
kept as column `html` only with `keep_html: true`.
"""

from __future__ import annotations

import signal
import threading
import unicodedata
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from typing import ClassVar, Literal

import polars as pl
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import DROP_REASON, Stage, StageParams

HTML_TYPES = ("text/html", "application/xhtml+xml")
WARM_UP_PAGE = "<html><head><title>t</title></head><body><p>A short paragraph.</p><script>x=1</script></body></html>"


class HtmlExtractParams(StageParams):
    engine: Literal["trafilatura", "resiliparse"] = Field(
        "trafilatura", description="trafilatura (FineWeb, datatrove's defaults) or resiliparse (DCLM)."
    )
    timeout: float | None = Field(
        1.0, gt=0, description="Seconds one page may take; longer pages are dropped as `extract_timeout` "
        "(datatrove's default: 1 s). null: no limit."
    )
    keep_html: bool = Field(False, description="Keep the raw HTML as column `html`.")
    favor_precision: bool = Field(True, description="trafilatura: less text, less boilerplate (datatrove: on).")
    include_comments: bool = Field(False, description="trafilatura: keep the comment section (datatrove: off).")
    include_tables: bool = Field(True, description="trafilatura: keep the text of tables (its default).")
    deduplicate: bool = Field(
        True, description="trafilatura: drop paragraphs already seen more than twice in the batch (datatrove: on)."
    )
    fast: bool = Field(False, description="trafilatura: skip the fallback extractors (datatrove: off).")
    main_content: bool = Field(True, description="resiliparse: keep only main-content elements.")
    preserve_formatting: bool = Field(True, description="resiliparse: keep paragraphs, lists and line breaks.")
    list_bullets: bool = Field(True, description="resiliparse: bullets before list items.")
    alt_texts: bool = Field(False, description="resiliparse: keep images' alternative text.")
    links: bool = Field(False, description="resiliparse: write link targets into the text.")
    noscript: bool = Field(False, description="resiliparse: keep `<noscript>` content.")
    nfc: bool = Field(True, description="resiliparse: NFC-normalize the text (DCLM's extractor does).")


class ExtractTimeout(BaseException):
    """A page took longer than the stage's `timeout` (a BaseException, so that the extractors'
    own `except Exception` blocks cannot swallow it)."""


@register_stage
class HtmlExtract(Stage):
    """Main-text extraction from HTML: `text` becomes the page's main text, `title` is added."""

    type_name: ClassVar[str] = "html_extract"
    Params: ClassVar[type[HtmlExtractParams]] = HtmlExtractParams
    inputs: ClassVar[tuple[str, ...]] = ("text",)
    outputs: ClassVar[tuple[str, ...]] = ("text", "title")
    params: HtmlExtractParams

    def __init__(self, params: HtmlExtractParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        self._extract: Callable[[str], tuple[str | None, str | None]] | None = None
        self._warned_thread = False

    def setup(self) -> None:
        self._extract = trafilatura_extractor(self.params) if self.params.engine == "trafilatura" else \
            resiliparse_extractor(self.params)
        self._extract(WARM_UP_PAGE)  # the first call loads lazily imported parts (~1 s): not a page's time

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        if self._extract is None:
            self.setup()
        if self.params.engine == "trafilatura" and self.params.deduplicate:
            from trafilatura.deduplication import LRU_TEST

            LRU_TEST.clear()
        if "content_type" in batch.columns:
            is_html = pl.col("content_type").is_null() | pl.col("content_type").is_in(HTML_TYPES)
            todo = batch.select(is_html.alias("html")).to_series().to_list()
        else:
            todo = [True] * batch.height
        texts, titles, reasons = [], [], []
        with self._time_limit() as limited, self._engine_context():
            for html, extract_it in zip(batch["text"].to_list(), todo):
                if not extract_it:
                    texts.append(html)
                    titles.append(None)
                    reasons.append(None)
                    continue
                text, title, reason = limited(self._extract, html)
                texts.append(text)
                titles.append(title)
                reasons.append(reason)
        columns = [pl.Series("text", texts, dtype=pl.String), pl.Series("title", titles, dtype=pl.String),
                   pl.Series(DROP_REASON, reasons, dtype=pl.String)]
        if self.params.keep_html:
            columns.append(batch["text"].alias("html"))
        return batch.with_columns(columns)

    def _engine_context(self):
        """trafilatura's rules in their faster, output-identical form while the batch runs."""
        if self.params.engine != "trafilatura":
            return nullcontext()
        from datamill.filters.trafilatura_speedups import faster_trafilatura

        return faster_trafilatura()

    @contextmanager
    def _time_limit(self):
        """A caller `limited(fn, html) -> (text, title, drop reason)` that applies the timeout."""
        timeout = self.params.timeout
        in_main = threading.current_thread() is threading.main_thread()
        if timeout is not None and not in_main and not self._warned_thread:
            warnings.warn("html_extract runs outside the main thread: pages run without a time limit",
                          RuntimeWarning, stacklevel=2)
            self._warned_thread = True
        if timeout is None or not in_main:
            yield _run_without_limit
            return

        def on_alarm(signum, frame):
            raise ExtractTimeout

        previous = signal.signal(signal.SIGALRM, on_alarm)
        try:
            yield lambda fn, html: _run_with_limit(fn, html, timeout)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _run_without_limit(fn, html: str) -> tuple[str | None, str | None, str | None]:
    try:
        text, title = fn(html)
    except Exception:
        return None, None, "extract_error"
    return _result(text, title)


def _run_with_limit(fn, html: str, timeout: float) -> tuple[str | None, str | None, str | None]:
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            text, title = fn(html)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except ExtractTimeout:
        return None, None, "extract_timeout"
    except Exception:
        return None, None, "extract_error"
    return _result(text, title)


def _result(text: str | None, title: str | None) -> tuple[str | None, str | None, str | None]:
    title = " ".join(title.split()) or None if title else None
    if text is None or not text.strip():
        return None, title, "no_text"
    return text, title, None


def trafilatura_parser() -> Callable[[str], object]:
    """`html -> lxml tree` exactly as `trafilatura.utils.load_html` builds it from a string (same
    decoding, repair, parser options and rejection of dubious pages), but with lxml's C-level
    element class lookup instead of `lxml.html`'s Python callback, which runs for every element
    object trafilatura touches (about 7 % of its time on real pages). Every element is an
    `HtmlElement` (lxml.html would make `<form>`/`<input>`/`<select>`/`<textarea>`/`<label>` its
    form subclasses, whose extra methods trafilatura never calls). The fallbacks are load_html's
    too: bytes for a string with an XML encoding declaration (common in XHTML documentation) or an
    empty first parse."""
    from lxml import etree
    from lxml.html import HTMLParser, HtmlComment, HtmlElement, HtmlEntity, HtmlProcessingInstruction, fromstring
    from trafilatura.utils import decode_file, is_dubious_html, repair_faulty_html

    parser = HTMLParser(collect_ids=False, default_doctype=False, encoding="utf-8", remove_comments=True,
                        remove_pis=True)  # trafilatura.utils.HTML_PARSER's options
    parser.set_element_class_lookup(etree.ElementDefaultClassLookup(
        element=HtmlElement, comment=HtmlComment, pi=HtmlProcessingInstruction, entity=HtmlEntity))

    def parse_bytes(text: str):
        try:
            return fromstring(text.encode("utf8", "surrogatepass"), parser=parser)
        except Exception:
            return None

    def parse(html: str):  # load_html's steps, in its order
        text = decode_file(html)
        beginning = text[:50].lower()
        dubious = is_dubious_html(beginning)
        text = repair_faulty_html(text, beginning)
        second_pass = True
        try:
            tree = fromstring(text, parser=parser)
        except ValueError:  # a string with an XML encoding declaration: lxml wants bytes
            tree, second_pass = parse_bytes(text), False
        except Exception:
            tree = None
        if (tree is None or len(tree) < 1) and second_pass:
            tree = parse_bytes(text)
        return None if tree is not None and dubious and len(tree) < 2 else tree

    return parse


def trafilatura_extractor(params: HtmlExtractParams) -> Callable[[str], tuple[str | None, str | None]]:
    """`html -> (main text, title)` with trafilatura; the page is parsed once for both."""
    from trafilatura import extract

    options = dict(favor_precision=params.favor_precision, include_comments=params.include_comments,
                   include_tables=params.include_tables, deduplicate=params.deduplicate, fast=params.fast)
    load_html = trafilatura_parser()

    def run(html: str) -> tuple[str | None, str | None]:
        tree = load_html(html)
        if tree is None:
            return None, None
        return extract(tree, **options), tree.findtext(".//title")

    return run


def resiliparse_extractor(params: HtmlExtractParams) -> Callable[[str], tuple[str | None, str | None]]:
    """`html -> (main text, title)` with resiliparse's HTML tree and `extract_plain_text`."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    options = dict(main_content=params.main_content, preserve_formatting=params.preserve_formatting,
                   list_bullets=params.list_bullets, alt_texts=params.alt_texts, links=params.links,
                   noscript=params.noscript, comments=False)

    def run(html: str) -> tuple[str | None, str | None]:
        tree = HTMLTree.parse(html)
        text = extract_plain_text(tree, **options)
        if params.nfc and text:
            text = unicodedata.normalize("NFC", text)
        return text, tree.title

    return run
