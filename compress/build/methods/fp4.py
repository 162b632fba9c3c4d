"""4-bit floating point (E2M1) microscaling formats through llm-compressor into compressed-tensors.

- ``nvfp4``: groups of 16 weights share an FP8 (E4M3) scale, and each tensor one FP32 global
  scale (the layers an engine fuses, q/k/v and gate/up, share theirs). As W4A4 the activations are
  quantized the same way at run time, against a global scale measured on calibration text; as
  W4A16 (``weights_only``) no data is needed. Native on NVIDIA Blackwell.
- ``mxfp4``: the OCP MX format, groups of 32 weights share a power-of-two (E8M0) scale; activations
  (W4A4) are scaled at run time. No calibration: the artifact streams tensor by tensor.

These are a kind of their own rather than ``int4`` algorithms (see ``Fp4Method``): each format
fixes its group size, scale type and symmetry. On a CPU, transformers runs the artifacts by
decompressing the weights on load; serving engines need a GPU kernel.
"""
from __future__ import annotations

from compress.build.methods import _llmcompressor as llmc, _streaming
from compress.core.errors import QuantizationError
from compress.build.methods.base import MethodContext, MethodResult, Timer, meta_model, quantizable_linears, resolve_ignore

# (format, weights_only) -> (compressed-tensors preset, group size, human name)
PRESETS = {
    ("nvfp4", False): ("NVFP4", 16, "NVFP4 W4A4, groups of 16 (FP8 scales, per-tensor global scale), "
                                    "activations calibrated"),
    ("nvfp4", True): ("NVFP4A16", 16, "NVFP4 W4A16, groups of 16 (FP8 scales, per-tensor global scale)"),
    ("mxfp4", False): ("MXFP4", 32, "MXFP4 W4A4, groups of 32 (power-of-two scales), activations dynamic"),
    ("mxfp4", True): ("MXFP4A16", 32, "MXFP4 W4A16, groups of 32 (power-of-two scales)"),
}


def calibrated(method) -> bool:
    """Whether the scheme measures anything on calibration text: NVFP4's activation global scales."""
    return method.format == "nvfp4" and not method.weights_only


def apply(ctx: MethodContext) -> MethodResult:
    m = ctx.recipe.method
    preset, group, name = PRESETS[(m.format, m.weights_only)]
    quant = llmc.load("llmcompressor.modifiers.quantization", f"{m.format.upper()} quantization")
    _check_widths(ctx, group)
    timer = Timer()
    if _streaming.eligible(ctx):
        from compressed_tensors.quantization import preset_name_to_scheme

        details = _streaming.run(ctx, {"group_0": preset_name_to_scheme(preset, ["Linear"])}, timer)
        details["preset"] = preset
        return MethodResult(format="compressed-tensors", scheme=name, details=details, timings=timer.timings)
    details = llmc.run(ctx, lambda model, ignore: [
        quant.QuantizationModifier(targets="Linear", scheme=preset, ignore=ignore,
                                   kv_cache_scheme=llmc.kv_cache_scheme(ctx))],
        calibrate=calibrated(m), timer=timer)
    details["preset"] = preset
    return MethodResult(format="compressed-tensors", scheme=name + llmc.kv_cache_label(ctx), details=details,
                        timings=timer.timings)


def _check_widths(ctx: MethodContext, group: int) -> None:
    """Fail before any work when a layer's input width is not a multiple of the format's group."""
    skeleton = meta_model(ctx)
    for name, mod in quantizable_linears(skeleton, resolve_ignore(skeleton, ctx.recipe.method.ignore)):
        if mod.in_features % group:
            raise QuantizationError(
                f"{ctx.recipe.method.format} quantizes in groups of {group}, which do not divide layer '{name}' "
                f"(input width {mod.in_features})", hint=f"add '{name}' to ignore")
