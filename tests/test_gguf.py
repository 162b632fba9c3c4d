"""GGUF artifacts and llama.cpp as an engine.

Without the llama.cpp environment: the schemes, the recipe's rules (llama.cpp's or AutoRound's rounding), the
pre-tokenizer rule the converters are given, and the one-line refusals. With it (`make llamacpp`, part of
`make test`; marked ``engine``): a Q4_K_M artifact of the embedded model built by llama.cpp's own converter,
importance matrix and quantizer, and one tuned by AutoRound and written by auto-round's GGUF export; neither GGUF
names a folder of the building machine; their quality through llama.cpp's server by compress and (llama.cpp's) by
lm-eval's own CLI (the same figure), paired with the base's; a served benchmark on llama.cpp; and every server
stopped.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from compress.build.methods import _llamacpp
from compress.core.errors import RecipeError
from compress.core.recipe import validate_document
from compress.core.schemes import describe_method, scheme_method
from tests.conftest import BUILTIN, ROOT, run_cli

LLAMACPP = ROOT / ".venv-llamacpp"
TOOLS = [LLAMACPP / "bin" / "python", LLAMACPP / "bin" / "llama-quantize", LLAMACPP / "bin" / "llama-imatrix",
         LLAMACPP / "share" / "llama.cpp" / "convert_hf_to_gguf.py"]


def needs_llamacpp(test):
    """Marked ``engine``, skipped without `.venv-llamacpp` (`make llamacpp`)."""
    missing = [str(p) for p in TOOLS if not p.exists()]
    skip = pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} missing: run `make llamacpp`")
    return pytest.mark.engine(skip(test))


# --------------------------------------------------------------------- without llama.cpp

def test_schemes_and_recipe_rules():
    for name, qtype in (("gguf-q4_k_m", "q4_k_m"), ("gguf-q5_k_m", "q5_k_m"), ("gguf-q8_0", "q8_0"),
                        ("gguf-f16", "f16")):
        method = scheme_method(name)
        assert method == {"kind": "gguf", "type": qtype} and describe_method(method) == name
    doc = {"name": "g", "model": {"id": "builtin:tiny-llama"}, "method": {"kind": "gguf", "type": "q4_k_m"}}
    assert validate_document(doc, "g").method.imatrix is True
    with pytest.raises(Exception, match="q4_k_m"):
        validate_document({**doc, "method": {"kind": "gguf", "type": "q3_k_s"}}, "g")
    speed = {**doc, "gate": {"checks": [{"metric": "throughput_speedup", "at": 1, "min": 1.0}]}}
    with pytest.raises(Exception, match="bench.engine: llamacpp"):
        validate_document(speed, "g")
    assert validate_document({**speed, "bench": {"engine": "llamacpp"}}, "g").bench.engine == "llamacpp"
    with pytest.raises(Exception, match="servable.engine: llamacpp"):
        validate_document({**doc, "gate": {"checks": [], "servable": "vllm"}}, "g")


def test_autoround_recipe_rules():
    """algorithm: autoround takes the k-quants and iterations (200 by default); everything else is refused in one
    line that says what to do. A llama.cpp recipe's content is what it was before these keys existed."""
    doc = {"name": "g", "model": {"id": "builtin:tiny-llama"}, "method": {"kind": "gguf", "type": "q4_k_m"}}
    plain = validate_document(doc, "g")
    assert plain.method.algorithm == "llamacpp" and plain.effective()["method"] == {"kind": "gguf", "type": "q4_k_m",
                                                                                   "imatrix": True}
    for qtype in ("q4_k_m", "q5_k_m"):
        tuned = validate_document({**doc, "method": {"kind": "gguf", "type": qtype, "algorithm": "autoround"}}, "g")
        method = tuned.effective()["method"]
        assert method == {"kind": "gguf", "type": qtype, "algorithm": "autoround", "iterations": 200}
        assert describe_method(method) == f"gguf-{qtype}-autoround"
        assert validate_document({**doc, "method": method}, "g").effective() == tuned.effective()  # round trip
    refusals = [({"type": "q8_0", "algorithm": "autoround"}, "for q8_0 use algorithm: llamacpp"),
                ({"type": "f16", "algorithm": "autoround"}, "for f16 use algorithm: llamacpp"),
                ({"algorithm": "autoround", "imatrix": True}, "remove imatrix, or use algorithm: llamacpp"),
                ({"algorithm": "autoround", "imatrix": False}, "remove imatrix, or use algorithm: llamacpp"),
                ({"iterations": 8}, "remove it or use algorithm: autoround"),
                ({"algorithm": "autoround", "iterations": 0}, "greater than 0")]
    for change, says in refusals:
        with pytest.raises(RecipeError) as err:
            validate_document({**doc, "method": {"kind": "gguf", "type": "q4_k_m", **change}}, "g")
        assert len(err.value.problems) == 1 and "\n" not in err.value.problems[0], err.value.problems
        assert says in err.value.problems[0], err.value.problems


def test_autoround_refusals_are_one_line_on_the_command_line(tmp_path):
    r = run_cli("quantize", "-m", "builtin:tiny-llama", "--scheme", "gguf-q8_0", "--set", "method.algorithm=autoround",
                "-o", str(tmp_path / "q8"))
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "autoround" in ln]
    assert len(lines) == 1 and "use algorithm: llamacpp" in lines[0], r.stderr
    assert not (tmp_path / "q8").exists()


def test_a_failed_autoround_says_why_in_one_line_and_leaves_no_artifact(tmp_path):
    """auto-round runs in a process of its own; when it fails (here: an architecture its bundled converter does not
    know) the command says so in one line with the way out, and nothing but the method's work folder is left."""
    model = tmp_path / "foo"
    shutil.copytree(BUILTIN, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["FooBarForCausalLM"]}))
    r = run_cli("quantize", "-m", str(model), "--scheme", "gguf-q4_k_m", "--set", "method.algorithm=autoround",
                "--set", "method.iterations=2", "-o", str(tmp_path / "q4"),
                env={"COMPRESS_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 4, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if "FooBarForCausalLM" in ln]
    assert len(lines) == 1 and "auto-round failed" in lines[0] and "use algorithm: llamacpp" in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".q4.work", "cache", "foo"]
    assert not list((tmp_path / ".q4.work").rglob("*.gguf"))


def test_only_gpt2s_own_split_is_named_gpt2(tmp_path):
    """The converter knows a BPE pre-tokenizer only by the hash of its tokens on hub models; compress names a
    tokenizer gpt-2 only when it splits exactly as GPT-2 does (byte-level, GPT-2's pattern, nothing before)."""
    assert _llamacpp.gpt2_pretokenizer(BUILTIN)
    tok = json.loads((BUILTIN / "tokenizer.json").read_text())
    for change in ({"pre_tokenizer": {**tok["pre_tokenizer"], "add_prefix_space": True}},
                   {"pre_tokenizer": {**tok["pre_tokenizer"], "use_regex": False}},
                   {"normalizer": {"type": "NFC"}},
                   {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}):
        (tmp_path / "tokenizer.json").write_text(json.dumps({**tok, **change}))
        assert not _llamacpp.gpt2_pretokenizer(tmp_path), change
    assert not _llamacpp.gpt2_pretokenizer(tmp_path / "missing")


def test_the_gpt2_rule_is_lent_to_a_converter_and_taken_back():
    """Both converters (llama.cpp's, auto-round's bundled copy) get the rule through one context manager; an unknown
    pre-tokenizer that is not GPT-2's split stays their error, and the class is as it was afterwards."""
    class TextModel:
        def get_vocab_base_pre(self, tokenizer):
            raise NotImplementedError("BPE pre-tokenizer was not recognized")

    own = TextModel.__dict__["get_vocab_base_pre"]
    with _llamacpp.gpt2_fallback(TextModel, BUILTIN):
        assert TextModel().get_vocab_base_pre(None) == "gpt-2"
    with _llamacpp.gpt2_fallback(TextModel, BUILTIN / "missing"):
        with pytest.raises(NotImplementedError):
            TextModel().get_vocab_base_pre(None)
    assert TextModel.__dict__["get_vocab_base_pre"] is own


def test_without_llamacpp_the_build_says_what_to_install(tmp_path, runs_dir):
    out = tmp_path / "q4"
    r = run_cli("quantize", "-m", "builtin:tiny-llama", "--scheme", "gguf-q4_k_m", "-o", str(out),
                env={"COMPRESS_LLAMACPP_VENV": str(tmp_path / "none")})
    assert r.returncode == 4, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "llama.cpp's" in ln]
    assert lines and "make llamacpp" in r.stderr and "missing" in lines[0]
    assert not out.exists()


def test_a_gguf_artifact_is_not_evaluated_by_transformers(tmp_path):
    from compress.core.errors import UsageError
    from compress.core.recipe import EvalSpec
    from compress.measure.accuracy import _simple_evaluate

    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(UsageError, match="--engine llamacpp"):
        _simple_evaluate(tmp_path, EvalSpec(tasks=["tiny_facts_mc"]), "float32", False, False, tmp_path / "x.log")


# --------------------------------------------------------------------- with llama.cpp

@pytest.fixture(scope="module")
def q4(tmp_path_factory):
    """The embedded model as Q4_K_M, built by `compress quantize` (llama.cpp's converter, imatrix, quantizer)."""
    root = tmp_path_factory.mktemp("gguf")
    out = root / "q4"
    # a relative output folder: llama.cpp's steps run in the work folder, and must still write there
    r = run_cli("quantize", "-m", "builtin:tiny-llama", "--scheme", "gguf-q4_k_m", "-o", "q4", "--json",
                env={"COMPRESS_CACHE_DIR": str(root / "cache"), "COMPRESS_LLAMACPP_VENV": str(LLAMACPP)}, cwd=root)
    assert r.returncode == 0, r.stderr
    return out


def host_folders(fields, *roots):
    """The metadata strings of a GGUF file that name a folder of the building machine."""
    folders = {str(p) for p in (ROOT, *roots)} | {os.path.expanduser("~"), tempfile.gettempdir()}
    return {k: v for k, v in fields["strings"].items() if any(f in v for f in folders)}


def gguf_fields(path):
    """The tensor types and a few metadata fields of a GGUF file, read by llama.cpp's own gguf package."""
    script = ("import gguf, json, sys; r = gguf.GGUFReader(sys.argv[1]); "
              "f = lambda k: r.fields[k].contents() if k in r.fields else None; "
              "print(json.dumps({'types': {t.name: t.tensor_type.name for t in r.tensors}, "
              "'pre': f('tokenizer.ggml.pre'), 'tokens': len(f('tokenizer.ggml.tokens') or []), "
              "'imatrix': [f('quantize.imatrix.file'), f('quantize.imatrix.dataset')], "
              "'file_type': f('general.file_type'), "
              "'strings': {k: v.contents() for k, v in r.fields.items() if isinstance(v.contents(), str)}}))")
    env = dict(os.environ, PYTHONPATH=str(LLAMACPP / "share" / "llama.cpp" / "gguf-py"))
    out = subprocess.run([str(LLAMACPP / "bin" / "python"), "-c", script, str(path)], capture_output=True,
                         text=True, env=env, check=True, timeout=120)
    return json.loads(out.stdout)


@needs_llamacpp
def test_q4_k_m_is_llama_cpps_own(q4):
    manifest = json.loads((q4 / "manifest.json").read_text())
    method = manifest["method"]
    assert method["format"] == "gguf" and method["name"] == "gguf-q4_k_m"
    assert method["details"]["imatrix"]["texts"] == 64 and "importance matrix" in method["scheme"]
    fields = gguf_fields(q4 / "model.gguf")
    types = fields["types"]
    assert types["blk.0.attn_q.weight"] == "Q4_K" and "Q6_K" in types.values()  # Q4_K_M keeps some at 6 bits
    assert fields["pre"] == "gpt-2" and fields["tokens"] == 1024
    assert fields["imatrix"] == ["imatrix.gguf", "calibration.txt"]  # no folder of the building machine
    assert not host_folders(fields, q4.parent)
    assert 0.15 < manifest["size"]["ratio"] < 0.45  # float32 base; the embeddings stay wide on a tiny model


@pytest.fixture(scope="module")
def q4_autoround(tmp_path_factory):
    """The embedded model as Q4_K_M tuned by AutoRound (the shipped recipe, few iterations and texts), built with a
    relative output folder and with the environment that would send auto-round's converter elsewhere (a llama.cpp
    checkout, GitHub's newest): compress pins its bundled copy."""
    root = tmp_path_factory.mktemp("gguf-autoround")
    env = {"COMPRESS_CACHE_DIR": str(root / "cache"), "LLAMA_CPP_ROOT": str(root / "no-llama.cpp"),
           "AUTO_ROUND_GGUF_AUTO_UPDATE": "1"}
    r = run_cli("quantize", str(ROOT / "recipes" / "tiny-llama-gguf-q4_k_m-autoround.yaml"),
                "--set", "method.iterations=8", "--set", "calibration.num_samples=24", "-o", "q4ar", "--json",
                env=env, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in root.iterdir()) == ["cache", "q4ar"]  # no scratch left, none in the cwd
    return root / "q4ar"


@needs_llamacpp
def test_autoround_q4_k_m_is_a_k_quant_llamacpp_serves(q4_autoround, tmp_path):
    """auto-round's GGUF: Q4_K_M's tensor types, the tokenizer named gpt-2 by compress's rule, no folder of the
    building machine in its metadata; llama.cpp's server answers with it far above chance."""
    from compress.core.reports import AccuracyReport

    manifest = json.loads((q4_autoround / "manifest.json").read_text())
    method = manifest["method"]
    assert method["format"] == "gguf" and method["name"] == "gguf-q4_k_m-autoround"
    details = method["details"]
    assert details["algorithm"] == "autoround" and details["iterations"] == 8 and details["auto_round"]
    assert details["calibration"]["texts"] == 24 and details["calibration"]["context"] == 128
    assert "AutoRound (8 iterations)" in method["scheme"]
    assert sorted(p.name for p in q4_autoround.iterdir() if p.suffix == ".gguf") == ["model.gguf"]
    assert (q4_autoround / "config.json").is_file() and (q4_autoround / "tokenizer.json").is_file()
    fields = gguf_fields(q4_autoround / "model.gguf")
    types = fields["types"]
    assert types["blk.0.attn_q.weight"] == "Q4_K" and "Q6_K" in types.values()
    assert fields["pre"] == "gpt-2" and fields["tokens"] == 1024
    assert not host_folders(fields, q4_autoround.parent), host_folders(fields, q4_autoround.parent)
    assert 0.15 < manifest["size"]["ratio"] < 0.45
    r = run_cli("eval", str(q4_autoround), "--engine", "llamacpp", "--tasks", "tiny_facts_mc", "--limit", "60",
                "--json", env={"COMPRESS_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-2000:]
    acc = AccuracyReport.model_validate_json(r.stdout).metric("tiny_facts_mc/acc").value
    assert 0.5 < acc <= 1.0  # the base answers 84.5%; chance is 25%


@needs_llamacpp
def test_quality_through_llamacpp_is_lm_evals_own_figure(q4, tmp_path):
    """compress eval --engine llamacpp and lm-eval's own CLI (--model gguf) against a llama.cpp server on the
    same file give the same accuracy; the report names the engine, and no server outlives either."""
    from compress.core.reports import AccuracyReport
    from compress.measure.engines.llamacpp import LlamaCppServer

    env = {"COMPRESS_CACHE_DIR": str(tmp_path / "cache")}
    ours = run_cli("eval", str(q4), "--engine", "llamacpp", "--tasks", "tiny_facts_mc", "--limit", "120",
                   "--json", env=env)
    assert ours.returncode == 0, ours.stderr[-2000:]
    report = AccuracyReport.model_validate_json(ours.stdout)
    assert report.settings["backend"] == "llamacpp" and report.settings["engine"].startswith("llama-cpp-python")
    acc = report.metric("tiny_facts_mc/acc").value
    assert 0.5 < acc <= 1.0  # the base answers 84.5%; a Q4_K_M of it answers far above chance (25%)
    lm_eval = os.path.join(os.path.dirname(sys.executable), "lm_eval")
    with LlamaCppServer(q4, log_path=tmp_path / "server.log", logits_all=True) as server:  # as compress eval's
        cmd = [lm_eval, "run", "--model", "gguf", "--model_args", f"base_url={server.url}",
               "--include_path", str(ROOT / "evals"), "--tasks", "tiny_facts_mc", "--limit", "120",
               "--seed", "1234", "--output_path", str(tmp_path / "out")]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                           env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
        pgid = server.pgid
    assert p.returncode == 0, p.stderr[-3000:]
    theirs = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert theirs["results"]["tiny_facts_mc"]["acc,none"] == pytest.approx(acc, abs=1e-12)
    from compress.core.procs import group_alive

    assert not group_alive(pgid)


@needs_llamacpp
def test_a_gguf_recipe_is_gated_on_llamacpp_end_to_end_and_exported(tmp_path):
    """compress run of the shipped GGUF recipe: the candidate evaluated through llama.cpp and paired with the base
    in transformers, both served by llama.cpp (the base as its F16 conversion), llama.cpp's greedy tokens against
    transformers' reading of the same file (servable), a PASS exported and verified; no server left behind."""
    from compress.core.procs import registered

    env = {"COMPRESS_RUNS_DIR": str(tmp_path / "runs"), "COMPRESS_CACHE_DIR": str(tmp_path / "cache")}
    checks = ("[{metric: tiny_facts_mc/acc, max_regression: 0.03}, {metric: size_ratio, max: 0.5}, "
              "{metric: cost_ratio, at: 4, max: 100}]")  # the cost is measured and reported; not this test's verdict
    out = tmp_path / "dist"
    r = run_cli("run", str(ROOT / "recipes" / "tiny-llama-gguf-q4_k_m.yaml"), "--set", "evals.limit=200",
                "--set", "bench.repeats=4", "--set", "bench.rounds=2", "--set", "bench.output_tokens=8",
                "--set", f"gate.checks={checks}", "--set", "gate.servable={engine: llamacpp, min_agreement: 0.5}",
                "-o", str(out), "--json", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    evidence = out / "evidence"
    cand = json.loads((evidence / "candidate-accuracy.json").read_text())
    base = json.loads((evidence / "baseline-accuracy.json").read_text())
    assert cand["settings"]["backend"] == "llamacpp" and base["settings"]["backend"] == "hf"
    speed = json.loads((evidence / "speed.json").read_text())
    assert {speed[s]["runtime"]["engine"] for s in ("baseline", "candidate")} == {"llamacpp"}
    assert speed["baseline"]["runtime"]["command"][3].endswith("-f16/model.gguf")  # the base's F16 conversion
    # Served as users serve: the last position's logits only, and OpenMP threads that sleep while they wait (a
    # spinning one holds a core the server's event loop and the client need); both in the report and the key.
    for side in ("baseline", "candidate"):
        runtime = speed[side]["runtime"]
        assert runtime["command"][runtime["command"].index("--logits_all") + 1] == "false"
        assert runtime["env"] == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert "OMP_WAIT_POLICY=PASSIVE" in speed["settings"]["engine"]
    levels = {run["level"] for run in speed["candidate"]["runs"]}
    assert levels == {1, 4} and all(q["prompt_tokens"] > 0 and q["output_tokens"] == 8
                                    for run in speed["candidate"]["runs"] for q in run["requests"])
    servable = json.loads((evidence / "servable.json").read_text())
    assert servable["result"]["engine"] == "llamacpp" and servable["result"]["compared"] == "text"
    assert servable["result"]["agreement"] >= 0.5, servable["result"]  # 6 of 8 here: near-ties in a tiny model
    v = run_cli("verify", str(out), env=env)
    assert v.returncode == 0 and "PASS follows from the evidence" in v.stdout, v.stdout + v.stderr
    assert (out / "model.gguf").is_file() and not registered()
    assert not subprocess.run(["pgrep", "-f", "llamacpp_serve.py"], capture_output=True).stdout
