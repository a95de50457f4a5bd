"""The `installed_docs` source: stdlib docstrings and package READMEs as records, offline."""

from __future__ import annotations

import inspect
import json
import json.decoder
import sys
from importlib import metadata

import orjson
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import ValidationError

from datamill.curate.engine.records import record_schema
from datamill.curate.sources.installed_docs import InstalledDocs, InstalledDocsParams

BATCH_ROWS = 500


def make_source(**params) -> InstalledDocs:
    return InstalledDocs(InstalledDocsParams(**params), index=0)


def read_all(source: InstalledDocs, shards=None, batch_rows: int = BATCH_ROWS):
    """(records, quarantine, batch heights, lines_read) of all shards, in the given order."""
    shards = source.plan() if shards is None else shards
    batches = [batch for shard in shards for batch in source.read(shard, batch_rows)]
    records = pl.concat([b.records for b in batches], how="vertical")
    quarantine = pl.concat([b.quarantine for b in batches], how="vertical")
    return records, quarantine, [b.records.height for b in batches], sum(b.lines_read for b in batches)


@pytest.fixture(scope="module")
def everything():
    """The default corpus of this machine: the whole stdlib plus the venv's packages."""
    return read_all(make_source())


def row(records: pl.DataFrame, ident: str) -> dict:
    found = records.filter(pl.col("id") == ident)
    assert found.height == 1, f"{ident} not found exactly once"
    return found.row(0, named=True)


def write(folder, relative: str, content: str | bytes) -> None:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)


GOOD_MODULE = '''"""Tide tables for the harbour of a small fishing town."""


class Harbour:
    """A harbour with a name and a list of berths."""

    def berth(self, boat):
        """Assign the boat to the first free berth and return its number."""

        def is_free(number):
            """Tell whether nobody has moored at this berth yet."""
            return True

        return 1


async def high_tide(day):
    """Predict the hour of high tide on the given day."""


def undocumented():
    return None
'''


def test_stdlib_docstrings_are_records_with_path_line_and_qualname_ids(everything):
    records = everything[0]
    module = row(records, "stdlib:json/__init__.py:1:<module>")
    assert module["text"] == inspect.cleandoc(json.__doc__)
    assert module["source"] == "installed_docs"
    meta = {"kind": "module", "path": "json/__init__.py", "qualname": "<module>"}
    assert orjson.loads(module["meta"]) == meta

    line = inspect.getsourcelines(json.decoder.JSONDecoder.decode)[1]
    method = row(records, f"stdlib:json/decoder.py:{line}:JSONDecoder.decode")
    assert method["text"] == inspect.cleandoc(json.decoder.JSONDecoder.decode.__doc__)
    assert orjson.loads(method["meta"])["kind"] == "function"


def test_test_suites_idle_and_installed_packages_are_not_read_as_stdlib(everything):
    paths = everything[0].filter(pl.col("id").str.starts_with("stdlib:"))["id"].str.split(":").list.get(1)
    assert paths.str.contains("asyncio/").any()
    assert not paths.str.contains(r"^(test|tests|idlelib)/|/(test|tests)/|site-packages").any()


def test_records_have_the_record_schema_unique_ids_and_bounded_batches(everything):
    records, quarantine, heights, lines_read = everything
    assert records.schema == pl.Schema(record_schema({}))
    assert records["id"].is_unique().all()
    assert records["text"].str.strip_chars().str.len_chars().min() > 0
    assert max(heights) <= BATCH_ROWS
    assert lines_read == records.height + quarantine.height


def test_installed_package_readmes_are_records_sorted_by_name(everything):
    records = everything[0]
    for name in ("pydantic", "polars"):
        dist = metadata.distribution(name)
        record = row(records, f"pkg:{name}=={dist.version}")
        assert record["text"] == dist.metadata.get_payload().strip()
        assert orjson.loads(record["meta"]) == {
            "kind": "package", "name": dist.metadata["Name"], "version": dist.version,
            "content_type": dist.metadata["Description-Content-Type"],
        }
    package_ids = records.filter(pl.col("id").str.starts_with("pkg:"))["id"].to_list()
    names = [ident.removeprefix("pkg:").split("==")[0] for ident in package_ids]
    assert names == sorted(names)
    assert len(set(package_ids)) == len(package_ids)


def test_real_data_holds_exact_and_near_duplicates(everything):
    records = everything[0]
    assert records["text"].is_duplicated().sum() >= 10
    codecs = records.filter(pl.col("id").str.contains(r"^stdlib:encodings/cp\d+\.py:1:<module>$"))["text"]
    assert codecs.len() >= 10
    assert codecs.n_unique() == codecs.len()  # each names its own code page…
    masked = codecs.str.replace_all(r"(?i)cp\d+", "CP")
    assert masked.n_unique() <= codecs.len() // 3  # …in otherwise identical text


@pytest.mark.parametrize("limit", [1, 37, 600])
def test_limit_gives_exactly_the_first_records(everything, limit):
    records, _, _, _ = read_all(make_source(limit=limit, files_per_shard=7))
    assert_frame_equal(records, everything[0].head(limit))


def test_limit_beyond_the_stdlib_continues_into_packages(tmp_path):
    write(tmp_path, "harbour.py", GOOD_MODULE)
    stdlib_count = read_all(make_source(stdlib_dir=str(tmp_path), include=["stdlib"]))[0].height
    packages = read_all(make_source(include=["packages"]))[0]
    records = read_all(make_source(stdlib_dir=str(tmp_path), limit=stdlib_count + 2))[0]
    assert records.height == stdlib_count + 2
    assert records["id"].tail(2).to_list() == packages["id"].head(2).to_list()


def test_two_plans_and_reads_are_identical():
    first = make_source(limit=600, files_per_shard=10)
    second = make_source(limit=600, files_per_shard=10)
    assert first.plan() == second.plan()
    assert_frame_equal(read_all(first)[0], read_all(second)[0])


def test_shards_read_in_reverse_order_give_the_same_records():
    source = make_source(limit=600, files_per_shard=10)
    shards = source.plan()
    assert len(shards) > 2
    forward = read_all(source, shards)[0]
    backward = read_all(source, shards[::-1])[0]
    assert forward.height == 600
    assert_frame_equal(forward.sort("id"), backward.sort("id"))


def test_unparsable_files_are_quarantined_and_the_rest_still_read(tmp_path):
    write(tmp_path, "port/harbour.py", GOOD_MODULE)
    write(tmp_path, "port/legacy.py", 'def ship():\n    print "all hands on deck"\n')
    write(tmp_path, "port/latin.py", b'"""Caf\xe9 opening hours by the quay."""\n')
    write(tmp_path, "port/nul.py", b'"""Lighthouse keeper\x00 rota."""\n')
    write(tmp_path, "port/notes.txt", "Not Python at all, and never read.")
    records, quarantine, _, lines_read = read_all(make_source(stdlib_dir=str(tmp_path), include=["stdlib"]))

    assert records["id"].to_list() == [
        "stdlib:port/harbour.py:1:<module>",
        "stdlib:port/harbour.py:4:Harbour",
        "stdlib:port/harbour.py:7:Harbour.berth",
        "stdlib:port/harbour.py:10:Harbour.berth.<locals>.is_free",
        "stdlib:port/harbour.py:17:high_tide",
    ]
    assert records["text"][3] == "Tell whether nobody has moored at this berth yet."
    assert sorted(quarantine["reason"].to_list()) == ["unparsable_python"] * 3
    by_file = {detail.split(":")[0]: detail for detail in quarantine["detail"]}
    assert set(by_file) == {"port/latin.py", "port/legacy.py", "port/nul.py"}
    assert "SyntaxError" in by_file["port/legacy.py"]
    legacy = quarantine.filter(pl.col("detail").str.starts_with("port/legacy.py")).row(0, named=True)
    assert legacy["file"] == str(tmp_path / "port/legacy.py")
    assert legacy["line"] == 2
    assert legacy["raw"] == 'def ship():\n    print "all hands on deck"\n'
    latin = quarantine.filter(pl.col("detail").str.starts_with("port/latin.py")).row(0, named=True)
    assert latin["raw"] is None and latin["raw_b64"] is not None
    assert lines_read == 5 + 3


def test_min_chars_and_exclude_decide_what_is_a_record(tmp_path):
    write(tmp_path, "harbour.py", GOOD_MODULE)
    write(tmp_path, "drafts/old_harbour.py", GOOD_MODULE)
    records = read_all(make_source(stdlib_dir=str(tmp_path), include=["stdlib"], min_chars=48,
                                   exclude=["drafts/*"]))[0]
    assert records["text"].to_list() == [
        "Tide tables for the harbour of a small fishing town.",
        "Assign the boat to the first free berth and return its number.",
        "Tell whether nobody has moored at this berth yet.",
    ]


def test_batches_hold_at_most_batch_rows(tmp_path):
    write(tmp_path, "harbour.py", GOOD_MODULE)
    heights = read_all(make_source(stdlib_dir=str(tmp_path), include=["stdlib"]), batch_rows=2)[2]
    assert heights == [2, 2, 1]


def test_declared_columns_leave_meta_and_keep_meta_false_empties_it(tmp_path):
    write(tmp_path, "harbour.py", GOOD_MODULE)
    columns = {"kind": "str", "version": "str"}
    records = read_all(make_source(stdlib_dir=str(tmp_path), include=["stdlib"], columns=columns))[0]
    assert records.columns == ["id", "source", "text", "meta", "kind", "version"]
    assert records["kind"].to_list() == ["module", "class", "function", "function", "function"]
    assert records["version"].is_null().all()  # only packages have versions
    assert orjson.loads(records["meta"][0]) == {"path": "harbour.py", "qualname": "<module>"}

    bare = make_source(stdlib_dir=str(tmp_path), include=["stdlib"], keep_meta=False, name="docs")
    bare = read_all(bare)[0]
    assert bare["meta"].is_null().all()
    assert bare["source"].unique().to_list() == ["docs"]


@pytest.mark.parametrize("params", [
    {"text_field": "body"},
    {"id_field": "name"},
    {"columns": {"version": "int"}},
    {"columns": {"author": "str"}},
    {"include": []},
])
def test_fields_this_source_decides_cannot_be_set(params):
    with pytest.raises(ValidationError):
        InstalledDocsParams(**params)


def test_recipes_find_the_source_by_its_type_name():
    from datamill.curate.engine.registry import source_types

    assert source_types()["installed_docs"] is InstalledDocs
    assert InstalledDocsParams.model_validate({"type": "installed_docs", "limit": 10}).limit == 10


def fake_distribution(site, name: str, version: str, readme: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n{readme}\n")


def test_workers_read_the_planned_distributions_whatever_their_sys_path_holds(tmp_path, monkeypatch):
    planned_site, worker_site = tmp_path / "planned", tmp_path / "worker"
    fake_distribution(planned_site, "alpha-mill", "1.0", "Alpha grinds grain into flour for the valley.")
    fake_distribution(planned_site, "gamma-mill", "2.0", "Gamma saws timber beside the weir.")
    fake_distribution(worker_site, "alpha-mill", "1.0", "A different README that shadows alpha in the worker.")
    fake_distribution(worker_site, "beta-mill", "0.5", "Beta is installed only where the worker runs.")
    stdlib_only = [p for p in sys.path if "site-packages" not in p]
    monkeypatch.setattr("sys.path", [str(planned_site), *stdlib_only])
    source = make_source(include=["packages"])
    shards = source.plan()

    planned_records, *_ = read_all(source, shards)
    monkeypatch.setattr("sys.path", [str(worker_site), str(planned_site), *stdlib_only])
    worker_records, worker_quarantine, *_ = read_all(source, shards)
    for folder in planned_site.glob("gamma*"):
        (folder / "METADATA").unlink()
        folder.rmdir()
    after_removal, quarantine, *_ = read_all(source, shards)

    mills = pl.col("id").str.ends_with("-mill==1.0") | pl.col("id").str.ends_with("-mill==2.0")
    assert planned_records.filter(mills)["id"].to_list() == ["pkg:alpha-mill==1.0", "pkg:gamma-mill==2.0"]
    assert_frame_equal(worker_records, planned_records)
    assert worker_quarantine.height == 0
    assert after_removal.filter(mills)["id"].to_list() == ["pkg:alpha-mill==1.0"]
    assert quarantine["reason"].to_list() == ["missing_distribution"]
    assert "gamma-mill==2.0 was planned from" in quarantine["detail"][0]
