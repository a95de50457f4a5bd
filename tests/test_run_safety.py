"""One writer per run dir, resume that verifies what it trusts, plain worker errors, bounded YAML."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import polars as pl
import pytest

from conftest import recipe_dict
from datamill.curate.engine.recipe import RecipeError, load_recipe, validate_recipe
from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Stage
from datamill.curate.executors.run import RunError, run_recipe

STAGES = [{"type": "normalize_text"}, {"type": "exact_dedup"}, {"type": "length_filter", "min_words": 3}]


def recipe_for(corpus: Path, out: Path, stages=STAGES):
    return validate_recipe(recipe_dict(str(corpus / "*.jsonl"), str(out), stages))


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}


def test_a_second_run_into_the_same_dir_is_refused_while_the_first_holds_it(corpus_dir, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from datamill.curate.engine.lock import RunLock
        with RunLock({str(out)!r}):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=rf"being written by another run \(pid {holder.pid} on .*\)"):
            run_recipe(recipe_for(corpus_dir, out), workers=1)
        assert not (out / "shards").exists()  # nothing was written by the refused run
    finally:
        holder.kill()
        holder.wait()
    stats = run_recipe(recipe_for(corpus_dir, out), workers=1)  # a killed holder leaves no stale lock
    assert stats["output"]["records"] == 120


def test_fresh_keeps_the_lock_file_it_holds(corpus_dir, tmp_path):
    out = tmp_path / "out"
    run_recipe(recipe_for(corpus_dir, out), workers=1)
    lock_inode = (out / "state" / "run.lock").stat().st_ino
    run_recipe(recipe_for(corpus_dir, out), workers=1, resume=False)
    assert (out / "state" / "run.lock").stat().st_ino == lock_inode


@pytest.mark.parametrize("damage", ["delete", "edit"])
def test_resume_redoes_a_shard_whose_committed_file_was_deleted_or_changed(corpus_dir, tmp_path, damage):
    out = tmp_path / "out"
    first = run_recipe(recipe_for(corpus_dir, out), workers=1)
    before = shard_bytes(out)
    victim = sorted((out / "shards").iterdir())[1]
    if damage == "delete":
        victim.unlink()
    else:
        pl.read_parquet(victim).head(3).write_parquet(victim)
    again = run_recipe(recipe_for(corpus_dir, out), workers=1)
    assert shard_bytes(out) == before
    assert again["output"]["records"] == first["output"]["records"] == 120
    assert again["output"]["records"] == pl.read_parquet(sorted((out / "shards").iterdir())).height


def test_resume_skips_shards_whose_files_verify(corpus_dir, tmp_path):
    out = tmp_path / "out"
    run_recipe(recipe_for(corpus_dir, out), workers=1)
    markers = {p: p.stat().st_mtime_ns for p in (out / "state" / "done").glob("*.json")}
    run_recipe(recipe_for(corpus_dir, out), workers=1)
    assert {p: p.stat().st_mtime_ns for p in markers} == markers


class Panic(BaseException):
    """Like polars' PanicException: a BaseException, not an Exception."""


@register_stage
class PanicsInSetup(Stage):
    """Test stage: its setup raises a BaseException, as a Rust panic inside polars does."""

    type_name = "test_panics_in_setup"

    def setup(self) -> None:
        raise Panic("rust panicked: index out of bounds")


def test_a_panic_outside_a_batch_fails_the_run_with_a_plain_message_naming_the_shard(corpus_dir, tmp_path):
    with pytest.raises(RunError, match=r"shard 0 \(.*part0\.jsonl.*\) failed: StageSetupError: stage "
                                       r"'test_panics_in_setup' could not set up: Panic: rust panicked"):
        run_recipe(recipe_for(corpus_dir, tmp_path / "out", [{"type": "test_panics_in_setup"}]), workers=1)


def test_a_worker_process_error_names_the_shard(corpus_dir, tmp_path):
    stages = [{"type": "perplexity", "model": str(tmp_path / "no-such-model")}]
    with pytest.raises(RunError, match=r"shard \d \(.*part\d\.jsonl.*\) failed: StageSetupError: stage "
                                       r"'perplexity' could not set up: .*no-such-model"):
        run_recipe(recipe_for(corpus_dir, tmp_path / "out", stages), workers=2)


BOMB = "\n".join(["a: &a [" + ", ".join(['"lol"'] * 9) + "]"] +
                 [f"{n}: &{n} [" + ", ".join([f"*{p}"] * 9) + "]" for p, n in zip("abcdefgh", "bcdefghi")] +
                 ["name: bomb"])


def test_a_billion_laughs_recipe_is_refused_before_expanding(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    tracemalloc.start()
    with pytest.raises(RecipeError, match="aliases expand to more than 100,000 values"):
        load_recipe(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 * 2**20


def test_anchors_that_only_share_settings_are_still_fine(tmp_path, corpus_dir):
    path = tmp_path / "shared.yaml"
    path.write_text(textwrap.dedent(f"""
        name: shared
        sources: [{{type: jsonl, path: "{corpus_dir}/*.jsonl"}}]
        stages:
          - &len {{type: length_filter, min_words: 3}}
          - *len
        output: {{dir: {tmp_path / 'out'}}}
    """))
    assert [s["min_words"] for s in load_recipe(path).stages] == [3, 3]
