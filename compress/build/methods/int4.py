"""Low-bit weight-only quantization (W4A16 by default; 3 and 2 bits to study the trade-off).

- ``gptq``: GPTQ (second-order error compensation on calibration activations), llm-compressor,
  compressed-tensors: the common 4-bit choice for vLLM/SGLang.
- ``awq``: activation-aware scaling, then quantization; llm-compressor, compressed-tensors.
- ``rtn``: round-to-nearest, no calibration; llm-compressor, compressed-tensors.
- ``autoround``: AutoRound (Intel's auto-round, through llm-compressor's AutoRoundModifier): each
  decoder layer's rounding offsets and clipping ranges tuned by sign-gradient descent
  (``iterations`` steps) to match the layer's float output on calibration activations;
  compressed-tensors, in the layout of GPTQ's artifacts.
- ``gptq-hf``: GPTQ through GPTQModel in the Hugging Face GPTQ format (transformers, TGI, vLLM).
- ``nf4``: bitsandbytes 4-bit normal float, block size 64 (transformers, TGI).
"""
from __future__ import annotations

from compress.core.errors import QuantizationError
from compress.core.models import resolve_dtype
from compress.build.methods import _autoround, _bnb, _gptqmodel, _llmcompressor as llmc, _streaming
from compress.build.methods.base import MethodContext, MethodResult, Timer, check_group_size, meta_model, resolve_ignore


def _scheme_name(m, int8: list[str] | None = None) -> str:
    grouping = f"g{m.group_size}" if m.group_size else "per-channel"
    mixed = f", {len(int8)} layer(s) W8A8 (per-channel, dynamic per-token)" if int8 else ""
    return f"W{m.bits}A16 {m.algorithm.upper()} {grouping} {'sym' if m.symmetric else 'asym'}{mixed}"


def int8_layers(ctx: MethodContext) -> list[str]:
    """The module names the recipe's ``int8_layers`` name, less the ignored ones (checked
    against the model before any work)."""
    m = ctx.recipe.method
    if not m.int8_layers:
        return []
    skeleton = meta_model(ctx)
    ignored = set(resolve_ignore(skeleton, m.ignore))
    return [n for n in resolve_ignore(skeleton, m.int8_layers, "int8_layers") if n not in ignored]


def config_groups(m, int8: list[str]) -> dict:
    """compressed-tensors config groups: every Linear at ``bits``, and the ``int8`` layers at W8A8
    (8-bit weights per output channel, activations quantized per token at run time: the 8-bit
    scheme vLLM serves on CPUs as well as GPUs, where 8-bit weight-only has no CPU kernel). The
    8-bit group comes first and names its layers exactly, so it wins however a reader resolves
    overlaps (llm-compressor and vLLM take exact names before class names; the model-free
    converter takes the first group that matches)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    low = llmc.weight_args(m.bits, m.group_size, m.symmetric)
    if not int8:
        return llmc.scheme(low)
    tokens = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
    return {"group_0": QuantizationScheme(targets=list(int8), weights=llmc.weight_args(8, None, True),
                                         input_activations=tokens),
            "group_1": QuantizationScheme(targets=["Linear"], weights=low)}


def apply(ctx: MethodContext) -> MethodResult:
    m = ctx.recipe.method
    timer = Timer()
    if m.algorithm == "nf4":
        if "group_size" in m.model_fields_set and m.group_size not in (None, 64):
            raise QuantizationError("nf4 uses bitsandbytes' fixed block size of 64",
                                    hint="remove group_size from the recipe for nf4")
        import torch

        details = _bnb.run(ctx, {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                 "bnb_4bit_use_double_quant": m.double_quant,
                                 "bnb_4bit_compute_dtype": torch.float32 if resolve_dtype(ctx.base.path, ctx.recipe.model.dtype) == "float32"
                                 else torch.bfloat16}, timer)
        details.update(blocksize=64, double_quant=m.double_quant)
        return MethodResult(format="bitsandbytes", scheme=f"NF4 (block 64{', double quant' if m.double_quant else ''})",
                            details=details, timings=timer.timings)
    int8 = int8_layers(ctx)
    if m.algorithm == "gptq-hf":
        _check_widths(ctx, m.group_size)
        details = _gptqmodel.run(ctx, timer)
        return MethodResult(format="gptq", scheme=_scheme_name(m), details=details, timings=timer.timings)

    quant = llmc.load("llmcompressor.modifiers.quantization", f"INT{m.bits} {m.algorithm}")
    _check_widths(ctx, m.group_size)
    groups = config_groups(m, int8)
    if _streaming.eligible(ctx):  # round-to-nearest needs no data: tensor by tensor, never loading the model
        details = _streaming.run(ctx, groups, timer)
        details.update({"int8_layers": int8} if int8 else {})
        return MethodResult(format="compressed-tensors", scheme=_scheme_name(m, int8), details=details,
                            timings=timer.timings)
    kv_cache = llmc.kv_cache_scheme(ctx)

    def modifiers(model, ignore):
        if m.algorithm == "gptq":
            return [quant.GPTQModifier(config_groups=groups, ignore=ignore, dampening_frac=m.dampening_frac,
                                       actorder="group" if m.act_order else "static", kv_cache_scheme=kv_cache)]
        if m.algorithm == "awq":
            awq = llmc.load("llmcompressor.modifiers.transform.awq", "AWQ")
            return [awq.AWQModifier(duo_scaling=True, mappings=llmc.awq_mappings(model, ignore)),
                    quant.QuantizationModifier(config_groups=groups, ignore=ignore, kv_cache_scheme=kv_cache)]
        if m.algorithm == "autoround":
            return [_autoround.modifier(groups, ignore, m.iterations, kv_cache, ctx.device)]
        return [quant.QuantizationModifier(config_groups=groups, ignore=ignore, kv_cache_scheme=kv_cache)]  # rtn

    details = llmc.run(ctx, modifiers, calibrate=m.algorithm != "rtn", timer=timer)
    details.update({"int8_layers": int8} if int8 else {})
    return MethodResult(format="compressed-tensors", scheme=_scheme_name(m, int8) + llmc.kv_cache_label(ctx),
                        details=details, timings=timer.timings)


def _check_widths(ctx: MethodContext, group_size: int | None) -> None:
    """Fail before any work when the group size does not divide a layer's input width."""
    skeleton = meta_model(ctx)
    check_group_size(skeleton, resolve_ignore(skeleton, ctx.recipe.method.ignore), group_size)
