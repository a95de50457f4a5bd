"""Recipes are validated completely before work starts, with messages naming key, value and rule."""

from __future__ import annotations

import pytest

from datamill.curate.engine.recipe import RecipeError, load_recipe, validate_recipe


def base(**extra):
    raw = {"name": "r", "sources": [{"type": "jsonl", "path": "x.jsonl"}], "output": {"dir": "out/r"}}
    raw.update(extra)
    return raw


def problems(raw) -> list[str]:
    with pytest.raises(RecipeError) as info:
        validate_recipe(raw)
    return info.value.problems


def test_out_of_range_value_names_path_value_and_interval():
    raw = base(stages=[{"type": "normalize_text"}, {"type": "length_filter"},
                       {"type": "length_filter", "min_words": -3}])
    assert problems(raw) == ["stages[2].min_words: -3 is not in [0, inf)"]


def test_unknown_stage_type_lists_known_types_and_suggests():
    (msg,) = problems(base(stages=[{"type": "lenght_filter"}]))
    assert msg.startswith("stages[0].type: 'lenght_filter' is not a known type (did you mean 'length_filter'?)")
    assert "exact_dedup" in msg and "normalize_text" in msg


def test_unknown_key_lists_allowed_keys():
    (msg,) = problems(base(stages=[{"type": "length_filter", "min_wrods": 3}]))
    assert msg.startswith("stages[0].min_wrods: unknown key; allowed keys:")
    assert "min_words" in msg


def test_all_problems_reported_at_once():
    raw = base(output={"dir": "o", "format": "csv", "shard_rows": 0}, stages=[{"type": "nope"}])
    found = problems(raw)
    assert "output.format: 'csv' is not allowed; allowed: 'parquet', 'jsonl' or 'jsonl.zst'" in found
    assert "output.shard_rows: 0 is not in [1, inf)" in found
    assert any(p.startswith("stages[0].type: 'nope'") for p in found)


def test_missing_required_keys():
    found = problems({"name": "r", "sources": [{"type": "jsonl"}]})
    assert "output: required key is missing" in found
    assert "sources[0].path: required key is missing" in found


def test_python_tags_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert "cannot contain Python tags" in str(info.value)
    assert not (tmp_path / "pwned").exists()


def test_builtin_quickstart_loads_by_name():
    recipe = load_recipe("quickstart")
    assert recipe.name == "quickstart"
    assert [t for t, _ in recipe.stage_params()][:2] == ["normalize_text", "length_filter"]


def test_overrides_apply_to_every_source():
    recipe = validate_recipe(base(sources=[{"type": "jsonl", "path": "a"}, {"type": "jsonl", "path": "b"}]),
                             overrides={"sources.*.limit": 5, "output.dir": "elsewhere"})
    assert [p.limit for p in recipe.source_params()] == [5, 5]
    assert recipe.output.dir == "elsewhere"


def test_fingerprint_ignores_workers_only():
    a = validate_recipe(base(executor={"workers": 1}))
    b = validate_recipe(base(executor={"workers": 8}))
    c = validate_recipe(base(seed=3))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_nested_models_inside_lists_get_intervals_and_allowed_keys():
    from pydantic import BaseModel, ConfigDict, Field, ValidationError

    from datamill.curate.engine.recipe import _format_errors

    class Inner(BaseModel):
        model_config = ConfigDict(extra="forbid")
        limit: int = Field(1, ge=1, le=9)

    class Outer(BaseModel):
        items: list[Inner]
        maybe: Inner | None = None

    with pytest.raises(ValidationError) as info:
        Outer.model_validate({"items": [{"limit": 1}, {"limit": 0}], "maybe": {"limt": 2}})
    assert sorted(_format_errors(info.value, Outer, prefix="stages[3]")) == [
        "stages[3].items[1].limit: 0 is not in [1, 9]",
        "stages[3].maybe.limt: unknown key; allowed keys: limit",
    ]
