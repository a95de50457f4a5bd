"""The `warc` source: web-archive files (WARC, WET, ARC) read as documents, one per HTML response.

WARC and WET files (`.warc`, `.warc.gz` with one gzip member per record as Common Crawl writes
them, `.wet.gz`, `.warc.zst`) are parsed with FastWARC (the resiliparse project's reader, chosen
over warcio: 2.9x faster on the same files, see bench/bench_warc.py); ARC files (`.arc`,
`.arc.gz`) with warcio, which converts them on the fly. Paths and globs work as in the other file
sources (local, or fsspec URLs such as `s3://…`); ARC decompression and damage detection come from
the shared file-source base (`datamill.curate.sources.files`).

A `response` record becomes a document when its HTTP status is in `http_status` and its payload
type (Common Crawl's `WARC-Identified-Payload-Type`, else the HTTP `Content-Type`, else sniffed from
the first bytes) is in `mime_types`; a WET `conversion` record always does. `text` is the payload
decoded to a string: valid UTF-8 is read as UTF-8 (a Latin-1 label on UTF-8 bytes is a common
mislabel, and datatrove's WarcReader does the same), otherwise the charset the HTTP header
declares, then the page's `<meta charset>`, then one detected from the bytes (uchardet).

`language` is the crawl's hint: a WET record's `WARC-Identified-Content-Language`, or for a WARC
response the `languages-cld2` of the Common Crawl metadata record written after it (ISO 639-3
codes, comma-separated, e.g. `eng,deu`).

Every other record is *skipped*, not quarantined, and counted in the report by reason:
`record_type:<type>` (request, metadata, warcinfo…), `http_status:<code>`, `mime_type:<type>`,
`empty_body`. Quarantined, with the file and byte offset: `malformed_record` (bad WARC or HTTP
header, no record id; reading resumes at the next record header) and `truncated_file` /
`corrupt_file` (a record or gzip member cut short; everything before it is read).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import polars as pl
from pydantic import Field, model_validator

from datamill.curate.engine.records import QUARANTINE_SCHEMA, quarantine_row, record_schema
from datamill.curate.engine.paths import exists, is_url, join, open_binary
from datamill.curate.engine.registry import register_source
from datamill.curate.engine.source import ShardSpec, SourceBatch
from datamill.curate.sources.files import (
    CORRUPT, TRUNCATED, Damage, FilePart, FileSource, FileSourceParams, open_file,
)

WARC_COLUMNS: dict[str, str] = {
    "url": "str",
    "warc_date": "str",
    "warc_record_id": "str",
    "content_type": "str",
    "http_status": "int",
    "language": "str",
}
"""Typed columns every `warc` record has (null where the file does not say)."""

HTML_TYPES = ["text/html", "application/xhtml+xml"]
DOCUMENT_TYPES = ("response", "conversion")
"""WARC record types that can become documents (ARC records are all responses)."""
FLUSH_TEXT_CHARS = 64 << 20
SNIFF_BYTES = 1024
SCAN_CHUNK = 1 << 20
METADATA_BYTES = 64 << 10
MARKER = b"WARC/1."
GZIP_MAGIC = b"\x1f\x8b\x08"
URLS_CHECKED = 16
"""URL entries of a `paths_file` checked up front (the rest are found missing when read)."""


class WarcParams(FileSourceParams):
    type: Literal["warc"] = "warc"
    path: str | list[str] | None = Field(
        None,
        description="WARC/WET/ARC file path or glob (`**` allowed), or a list of them; relative to "
        "the recipe. .gz and .zst are decompressed; names containing `.arc` are read as ARC.",
    )
    paths_file: str | None = Field(
        None,
        description="Instead of `path`: a file or URL listing one path per line (a crawl's `warc.paths` / "
        "`wet.paths`, optionally .gz), each joined to `paths_prefix`; entries may be URLs themselves.",
    )
    paths_prefix: str = Field(
        "", description="Folder or URL the `paths_file` entries are relative to (where the crawl was "
        "downloaded, or e.g. `s3://commoncrawl/`)."
    )
    http_status: list[int] = Field(
        default_factory=lambda: [200], description="HTTP statuses whose responses become documents."
    )
    mime_types: list[str] = Field(
        default_factory=lambda: list(HTML_TYPES),
        description="Payload types whose responses become documents (WET conversions always do).",
    )

    @model_validator(mode="after")
    def _fixed_fields(self) -> WarcParams:
        if self.text_field != "text" or self.id_field is not None:
            raise ValueError("warc builds its own text and ids (the WARC-Record-ID): leave text_field "
                             "and id_field unset")
        if self.columns:
            raise ValueError(f"warc records always have the columns {', '.join(WARC_COLUMNS)}: leave "
                             "`columns` unset")
        if (self.path is None) == (self.paths_file is None):
            raise ValueError("give either `path` or `paths_file`")
        return self

    def listed_paths(self, base_dir: str) -> list[str]:
        """The paths named by `paths_file` (joined to `paths_prefix`, relative to `base_dir`)."""
        with open_file(join(base_dir, self.paths_file)) as reader:
            lines = reader.stream.read().decode("utf-8").splitlines()
        entries = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if is_url(self.paths_prefix):
            prefix = self.paths_prefix.rstrip("/") + "/"
            return [entry if is_url(entry) else prefix + entry.lstrip("/") for entry in entries]
        prefix = Path(base_dir) / self.paths_prefix
        return [entry if is_url(entry) else str(prefix / entry) for entry in entries]

    def check_paths(self, base_dir: str) -> list[str]:
        if self.paths_file is None:
            return super().check_paths(base_dir)
        if not exists(join(base_dir, self.paths_file)):
            where = "" if is_url(self.paths_file) else f" (looked in {Path(base_dir).resolve()})"
            return [f"paths_file: no file {self.paths_file!r}{where}"]
        listed = self.listed_paths(base_dir)
        # every local entry is checked; of URLs (a crawl lists ~100k objects) the first few
        local = [p for p in listed if not is_url(p)]
        remote = [p for p in listed if is_url(p)][:URLS_CHECKED]
        missing = [p for p in local + remote if not exists(p)]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            return [f"paths_file: {len(missing)} listed file(s) do not exist: {', '.join(missing[:3])}{more}"]
        return []


@dataclass
class Item:
    """One record read from a file: a document, a skip reason, or a quarantine reason."""

    offset: int
    document: dict[str, Any] | None = None
    skipped: str | None = None
    bad: tuple[str, str] | None = None
    raw: bytes | None = None
    language_for: str | None = None
    """A Common Crawl metadata record: the record id whose language it gives in `language`."""
    language: str | None = None


class Malformed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@register_source
class WarcSource(FileSource):
    """WARC, WET and ARC files: one document per HTML response or WET conversion record."""

    type_name = "warc"
    Params = WarcParams
    params: WarcParams

    def plan(self) -> list[ShardSpec]:
        if self.params.paths_file is None:
            return super().plan()
        listed = self.params.listed_paths(self.base_dir)
        if self.params.limit is not None or not all(map(is_url, listed)):
            self.params = self.params.model_copy(update={"path": listed, "paths_file": None})
            return super().plan()
        # a crawl's paths file lists ~100k objects: one shard each, no request per object while
        # planning (one that is gone is quarantined as missing_file when its shard reads it)
        return [ShardSpec(self.index, url, {"path": url, "file": url, "max_records": None})
                for url in sorted(set(listed))]

    def file_parts(self, path: str, file: str, remaining: int | None) -> list[FilePart]:
        """One shard per file. With a `limit`, the file's response/conversion records are counted
        (up to what is still needed) and the shard gets a cap."""
        cap = None
        if remaining is not None:
            cap = 0
            for item in self._items(path, parse=False):
                cap += item.bad is None and (item.skipped is None or not item.skipped.startswith("record_type:"))
                if cap >= remaining:
                    break
            if cap == 0:
                return []
        return [FilePart(file, {"path": str(path), "file": file, "max_records": cap}, cap)]

    def read_part(self, shard: ShardSpec, batch_rows: int) -> Iterator[SourceBatch]:
        file, cap = shard.payload["file"], shard.payload["max_records"]
        batch = WarcBatch(self.name, file, self.params.keep_meta)
        candidates = 0
        for item in self._items(shard.payload["path"], parse=True, file=file):
            is_candidate = item.bad is None and (item.skipped is None or not item.skipped.startswith("record_type:"))
            if cap is not None and is_candidate and candidates >= cap:
                break
            candidates += is_candidate
            batch.add(item)
            if batch.records >= batch_rows or batch.rejected >= batch_rows or batch.chars > FLUSH_TEXT_CHARS:
                yield batch.flush()
        if batch.lines:
            yield batch.flush()

    # --- records -------------------------------------------------------------------------------
    def _items(self, path: str, parse: bool, file: str = "") -> Iterator[Item]:
        if ".arc" in Path(path).name.lower():
            with open_file(path) as reader:
                yield from self._arc_items(reader.stream, parse, file)
                if reader.damage is not None:
                    yield Item(reader.damage.offset or 0, bad=(reader.damage.reason, reader.damage.detail))
        else:
            yield from _with_metadata_languages(self._warc_items(path, parse))

    def _warc_items(self, path: str, parse: bool) -> Iterator[Item]:
        """FastWARC over the file (it decompresses gzip and zstd itself; offsets are compressed
        bytes). After a malformed WARC header, reading starts again at the next record (gzip
        member or `WARC/1.` line) past it; at the end the file's tail is checked for a cut."""
        from fastwarc.warc import ArchiveIterator

        codec = _codec(path)
        start, last, cut = 0, None, False
        broken: Item | None = None
        """A record without type or id: a broken header mid-file, or one cut off by the file's end."""
        while start is not None:
            with open_binary(path) as raw:
                raw.seek(start)
                try:
                    for record in ArchiveIterator(raw, parse_http=False):
                        last = record.stream_pos
                        if broken is not None:
                            yield broken
                            broken = None
                        if str(record.record_type) == "unknown" and not record.headers.get("WARC-Record-ID"):
                            broken = Item(last, bad=("malformed_record", f"record at byte {last} has no "
                                                     "WARC-Type and no WARC-Record-ID (a broken header)"))
                            continue
                        item = self._warc_item(record, last, parse)
                        cut = item.bad is not None and item.bad[0] == TRUNCATED
                        yield item
                    start = None
                except OSError as error:
                    failed = last if last is not None and last >= start else start
                    yield Item(failed, bad=("malformed_record",
                                            f"invalid WARC record at or after byte {failed}: {error}"))
                    start = _next_record(path, failed + 1, codec)
        damage = None if cut else _tail_damage(path, codec, last or 0)
        if damage is not None:
            yield Item(damage.offset or 0, bad=(damage.reason, damage.detail))
        elif broken is not None:
            yield broken

    def _warc_item(self, record, offset: int, parse: bool) -> Item:
        kind = str(record.record_type)
        if kind == "metadata" and parse:
            return Item(offset, skipped="record_type:metadata", language_for=record.headers.get("WARC-Concurrent-To"),
                        language=_cld2_languages(record.reader.read(METADATA_BYTES)))
        if kind not in DOCUMENT_TYPES:
            return Item(offset, skipped=f"record_type:{kind}")
        if not parse:
            return Item(offset)
        headers = record.headers
        declared = headers.get("Content-Length")
        block = record.reader.read()
        if declared is None or not declared.strip().isdigit() or len(block) < int(declared):
            return Item(offset, bad=(TRUNCATED, f"record at byte {offset} is cut short: {len(block)} of "
                                     f"{declared or 'unknown'} bytes"), raw=block[:SNIFF_BYTES])
        rid = headers.get("WARC-Record-ID")
        url = headers.get("WARC-Target-URI")
        if not rid:
            return Item(offset, bad=("malformed_record", f"record at byte {offset} has no WARC-Record-ID"),
                        raw=block[:SNIFF_BYTES])
        meta = {"warc_type": kind, "offset": offset}
        if kind == "conversion":
            content_type, status, body = "text/plain", None, block
            meta["refers_to"] = headers.get("WARC-Refers-To")
        else:
            try:
                status, http_type, declared_charset, body = _parse_http(block)
            except Malformed as bad:
                return Item(offset, bad=(bad.reason, f"record at byte {offset} ({url}): {bad.detail}"),
                            raw=block[:SNIFF_BYTES])
            if status not in self.params.http_status:
                return Item(offset, skipped=f"http_status:{status}")
            content_type = _mime(headers.get("WARC-Identified-Payload-Type")) or http_type or _sniff(body)
            if content_type not in self.params.mime_types:
                return Item(offset, skipped=f"mime_type:{content_type}")
        if not body.strip():
            return Item(offset, skipped="empty_body")
        text = decode(body, declared_charset if kind == "response" else None)
        return Item(offset, document={
            "id": rid, "text": text, "url": url, "warc_date": headers.get("WARC-Date"), "warc_record_id": rid,
            "content_type": content_type, "http_status": status,
            "language": headers.get("WARC-Identified-Content-Language"), "meta": meta,
        })

    def _arc_items(self, stream, parse: bool, file: str) -> Iterator[Item]:
        from warcio.archiveiterator import ArchiveIterator
        from warcio.exceptions import ArchiveLoadFailed

        offset = 0
        try:
            iterator = ArchiveIterator(stream, arc2warc=True)
            for record in iterator:
                body = record.content_stream().read() if parse and record.rec_type == "response" else b""
                offset = iterator.get_record_offset()  # reads to the end of the record
                if record.rec_type != "response":
                    yield Item(offset, skipped=f"record_type:{record.rec_type}")
                elif not parse:
                    yield Item(offset)
                else:
                    yield self._arc_item(record, body, offset, file)
        except (ArchiveLoadFailed, ValueError, OSError) as error:
            yield Item(offset, bad=("malformed_record", f"invalid ARC record after byte {offset}: {error}"))

    def _arc_item(self, record, body: bytes, offset: int, file: str) -> Item:
        headers = record.rec_headers
        url = headers.get_header("WARC-Target-URI")
        http = record.http_headers
        status = int(http.get_statuscode()) if http is not None else None
        if status not in self.params.http_status:
            return Item(offset, skipped=f"http_status:{status}")
        http_type, charset = _content_type(http.get_header("Content-Type") if http else None)
        content_type = http_type or _mime(headers.get_header("Content-Type")) or _sniff(body)
        if content_type not in self.params.mime_types:
            return Item(offset, skipped=f"mime_type:{content_type}")
        if not body.strip():
            return Item(offset, skipped="empty_body")
        return Item(offset, document={
            "id": f"{self.name}:{file}:{offset}", "text": decode(body, charset), "url": url,
            "warc_date": headers.get_header("WARC-Date"), "warc_record_id": None,
            "content_type": content_type, "http_status": status, "language": None,
            "meta": {"warc_type": "arc", "offset": offset},
        })


def _with_metadata_languages(items: Iterator[Item]) -> Iterator[Item]:
    """Common Crawl writes each response's detected languages (`languages-cld2`) in the metadata
    record that follows it: a response document is held back one record to take them."""
    held: Item | None = None
    for item in items:
        if held is not None:
            if item.language and item.language_for == held.document["id"]:
                held.document["language"] = item.language
            yield held
            held = None
        if item.document is not None and item.document["language"] is None and item.document["http_status"]:
            held = item
        else:
            yield item
    if held is not None:
        yield held


def _cld2_languages(block: bytes) -> str | None:
    """`eng,deu` from a metadata block's `languages-cld2: {"languages": [{"code-iso-639-3": …}]}`."""
    for line in block.split(b"\n"):
        if line.startswith(b"languages-cld2:"):
            try:
                found = orjson.loads(line.split(b":", 1)[1])
                codes = [lang.get("code-iso-639-3") or lang.get("code") for lang in found.get("languages", [])]
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                return None
            return ",".join(c for c in codes if isinstance(c, str)) or None
    return None


def _parse_http(block: bytes) -> tuple[int, str | None, str | None, bytes]:
    """Status, payload type, declared charset and body of an HTTP response block (chunked and
    gzip/deflate/br payloads decoded)."""
    from fastwarc.warc import WarcRecord

    head_end, gap = block.find(b"\r\n\r\n"), 4
    crlf = block.find(b"\r\n")
    if head_end < 0 or (0 <= block.find(b"\n\n") < head_end) or crlf < 0:  # old crawls: LF-only headers
        head_end, gap = block.find(b"\n\n"), 2
    if not block.startswith(b"HTTP/") or head_end < 0:
        raise Malformed("malformed_record", "the HTTP response has no status line or no end of headers")
    lines = [line.rstrip(b"\r") for line in block[:head_end].split(b"\n")]
    status_line = lines[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise Malformed("malformed_record", f"bad HTTP status line {block[:60]!r}")
    status = int(status_line[1])
    content_type, charset = None, None
    transfer = ""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-type":
            content_type, charset = _content_type(value.decode("latin-1"))
        elif name in (b"transfer-encoding", b"content-encoding"):
            transfer += value.decode("latin-1").strip().lower()
    body = block[head_end + gap:]
    if transfer and transfer != "identity":
        record = WarcRecord.from_bytes(b"WARC/1.0\r\nWARC-Type: response\r\nContent-Type: application/http\r\n"
                                       + f"Content-Length: {len(block)}\r\n\r\n".encode() + block)
        try:
            record.parse_http(auto_decode="all")
            body = record.reader.read()
        except (OSError, ValueError) as error:
            raise Malformed("malformed_record", f"cannot decode the {transfer} payload: {error}") from None
    return status, content_type, charset, body


def _content_type(value: str | None) -> tuple[str | None, str | None]:
    if not value:
        return None, None
    parts = [p.strip() for p in value.split(";")]
    charset = next((p.split("=", 1)[1].strip(" \"'") for p in parts[1:] if p.lower().startswith("charset=")), None)
    return _mime(parts[0]), charset or None


def _mime(value: str | None) -> str | None:
    return value.split(";")[0].strip().lower() or None if value else None


def _sniff(body: bytes) -> str:
    head = body[:SNIFF_BYTES].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head or b"<body" in head:
        return "text/html"
    return "unknown"


def decode(body: bytes, declared: str | None) -> str:
    """Payload bytes as text: UTF-8 when valid, else the declared charset, the page's meta charset
    or a detected one; bytes that still do not fit become U+FFFD."""
    try:
        return body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        pass
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    candidates = [declared] if declared else []
    candidates.append(detect_encoding(body, from_html_meta=True))
    for encoding in candidates:
        try:
            return body.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    return bytes_to_str(body, candidates[-1], errors="replace")


def _codec(path: str) -> str | None:
    return {".gz": "gz", ".zst": "zst", ".zstd": "zst"}.get(Path(path).suffix.lower())


def _next_record(path: str, after: int, codec: str | None) -> int | None:
    """Byte offset of the first record start (gzip member or `WARC/1.` line) at or after `after`;
    None when there is none (or for zstd files, which cannot be re-entered mid-stream)."""
    if codec == "zst":
        return None
    marker = GZIP_MAGIC if codec == "gz" else MARKER
    with open_binary(path) as raw:
        raw.seek(after)
        position, carry = after, b""
        while chunk := raw.read(SCAN_CHUNK):
            data = carry + chunk
            found = data.find(marker)
            if found >= 0:
                return position - len(carry) + found
            carry = data[-(len(marker) - 1):]
            position += len(chunk)
    return None


def _tail_damage(path: str, codec: str | None, last: int) -> Damage | None:
    """Whether the file ends cleanly after the record starting at `last`: for gzip, every member
    from there on must be complete; for zstd the whole file is checked; for plain files the last
    record must hold its declared Content-Length."""
    if codec == "zst":
        with open_file(path) as reader:
            while reader.stream.read(SCAN_CHUNK):
                pass
            return reader.damage
    with open_binary(path) as raw:
        raw.seek(last)
        tail = raw.read()
    if codec == "gz":
        while tail.strip(b"\0"):
            decoder = zlib.decompressobj(wbits=31)
            try:
                decoder.decompress(tail)
            except zlib.error as error:
                return Damage(CORRUPT, f"cannot decompress the bytes after byte {last}: {error}", last)
            if not decoder.eof:
                return Damage(TRUNCATED, f"the file ends inside a gzip member (after byte {last})", last)
            last += len(tail) - len(decoder.unused_data)
            tail = decoder.unused_data
        return None
    head_end = tail.find(b"\r\n\r\n")
    if not tail.strip():
        return None
    if head_end < 0:
        return Damage(TRUNCATED, f"the file ends inside a record header (after byte {last})", last)
    length = next((int(v) for k, _, v in (line.partition(b":") for line in tail[:head_end].split(b"\r\n"))
                   if k.strip().lower() == b"content-length" and v.strip().isdigit()), None)
    if length is not None and len(tail) < head_end + 4 + length:
        return Damage(TRUNCATED, f"the file ends inside the record at byte {last}", last)
    return None


class WarcBatch:
    """Accumulates documents, skip counts and quarantine rows until flushed into a SourceBatch."""

    def __init__(self, source: str, file: str, keep_meta: bool):
        self.source, self.file, self.keep_meta = source, file, keep_meta
        self.schema = record_schema(WARC_COLUMNS)
        self._reset()

    def _reset(self) -> None:
        self.rows: list[dict] = []
        self.quarantine: list[dict] = []
        self.skipped: dict[str, int] = {}
        self.lines = 0
        self.chars = 0

    @property
    def records(self) -> int:
        return len(self.rows)

    @property
    def rejected(self) -> int:
        return len(self.quarantine)

    def add(self, item: Item) -> None:
        self.lines += 1
        if item.document is not None:
            doc = dict(item.document, source=self.source)
            doc["meta"] = orjson.dumps({"file": self.file, **doc["meta"]}).decode() if self.keep_meta else None
            self.rows.append(doc)
            self.chars += len(doc["text"])
        elif item.bad is not None:
            reason, detail = item.bad
            self.quarantine.append(quarantine_row(self.source, self.file, item.offset, reason,
                                                  f"{self.file}: {detail}", item.raw))
        elif item.skipped is not None:
            self.skipped[item.skipped] = self.skipped.get(item.skipped, 0) + 1

    def flush(self) -> SourceBatch:
        batch = SourceBatch(
            records=pl.DataFrame(self.rows, schema=self.schema),
            quarantine=pl.DataFrame(self.quarantine, schema=QUARANTINE_SCHEMA),
            lines_read=self.lines,
            skipped=self.skipped,
        )
        self._reset()
        return batch

