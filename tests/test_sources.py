"""File and dataset sources: jsonl (plain, gzip, zstd), parquet and Hugging Face datasets."""

from __future__ import annotations

import base64
import gzip
import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from datamill.curate.engine.records import QUARANTINE_SCHEMA, record_schema
from datamill.curate.sources.jsonl import JsonlSource
from datamill.curate.sources.tables import HfSource, ParquetSource
from conftest import PEAK_RSS_MB

SENTENCES = [
    "The river flows past the old mill.",
    "Millers ground grain for the whole valley.",
    "In spring the water rose above the wheel.",
    "Children watched the stones turn slowly.",
    "Bread from that flour fed three villages.",
    "The mill closed when the railway arrived.",
]


def make_source(source_class, base_dir: Path, **params):
    return source_class(source_class.Params(**params), index=0, base_dir=str(base_dir))


def read_all(source, batch_rows: int = 1000):
    """All batches of all shards: (records, quarantine, lines read, batches)."""
    batches = [batch for shard in source.plan() for batch in source.read(shard, batch_rows)]
    records = pl.concat([b.records for b in batches]) if batches else pl.DataFrame()
    quarantine = pl.concat([b.quarantine for b in batches]) if batches else pl.DataFrame()
    return records, quarantine, sum(b.lines_read for b in batches), batches


def write_lines(path: Path, rows: list[dict | bytes], *, trailing_newline: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [row if isinstance(row, bytes) else json.dumps(row).encode() for row in rows]
    data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


# --- jsonl -------------------------------------------------------------------------------------


def test_every_malformed_line_is_quarantined_with_reason_line_and_detail(tmp_path):
    latin1_line = '{"text": "café au lait"}'.encode("latin-1")
    write_lines(tmp_path / "data" / "mixed.jsonl", [
        {"text": SENTENCES[0], "lang": "en"},
        b'{"text": "The mill wheel',
        b"   ",
        latin1_line,
        {"title": "A record without its body"},
        {"text": 42},
        {"text": "  \t "},
        b'["an array", "is not a record"]',
        {"text": SENTENCES[1]},
    ])
    source = make_source(JsonlSource, tmp_path, path="data/mixed.jsonl")

    records, quarantine, lines_read, _ = read_all(source)

    assert records.schema == pl.Schema(record_schema({}))
    assert records["id"].to_list() == ["jsonl:data/mixed.jsonl:1", "jsonl:data/mixed.jsonl:9"]
    assert records["text"].to_list() == SENTENCES[:2]
    assert records["meta"].to_list() == ['{"lang":"en"}', None]
    assert quarantine.schema == pl.Schema(QUARANTINE_SCHEMA)
    assert quarantine.select("line", "reason").rows() == [
        (2, "bad_json"),
        (4, "invalid_utf8"),
        (5, "missing_field:text"),
        (6, "non_string_field:text"),
        (7, "empty_text"),
        (8, "not_an_object"),
    ]
    details = dict(zip(quarantine["line"], quarantine["detail"]))
    assert details[6] == "data/mixed.jsonl line 6: field 'text' is int, expected string"
    assert details[5] == "data/mixed.jsonl line 5: no field 'text'"
    assert details[8] == "data/mixed.jsonl line 8: JSON array, expected object"
    assert details[4].startswith("data/mixed.jsonl line 4: invalid UTF-8 at byte 13")
    assert details[2].startswith("data/mixed.jsonl line 2: ")
    assert set(quarantine["file"]) == {"data/mixed.jsonl"}
    undecodable = quarantine.filter(pl.col("line") == 4).row(0, named=True)
    assert undecodable["raw"] is None and base64.b64decode(undecodable["raw_b64"]) == latin1_line
    assert quarantine.filter(pl.col("line") == 6)["raw"].item() == '{"text": 42}'
    assert lines_read == 8, "the blank line is not counted"


def test_gzip_zstd_and_plain_files_matched_by_glob_are_read_in_sorted_order(tmp_path):
    write_lines(tmp_path / "corpus" / "b.jsonl.zst", [{"text": s} for s in SENTENCES[2:4]])
    write_lines(tmp_path / "corpus" / "a.jsonl.gz", [{"text": s} for s in SENTENCES[0:2]])
    write_lines(tmp_path / "corpus" / "c.ndjson", [{"text": s} for s in SENTENCES[4:6]])
    source = make_source(JsonlSource, tmp_path, path="corpus/*", name="web")

    shards = source.plan()
    records, quarantine, lines_read, _ = read_all(source)

    assert [shard.description for shard in shards] == ["corpus/a.jsonl.gz", "corpus/b.jsonl.zst", "corpus/c.ndjson"]
    assert records["text"].to_list() == SENTENCES
    assert records["id"].to_list()[:3] == [
        "web:corpus/a.jsonl.gz:1", "web:corpus/a.jsonl.gz:2", "web:corpus/b.jsonl.zst:1",
    ]
    assert set(records["source"]) == {"web"}
    assert quarantine.is_empty() and lines_read == 6


def test_a_list_of_patterns_is_merged_without_duplicates(tmp_path):
    write_lines(tmp_path / "one.jsonl", [{"text": SENTENCES[0]}])
    write_lines(tmp_path / "two.jsonl", [{"text": SENTENCES[1]}])
    source = make_source(JsonlSource, tmp_path, path=["two.jsonl", "*.jsonl"])

    assert [shard.description for shard in source.plan()] == ["one.jsonl", "two.jsonl"]


def test_a_path_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing/\\*.jsonl"):
        make_source(JsonlSource, tmp_path, path="missing/*.jsonl").plan()


def test_limit_counts_lines_across_files_in_order(tmp_path):
    sentences = [f"{s} (copy {i})" for i in range(2) for s in SENTENCES]
    write_lines(tmp_path / "a.jsonl", [{"text": s} for s in sentences[0:4]], trailing_newline=False)
    write_lines(tmp_path / "b.jsonl.gz", [{"text": s} for s in sentences[4:8]])
    write_lines(tmp_path / "c.jsonl", [{"text": s} for s in sentences[8:12]])
    source = make_source(JsonlSource, tmp_path, path="*.jsonl*", limit=6)

    shards = source.plan()
    records, _, lines_read, _ = read_all(source)

    assert [shard.description for shard in shards] == ["a.jsonl", "b.jsonl.gz"]
    assert records["text"].to_list() == sentences[:6]
    assert lines_read == 6
    # Each shard is independent: reading only the second one yields its capped part.
    assert [len(b.records) for b in source.read(shards[1], 100)] == [2]


def test_id_field_typed_columns_and_meta(tmp_path):
    write_lines(tmp_path / "books.jsonl", [
        {"doc_id": "b-1", "text": SENTENCES[0], "year": 1999, "score": 4, "open": True, "url": "https://a.example"},
        {"doc_id": 2, "text": SENTENCES[1], "year": "2001", "score": 3.5, "open": "false"},
        {"doc_id": "b-3", "text": SENTENCES[2], "year": 2002.0},
        {"doc_id": "b-4", "text": SENTENCES[3], "year": "around 1900"},
        {"text": SENTENCES[4], "year": 1950},
    ])
    columns = {"year": "int", "score": "float", "open": "bool"}
    source = make_source(JsonlSource, tmp_path, path="books.jsonl", id_field="doc_id", columns=columns)

    records, quarantine, lines_read, _ = read_all(source)

    assert records.schema == pl.Schema(record_schema(columns))
    assert records.rows() == [
        ("b-1", "jsonl", SENTENCES[0], '{"url":"https://a.example"}', 1999, 4.0, True),
        ("2", "jsonl", SENTENCES[1], None, 2001, 3.5, False),
        ("b-3", "jsonl", SENTENCES[2], None, 2002, None, None),
    ]
    assert quarantine.select("line", "reason").rows() == [(4, "bad_field:year"), (5, "missing_field:doc_id")]
    assert quarantine["detail"][0] == (
        "books.jsonl line 4: field 'year' is string \"around 1900\", cannot be read as int"
    )
    assert lines_read == 5

    without_meta = make_source(JsonlSource, tmp_path, path="books.jsonl", keep_meta=False, limit=1)
    assert read_all(without_meta)[0]["meta"].to_list() == [None]


def test_batches_hold_at_most_batch_rows_and_keep_the_schema_when_empty(tmp_path):
    write_lines(tmp_path / "many.jsonl", [{"text": f"Line {i}: {SENTENCES[i % 6]}"} for i in range(25)])
    write_lines(tmp_path / "broken.jsonl", [{"body": "no text here"}, b"{not json"])
    many = make_source(JsonlSource, tmp_path, path="many.jsonl")
    broken = make_source(JsonlSource, tmp_path, path="broken.jsonl", columns={"year": "int"})

    _, _, _, batches = read_all(many, batch_rows=10)
    _, _, _, broken_batches = read_all(broken, batch_rows=10)

    assert [(len(b.records), b.lines_read) for b in batches] == [(10, 10), (10, 10), (5, 5)]
    assert len(broken_batches) == 1
    assert broken_batches[0].records.is_empty()
    assert broken_batches[0].records.schema == pl.Schema(record_schema({"year": "int"}))
    assert broken_batches[0].lines_read == 2


def test_a_50_megabyte_line_is_read_with_bounded_memory(tmp_path):
    paragraph = " ".join(SENTENCES) + "\n"
    huge_text = paragraph * (50_000_000 // len(paragraph) + 1)
    with open(tmp_path / "huge.jsonl", "wb") as out:
        out.write(json.dumps({"text": huge_text, "kind": "book"}).encode())
        out.write(b"\n" + json.dumps({"text": SENTENCES[0]}).encode() + b"\n")
    expected_length = len(huge_text)
    del huge_text
    script = textwrap.dedent(f"""
        from datamill.curate.sources.jsonl import JsonlSource
        source = JsonlSource(JsonlSource.Params(path="huge.jsonl"), index=0, base_dir={str(tmp_path)!r})
        lengths = [length for shard in source.plan() for batch in source.read(shard, 1000)
                   for length in batch.records["text"].str.len_chars().to_list()]
        print(lengths, {PEAK_RSS_MB})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)

    lengths, peak_mb = done.stdout.rsplit(" ", 1)
    assert lengths == str([expected_length, len(SENTENCES[0])])
    assert int(peak_mb) < 600, f"peak RSS {peak_mb} MB"


# --- parquet -----------------------------------------------------------------------------------


def test_parquet_rows_are_checked_and_kept_with_row_ids(tmp_path):
    (tmp_path / "data").mkdir()
    pq.write_table(
        pa.table({"text": [SENTENCES[0], None, " ", SENTENCES[1]], "year": [1901, 1902, 1903, 1904]}),
        tmp_path / "data" / "a.parquet",
    )
    pq.write_table(pa.table({"text": [7, 8], "year": [2000, 2001]}), tmp_path / "data" / "b.parquet")
    source = make_source(ParquetSource, tmp_path, path="data/*.parquet", columns={"year": "int"}, keep_meta=False)

    records, quarantine, lines_read, _ = read_all(source)

    assert records.schema == pl.Schema(record_schema({"year": "int"}))
    assert records.rows() == [
        ("parquet:data/a.parquet:0", "parquet", SENTENCES[0], None, 1901),
        ("parquet:data/a.parquet:3", "parquet", SENTENCES[1], None, 1904),
    ]
    assert quarantine.select("file", "line", "reason").rows() == [
        ("data/a.parquet", 1, "missing_field:text"),
        ("data/a.parquet", 2, "empty_text"),
        ("data/b.parquet", 0, "non_string_field:text"),
        ("data/b.parquet", 1, "non_string_field:text"),
    ]
    assert "expected string" in quarantine["detail"][2]
    assert lines_read == 6


def test_parquet_row_groups_become_shards_and_limit_uses_footer_counts(tmp_path):
    texts = [f"{SENTENCES[i % 6]} (row {i})" for i in range(10)]
    pq.write_table(pa.table({"text": texts, "page": list(range(10))}), tmp_path / "big.parquet", row_group_size=3)
    pq.write_table(pa.table({"text": ["Another file entirely."]}), tmp_path / "more.parquet")

    source = make_source(ParquetSource, tmp_path, path="*.parquet", shard_rows=5)
    shards = source.plan()
    records, _, _, _ = read_all(source, batch_rows=4)

    assert [shard.description for shard in shards] == [
        "big.parquet row groups 0-1", "big.parquet row groups 2-3", "more.parquet",
    ]
    assert records["text"].to_list() == texts + ["Another file entirely."]
    assert records["id"][7] == "parquet:big.parquet:7"
    assert records["meta"][0] == '{"page":0}'

    limited = make_source(ParquetSource, tmp_path, path="*.parquet", shard_rows=5, limit=7)
    limited_shards = limited.plan()
    assert [s.payload["max_rows"] for s in limited_shards] == [None, 1]
    assert read_all(limited, batch_rows=4)[0]["text"].to_list() == texts[:7]


# --- Hugging Face datasets ----------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network at all: offline flags set and every socket connection refused."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_hf_dataset_saved_to_disk_is_read_in_row_range_shards(tmp_path, offline):
    import datasets

    datasets.Dataset.from_dict(
        {"text": SENTENCES[:5], "chapter": [1, 1, 2, 2, 3]}
    ).save_to_disk(str(tmp_path / "mill_disk"))
    source = make_source(HfSource, tmp_path, path="mill_disk", shard_rows=2, columns={"chapter": "int"})

    shards = source.plan()
    records, quarantine, lines_read, _ = read_all(source)

    assert [shard.description for shard in shards] == [
        "mill_disk:train[0:2]", "mill_disk:train[2:4]", "mill_disk:train[4:5]",
    ]
    assert records["text"].to_list() == SENTENCES[:5]
    assert records["id"].to_list() == [f"hf:mill_disk:train:{row}" for row in range(5)]
    assert records["chapter"].to_list() == [1, 1, 2, 2, 3]
    assert quarantine.is_empty() and lines_read == 5

    limited = make_source(HfSource, tmp_path, path="mill_disk", shard_rows=2, limit=3)
    assert read_all(limited)[0]["text"].to_list() == SENTENCES[:3]


def test_hf_dataset_dict_on_disk_reads_the_chosen_split(tmp_path, offline):
    import datasets

    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": SENTENCES[:2]}),
        "validation": datasets.Dataset.from_dict({"text": [SENTENCES[5], ""]}),
    }).save_to_disk(str(tmp_path / "splits"))
    source = make_source(HfSource, tmp_path, path="splits", split="validation")

    records, quarantine, _, _ = read_all(source)

    assert records["id"].to_list() == ["hf:splits:validation:0"]
    assert quarantine.select("line", "reason").rows() == [(1, "empty_text")]


def test_hf_streaming_from_a_local_folder_gives_one_shard_per_file(tmp_path, offline):
    write_lines(tmp_path / "stream" / "part-0.jsonl", [{"text": s, "n": i} for i, s in enumerate(SENTENCES[:3])])
    write_lines(tmp_path / "stream" / "part-1.jsonl", [{"text": s, "n": i} for i, s in enumerate(SENTENCES[3:])])
    source = make_source(HfSource, tmp_path, path="stream")

    shards = source.plan()
    records, _, lines_read, _ = read_all(source, batch_rows=2)

    assert [shard.description for shard in shards] == ["stream:train#0", "stream:train#1"]
    assert sorted(records["text"].to_list()) == sorted(SENTENCES)
    assert "hf:stream:train#1:0" in records["id"].to_list()
    assert records["id"].n_unique() == 6 and lines_read == 6
    assert set(records["meta"]) == {'{"n":0}', '{"n":1}', '{"n":2}'}

    limited = make_source(HfSource, tmp_path, path="stream", limit=4)
    limited_shards = limited.plan()
    limited_records = read_all(limited, batch_rows=3)[0]
    assert len(limited_shards) == 1
    assert limited_records["id"].to_list() == [f"hf:stream:train:{row}" for row in range(4)]


def test_hf_builder_name_with_data_files_relative_to_the_recipe(tmp_path, offline):
    pq.write_table(pa.table({"body": SENTENCES[:2]}), tmp_path / "notes.parquet")
    source = make_source(HfSource, tmp_path, path="parquet", data_files="notes.parquet", text_field="body")

    records, _, _, _ = read_all(source)

    assert records["text"].to_list() == SENTENCES[:2]
