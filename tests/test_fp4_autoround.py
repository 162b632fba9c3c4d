"""The microscaling formats (NVFP4, MXFP4), FP8 with 128x128 weight blocks, and AutoRound: each built on the
embedded model writes the compressed-tensors config its format is read by, loads back in transformers (FP4
decompressed, in float32) with output close to the base, and refuses bad recipe fields with a message that says
what to do."""
import json

import pytest
import torch

from compress import runs
from compress.core.errors import RecipeError
from compress.core.models import load_model, load_tokenizer
from compress.core.recipe import validate_document
from compress.core.schemes import SCHEME_HELP, SCHEMES, describe_method, scheme_method
from conftest import BUILTIN, ROOT

PPL_TEXTS = ROOT / "evals" / "data" / "tiny_bios_ppl.jsonl"


def recipe(method: dict, **calibration):
    return validate_document({"name": "t", "model": {"id": "builtin:tiny-llama"}, "method": method,
                              "calibration": calibration}, "test")


def build(method: dict, **calibration):
    manifest, _, path = runs.build(recipe(method, **calibration), log=lambda m: None, warn=lambda m: None)
    return manifest, path, json.loads((path / "config.json").read_text())["quantization_config"]


@pytest.fixture(scope="module")
def base_logits():
    tok = load_tokenizer(BUILTIN)
    texts = [json.loads(line)["text"] for line in PPL_TEXTS.read_text().splitlines()[:16]]
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return enc, load_model(BUILTIN)(**enc).logits


def agreement(path, base_logits) -> float:
    """Top-1 agreement with the base over 16 held-out documents, the candidate loaded in float32."""
    enc, lb = base_logits
    model = load_model(path)
    assert next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        lc = model(**enc).logits
    assert torch.isfinite(lc).all()
    mask = enc["attention_mask"].bool()
    return (((lc.argmax(-1) == lb.argmax(-1)) & mask).sum() / mask.sum()).item()


def test_schemes_have_help_and_short_names():
    for name in ("fp8-block", "nvfp4", "mxfp4", "int4-autoround"):
        assert name in SCHEMES and SCHEME_HELP[name]
        assert describe_method(recipe(scheme_method(name)).effective()["method"]) == name
    assert describe_method({"kind": "fp4", "format": "mxfp4", "weights_only": True, "kv_cache": "fp8"}) == \
        "mxfp4a16+kv-fp8"


@pytest.mark.parametrize("method, message", [
    ({"kind": "int4", "algorithm": "autoround", "bits": 8}, "autoround here takes bits 2, 3 or 4"),
    ({"kind": "int4", "algorithm": "autoround", "bits": 5}, "method.bits"),
    ({"kind": "int4", "algorithm": "autoround", "iterations": 0}, "method.iterations"),
    ({"kind": "int4", "algorithm": "gptq", "iterations": 50}, "iterations is autoround's setting"),
    ({"kind": "fp4", "format": "fp6"}, "method.format"),
    ({"kind": "fp4", "group_size": 64}, "unknown key"),
    ({"kind": "fp8", "scheme": "blocks"}, "method.scheme"),
])
def test_bad_fields_are_refused(method, message):
    with pytest.raises(RecipeError) as info:
        recipe(method)
    assert message in str(info.value), str(info.value)


def test_autoround_iterations_do_not_change_other_recipes_hash():
    """``iterations`` is autoround's alone: the other algorithms' effective recipes (and so their artifact keys)
    are what they were before it existed."""
    assert "iterations" not in recipe({"kind": "int4", "algorithm": "gptq"}).effective()["method"]
    assert recipe({"kind": "int4", "algorithm": "autoround"}).effective()["method"]["iterations"] == 200


def test_fp8_block(runs_dir, base_logits):
    manifest, path, qc = build(scheme_method("fp8-block"))
    weights = qc["config_groups"]["group_0"]["weights"]
    acts = qc["config_groups"]["group_0"]["input_activations"]
    assert qc["format"] == "float-quantized" and manifest["method"]["details"]["preset"] == "FP8_BLOCK"
    assert weights["strategy"] == "block" and weights["block_structure"] == [128, 128] and weights["type"] == "float"
    assert acts["dynamic"] is True and acts["group_size"] == 128
    assert manifest["method"]["details"]["calibration_samples"] == 0  # data-free: streamed
    assert agreement(path, base_logits) >= 0.95  # measured 0.99 on 32 documents


def test_mxfp4(runs_dir, base_logits):
    manifest, path, qc = build(scheme_method("mxfp4"))
    weights = qc["config_groups"]["group_0"]["weights"]
    assert qc["format"] == "mxfp4-pack-quantized" and manifest["method"]["details"]["preset"] == "MXFP4"
    assert weights["group_size"] == 32 and weights["num_bits"] == 4 and weights["scale_dtype"] == "torch.uint8"
    assert qc["config_groups"]["group_0"]["input_activations"]["dynamic"] is True
    assert agreement(path, base_logits) >= 0.90  # measured 0.96 on 32 documents


def test_nvfp4_weights_only_with_fp8_kv_cache(runs_dir, base_logits):
    """NVFP4A16 with its KV cache option: groups of 16 with FP8 scales and a global scale, FP8 key/value scales."""
    manifest, path, qc = build({"kind": "fp4", "format": "nvfp4", "weights_only": True, "kv_cache": "fp8"},
                               num_samples=4)
    weights = qc["config_groups"]["group_0"]["weights"]
    assert qc["format"] == "nvfp4-pack-quantized" and manifest["method"]["details"]["preset"] == "NVFP4A16"
    assert weights["group_size"] == 16 and weights["strategy"] == "tensor_group"
    assert weights["scale_dtype"] == "torch.float8_e4m3fn"
    assert qc["config_groups"]["group_0"]["input_activations"] is None
    assert qc["kv_cache_scheme"]["num_bits"] == 8 and qc["kv_cache_scheme"]["type"] == "float"
    assert agreement(path, base_logits) >= 0.90


def test_nvfp4_w4a4_calibrates_activation_scales(runs_dir, base_logits):
    manifest, path, qc = build(scheme_method("nvfp4"), num_samples=8)
    acts = qc["config_groups"]["group_0"]["input_activations"]
    assert manifest["method"]["details"]["calibration_samples"] == 8
    assert acts["num_bits"] == 4 and acts["group_size"] == 16 and acts["dynamic"] == "local"
    assert agreement(path, base_logits) >= 0.90  # measured 0.97 on 32 documents


@pytest.mark.slow  # about 26 s on 2 CPU cores, most of it importing and setting up auto-round per layer
def test_autoround_asymmetric_keeps_its_zero_points(runs_dir, base_logits):
    """AutoRound with a few iterations: a 4-bit group-128 compressed-tensors artifact whose zero points are
    AutoRound's (llm-compressor 0.14 alone would leave them all at 0)."""
    from safetensors.torch import load_file

    manifest, path, qc = build({"kind": "int4", "algorithm": "autoround", "iterations": 2, "symmetric": False},
                               num_samples=4, max_seq_length=32)
    weights = qc["config_groups"]["group_0"]["weights"]
    assert qc["format"] == "pack-quantized" and weights["num_bits"] == 4 and weights["group_size"] == 128
    assert not weights["symmetric"] and manifest["method"]["config"]["iterations"] == 2
    assert manifest["method"]["scheme"].startswith("W4A16 AUTOROUND g128 asym")
    zero_points = load_file(path / "model.safetensors")["model.layers.0.mlp.down_proj.weight_zero_point"]
    assert zero_points.unique().numel() > 1
    assert agreement(path, base_logits) >= 0.90


def test_vllm_fp4_refusal_is_one_line():
    """vLLM 0.32's CPU build on an NVFP4 artifact (its log, abridged): the root cause, not the wrapper."""
    from compress.measure.engines.vllm_log import last_meaningful_line

    log = (
        "(Worker pid=2112) ERROR 12-06 03:42:43 [multiproc_executor.py:953]     raise ValueError(\n"
        "(Worker pid=2112) ERROR 12-06 03:42:43 [multiproc_executor.py:953] ValueError: Failed to find a kernel "
        "that can implement the NVFP4 linear layer. Reasons: \n"
        "(Worker pid=2112) ERROR 12-06 03:42:43 [multiproc_executor.py:953] \n"
        "(EngineCore pid=1914) ERROR 12-06 03:42:44 [core.py:1510] Exception: WorkerProc initialization failed due "
        "to an exception in a background process. See stack trace for root cause.\n"
        "Exception: WorkerProc initialization failed due to an exception in a background process. See stack trace "
        "for root cause.\n"
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n")
    assert last_meaningful_line(log) == "ValueError: Failed to find a kernel that can implement the NVFP4 linear layer."


def test_search_sizes_and_names_fp4():
    from compress.search import predicted_bytes, slug

    linears = [("a", 256, 256)]
    nv = predicted_bytes({"kind": "fp4", "format": "nvfp4"}, linears, 0, 4, set())
    mx = predicted_bytes({"kind": "fp4", "format": "mxfp4"}, linears, 0, 4, set())
    assert nv == 256 * 128 + 256 * 256 // 16 and mx == 256 * 128 + 256 * 256 // 32
    assert slug({"kind": "fp4", "format": "nvfp4", "weights_only": True}) == "fp4-nvfp4-a16"
    assert slug({"kind": "fp8", "scheme": "block"}) == "fp8-block"


@pytest.mark.parametrize("method, message", [
    ({"kind": "fp4", "format": "mxfp4"}, "mxfp4 quantizes in groups of 32, which do not divide layer"),
    ({"kind": "fp8", "scheme": "block"}, "fp8 block scheme needs layer widths that are multiples of 128"),
])
def test_widths_the_format_cannot_split_are_refused_before_any_work(method, message, tmp_path, runs_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    from compress.core.errors import QuantizationError

    model = tmp_path / "narrow"
    config = LlamaConfig(hidden_size=200, intermediate_size=264, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=4, head_dim=50, vocab_size=1024)
    LlamaForCausalLM(config).save_pretrained(model)
    load_tokenizer(BUILTIN).save_pretrained(model)
    r = validate_document({"name": "narrow", "model": {"id": str(model)}, "method": method}, "test")
    with pytest.raises(QuantizationError, match=message) as info:
        runs.build(r, log=lambda m: None, warn=lambda m: None)
    assert "ignore" in info.value.hint
    assert not list(runs_dir.rglob("model.safetensors")), "nothing half-written"
