"""Test helper: write small WARC, WET and ARC files byte by byte (no writer library involved).

Each `*_record` function returns one record's bytes; `write_warc` joins them into a file, gzipping
every record as its own member (like Common Crawl) when the name ends in `.gz`.
"""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path

DATE = "2024-03-01T12:00:00Z"


def record_id(url: str, kind: str = "response") -> str:
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, kind + url)}>"


def warc_record(warc_type: str, url: str, block: bytes, content_type: str, extra: dict[str, str] | None = None,
                rid: str | None = None) -> bytes:
    headers = {
        "WARC-Type": warc_type,
        "WARC-Target-URI": url,
        "WARC-Date": DATE,
        "WARC-Record-ID": record_id(url, warc_type) if rid is None else rid,
        **(extra or {}),
        "Content-Type": content_type,
        "Content-Length": str(len(block)),
    }
    head = "WARC/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items() if v != "") + "\r\n"
    return head.encode() + block + b"\r\n\r\n"


def http_response(url: str, body: bytes, *, status: int = 200, content_type: str = "text/html; charset=utf-8",
                  extra: dict[str, str] | None = None, http_headers: dict[str, str] | None = None) -> bytes:
    """A `response` record: HTTP status line and headers, then `body`."""
    fields = {"Content-Type": content_type, "Content-Length": str(len(body)), **(http_headers or {})}
    if content_type is None:
        del fields["Content-Type"]
    http = f"HTTP/1.1 {status} Whatever\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return warc_record("response", url, http.encode() + body, "application/http; msgtype=response", extra)


def http_request(url: str) -> bytes:
    block = f"GET / HTTP/1.1\r\nHost: {url.split('/')[2]}\r\n\r\n".encode()
    return warc_record("request", url, block, "application/http; msgtype=request")


def wet_conversion(url: str, text: str, language: str | None = "eng") -> bytes:
    extra = {"WARC-Identified-Content-Language": language} if language else {}
    return warc_record("conversion", url, text.encode(), "text/plain", extra)


def write_warc(path: Path, records: list[bytes]) -> Path:
    if path.name.endswith(".gz"):
        path.write_bytes(b"".join(gzip.compress(r, mtime=0) for r in records))
    else:
        path.write_bytes(b"".join(records))
    return path


def arc_file(path: Path, pages: list[tuple[str, bytes]]) -> Path:
    """An ARC v1 file (gzipped per record when the name ends in `.gz`): a filedesc record, then
    one record per (url, html) holding an HTTP 200 response."""
    header_body = b"1 0 datamill-tests\nURL IP-address Archive-date Content-type Archive-length\n"
    records = [f"filedesc://{path.name} 0.0.0.0 20240301120000 text/plain {len(header_body)}\n".encode()
               + header_body + b"\n"]
    for url, html in pages:
        http = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                + f"Content-Length: {len(html)}\r\n\r\n".encode() + html)
        records.append(f"{url} 93.184.216.34 20240301120000 text/html {len(http)}\n".encode() + http + b"\n")
    return write_warc(path, records)


def page(title: str, paragraphs: list[str], *, charset: str | None = None) -> str:
    """A page with the usual boilerplate around the main text: nav, a script, a cookie footer."""
    meta = f'<meta charset="{charset}">' if charset else ""
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f"<!DOCTYPE html><html><head>{meta}<title>{title}</title>"
        "<script>var tracking = 'do not extract me';</script><style>p {color: red}</style></head><body>"
        '<nav><ul><li><a href="/">Home</a></li><li><a href="/about">About us</a></li>'
        '<li><a href="/blog">Blog</a></li><li><a href="/contact">Contact</a></li></ul></nav>'
        f"<main><article><h1>{title}</h1>{body}</article></main>"
        '<footer><p>Copyright 2024 Example Corp. <a href="/privacy">Privacy policy</a> | '
        '<a href="/terms">Terms</a></p></footer></body></html>'
    )
