"""Runtime levers as candidates: a recipe's `serve` / `baseline_serve` sections are vLLM's flags for each side's
server, and `method: {kind: none}` makes the candidate the base model itself, built, gated and exported with the
serving settings it passed with."""
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from compress.core.errors import RecipeError
from compress.core.recipe import SERVE_FLAGS, BenchSpec, Recipe, ServeSpec, load_recipe, validate_document
from conftest import BUILTIN, ROOT, run_cli

ENGINE_ARGS = ROOT / ".venv-engine" / "lib" / "python3.11" / "site-packages" / "vllm" / "engine" / "arg_utils.py"
SPEC = {"method": "draft_model", "model": "/models/draft", "num_speculative_tokens": 4}


def _recipe(**sections) -> Recipe:
    data = {"name": "levers", "model": {"id": "builtin:tiny-llama"}, "method": {"kind": "none"},
            "bench": {"engine": "vllm"}, "serve": {"enable_prefix_caching": True}}
    data.update(sections)
    return validate_document({k: v for k, v in data.items() if v is not None}, "levers.yaml")


def _problems(text: str, tmp_path: Path) -> list[str]:
    f = tmp_path / "r.yaml"
    f.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(f)
    return info.value.problems


# ------------------------------------------------------------------------------------------------ the section

@pytest.mark.parametrize("settings,flags", [
    ({"enable_prefix_caching": True}, ["--enable-prefix-caching"]),
    ({"enable_prefix_caching": False}, ["--no-enable-prefix-caching"]),
    ({"enable_chunked_prefill": True}, ["--enable-chunked-prefill"]),
    ({"enable_chunked_prefill": False}, ["--no-enable-chunked-prefill"]),
    ({"max_num_seqs": 64}, ["--max-num-seqs", "64"]),
    ({"max_num_batched_tokens": 8192}, ["--max-num-batched-tokens", "8192"]),
    ({"kv_cache_dtype": "fp8"}, ["--kv-cache-dtype", "fp8"]),
    ({"block_size": 32}, ["--block-size", "32"]),
    ({"speculative_config": SPEC}, ["--speculative-config", json.dumps(SPEC, sort_keys=True)]),
])
def test_each_setting_is_its_vllm_flag(settings, flags):
    spec = ServeSpec.model_validate(settings)
    assert spec.engine_args() == flags
    assert spec.model_dump(mode="json", exclude_defaults=True) == settings == spec.model_dump(mode="json")


def test_the_flags_are_the_installed_vllms():
    """Every flag compress writes is one the engine environment's vLLM defines (read as text: the compression
    environment never imports vLLM)."""
    if not ENGINE_ARGS.exists():
        pytest.skip("no engine environment (make engine)")
    text = ENGINE_ARGS.read_text()
    for flag in SERVE_FLAGS.values():
        assert f'"{flag}"' in text, flag
    # The booleans are BooleanOptionalAction flags (--no-X exists): vLLM's bool config fields become them.
    assert "BooleanOptionalAction" in text


def test_flags_keep_one_order_and_the_dump_holds_only_what_is_set():
    a = ServeSpec(max_num_seqs=8, enable_prefix_caching=True, block_size=16)
    b = ServeSpec.model_validate({"block_size": 16, "enable_prefix_caching": True, "max_num_seqs": 8})
    assert a.engine_args() == b.engine_args() == ["--enable-prefix-caching", "--max-num-seqs", "8",
                                                  "--block-size", "16"]
    assert a.model_dump(mode="json") == {"enable_prefix_caching": True, "max_num_seqs": 8, "block_size": 16}
    assert ServeSpec().engine_args() == [] and ServeSpec().is_empty() and ServeSpec().model_dump() == {}
    # The speculative config is written as JSON, quoted for a shell in the card's command.
    text = ServeSpec(speculative_config=SPEC).flags_text()
    assert text.startswith("--speculative-config '{") and '"method": "draft_model"' in text


@pytest.mark.parametrize("config,problem", [
    ({"num_speculative_tokens": 4}, "needs a method"),
    ({"method": "ngram"}, "needs num_speculative_tokens"),
    ({"method": "ngram", "num_speculative_tokens": 0}, "needs num_speculative_tokens"),
    ({"method": "draft_model", "num_speculative_tokens": 4}, "needs a model"),
    ({"method": "draft_model", "model": "builtin:tiny-llama", "num_speculative_tokens": 4}, "local directory"),
])
def test_speculative_config_is_checked(config, problem):
    with pytest.raises(ValueError, match=problem):
        ServeSpec(speculative_config=config)
    ServeSpec(speculative_config={"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4})


def test_an_unknown_setting_is_named_with_the_known_ones(tmp_path):
    problems = _problems("model: {id: builtin:tiny-llama}\nmethod: {kind: fp8}\nbench: {engine: vllm}\n"
                         "serve:\n  max_num_seq: 8\n  kv_cache_dtype: fp16\n", tmp_path)
    unknown = next(p for p in problems if p.startswith("serve.max_num_seq "))
    assert "(line 5)" in unknown and "did you mean 'max_num_seqs'" in unknown
    assert all(name in unknown for name in SERVE_FLAGS), unknown
    assert any(p.startswith("serve.kv_cache_dtype (line 6)") for p in problems), problems  # every problem at once


def test_serving_settings_need_vllm(tmp_path):
    for section in ("serve", "baseline_serve"):
        problems = _problems(f"model: {{id: builtin:tiny-llama}}\nmethod: {{kind: fp8}}\n"
                             f"{section}: {{max_num_seqs: 8}}\n", tmp_path)
        assert any("serving settings are vLLM's: set bench.engine: vllm" in p for p in problems), problems


def test_method_none_needs_settings_that_differ_from_the_baselines(tmp_path):
    head = "model: {id: builtin:tiny-llama}\nmethod: {kind: none}\nbench: {engine: vllm}\n"
    for extra in ("", "serve: {}\n", "serve: {max_num_seqs: 8}\nbaseline_serve: {max_num_seqs: 8}\n"):
        problems = _problems(head + extra, tmp_path)
        assert len(problems) == 1 and "method kind none makes the candidate the base model itself" in problems[0]
    assert _recipe(serve=None, baseline_serve={"enable_prefix_caching": True}).method.kind == "none"
    # A search tries quantization methods only.
    problems = _problems("model: {id: builtin:tiny-llama}\nsearch: {candidates: [{kind: none}]}\n", tmp_path)
    assert any("serve the base model with other settings (kind: none)" in p for p in problems), problems


def test_recipes_without_serving_settings_keep_their_dump_and_hash():
    r = load_recipe(ROOT / "recipes" / "tiny-llama-int4-rtn.yaml")
    assert not {"serve", "baseline_serve"} & set(r.effective())
    assert "serve" not in r.model_dump(mode="json", exclude_defaults=True)
    # An empty section is the defaults: the same recipe (and hash) as none.
    same = load_recipe(ROOT / "recipes" / "tiny-llama-int4-rtn.yaml", ["bench.engine=vllm"])
    empty = load_recipe(ROOT / "recipes" / "tiny-llama-int4-rtn.yaml", ["bench.engine=vllm", "serve={}"])
    assert empty.serve is None and empty.section_hash() == same.section_hash()
    levers = _recipe(serve={"max_num_seqs": 8, "enable_prefix_caching": True})
    assert levers.effective()["serve"] == {"enable_prefix_caching": True, "max_num_seqs": 8}
    assert "baseline_serve" not in levers.effective()


# ------------------------------------------------------------------------------------------------ measuring

def test_each_sides_server_gets_its_flags():
    from compress.measure.bench import make_side

    settings = BenchSpec(engine="vllm", kv_cache_dtype="fp8")
    side = make_side(BUILTIN, settings, dtype="float32",
                     serve=ServeSpec(enable_prefix_caching=True, max_num_seqs=8, kv_cache_dtype="auto"))
    args = side.server.extra_args
    assert args[:3] == ["--enable-prefix-caching", "--max-num-seqs", "8"] and "--no-enable-prefix-caching" not in args
    assert args[args.index("--kv-cache-dtype") + 1] == "auto" and args.count("--kv-cache-dtype") == 1
    # Without a caching setting, compress's measurement default: no prefix cache hides prefill.
    args = make_side(BUILTIN, settings, dtype="float32", serve=ServeSpec(max_num_seqs=8)).server.extra_args
    assert args[:3] == ["--no-enable-prefix-caching", "--max-num-seqs", "8"]
    assert make_side(BUILTIN, settings, dtype="float32").server.extra_args[0] == "--no-enable-prefix-caching"
    args = make_side(BUILTIN, settings, dtype="float32", serve=ServeSpec(enable_prefix_caching=False)).server.extra_args
    assert args.count("--no-enable-prefix-caching") == 1 and "--enable-prefix-caching" not in args


def test_the_run_hands_each_side_its_settings(runs_dir, monkeypatch):
    """`compress run` measures the candidate under `serve` and the baseline under `baseline_serve`."""
    import compress.measure.bench as bench
    from compress import pipeline

    seen = {}

    class Stop(Exception):
        pass

    def fake_speed(baseline, candidate, settings, **kwargs):
        seen.update(kwargs["serve"])
        raise Stop

    monkeypatch.setattr(bench, "run_speed", fake_speed)
    recipe = _recipe(serve={"enable_prefix_caching": True}, baseline_serve={"enable_prefix_caching": False},
                     gate={"checks": [{"metric": "size_ratio", "max": 1.0}]})
    with pytest.raises(Stop):
        pipeline.run(recipe, export=False, log=lambda m: None, warn=lambda m: None)
    assert seen["candidate"].engine_args() == ["--enable-prefix-caching"]
    assert seen["baseline"].engine_args() == ["--no-enable-prefix-caching"]
    assert seen["baseline"] is recipe.baseline_serve and seen["baseline"] != seen["candidate"]


# -------------------------------------------------------------------------------------------------- building

def test_method_none_builds_the_base_models_bytes(runs_dir):
    from compress import runs
    from compress.core.artifact import MANIFEST, model_files
    from compress.core.cache import model_content_hash

    recipe = _recipe(serve={"enable_prefix_caching": True, "max_num_seqs": 64})
    manifest, reused, model_dir = runs.build(recipe, log=lambda m: None)
    assert not reused
    base = {p.relative_to(BUILTIN).as_posix(): p.read_bytes() for p in model_files(BUILTIN)}
    built = {p.relative_to(model_dir).as_posix(): p.read_bytes() for p in model_files(model_dir)}
    assert built == base and "model.safetensors" in built
    assert not [p for p in model_dir.rglob("*") if p.is_symlink()]  # the artifact holds its own bytes
    assert manifest["content_hash"] == model_content_hash(BUILTIN) == manifest["base_model"]["content_hash"]
    method = manifest["method"]
    assert method["kind"] == method["name"] == "none" and method["scheme"] == "base model, serving settings only"
    assert method["format"] == "safetensors" and manifest["size"]["ratio"] == 1.0
    assert method["details"]["serve_flags"] == ["--enable-prefix-caching", "--max-num-seqs", "64"]
    assert json.loads((model_dir / MANIFEST).read_text())["recipe_hash"] == recipe.section_hash()
    assert yaml.safe_load((model_dir / "recipe.yaml").read_text())["serve"] == {"enable_prefix_caching": True,
                                                                                "max_num_seqs": 64}
    # Other settings are another artifact (its own run, reports and decision); the same ones are reused.
    assert runs.build(recipe, log=lambda m: None)[1]
    other = runs.build(_recipe(serve={"enable_prefix_caching": True}), log=lambda m: None)[2]
    assert other != model_dir and other.parent.parent == model_dir.parent.parent


# ------------------------------------------------------------------------------------------------ exporting

def test_the_card_takes_the_settings_the_speed_report_measured():
    from compress.ship.export import served_with
    from compress.ship.report import serve_flags

    recipe = _recipe(serve={"max_num_seqs": 8})
    assert served_with(recipe) == {"candidate": {"max_num_seqs": 8}}
    measured = SimpleNamespace(settings={"serve": {"candidate": {"enable_prefix_caching": True}}})
    assert served_with(recipe, measured) == {"candidate": {"enable_prefix_caching": True}}
    assert served_with(recipe, SimpleNamespace(settings={})) == {}  # measured without: none to claim
    assert serve_flags(recipe, {}, {("both", "speed"): measured}) == {"candidate": ["--enable-prefix-caching"]}
    assert serve_flags(recipe, {"serve": {"baseline": {"block_size": 16}}}, {}) == {"baseline": ["--block-size", "16"]}


def test_an_export_carries_the_serving_settings_it_passed_with(tmp_path):
    """A runtime change gated on quality alone (its accuracy is the base's: the same bytes), exported: the card's
    vLLM command and the export's manifest carry its flags, and `compress verify` accepts it."""
    recipe = tmp_path / "levers.yaml"
    recipe.write_text(
        "# The base model with prefix caching and a batch budget: a test recipe.\n"
        "name: tiny-llama-levers\nmodel: {id: builtin:tiny-llama, dtype: float32}\nmethod: {kind: none}\n"
        "evals: {tasks: [tiny_facts_mc], limit: 40}\nbench: {engine: vllm}\n"
        "serve: {enable_prefix_caching: true, max_num_seqs: 64}\n"
        "gate: {checks: [{metric: tiny_facts_mc/acc, max_regression: 0.02}]}\n")
    env = {"COMPRESS_RUNS_DIR": str(tmp_path / "runs"), "COMPRESS_CACHE_DIR": str(tmp_path / "cache")}
    dist = tmp_path / "dist"
    p = run_cli("run", str(recipe), "-o", str(dist), "--json", env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["verdict"] == "PASS"
    card = (dist / "README.md").read_text()
    assert f"vllm serve {dist} --enable-prefix-caching --max-num-seqs 64" in card
    assert "Serving settings of this model (vLLM): `--enable-prefix-caching --max-num-seqs 64`" in card
    assert "base model, serving settings only" in card and "serve:" in card.split("```yaml")[1]
    assert not re.search(r"--model-path \S+ --", card)  # SGLang's command takes no vLLM flag
    manifest = json.loads((dist / "manifest.json").read_text())
    assert manifest["serve"] == {"candidate": {"enable_prefix_caching": True, "max_num_seqs": 64}}
    assert (dist / "model.safetensors").read_bytes() == (BUILTIN / "model.safetensors").read_bytes()
    assert not (dist / "model.safetensors").is_symlink() and (dist / "model.safetensors").stat().st_nlink == 1
    v = run_cli("verify", str(dist), env=env)
    assert v.returncode == 0, v.stderr[-2000:]
    # The same bytes under other settings are not the same export: it is not left in place as one.
    run_dir = Path(json.loads(p.stdout)["run_dir"])
    kept = run_dir / "model" / "recipe.yaml"
    kept.write_text(kept.read_text().replace("max_num_seqs: 64", "max_num_seqs: 32"))
    e = run_cli("export", str(run_dir), "-o", str(dist), env=env)
    assert e.returncode != 0 and "already exists" in e.stderr, e.stderr[-2000:]
