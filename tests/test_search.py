"""`compress search`: candidates tried from the smallest predicted weights, each gated as
`compress run` gates, stopping at the cheapest PASS; the chosen recipe rebuilds the same bytes."""
import json
import shutil

import pytest
import yaml

from compress.core.errors import RecipeError, UsageError
from compress.core.recipe import load_recipe, validate_document
from conftest import RECIPES, run_cli

# Quality only (no bench: a size or speed check would benchmark every candidate) on part of
# the documents, so that each candidate takes seconds.
SEARCH = {
    "name": "s",
    "model": {"id": "builtin:tiny-llama", "dtype": "float32"},
    "search": {"candidates": [{"kind": "fp8"}, {"kind": "int4", "algorithm": "rtn", "bits": 4, "group_size": 128},
                              {"kind": "int4", "algorithm": "rtn", "bits": 2, "group_size": 128}]},
    "evals": {"tasks": ["tiny_facts_mc"], "limit": 300},
    "gate": {"checks": [{"metric": "tiny_facts_mc/acc", "max_regression": 0.06}]},
}


def _recipe(tmp_path, doc=SEARCH, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_candidates_are_ordered_by_predicted_weights_which_match_what_is_built(tmp_path, runs_dir):
    from compress import search

    r = load_recipe(RECIPES / "tiny-llama-search.yaml")
    plan = search.plan(r)
    assert len(plan) >= 8 and [c.predicted_bytes for c in plan] == sorted(c.predicted_bytes for c in plan)
    assert plan[0].slug.startswith("int4-rtn-b2") and {c.slug for c in plan[-2:]} == {"fp8-dynamic", "int8-w8a8"}
    # At equal size the cheaper build goes first: RTN before GPTQ.
    four = [c.slug for c in plan if "-b4-" in c.slug]
    assert four.index("int4-rtn-b4-g128") < four.index("int4-gptq-b4-g128")
    # The prediction is the size of the artifact, within 10% (scales and packing).
    built = run_cli("quantize", "--model", "builtin:tiny-llama", "--scheme", "int4-rtn", "-o", str(tmp_path / "q"),
                    "--json")
    assert built.returncode == 0, built.stderr[-2000:]
    actual = json.loads(built.stdout)["manifest"]["size"]["weights_bytes"]
    predicted = next(c for c in plan if c.slug == "int4-rtn-b4-g128").predicted_bytes
    assert abs(predicted - actual) / actual < 0.10, (predicted, actual)


def test_a_candidate_is_the_search_recipe_with_its_method_and_own_name():
    from compress import search

    r = validate_document(SEARCH, "s.yaml")
    cands = {c.slug: c for c in search.plan(r)}
    c = search.candidate_recipe(r, cands["int4-rtn-b4-g128"])
    assert c.name == "s-int4-rtn-b4-g128" and c.search is None and "search" not in c.effective()
    assert c.method.algorithm == "rtn" and c.method.ignore == ["lm_head"] and c.gate == r.gate
    assert c.evals == r.evals


def test_search_sections_are_checked():
    with pytest.raises(RecipeError, match="give a ladder"):
        validate_document({**SEARCH, "search": {}}, "x.yaml")
    with pytest.raises(RecipeError, match="quantization methods"):
        validate_document({**SEARCH, "search": {"candidates": [{"kind": "distill"}]}}, "x.yaml")


def test_run_and_quantize_refuse_a_search_recipe(tmp_path):
    path = _recipe(tmp_path)
    for args in (["run", str(path)], ["quantize", str(path)]):
        p = run_cli(*args)
        assert p.returncode == 2 and "compress search" in p.stderr, p.stderr


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    env = {"COMPRESS_RUNS_DIR": str(root / "runs"), "COMPRESS_CACHE_DIR": str(root / "cache")}
    recipe = _recipe(root)
    assert run_cli("keygen", "-o", str(root / "keys"), env=env, cwd=root).returncode == 0
    p = run_cli("search", str(recipe), "-o", str(root / "dist"), "--junit", str(root / "search.xml"),
                "--plot", str(root / "frontier.png"), "--sign", str(root / "keys" / "compress-signing.key"),
                "--json", env=env, cwd=root)
    return {"root": root, "env": env, "recipe": recipe, "p": p}


def test_search_stops_at_the_cheapest_pass_and_exports_it(searched):
    p, root = searched["p"], searched["root"]
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    tried = [(c["candidate"], c["verdict"]) for c in out["candidates"]]
    assert tried == [("int4-rtn-b2-g128", "FAIL"), ("int4-rtn-b4-g128", "PASS")]  # smallest first
    assert out["chosen"] == "int4-rtn-b4-g128" and out["not_tried"] == ["fp8-dynamic"]
    # 2-bit RTN was certain to FAIL before all 300 documents (four looks: 75, 150, 225, 300); the
    # chosen one was gated on all of them, as `compress run` gates.
    low, chosen = out["candidates"]
    assert low["stopped_at_look"] in (1, 2, 3) and low["documents"] == 75 * low["stopped_at_look"]
    assert low["documents_saved"] == 300 - low["documents"]
    assert chosen["documents"] == 300 and chosen["stopped_at_look"] is None and chosen["documents_saved"] == 0
    manifest = json.loads((root / "dist" / "manifest.json").read_text())
    assert manifest["gate"]["verdict"] == "PASS" and manifest["name"] == "s-int4-rtn-b4-g128"
    # Signed as `compress run` signs (the release workflow verifies it before uploading).
    v = run_cli("verify", str(root / "dist"), "--key", str(root / "keys" / "compress-signing.pub"),
                env=searched["env"], cwd=root)
    assert v.returncode == 0, v.stderr[-2000:]
    assert "a candidate passes" in (root / "search.xml").read_text()
    assert (root / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # stderr: one line per candidate tried.
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and "[1/3] int4-rtn-b2-g128" in lines[0] and "PASS" in lines[1], p.stderr


def test_a_candidate_stopped_early_is_a_recorded_fail_that_nothing_exports(searched, tmp_path):
    root, env = searched["root"], searched["env"]
    run_dir = root / "runs" / "s-int4-rtn-b2-g128"
    run_dir = run_dir / (run_dir / "LATEST").read_text().strip()
    gate = json.loads((run_dir / "gate.json").read_text())
    stop = gate["stopped_early"]
    assert gate["verdict"] == "FAIL" and stop["spending"] == "obrien-fleming" and stop["looks"] == 4
    # The look's intervals are wider than the gate's 95% (error spending), and say where they stopped.
    assert 0.95 < stop["confidence"] < 1 and "stopped early: look" in gate["checks"][0]["note"]
    # Its reports are the candidate's share of the documents and the baseline's same documents:
    # deciding again from them (the gate's own 95%) gives FAIL too.
    p = run_cli("gate", str(run_dir), "--json", env=env, cwd=root)
    assert p.returncode == 1 and json.loads(p.stdout)["verdict"] == "FAIL", p.stderr[-2000:]
    base = json.loads((run_dir / "reports" / "baseline-accuracy.json").read_text())
    assert base["tasks"]["tiny_facts_mc"]["n_samples"] == stop["documents"] and base["settings"]["restricted_from"]
    p = run_cli("export", str(run_dir), "-o", str(tmp_path / "out"), env=env, cwd=root)
    assert p.returncode != 0 and not (tmp_path / "out").exists()
    # The summary says what early stopping saved.
    summary = __import__("compress.search", fromlist=["saved_line"]).saved_line(
        json.loads(searched["p"].stdout)["candidates"])
    assert f"{stop['saved']} of {300 + 300} candidate documents not evaluated" in summary


def test_the_chosen_recipe_rebuilds_the_same_artifact(searched):
    root, env = searched["root"], searched["env"]
    chosen = root / "s.chosen.yaml"
    text = chosen.read_text()
    assert text.startswith("# Chosen by `compress search`") and "int4-rtn-b2-g128" in text and "FAIL" in text
    exported = json.loads((root / "dist" / "manifest.json").read_text())["content_hash"]
    # Built again from nothing (the run removed), it is the same bytes, and it passes again.
    shutil.rmtree(root / "runs" / "s-int4-rtn-b4-g128")
    p = run_cli("run", str(chosen), "--no-export", "--json", env=env, cwd=root)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["verdict"] == "PASS" and not out["stages"][0]["reused"]
    run_dir = root / "runs" / "s-int4-rtn-b4-g128"
    key = (run_dir / "LATEST").read_text().strip()
    assert json.loads((run_dir / key / "model" / "manifest.json").read_text())["content_hash"] == exported


def test_no_candidate_passing_exits_1_and_chooses_nothing(searched, tmp_path):
    doc = {**SEARCH, "name": "none", "search": {"candidates": [{"kind": "int4", "algorithm": "rtn", "bits": 2}]}}
    p = run_cli("search", str(_recipe(tmp_path, doc)), "--json", env=searched["env"], cwd=tmp_path)
    assert p.returncode == 1, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["chosen"] is None and out["exported_to"] is None and not (tmp_path / "none.chosen.yaml").exists()


def test_a_file_the_search_did_not_write_is_not_replaced(tmp_path):
    from compress import search

    mine = tmp_path / "s.chosen.yaml"
    mine.write_text("name: mine\n")
    with pytest.raises(UsageError, match="not written by compress search"):
        search.write_chosen(None, mine)
    assert mine.read_text() == "name: mine\n"


def test_rounding_error_falls_with_more_bits_and_smaller_groups():
    import torch

    from compress.build.sensitivity import fake_quant

    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    err = {(b, g): float((fake_quant(w, b, g) - w).pow(2).mean()) for b in (2, 3, 4) for g in (32, 128)}
    assert err[(2, 128)] > err[(3, 128)] > err[(4, 128)] > 0
    assert err[(3, 32)] < err[(3, 128)]
    q = fake_quant(w, 4, 128)
    # Symmetric 4-bit: at most 16 levels per group of 128 columns.
    assert q.shape == w.shape and all(len(torch.unique(q[0, i:i + 128])) <= 16 for i in (0, 128))


def test_layers_are_kept_by_loss_per_extra_byte_within_the_budget():
    from compress.build.sensitivity import keep_within_budget

    shapes = {"a": (100, 100), "b": (100, 100), "c": (200, 100), "d": (100, 100)}
    kl = {"a": 0.5, "b": 0.1, "c": 0.8, "d": 0.0}
    extra = 100 * 100 * (2 - 0.25)  # bf16 instead of 2 bits, for a 100x100 layer
    assert keep_within_budget(kl, shapes, 2, 2, int(extra)) == ["a"]          # c costs twice as much per KL
    assert keep_within_budget(kl, shapes, 2, 2, int(3 * extra)) == ["a", "c"]
    assert keep_within_budget(kl, shapes, 2, 2, int(10 * extra)) == ["a", "b", "c"]  # d loses nothing: never kept
    assert keep_within_budget(kl, shapes, 2, 2, 0) == []
    # At 8 bits a kept layer costs 0.75 bytes more per weight instead of 1.75: more fit the same
    # budget (c, next by KL per byte, does not fit beside a; b does).
    assert keep_within_budget(kl, shapes, 2, 1, int(extra)) == ["a", "b"]
    assert keep_within_budget(kl, shapes, 2, 1, 3 * 100 * 100 * 0.75) == ["a", "c"]


def test_layers_an_engine_fuses_are_kept_together():
    from compress.build.sensitivity import keep_within_budget, units

    names = [f"m.layers.0.self_attn.{p}_proj" for p in "qkvo"] + [f"m.layers.0.mlp.{p}_proj" for p in ("gate", "up", "down")]
    assert sorted(map(sorted, units(names))) == sorted(map(sorted, [
        names[:3], [names[3]], [names[4], names[5]], [names[6]]]))
    shapes = dict.fromkeys(names, (64, 64))
    kl = dict.fromkeys(names, 0.01) | {"m.layers.0.self_attn.k_proj": 1.0}
    # k_proj alone is the most sensitive, but vLLM serves q, k and v as one matrix with one scheme.
    kept = keep_within_budget(kl, shapes, 2, 1, int(3 * 64 * 64 * 0.75))
    assert kept == sorted(names[:3])
    assert keep_within_budget(kl, shapes, 2, 1, int(2 * 64 * 64 * 0.75)) == ["m.layers.0.mlp.down_proj",
                                                                             "m.layers.0.self_attn.o_proj"]


def test_mixed_candidates_keep_their_most_sensitive_layers_and_the_measure_is_cached(runs_dir, monkeypatch):
    from compress import search
    from compress.build import sensitivity

    r = load_recipe(RECIPES / "tiny-llama-search.yaml")
    plan = {c.slug: c for c in search.plan(r)}
    mixed = [c for s, c in plan.items() if "-int8x" in s]
    assert len(mixed) == 4 and len(plan) >= 13
    for c in mixed:
        uniform = plan[c.slug.split("-int8x")[0]]
        kept = c.method["int8_layers"]
        assert kept and len(kept) == int(c.slug.split("-int8x")[1]) and c.method["ignore"] == ["lm_head"]
        # Within the ladder's budgets (at most 25% more bytes than the uniform candidate), and more than it.
        assert uniform.predicted_bytes < c.predicted_bytes <= 1.25 * uniform.predicted_bytes
        # The chosen recipe of a mixed candidate is a plain recipe naming its 8-bit layers.
        rec = search.candidate_recipe(r, c)
        assert rec.method.int8_layers == kept and rec.method.ignore == ["lm_head"]
    # Kept unquantized instead (keep: unquantized): the layers join the ignore list, and fewer fit.
    r2 = load_recipe(RECIPES / "tiny-llama-search.yaml", overrides=[
        "search.ladder=null", 'search.mixed=[{"method": {"kind": "int4", "algorithm": "rtn", "bits": 3, '
        '"group_size": 64}, "budget": 0.15, "keep": "unquantized"}]'])
    (unq,) = [c for c in search.plan(r2) if "-keep" in c.slug]
    assert "int8_layers" not in unq.method
    assert 0 < len(set(unq.method["ignore"]) - {"lm_head"}) < len(mixed[-1].method["int8_layers"])
    # Measured once per base model and setting: a second plan reads the cache.
    monkeypatch.setattr(sensitivity, "_measure", lambda *a, **k: pytest.fail("measured again"))
    assert [c.slug for c in search.plan(r)] == list(plan)


def test_int8_layers_are_written_as_an_8_bit_config_group_that_loads_back(tmp_path, runs_dir):
    """A mixed artifact: the named layers at 8 bits per output channel, the rest at 2 bits, in
    compressed-tensors config groups that transformers reads back (and so does vLLM)."""
    import torch
    from safetensors import safe_open

    from compress.core.models import load_model, resolve_model

    fused = "re:layers\\.1\\.self_attn\\.[qkv]_proj$"
    outs = {}
    for name, int8 in (("plain", []), ("mixed", ["model.layers.0.mlp.down_proj", fused]), ("all", ["re:.*"])):
        doc = {"name": name, "model": {"id": "builtin:tiny-llama", "dtype": "float32"},
               "method": {"kind": "int4", "algorithm": "rtn", "bits": 2, "group_size": 32, "int8_layers": int8}}
        p = run_cli("quantize", str(_recipe(tmp_path, doc, f"{name}.yaml")), "-o", str(tmp_path / name), "-q")
        assert p.returncode == 0, p.stderr
        outs[name] = tmp_path / name
    groups = json.loads((outs["mixed"] / "config.json").read_text())["quantization_config"]["config_groups"]
    assert groups["group_0"]["targets"] == ["model.layers.0.mlp.down_proj"] + [
        f"model.layers.1.self_attn.{p}_proj" for p in "kqv"]
    assert groups["group_0"]["weights"]["num_bits"] == 8 and groups["group_1"]["weights"]["num_bits"] == 2
    # W8A8: activations quantized per token at run time (the 8-bit scheme vLLM's CPU build serves).
    assert groups["group_0"]["input_activations"]["strategy"] == "token" and groups["group_1"]["input_activations"] is None
    with safe_open(str(outs["mixed"] / "model.safetensors"), "pt") as f:
        # One int8 per weight in down_proj; sixteen 2-bit weights per int32 word in up_proj.
        w = f.get_tensor("model.layers.0.mlp.down_proj.weight")
        assert w.dtype == torch.int8 and w.shape == (256, 768)
        assert f.get_tensor("model.layers.0.mlp.up_proj.weight_packed").shape == (768, 16)
    method = json.loads((outs["mixed"] / "manifest.json").read_text())["method"]
    assert len(method["details"]["int8_layers"]) == 4 and "4 layer(s) W8A8" in method["scheme"]

    base = load_model(resolve_model("builtin:tiny-llama", None).path, "float32", "cpu")
    x = torch.randint(5, 500, (2, 48), generator=torch.Generator().manual_seed(0))
    kl = {}
    with torch.no_grad():
        ref = torch.log_softmax(base(x).logits, -1)
        for name, path in outs.items():
            lp = torch.log_softmax(load_model(path, "float32", "cpu")(x).logits, -1)
            kl[name] = float((ref.exp() * (ref - lp)).sum(-1).mean())
    # Every layer at 8 bits is close to the base; four of them already help the 2-bit model.
    assert kl["all"] < 0.01 < kl["mixed"] < kl["plain"]


def test_mixed_precision_is_refused_where_an_engine_would_read_it_wrongly(tmp_path):
    doc = {"name": "m", "model": {"id": "builtin:tiny-llama"},
           "method": {"kind": "int4", "algorithm": "gptq-hf", "bits": 3, "int8_layers": ["re:.*"]}}
    p = run_cli("recipes", "validate", str(_recipe(tmp_path, doc)))
    assert p.returncode == 2 and "load wrongly in transformers" in p.stderr
    doc["method"] = {"kind": "int4", "algorithm": "rtn", "int8_layers": ["model.layers.0.mlp.nowhere"]}
    p = run_cli("quantize", str(_recipe(tmp_path, doc)), "-o", str(tmp_path / "out"))
    assert p.returncode != 0 and "int8_layers entry 'model.layers.0.mlp.nowhere' names no Linear" in p.stderr
    assert not (tmp_path / "out").exists()


def test_the_release_workflow_searches_search_recipes_and_runs_the_others():
    """`compress run` refuses a search recipe: the workflow gives those to a search job, which
    uploads the chosen recipe and its verified export."""
    import subprocess

    from conftest import ROOT

    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "model-release.yml").read_text())
    listing = " ".join(step.get("run", "") for step in flow["jobs"]["recipes"]["steps"])
    plain = subprocess.run(["bash", "-c", "grep -L '^search:' recipes/*.yaml"], cwd=ROOT, capture_output=True,
                           text=True).stdout.split()
    searches = subprocess.run(["bash", "-c", "grep -l '^search:' recipes/*.yaml"], cwd=ROOT, capture_output=True,
                              text=True).stdout.split()
    assert "grep -L '^search:'" in listing and "grep -l '^search:'" in listing
    assert "recipes/tiny-llama-search.yaml" in searches and "recipes/tiny-llama-search.yaml" not in plain
    assert all(load_recipe(ROOT / p).search is None for p in plain)
    job = flow["jobs"]["search"]
    script = " ".join(step.get("run", "") for step in job["steps"])
    assert "compress search" in script and "--chosen" in script and "compress verify" in script
    uploaded = " ".join(str(step.get("with", {}).get("path", "")) for step in job["steps"])
    assert "chosen/" in uploaded and "dist/" in uploaded
