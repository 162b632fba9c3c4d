"""FP8 W8A8 through llm-compressor into compressed-tensors (served by vLLM, SGLang, transformers).

``dynamic``: FP8 weights per output channel, activations quantized per token at run time; no
calibration. ``static``: FP8 weights and activations per tensor, activation scales measured
on calibration text. Both need a GPU with native FP8 (compute capability 8.9+: Ada, Hopper,
Blackwell) to run fast; elsewhere the artifact is still produced, with a warning.
"""
from __future__ import annotations

from compress.core.env import device_info
from compress.build.methods import _llmcompressor as llmc, _streaming
from compress.build.methods.base import MethodContext, MethodResult, Timer


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
    preset = "FP8_DYNAMIC" if method.scheme == "dynamic" else "FP8"
    timer = Timer()
    name = ("FP8 W8A8, weights per channel, activations per token (dynamic)" if method.scheme == "dynamic"
            else "FP8 W8A8, weights and activations per tensor (static, calibrated)")
    if _streaming.eligible(ctx):  # dynamic FP8 needs no data: tensor by tensor, never loading the model
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
