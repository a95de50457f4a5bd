"""The Ray executor writes what the local executor writes, quarantines stage errors, survives killed workers."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import make_documents, recipe_dict, write_jsonl
from datamill.curate.executors.run import RunError, run_recipe
from datamill.curate.engine.pipeline import Pipeline
from datamill.curate.executors.ray import segment_resources
from datamill.curate.engine.recipe import load_recipe, validate_recipe
from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Stage, StageParams


def run_recipe_ray(recipe, **options):
    """The same recipe on the Ray executor."""
    return run_recipe(recipe.model_copy(update={"executor": recipe.executor.model_copy(update={"type": "ray"})}), **options)

ray = pytest.importorskip("ray")


try:  # the S3 server, so that the cluster's workers start with its endpoint and credentials
    from test_object_store import s3_endpoint  # noqa: F401
except (ImportError, pytest.skip.Exception):
    s3_endpoint = None


@pytest.fixture(scope="module")
def worker_scratch(tmp_path_factory) -> Path:
    """The Ray workers' own scratch folder (the driver's is another): what no shared filesystem looks like."""
    return tmp_path_factory.mktemp("worker-scratch")


@pytest.fixture(scope="module")
def ray_cluster(request, worker_scratch):
    """One local 2-CPU Ray cluster for the whole file; its workers can import this test module, and see
    the test S3 server (when moto is installed) and their own DATAMILL_SCRATCH."""
    if s3_endpoint is not None:
        request.getfixturevalue("s3_endpoint")
    tests_dir = str(Path(__file__).parent)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tests_dir, old) if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"DATAMILL_SCRATCH": str(worker_scratch)}})
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = old


@register_stage
class RaisesOnWord(Stage):
    """Test stage: raises on any batch holding a text with 'chestnuts'."""

    type_name = "test_ray_raises_on_word"

    def process(self, batch):
        if batch["text"].str.contains("chestnuts").any():
            raise ValueError("cannot digest chestnuts")
        return batch


class KillParams(StageParams):
    marker: str


@register_stage
class KillsItsWorkerOnce(Stage):
    """Test stage: the first call anywhere SIGKILLs its own process (a marker file says it happened)."""

    type_name = "test_ray_kill_once"
    Params = KillParams

    def setup(self) -> None:  # a stage with a setup() (a model) runs in a Ray actor
        self.pid = os.getpid()

    def process(self, batch):
        marker = Path(self.params.marker)
        if not marker.exists():
            marker.write_text(str(self.pid))
            os.kill(self.pid, signal.SIGKILL)
        return batch


@register_stage
class FailsSetup(Stage):
    """Test stage: cannot load its (missing) model."""

    type_name = "test_ray_fails_setup"

    def setup(self) -> None:
        raise FileNotFoundError("model file weights.bin is missing")

    def process(self, batch):
        return batch


def corpus_files(folder: Path) -> Path:
    """Four jsonl files: distinct documents, exact copies and one-word near copies across files."""
    docs = make_documents(160, sentences_per_doc=6)
    for k in range(4):
        rows = [{"text": d} for d in docs[k * 40:(k + 1) * 40]]
        rows += [{"text": docs[k]}, {"text": docs[k + 10].replace("Note", "Remark", 1)}]
        write_jsonl(folder / f"part{k}.jsonl", rows)
    return folder


def run_both(raw: Path, tmp: Path, stages: list, **output) -> tuple[dict, dict]:
    stats = []
    for name, runner in (("local", run_recipe), ("ray", run_recipe_ray)):
        recipe = validate_recipe(recipe_dict(str(raw / "*.jsonl"), str(tmp / name), stages, **output))
        stats.append(runner(recipe, workers=1 if name == "local" else None))
    return stats[0], stats[1]


def table(folder: Path, pattern: str) -> pl.DataFrame:
    files = sorted(folder.glob(pattern))
    read = pl.read_parquet if pattern.endswith("parquet") else pl.read_ndjson
    return pl.concat([read(f) for f in files], how="diagonal_relaxed").sort("id" if "shards" in pattern else pl.all())


def counts(stats: dict) -> list:
    return [{k: v for k, v in s.items() if k != "seconds"} for s in stats["stages"]]


def test_quickstart_gives_the_same_records_on_local_and_ray(ray_cluster, tmp_path):
    outputs = {}
    for executor in ("local", "ray"):
        recipe = load_recipe("quickstart", {"sources.*.limit": 1500, "output.dir": str(tmp_path / executor),
                                            "executor.type": executor})
        stats = (run_recipe_ray if executor == "ray" else run_recipe)(recipe, workers=1)
        outputs[executor] = pl.read_parquet(sorted((tmp_path / executor / "shards").glob("*.parquet"))).sort("id")
        assert stats["executor"] == executor
    assert outputs["ray"].height > 500
    assert outputs["ray"].equals(outputs["local"])
    assert (tmp_path / "ray" / "report.html").exists() and (tmp_path / "ray" / "stats.json").exists()


def test_dedup_selection_filters_and_stage_errors_match_local_across_shards(ray_cluster, tmp_path):
    raw = corpus_files(tmp_path / "raw")
    target = write_jsonl(tmp_path / "target.jsonl", [{"text": "The farmers moved the cattle before the storm."},
                                                     {"text": "Bees, honey and bread at the village market."}])
    stages = [{"type": "normalize_text"}, {"type": "length_filter", "min_words": 40},
              {"type": "exact_dedup"}, {"type": "minhash_dedup", "threshold": 0.8},
              {"type": "dsir", "target": {"type": "jsonl", "path": str(target)}, "budget": 0.5, "min_words": 5},
              {"type": "test_ray_raises_on_word"}]
    local, ray_stats = run_both(raw, tmp_path, stages, keep_removed=True)
    for where in ("shards/*.parquet", "quarantine/*.jsonl", "removed/*/*.parquet"):
        assert table(tmp_path / "ray", where).equals(table(tmp_path / "local", where)), where
    assert [p.name for p in sorted((tmp_path / "ray" / "shards").iterdir())] == \
        [p.name for p in sorted((tmp_path / "local" / "shards").iterdir())]
    assert counts(ray_stats) == counts(local)
    by_stage = {s["name"]: s for s in ray_stats["stages"]}
    assert by_stage["exact_dedup"]["dropped"] == {"exact_duplicate": 4}
    assert by_stage["minhash_dedup"]["dropped"].get("near_duplicate", 0) >= 4
    assert sum(by_stage["dsir"]["dropped"].values()) > 0
    bad = table(tmp_path / "ray", "quarantine/*.jsonl")
    assert bad.height == by_stage["test_ray_raises_on_word"]["errors"] > 0
    assert set(bad["reason"]) == {"stage_error:test_ray_raises_on_word"}
    assert not table(tmp_path / "ray", "shards/*.parquet")["text"].str.contains("chestnuts").any()


def test_a_killed_worker_is_retried_without_duplicating_output(ray_cluster, tmp_path):
    raw = corpus_files(tmp_path / "raw")
    marker = tmp_path / "killed.pid"
    stages = [{"type": "test_ray_kill_once", "marker": str(marker)}, {"type": "exact_dedup"}]
    recipe = validate_recipe(recipe_dict(str(raw / "*.jsonl"), str(tmp_path / "out"), stages))
    assert segment_resources(Pipeline(recipe).segments[0])[1]  # runs in an actor pool
    stats = run_recipe_ray(recipe, workers=1)  # one actor: killed, restarted, goes on
    assert marker.exists() and int(marker.read_text()) != os.getpid()
    corpus = table(tmp_path / "out", "shards/*.parquet")
    assert corpus.height == stats["output"]["records"] == 164
    assert corpus["id"].n_unique() == corpus.height
    assert stats["stages"][0]["records_in"] == 168


def test_a_shard_that_cannot_run_fails_the_run_with_its_name(ray_cluster, tmp_path):
    raw = corpus_files(tmp_path / "raw")
    recipe = validate_recipe(recipe_dict(str(raw / "*.jsonl"), str(tmp_path / "out"),
                                         [{"type": "test_ray_fails_setup"}]))
    with pytest.raises(RunError, match=r"shard \d \(.*part\d\.jsonl.*\) failed: StageSetupError: stage .* could not set up: FileNotFoundError: model file"):
        run_recipe_ray(recipe, workers=1)


def test_cli_runs_on_ray_and_resumes_a_local_run(ray_cluster, tmp_path):
    from datamill.curate.cli import app

    raw = corpus_files(tmp_path / "raw")
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe_dict(str(raw / "*.jsonl"), str(tmp_path / "out"), [{"type": "exact_dedup"}])))
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(path), "--executor", "local", "-w", "1"])
    assert first.exit_code == 0, first.output
    (tmp_path / "out" / "state" / "done" / "segment-1-shard-00002.json").unlink()  # as if killed
    again = runner.invoke(app, ["run", str(path), "--executor", "ray"])
    assert again.exit_code == 0, again.output
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["executor"] == "ray" and stats["output"]["records"] == 164
    assert table(tmp_path / "out", "shards/*.parquet")["id"].n_unique() == 164
    bad = runner.invoke(app, ["run", str(path), "--executor", "local", "--address", "auto"])
    assert bad.exit_code == 2 and "--address" in bad.output


def test_executor_choice_does_not_change_the_fingerprint():
    local = load_recipe("quickstart")
    ray_recipe = load_recipe("quickstart", {"executor.type": "ray", "executor.address": "auto", "executor.workers": 3})
    assert ray_recipe.executor.type == "ray" and local.fingerprint() == ray_recipe.fingerprint()
    dumped = local.model_dump(mode="json")
    assert "address" in dumped["executor"]  # present, but left out of the hash like `workers`


def run_with_partitions(spec: dict, executor: str, partitions: int) -> tuple[dict, dict[str, bytes]]:
    spec = {**spec, "executor": {**spec["executor"], "type": executor, "reduce_partitions": partitions}}
    stats = run_recipe(validate_recipe(spec), workers=1 if executor == "local" else 2)
    out = Path(spec["output"]["dir"]) / "shards"
    return stats, {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_partitioned_reduces_and_the_classifier_on_ray_write_what_the_local_executor_writes(tmp_path, ray_cluster,
                                                                                           monkeypatch):
    """Issue 18/17 on Ray. One recipe, local (one process reduce) vs Ray (reduces in 3 partitions as Ray tasks):
    exact and near copies across files, a fastText classifier (in Ray actors), and a budget ranking
    on the classifier's score."""
    from classifier_corpus import boilerplate, stdlib_docstrings
    from datamill.filters.classifier_train import FastTextSettings, TrainSettings, train_classifier

    docs, junk = stdlib_docstrings(40), boilerplate(40)
    model = tmp_path / "model"
    train_classifier(pl.DataFrame({"text": docs + junk, "label": ["doc"] * 40 + ["junk"] * 40}),
                     TrainSettings(kind="fasttext", positive_label="doc",
                                   fasttext=FastTextSettings(bucket=20_000, dim=16, epoch=10)), model)
    rows = [t for pair in zip(docs, junk) for t in pair]
    for k in range(4):
        part = rows[k * 20:(k + 1) * 20] + [docs[(k * 7 + 11) % 40], docs[(k * 5 + 22) % 40].replace(" ", "  ", 1)
                                            .replace("the", "a", 1) + " Also."]
        write_jsonl(tmp_path / "raw" / f"part{k}.jsonl", [{"text": t} for t in part])
    stages = [{"type": "exact_dedup"}, {"type": "minhash_dedup", "threshold": 0.7},
              {"type": "classifier", "name": "q", "model": str(model), "min_score": 0.5},
              {"type": "budget", "score": "q_score", "budget": 0.5}]
    spec = {"name": "ray-reduce", "sources": [{"type": "jsonl", "path": str(tmp_path / "raw" / "*.jsonl"), "name": "web"}],
            "stages": stages, "executor": {"batch_rows": 8}}
    local_stats, local = run_with_partitions({**spec, "output": {"dir": str(tmp_path / "local")}}, "local", 1)
    import datamill.curate.executors.run as run_module

    def no_pool(*args, **kwargs):
        raise AssertionError("the Ray executor reduced partitions on the driver's process pool")

    monkeypatch.setattr(run_module, "reduce_partitioned", no_pool)  # the partitions must run as Ray tasks
    ray_stats, on_ray = run_with_partitions({**spec, "output": {"dir": str(tmp_path / "ray")}}, "ray", 3)
    assert on_ray == local
    assert ray_stats["executor"] == "ray"
    dropped = [s["dropped"] for s in ray_stats["stages"]]
    assert dropped == [s["dropped"] for s in local_stats["stages"]]
    assert dropped[0] == {"exact_duplicate": 4} and dropped[1].get("near_duplicate", 0) >= 3
    assert set(dropped[2]) <= {"q_below_min_score"}
    left = 88 - sum(sum(d.values()) for d in dropped[:3])
    assert dropped[3] == {"over_budget": left - int(left * 0.5 + 0.5)}
    kept = pl.read_parquet(sorted((tmp_path / "ray" / "shards").glob("*.parquet")))
    assert kept.height == int(left * 0.5 + 0.5) and kept["q_score"].null_count() == 0 and kept["q_score"].min() >= 0.5
    assert not list((tmp_path / "ray" / "state").rglob("reduce"))


def test_workers_that_share_only_an_s3_run_dir_write_what_a_local_run_writes(ray_cluster, worker_scratch, tmp_path,
                                                                              monkeypatch):
    """Issue 18, Ray without a shared filesystem: the run directory is on S3 (moto on 127.0.0.1), the driver
    and the workers keep their local mirrors in different folders, and the dedup reduce runs as Ray tasks
    in 2 partitions that read the summaries from the store."""
    if s3_endpoint is None:
        pytest.skip("s3fs and moto[server] are not installed (dev extra)")
    import s3fs

    docs = make_documents(60)
    for k in range(3):
        write_jsonl(tmp_path / "raw" / f"part{k}.jsonl",
                    [{"text": t} for t in docs[k * 20:(k + 1) * 20] + [docs[k * 3], docs[k * 5 + 1] + " Again."]])
    spec = {"name": "ray-s3", "sources": [{"type": "jsonl", "path": str(tmp_path / "raw" / "*.jsonl"), "name": "docs"}],
            "stages": [{"type": "exact_dedup"}, {"type": "minhash_dedup", "threshold": 0.7}],
            "executor": {"batch_rows": 8}}
    _, local = run_with_partitions({**spec, "output": {"dir": str(tmp_path / "local")}}, "local", 1)
    fs = s3fs.S3FileSystem()
    fs.mkdir("ray-runs")
    monkeypatch.setenv("DATAMILL_SCRATCH", str(tmp_path / "driver-scratch"))  # the workers keep theirs
    spec = {**spec, "executor": {**spec["executor"], "type": "ray", "reduce_partitions": 2},
            "output": {"dir": "s3://ray-runs/run"}}
    stats = run_recipe(validate_recipe(spec), workers=2)
    fs.invalidate_cache()
    on_s3 = {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in sorted(fs.find("ray-runs/run/shards"))}
    assert on_s3 == local and stats["executor"] == "ray"
    assert any(worker_scratch.rglob("*.parquet"))  # the workers wrote through their own mirror


def test_mix_reduced_by_ray_tasks_equals_the_one_process_reduce(ray_cluster, tmp_path):
    """Issue 18: the `mix` barrier (token shares, epochs, anneal phase, loss weights) in 3 Ray-task partitions."""
    from datamill.curate.executors.ray import reduce_on_ray
    from test_mix_partitions import CASES, mix_corpus, mix_stage, summaries

    stage = mix_stage(CASES["weights-epochs-anneal-loss-weights"])
    files = summaries(stage, mix_corpus(900), tmp_path / "s", shards=3)
    whole, on_ray = stage.reduce(pl.scan_parquet(files)), reduce_on_ray(stage, files, 3)
    assert on_ray.schema == whole.schema and on_ray.equals(whole, null_equal=True)
    assert set(whole["phase"].drop_nulls()) == {0, 1} and (whole["_mix_copies"] == 0).any()


from synth_remote_workers import teacher, test_ray_workers_share_the_generation_cache_and_tallies_through_the_store  # noqa: E402,F401,E501  (last: on this module's warm cluster)
