
import pytest

from compress.core.errors import RecipeError, UsageError
from compress.core.recipe import apply_overrides, load_recipe, parse_override
from conftest import ROOT, run_cli

ALL_RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))

BAD = """\
name: bad recipe
model:
  id: builtin:tiny-llama
  dtyp: float32
method:
  kind: int4
  algorithm: gptqq
  grup_size: 128
evals:
  batch_size: 0
gate:
  checks:
    - metric: tiny_facts_mc/acc
    - metric: size_ration
      max: 0.5
"""


def test_checked_in_recipes_validate():
    assert len(ALL_RECIPES) >= 10
    kinds = set()
    for path in ALL_RECIPES:
        recipe = load_recipe(path)
        kinds.add(recipe.method.kind)
        first = path.read_text().splitlines()[0]
        assert first.startswith("# "), f"{path} must open with a comment saying what it is for"
        verb = "compress search" if recipe.search is not None else "compress run"
        assert verb in path.read_text().split("\nname:")[0], f"{path} must say how to run it"
    assert kinds == {"fp8", "int8", "int4", "gguf", "distill", "none"}


def test_every_problem_reported_with_path_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    with pytest.raises(RecipeError) as info:
        load_recipe(f)
    problems = info.value.problems
    joined = "\n".join(problems)
    expected = {
        "name (line 1)": "letter or digit",
        "model.dtyp (line 4)": "did you mean 'dtype'",
        "method.algorithm (line 7)": "'gptq'",
        "method.grup_size (line 8)": "did you mean 'group_size'",
        "evals.batch_size (line 10)": "greater than 0",
        "gate.checks.0 (line 13)": "needs max_regression",
        "gate.checks.1 (line 14)": "did you mean size_ratio",
    }
    assert len(problems) == len(expected), joined
    for where, what in expected.items():
        assert any(p.startswith(where) and what in p for p in problems), (where, joined)


def test_cli_validate_exit_code_two_and_all_problems(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    p = run_cli("recipes", "validate", str(f), str(ROOT / "recipes" / "tiny-llama-int4-gptq.yaml"))
    assert p.returncode == 2
    assert "7 problem(s)" in p.stderr
    assert "method.grup_size (line 8)" in p.stderr
    assert "✓" in p.stdout  # the good recipe still validates


def test_unknown_method_kind_lists_kinds(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("model: {id: builtin:tiny-llama}\nmethod: {kind: int5}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(f)
    assert "fp8, fp4, int8, int4, gguf, distill, none" in info.value.problems[0]
    assert info.value.problems[0].startswith("method (line 2)")


def test_missing_sections_and_bad_yaml(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("method: {kind: fp8}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(f)
    assert any(p.startswith("model") and "Field required" in p for p in info.value.problems)
    f.write_text("model: [unclosed\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(f)
    assert "not valid YAML" in info.value.problems[0]
    f.write_text("")
    with pytest.raises(RecipeError):
        load_recipe(f)
    with pytest.raises(UsageError):
        load_recipe(tmp_path / "missing.yaml")


def test_overrides_take_precedence_and_are_validated():
    path = ROOT / "recipes" / "tiny-llama-int4-gptq.yaml"
    r = load_recipe(path, ["method.group_size=64", "evals.limit=10", "name=custom"])
    assert r.method.group_size == 64 and r.evals.limit == 10 and r.name == "custom"
    assert r.effective()["method"]["group_size"] == 64
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["method.group_size=zero"])
    assert info.value.problems[0].startswith("method.group_size")
    with pytest.raises(UsageError):
        parse_override("no-equals-sign")
    with pytest.raises(UsageError):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_defaults_and_hash_are_stable():
    path = ROOT / "recipes" / "tiny-llama-int4-rtn.yaml"
    a, b = load_recipe(path), load_recipe(path)
    assert a.section_hash() == b.section_hash()
    assert a.section_hash("method") != load_recipe(path, ["method.group_size=64"]).section_hash("method")
    assert a.method.ignore == ["lm_head"]
    assert a.calibration.num_samples == 64


@pytest.mark.parametrize("text,problem", [
    ("method: {kind: int4, algorithm: nf4, bits: 3}", "nf4 is a 4-bit format"),
    ("method: {kind: int4, group_size: -5}", "positive number of columns"),
    ("method: {kind: distill, student: {from_teacher: false}}", "give a student"),
    ("gate: {checks: [{metric: size_ratio, max_regression: 0.1}]}", "takes min/max"),
    ("gate: {checks: [{metric: size_ratio}]}", "needs min or max"),
])
def test_cross_field_rules(tmp_path, text, problem):
    f = tmp_path / "r.yaml"
    base = "model: {id: builtin:tiny-llama}\n"
    if not text.startswith("method"):
        base += "method: {kind: fp8}\n"
    f.write_text(base + text + "\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(f)
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_group_size_minus_one_means_per_channel(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("model: {id: builtin:tiny-llama}\nmethod: {kind: int4, group_size: -1}\n")
    assert load_recipe(f).method.group_size is None
    assert load_recipe(f).name == "r"


def test_recipes_list_describes_each_recipe_and_flags_invalid_ones(tmp_path):
    import json
    import shutil

    from compress.core.schemes import SCHEMES

    p = run_cli("recipes", "list", str(ROOT / "recipes"), "--json")
    assert p.returncode == 0, p.stderr
    listed = json.loads(p.stdout)
    rows = {r["file"]: r for r in listed["recipes"]}
    assert set(rows) == {str(f) for f in (ROOT / "recipes").rglob("*.yaml")}  # recipes/demo/ too
    assert str(ROOT / "recipes" / "demo" / "tiny-llama-int2-rtn.yaml") in rows
    for row in rows.values():
        assert row["valid"] and row["purpose"] and "Run:" not in row["purpose"], row
    assert rows[str(ROOT / "recipes" / "tiny-llama-int4-gptq.yaml")]["model"] == "builtin:tiny-llama"
    assert set(listed["schemes"]) == set(SCHEMES)

    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(ROOT / "recipes" / "tiny-llama-int4-gptq.yaml", mine / "good.yaml")
    (mine / "bad.yaml").write_text(BAD)
    p = run_cli("recipes", "list", str(mine))
    assert p.returncode == 0, p.stderr
    assert "INVALID" in p.stdout and "tiny-llama-int4-gptq" in p.stdout

    p = run_cli("recipes", "list", str(tmp_path / "nowhere"))
    assert p.returncode == 2 and "no recipe directory" in p.stderr and len(p.stderr.strip().splitlines()) <= 2


def test_double_quant_belongs_to_nf4_only():
    """Artifacts of other algorithms no longer carry `double_quant: true`."""
    from compress.core.recipe import build_recipe

    assert build_recipe(None, model="builtin:tiny-llama", scheme="int4-nf4").method.double_quant is True
    for scheme in ("int4-rtn", "int4-gptq", "int4-gptq-hf"):
        assert build_recipe(None, model="builtin:tiny-llama", scheme=scheme).effective()["method"]["double_quant"] is None
    # as recipes written before it was nf4's alone carry it: accepted, and dropped
    old = build_recipe(None, model="builtin:tiny-llama", scheme="int4-gptq", overrides=["method.double_quant=true"])
    assert old.method.double_quant is None
