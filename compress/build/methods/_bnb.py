"""Shared plumbing for bitsandbytes (LLM.int8 and NF4): quantize on load, save, reload plainly."""
from __future__ import annotations

from typing import Any

from compress.build.methods.base import MethodContext, Timer, meta_model, require, resolve_ignore, save_tokenizer
from compress.core.models import load_model

EXTRA = "bnb"


def run(ctx: MethodContext, config_kwargs: dict[str, Any], timer: Timer) -> dict[str, Any]:
    """Load the base with a BitsAndBytesConfig and save the quantized weights."""
    require("bitsandbytes", "bitsandbytes", EXTRA, "LLM.int8 and NF4 quantization")
    import torch
    from transformers import BitsAndBytesConfig

    ignore = resolve_ignore(meta_model(ctx), ctx.recipe.method.ignore)
    qconfig = BitsAndBytesConfig(llm_int8_skip_modules=ignore or None, **config_kwargs)
    device_map = {"": 0} if torch.cuda.is_available() and ctx.device.startswith("cuda") else {"": "cpu"}
    spec = ctx.recipe.model
    with timer("quantize"):
        model = load_model(ctx.base.path, dtype=spec.dtype, device="cpu", trust_remote_code=spec.trust_remote_code,
                           allow_pickle=spec.allow_pickle, quantization_config=qconfig, device_map=device_map)
    with timer("save"):
        model.save_pretrained(str(ctx.out_dir))
        save_tokenizer(ctx)
    layers = sum(1 for _, m in model.named_modules() if type(m).__name__ in ("Linear8bitLt", "Linear4bit"))
    return {"ignore": ignore, "layers_quantized": layers, "device_map": str(device_map[""])}
