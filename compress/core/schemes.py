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
    "int8-w8a8": {"kind": "int8", "scheme": "w8a8"},
    "int8-llm-int8": {"kind": "int8", "scheme": "llm-int8"},
    "int4-gptq": {"kind": "int4", "algorithm": "gptq"},
    "int4-awq": {"kind": "int4", "algorithm": "awq"},
    "int4-rtn": {"kind": "int4", "algorithm": "rtn"},
    "int4-gptq-hf": {"kind": "int4", "algorithm": "gptq-hf"},
    "int4-nf4": {"kind": "int4", "algorithm": "nf4"},
}

SCHEME_HELP = {
    "fp8-dynamic": "FP8 W8A8, per-token dynamic activations, no calibration (compressed-tensors)",
    "fp8-static": "FP8 W8A8, calibrated per-tensor activation scales (compressed-tensors)",
    "int8-w8a8": "INT8 W8A8, SmoothQuant + GPTQ, calibrated (compressed-tensors)",
    "int8-llm-int8": "LLM.int8 with outlier decomposition (bitsandbytes)",
    "int4-gptq": "W4A16 GPTQ, calibrated (compressed-tensors)",
    "int4-awq": "W4A16 AWQ, calibrated (compressed-tensors)",
    "int4-rtn": "W4A16 round-to-nearest, no calibration (compressed-tensors)",
    "int4-gptq-hf": "4-bit GPTQ in the Hugging Face GPTQ format (GPTQModel)",
    "int4-nf4": "NF4 4-bit normal float (bitsandbytes)",
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
    return kind
