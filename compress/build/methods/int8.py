"""INT8: W8A8 through llm-compressor, or LLM.int8 through bitsandbytes.

``w8a8``: SmoothQuant moves activation outliers into the weights, then GPTQ quantizes the
weights to INT8 per output channel; activations are quantized per token at run time.
compressed-tensors format, served by vLLM and SGLang on any recent NVIDIA GPU.
``llm-int8``: bitsandbytes' mixed INT8 matmul with fp16 outlier columns (threshold 6.0);
served by transformers and TGI.
"""
from __future__ import annotations

from compress.build.methods import _bnb, _llmcompressor as llmc
from compress.build.methods.base import MethodContext, MethodResult, Timer


def apply(ctx: MethodContext) -> MethodResult:
    method = ctx.recipe.method
    timer = Timer()
    if method.scheme == "llm-int8":
        details = _bnb.run(ctx, {"load_in_8bit": True, "llm_int8_threshold": method.llm_int8_threshold}, timer)
        details["threshold"] = method.llm_int8_threshold
        return MethodResult(format="bitsandbytes", scheme=f"LLM.int8 (outlier threshold {method.llm_int8_threshold})",
                            details=details, timings=timer.timings)
    quant = llmc.load("llmcompressor.modifiers.quantization", "INT8 W8A8")
    smooth = llmc.load("llmcompressor.modifiers.smoothquant", "SmoothQuant")

    def modifiers(model, ignore):
        # llm-compressor knows which norm feeds which layers for common architectures; for the
        # rest the mappings are read off the model (see _llmcompressor.norm_consumers).
        return [
            smooth.SmoothQuantModifier(smoothing_strength=method.smoothing_strength,
                                       mappings=llmc.smoothquant_mappings(model, ignore)),
            quant.GPTQModifier(targets="Linear", scheme="W8A8", ignore=ignore, dampening_frac=method.dampening_frac,
                               kv_cache_scheme=llmc.kv_cache_scheme(ctx)),
        ]

    details = llmc.run(ctx, modifiers, calibrate=True, timer=timer)
    details.update(smoothing_strength=method.smoothing_strength, preset="W8A8")
    return MethodResult(format="compressed-tensors",
                        scheme=f"INT8 W8A8, SmoothQuant {method.smoothing_strength} + GPTQ, weights per channel, "
                               "activations per token" + llmc.kv_cache_label(ctx),
                        details=details, timings=timer.timings)
