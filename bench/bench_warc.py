"""Benchmark: WARC → main text, datamill (`warc` source + `html_extract`) vs datatrove (WarcReader +
Trafilatura) on the same WARC files, plus the resiliparse engine and FastWARC vs warcio.

Input: real HTML documentation found on this machine (the HTML under /usr/share/doc, npm's and
gtk-doc's HTML docs, the Rust books and references when rustup's docs are installed): pages with
navigation sidebars, headers and footers. `--pages` of them (sampled evenly over the roots, in a
fixed order) are written with warcio's WARCWriter into `--files` `.warc.gz` files (request +
response record per page, one gzip member per record, as Common Crawl writes them).

    pip install "datamill[bench]"      # datatrove, warcio, faust-cchardet, python-magic
    python bench/bench_warc.py --pages 600 --files 4

Each file is one datatrove task (a fresh extractor process, so trafilatura's deduplication cache
starts empty per file) and one datamill batch (the cache is cleared per batch): both see the same
documents in the same order with the same trafilatura settings. Speed is documents per CPU-second
(this process and its children: datatrove extracts in a child process), best of `--repeat` runs.
Agreement: the share of documents whose extracted text is identical, and the mean character-level
similarity (rapidfuzz Indel ratio) of the others.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import resource
import sys
import tempfile
import warnings
from pathlib import Path

ROOTS = [
    "/usr/share/doc",
    "/usr/lib/node_modules/npm/docs",
    "/usr/share/gtk-doc",
    *sorted(glob.glob(os.path.expanduser("~/.rustup/toolchains/*/share/doc/rust/html/book")))[:1],
    *sorted(glob.glob(os.path.expanduser("~/.rustup/toolchains/*/share/doc/rust/html/reference")))[:1],
    *sorted(glob.glob(os.path.expanduser("~/.rustup/toolchains/*/share/doc/rust/html/cargo")))[:1],
]


def gather_pages(limit: int) -> list[tuple[str, bytes]]:
    """Up to `limit` (url, html) pairs, taken round-robin over the roots so every kind is in."""
    per_root = []
    for root in ROOTS:
        files = sorted(p for p in glob.glob(f"{root}/**/*.html", recursive=True)
                       if os.path.isfile(p) and os.path.getsize(p) > 500)
        if files:
            per_root.append((root, files))
    pages: list[tuple[str, bytes]] = []
    counts = {root: 0 for root, _ in per_root}
    index = 0
    while len(pages) < limit and any(index < len(files) for _, files in per_root):
        for root, files in per_root:
            if index < len(files) and len(pages) < limit:
                path = files[index]
                pages.append(("https://docs.example" + path, Path(path).read_bytes()))
                counts[root] += 1
        index += 1
    for root, n in counts.items():
        print(f"  {n:5d} pages from {root}")
    return pages


def write_warcs(pages: list[tuple[str, bytes]], files: int, folder: Path) -> list[Path]:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    paths = []
    per_file = (len(pages) + files - 1) // files
    for k in range(files):
        path = folder / f"crawl-{k:03d}.warc.gz"
        with open(path, "wb") as handle:
            writer = WARCWriter(handle, gzip=True)
            for url, html in pages[k * per_file:(k + 1) * per_file]:
                request = StatusAndHeaders("GET / HTTP/1.1", [("Host", "docs.example")], is_http_request=True)
                writer.write_record(writer.create_warc_record(url, "request", payload=io.BytesIO(b""),
                                                              http_headers=request))
                headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")],
                                           protocol="HTTP/1.1")
                writer.write_record(writer.create_warc_record(
                    url, "response", payload=io.BytesIO(html), http_headers=headers,
                    warc_headers_dict={"WARC-Identified-Payload-Type": "text/html"}))  # as Common Crawl does
        paths.append(path)
    return paths


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(run, repeat: int):
    best, result = float("inf"), None
    for _ in range(max(1, repeat)):
        start = cpu_seconds()
        result = run()
        best = min(best, cpu_seconds() - start)
    return best, result


def run_datamill(paths: list[Path], engine: str, timeout: float) -> dict[str, str]:
    from datamill.curate.engine.stage import DROP_REASON
    from datamill.curate.sources.warc import WarcParams, WarcSource
    from datamill.filters.html_extract import HtmlExtract, HtmlExtractParams

    stage = HtmlExtract(HtmlExtractParams(engine=engine, timeout=timeout))
    stage.setup()
    out = {}
    for path in paths:
        source = WarcSource(WarcParams(path=str(path)), index=0, base_dir=str(path.parent))
        for spec in source.plan():
            for batch in source.read(spec, 10_000):
                result = stage.process(batch.records)
                kept = result.filter(result[DROP_REASON].is_null())
                out.update(zip(kept["id"], kept["text"]))
    return out


def run_datatrove(paths: list[Path], timeout: float) -> dict[str, str]:
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader

    from trafilatura.deduplication import LRU_TEST

    out = {}
    for path in paths:  # one task per file, as datatrove's executor would run them
        # the extractor process is forked from this one: start it with trafilatura's dedup cache
        # empty, as in a datatrove run (where the parent never extracts), not filled by our runs
        LRU_TEST.clear()
        reader = WarcReader(str(path.parent), glob_pattern=path.name)
        for doc in Trafilatura(timeout=timeout).run(reader.run(None, 0, 1), 0, 1):
            out[doc.id] = doc.text
    return out


def read_fastwarc(paths: list[Path]) -> int:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    n = 0
    for path in paths:
        for record in ArchiveIterator(str(path), record_types=WarcRecordType.response, parse_http=True):
            record.reader.read()
            n += 1
    return n


def read_warcio(paths: list[Path]) -> int:
    from warcio.archiveiterator import ArchiveIterator

    n = 0
    for path in paths:
        with open(path, "rb") as handle:
            for record in ArchiveIterator(handle):
                if record.rec_type == "response":
                    record.content_stream().read()
                    n += 1
    return n


def read_datamill_source(paths: list[Path]) -> int:
    from datamill.curate.sources.warc import WarcParams, WarcSource

    n = 0
    for path in paths:
        source = WarcSource(WarcParams(path=str(path)), index=0, base_dir=str(path.parent))
        for spec in source.plan():
            for batch in source.read(spec, 10_000):
                n += batch.records.height
    return n


def read_datatrove_source(paths: list[Path]) -> int:
    from datatrove.pipeline.readers import WarcReader

    return sum(1 for path in paths for _ in WarcReader(str(path.parent), glob_pattern=path.name).run(None, 0, 1))


def agreement(ours: dict[str, str], theirs: dict[str, str]) -> tuple[int, float, float]:
    """(documents compared, share identical, mean similarity of the differing ones)."""
    from rapidfuzz.distance import Indel

    ids = sorted(set(ours) | set(theirs))
    identical, similarities = 0, []
    for i in ids:
        a, b = ours.get(i), theirs.get(i)
        if a == b:
            identical += 1
        else:
            similarities.append(Indel.normalized_similarity(a or "", b or ""))
    mean = sum(similarities) / len(similarities) if similarities else 1.0
    return len(ids), identical / max(1, len(ids)), mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=600)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="Per-page limit for both (default 30 s, not datatrove's 1 s: on a contended box a "
                        "1 s limit fires at random and the two sides would drop different pages).")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    try:
        from loguru import logger

        logger.remove()
    except ImportError:
        pass

    print("gathering HTML pages:")
    pages = gather_pages(args.pages)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_warcs(pages, args.files, Path(tmp))
        size = sum(p.stat().st_size for p in paths)
        print(f"{len(pages)} pages, {sum(len(h) for _, h in pages) / 1e6:.1f} MB of HTML, "
              f"{len(paths)} WARC files ({size / 1e6:.1f} MB gzipped)\n")
        n = len(pages)

        # warm both up once (imports, lazy tables) so the first timed run is not charged for them
        t = args.timeout
        run_datamill(paths[:1], "trafilatura", t)
        run_datatrove(paths[:1], t)

        ours_s, ours = timed(lambda: run_datamill(paths, "trafilatura", t), args.repeat)
        theirs_s, theirs = timed(lambda: run_datatrove(paths, t), args.repeat)
        res_s, resili = timed(lambda: run_datamill(paths, "resiliparse", t), args.repeat)
        compared, same, similar = agreement(ours, theirs)
        print("WARC → trafilatura text (datatrove's settings), CPU seconds (process + children):")
        print(f"  datatrove WarcReader + Trafilatura: {theirs_s:7.2f} s  {n / theirs_s:8.1f} pages/s per core"
              f"  ({len(theirs)} with text)")
        print(f"  datamill warc + html_extract:       {ours_s:7.2f} s  {n / ours_s:8.1f} pages/s per core"
              f"  ({len(ours)} with text)")
        print(f"  speed ratio datamill/datatrove: x{theirs_s / ours_s:.2f}")
        print(f"  agreement: {compared} documents, {same:.2%} identical text, "
              f"mean similarity of the rest {similar:.3f}\n")
        if os.environ.get("BENCH_SHOW_DIFFS"):
            for i in sorted(set(ours) | set(theirs)):
                if ours.get(i) != theirs.get(i):
                    print("DIFF", i, repr((ours.get(i) or "")[:300]), "\n  vs", repr((theirs.get(i) or "")[:300]))

        r_compared, r_same, r_similar = agreement(resili, ours)
        print("resiliparse engine (DCLM) vs trafilatura engine, both datamill:")
        print(f"  resiliparse: {res_s:7.2f} s  {n / res_s:8.1f} pages/s per core  ({len(resili)} with text)")
        print(f"  speed ratio resiliparse/trafilatura: x{ours_s / res_s:.2f}")
        print(f"  agreement with trafilatura: {r_same:.2%} identical, mean similarity {r_similar:.3f} "
              f"over {r_compared} documents\n")

        fast_s, fast_n = timed(lambda: read_fastwarc(paths), args.repeat + 1)
        warcio_s, warcio_n = timed(lambda: read_warcio(paths), args.repeat + 1)
        src_s, src_n = timed(lambda: read_datamill_source(paths), args.repeat + 1)
        dt_src_s, dt_src_n = timed(lambda: read_datatrove_source(paths), args.repeat + 1)
        print("reading only (records with HTTP parsed and payload read):")
        print(f"  FastWARC: {fast_n / fast_s:9.0f} records/s   warcio: {warcio_n / warcio_s:9.0f} records/s   "
              f"ratio x{warcio_s / fast_s:.2f}")
        print(f"  datamill warc source (decoded documents): {src_n / src_s:9.0f} docs/s   datatrove WarcReader: "
              f"{dt_src_n / dt_src_s:9.0f} docs/s   ratio x{dt_src_s / src_s:.2f}")


if __name__ == "__main__":
    sys.exit(main())
