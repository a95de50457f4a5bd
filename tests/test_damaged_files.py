"""Damaged input files: records before the damage are kept, the damage is one quarantine row, the run goes on."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from typer.testing import CliRunner

from datamill.curate.cli import app
from datamill.curate.sources.files import count_lines, open_file
from datamill.curate.sources.jsonl import JsonlSource
from datamill.curate.sources.tables import ParquetSource

LINES = [json.dumps({"text": f"Record {i} of the damaged file: {hashlib.sha256(str(i).encode()).hexdigest()}"}).encode()
         for i in range(4000)]
"""Hashes keep the text from compressing to a few zstd blocks (a cut block yields nothing)."""
DATA = b"\n".join(LINES) + b"\n"


def make_source(source_class, base_dir: Path, **params):
    return source_class(source_class.Params(**params), index=0, base_dir=str(base_dir))


def read_all(source):
    batches = [batch for shard in source.plan() for batch in source.read(shard, 500)]
    return pl.concat([b.records for b in batches]), pl.concat([b.quarantine for b in batches]), batches


def truncated_gzip(path: Path) -> int:
    whole = gzip.compress(DATA)
    path.write_bytes(whole[: len(whole) * 2 // 3])
    return len(whole) * 2 // 3


def corrupt_zstd(path: Path) -> None:
    whole = bytearray(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(DATA))
    middle = len(whole) // 2
    whole[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(whole))


def test_truncated_gzip_keeps_the_lines_before_the_cut_and_quarantines_the_cut_once(tmp_path):
    cut_at = truncated_gzip(tmp_path / "cut.jsonl.gz")

    records, quarantine, _ = read_all(make_source(JsonlSource, tmp_path, path="cut.jsonl.gz"))

    assert 1000 < records.height < len(LINES)
    assert records["text"].to_list() == [json.loads(line)["text"] for line in LINES[: records.height]]
    assert quarantine["reason"].to_list() == ["truncated_file"]
    row = quarantine.row(0, named=True)
    assert row["file"] == "cut.jsonl.gz" and row["line"] == records.height + 1
    assert "cut at byte" in row["detail"] and str(cut_at) in row["detail"]
    assert LINES[records.height].startswith(row["raw"].encode())  # the cut line is kept, not lost


def test_corrupt_zstd_keeps_the_lines_before_the_damage(tmp_path):
    corrupt_zstd(tmp_path / "bad.jsonl.zst")

    records, quarantine, _ = read_all(make_source(JsonlSource, tmp_path, path="bad.jsonl.zst"))

    assert 0 < records.height < len(LINES)
    assert records["text"].to_list() == [json.loads(line)["text"] for line in LINES[: records.height]]
    assert quarantine["reason"].to_list() == ["corrupt_file"]
    assert "cannot decompress" in quarantine["detail"][0]


def test_truncated_zstd_is_reported_as_cut_not_as_a_bad_json_line(tmp_path):
    whole = zstandard.ZstdCompressor().compress(DATA)
    (tmp_path / "cut.jsonl.zst").write_bytes(whole[: len(whole) // 2])

    records, quarantine, _ = read_all(make_source(JsonlSource, tmp_path, path="cut.jsonl.zst"))

    assert 0 < records.height < len(LINES)
    assert quarantine["reason"].to_list() == ["truncated_file"]
    assert "ends inside a zstd frame" in quarantine["detail"][0]


def test_whole_multi_member_and_multi_frame_files_are_not_damaged(tmp_path):
    half = len(DATA) // 2
    cut = DATA.index(b"\n", half) + 1
    (tmp_path / "two.jsonl.gz").write_bytes(gzip.compress(DATA[:cut]) + gzip.compress(DATA[cut:]))
    zstd = zstandard.ZstdCompressor()
    (tmp_path / "two.jsonl.zst").write_bytes(zstd.compress(DATA[:cut]) + zstd.compress(DATA[cut:]))

    for name in ("two.jsonl.gz", "two.jsonl.zst"):
        with open_file(tmp_path / name) as reader:
            assert reader.stream.read() == DATA
            assert reader.damage is None
        assert count_lines(tmp_path / name) == len(LINES)


def test_limit_on_a_damaged_file_counts_the_lines_before_the_damage(tmp_path):
    truncated_gzip(tmp_path / "cut.jsonl.gz")
    (tmp_path / "good.jsonl").write_bytes(DATA[:2000])
    whole, _, _ = read_all(make_source(JsonlSource, tmp_path, path="cut.jsonl.gz"))

    records, quarantine, _ = read_all(make_source(JsonlSource, tmp_path, path=["cut.jsonl.gz", "good.jsonl"],
                                                  limit=whole.height + 5))

    assert records.height + quarantine.height == whole.height + 5
    assert quarantine["reason"].to_list() == ["truncated_file"]


def write_parquet(path: Path, rows: int = 3000, row_group_size: int = 1000) -> bytes:
    table = pa.table({"text": [f"Parquet row {i} holds a sentence about mills." for i in range(rows)]})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path.read_bytes()


def test_truncated_parquet_is_one_quarantine_row_at_planning_and_other_files_are_read(tmp_path):
    whole = write_parquet(tmp_path / "cut.parquet")
    (tmp_path / "cut.parquet").write_bytes(whole[: len(whole) // 2])
    write_parquet(tmp_path / "good.parquet", rows=10)

    records, quarantine, _ = read_all(make_source(ParquetSource, tmp_path, path="*.parquet"))

    assert records.height == 10
    assert quarantine["reason"].to_list() == ["truncated_file"]
    assert quarantine["file"].to_list() == ["cut.parquet"]


def test_corrupt_parquet_row_group_is_quarantined_and_the_other_groups_are_kept(tmp_path):
    path = tmp_path / "bad.parquet"
    data = bytearray(write_parquet(path))
    column = pq.read_metadata(path).row_group(1).column(0)
    start = column.data_page_offset + 20
    data[start:start + 180] = b"\x55" * 180
    path.write_bytes(bytes(data))

    records, quarantine, _ = read_all(make_source(ParquetSource, tmp_path, path="bad.parquet"))

    assert records.height == 2000
    assert records["id"].to_list()[999:1001] == ["parquet:bad.parquet:999", "parquet:bad.parquet:2000"]
    assert quarantine["reason"].to_list() == ["corrupt_file"]
    assert quarantine["line"].to_list() == [1000]
    assert "row group 1 (rows 1000-1999)" in quarantine["detail"][0]


def test_a_binary_parquet_text_column_is_decoded_and_undecodable_rows_quarantined(tmp_path):
    table = pa.table({
        "text": pa.array(["café crème".encode(), b"\xff\xfe not utf-8", b"plain words"], pa.binary()),
        "note": pa.array([b"a", b"\x80", b"c"], pa.large_binary()),
    })
    pq.write_table(table, tmp_path / "binary.parquet")

    records, quarantine, _ = read_all(make_source(ParquetSource, tmp_path, path="binary.parquet"))

    assert records["text"].to_list() == ["café crème", "plain words"]
    assert [json.loads(m)["note"] for m in records["meta"]] == ["a", "c"]
    assert quarantine["reason"].to_list() == ["invalid_utf8"]
    assert quarantine["line"].to_list() == [1]
    assert quarantine["raw_b64"].to_list() == ["//4gbm90IHV0Zi04"]


RECIPE = """
name: damaged
sources:
  - {{type: jsonl, path: good.jsonl, name: good}}
  - {{type: jsonl, path: "{damaged}", name: damaged}}
output: {{dir: "{out}"}}
executor: {{workers: 1}}
"""


@pytest.mark.parametrize("damaged, reason", [
    ("cut.jsonl.gz", "truncated_file"), ("bad.jsonl.zst", "corrupt_file"), ("cut.parquet", "truncated_file"),
])
def test_a_run_with_a_damaged_file_keeps_every_good_record_reports_the_damage_and_exits_0(tmp_path, damaged, reason):
    (tmp_path / "good.jsonl").write_bytes(DATA[: DATA.index(b"\n", 3000) + 1])
    good_lines = count_lines(tmp_path / "good.jsonl")
    if damaged == "cut.jsonl.gz":
        truncated_gzip(tmp_path / damaged)
    elif damaged == "bad.jsonl.zst":
        corrupt_zstd(tmp_path / damaged)
    else:
        whole = write_parquet(tmp_path / damaged)
        (tmp_path / damaged).write_bytes(whole[:-100])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(damaged=damaged, out=tmp_path / "out").replace("type: jsonl, path: \"cut.parquet\"",
                                                             "type: parquet, path: \"cut.parquet\""))

    result = CliRunner().invoke(app, ["run", str(recipe)])
    strict = CliRunner().invoke(app, ["run", str(recipe), "--strict"])

    assert result.exit_code == 0, result.output
    assert f"1 {reason}" in " ".join(result.output.split())
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["quarantine"]["by_reason"][reason] == 1
    corpus = pl.read_parquet(tmp_path / "out" / "shards" / "*.parquet")
    assert corpus.filter(pl.col("source") == "good").height == good_lines
    assert reason in (tmp_path / "out" / "report.md").read_text()
    assert strict.exit_code != 0 and "--strict" in strict.output


def test_a_zstd_bomb_is_read_in_bounded_memory(tmp_path):
    import tracemalloc

    from datamill.curate.sources.files import FileReader

    # 256 MiB of one JSON line compress to a few KiB; reading it must never hold it all at once
    line = b'{"id": "z", "text": "' + b"a" * (256 << 20) + b'"}\n'
    (tmp_path / "bomb.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=19).compress(line))
    del line
    tracemalloc.start()
    try:
        total = 0
        with FileReader(str(tmp_path / "bomb.jsonl.zst")) as reader:
            while chunk := reader.stream.read(1 << 20):
                total += len(chunk)
            damage = reader.damage
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == (256 << 20) + 24 and damage is None
    assert peak < 100 << 20
