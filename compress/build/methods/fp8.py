"""FP8 W8A8 through llm-compressor into compressed-tensors (served by vLLM, SGLang, transformers).

``dynamic``: FP8 weights per output channel, activations quantized per token at run time; no
calibration. ``static``: FP8 weights and activations per tensor, activation scales measured
on calibration text. ``block``: FP8 weights with one scale per 128x128 block, activations
quantized per group of 128 at run time; no calibration (compressed-tensors' FP8_BLOCK, the
layout of DeepSeek-V3's checkpoints). All need a GPU with native FP8 (compute capability 8.9+:
Ada, Hopper, Blackwell) to run fast; elsewhere the artifact is still produced, with a warning.
"""
from __future__ import annotations

from compress.core.env import device_info
from compress.build.methods import _llmcompressor as llmc, _streaming
from compress.build.methods.base import MethodContext, MethodResult, Timer, meta_model, quantizable_linears, resolve_ignore


# scheme -> (compressed-tensors preset, human name)
PRESETS = {
    "dynamic": ("FP8_DYNAMIC", "FP8 W8A8, weights per channel, activations per token (dynamic)"),
    "static": ("FP8", "FP8 W8A8, weights and activations per tensor (static, calibrated)"),
    "block": ("FP8_BLOCK", "FP8 W8A8, weights per 128x128 block, activations per group of 128 (dynamic)"),
}
BLOCK = 128


def check_block_widths(ctx: MethodContext) -> None:
    """Fail before any work when a layer's input width is not a multiple of the block (its activation
    groups of 128 run along it; vLLM's block kernels also need the output width to be one)."""
    from compress.core.errors import QuantizationError

    skeleton = meta_model(ctx)
    for name, mod in quantizable_linears(skeleton, resolve_ignore(skeleton, ctx.recipe.method.ignore)):
        if mod.in_features % BLOCK or mod.out_features % BLOCK:
            raise QuantizationError(
                f"fp8 block scheme needs layer widths that are multiples of {BLOCK}; layer '{name}' is "
                f"{mod.out_features}x{mod.in_features}",
                hint=f"add '{name}' to ignore, or use scheme: dynamic")


def apply(ctx: MethodContext) -> MethodResult:
    import torch

    method = ctx.recipe.method
    llmc_mod = llmc.load("llmcompressor.modifiers.quantization", "FP8 quantization")
    warnings = []
    if not device_info(torch).get("fp8_native"):
        msg = ("this machine has no native FP8 (needs an NVIDIA GPU of compute capability 8.9+); the FP8 "
               "artifact is produced, but runs here only through slower fallbacks")
        warnings.append(msg)
        ctx.warn(msg)
    preset, name = PRESETS[method.scheme]
    timer = Timer()
    if method.scheme == "block":
        check_block_widths(ctx)
    if _streaming.eligible(ctx):  # dynamic and block FP8 need no data: tensor by tensor, never loading the model
        from compressed_tensors.quantization import preset_name_to_scheme

        details = _streaming.run(ctx, {"group_0": preset_name_to_scheme(preset, ["Linear"])}, timer)
        details["preset"] = preset
        return MethodResult(format="compressed-tensors", scheme=name, details=details, warnings=warnings,
                            timings=timer.timings)
    details = llmc.run(ctx, lambda model, ignore: [
        llmc_mod.QuantizationModifier(targets="Linear", scheme=preset, ignore=ignore,
                                      kv_cache_scheme=llmc.kv_cache_scheme(ctx))],
        calibrate=method.scheme == "static", timer=timer)
    details["preset"] = preset
    return MethodResult(format="compressed-tensors", scheme=name + llmc.kv_cache_label(ctx), details=details,
                        warnings=warnings, timings=timer.timings)
