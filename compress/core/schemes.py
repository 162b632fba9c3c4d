"""The quantization schemes by name: the flag form of a recipe's method section.

`compress quantize --scheme NAME` and `compress recipes list` read this table; the recipe schema
turns a name into its method section. The methods themselves live in ``compress.build.methods``.
"""
from __future__ import annotations

from typing import Any

from compress.core.registry import suggest

# The flag form (`compress quantize --scheme NAME`): scheme name -> method section.
SCHEMES: dict[str, dict[str, Any]] = {
    "fp8-dynamic": {"kind": "fp8", "scheme": "dynamic"},
    "fp8-static": {"kind": "fp8", "scheme": "static"},
    "fp8-block": {"kind": "fp8", "scheme": "block"},
    "nvfp4": {"kind": "fp4", "format": "nvfp4"},
    "mxfp4": {"kind": "fp4", "format": "mxfp4"},
    "int8-w8a8": {"kind": "int8", "scheme": "w8a8"},
    "int8-llm-int8": {"kind": "int8", "scheme": "llm-int8"},
    "int4-gptq": {"kind": "int4", "algorithm": "gptq"},
    "int4-awq": {"kind": "int4", "algorithm": "awq"},
    "int4-rtn": {"kind": "int4", "algorithm": "rtn"},
    "int4-autoround": {"kind": "int4", "algorithm": "autoround"},
    "int4-gptq-hf": {"kind": "int4", "algorithm": "gptq-hf"},
    "int4-nf4": {"kind": "int4", "algorithm": "nf4"},
    "gguf-q4_k_m": {"kind": "gguf", "type": "q4_k_m"},
    "gguf-q5_k_m": {"kind": "gguf", "type": "q5_k_m"},
    "gguf-q8_0": {"kind": "gguf", "type": "q8_0"},
    "gguf-f16": {"kind": "gguf", "type": "f16"},
}

SCHEME_HELP = {
    "fp8-dynamic": "FP8 W8A8, per-token dynamic activations, no calibration (compressed-tensors)",
    "fp8-static": "FP8 W8A8, calibrated per-tensor activation scales (compressed-tensors)",
    "fp8-block": "FP8 W8A8, 128x128 weight blocks, per-group dynamic activations, no calibration (compressed-tensors)",
    "nvfp4": "NVFP4 W4A4, groups of 16 with FP8 scales, calibrated activation global scales (compressed-tensors)",
    "mxfp4": "MXFP4 W4A4, groups of 32 with power-of-two scales, no calibration (compressed-tensors)",
    "int8-w8a8": "INT8 W8A8, SmoothQuant + GPTQ, calibrated (compressed-tensors)",
    "int8-llm-int8": "LLM.int8 with outlier decomposition (bitsandbytes)",
    "int4-gptq": "W4A16 GPTQ, calibrated (compressed-tensors)",
    "int4-awq": "W4A16 AWQ, calibrated (compressed-tensors)",
    "int4-rtn": "W4A16 round-to-nearest, no calibration (compressed-tensors)",
    "int4-autoround": "W4A16 AutoRound (sign-gradient tuned rounding), calibrated (compressed-tensors)",
    "int4-gptq-hf": "4-bit GPTQ in the Hugging Face GPTQ format (GPTQModel)",
    "int4-nf4": "NF4 4-bit normal float (bitsandbytes)",
    "gguf-q4_k_m": "GGUF Q4_K_M k-quant with an importance matrix, by llama.cpp's quantizer (llama.cpp)",
    "gguf-q5_k_m": "GGUF Q5_K_M k-quant with an importance matrix, by llama.cpp's quantizer (llama.cpp)",
    "gguf-q8_0": "GGUF Q8_0, 8-bit blocks of 32, by llama.cpp's quantizer (llama.cpp)",
    "gguf-f16": "GGUF F16, llama.cpp's converter alone (llama.cpp)",
}


def scheme_method(name: str) -> dict[str, Any]:
    """The method section for a ``--scheme`` name."""
    if name not in SCHEMES:
        raise suggest(name, list(SCHEMES), "scheme")
    return dict(SCHEMES[name])


def describe_method(method: dict[str, Any]) -> str:
    """A short name for a method section, e.g. ``int4-gptq``, ``fp8-dynamic`` or ``int4-rtn+kv-fp8``."""
    kind = method["kind"]
    kv = f"+kv-{method['kv_cache']}" if method.get("kv_cache") else ""
    if kind == "int4":
        bits = method.get("bits", 4)
        return f"int{bits}-{method.get('algorithm', 'gptq')}{kv}"
    if kind in ("fp8", "int8"):
        return f"{kind}-{method.get('scheme')}{kv}"
    if kind == "fp4":
        return f"{method.get('format', 'nvfp4')}{'a16' if method.get('weights_only') else ''}{kv}"
    if kind == "gguf":
        algorithm = "-autoround" if method.get("algorithm") == "autoround" else ""
        return f"gguf-{method.get('type', 'q4_k_m')}{algorithm}"
    return kind
