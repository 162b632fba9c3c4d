"""GPTQ into the Hugging Face GPTQ format through GPTQModel (the maintained successor of auto-gptq).

Artifacts load in transformers (with optimum and gptqmodel installed), TGI and vLLM.
"""
from __future__ import annotations

import os
import re
from typing import Any

from compress.data import load_texts
from compress.errors import QuantizationError
from compress.methods.base import MethodContext, Timer, meta_model, output_embedding_name, require, resolve_ignore

EXTRA = "gptq"


def run(ctx: MethodContext, timer: Timer) -> dict[str, Any]:
    # GPTQModel sizes its CPU worker pools from this variable and refuses to start on small
    # machines without it ("requests 2 workers but parent 'cpu' only has 1").
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, min(2, (os.cpu_count() or 2) - 1))))
    gptqmodel = require("gptqmodel", "gptqmodel", EXTRA, "GPTQ in the Hugging Face format")
    require("optimum", "optimum", EXTRA, "loading GPTQ checkpoints in transformers")
    import torch

    method, spec, cal = ctx.recipe.method, ctx.recipe.model, ctx.recipe.calibration
    skeleton = meta_model(ctx)
    ignore = resolve_ignore(skeleton, method.ignore)
    head = output_embedding_name(skeleton)
    # GPTQModel never quantizes the output head unless asked; other ignored layers become
    # negative rules of its `dynamic` config.
    dynamic = {f"-:^{re.escape(name)}$": {} for name in ignore if name != head} or None
    qconfig = gptqmodel.QuantizeConfig(
        bits=method.bits, group_size=method.group_size or -1, sym=method.symmetric, desc_act=method.act_order,
        damp_percent=method.dampening_frac, dynamic=dynamic, lm_head=head not in ignore,
    )
    texts = load_texts(cal.dataset, split=cal.split, config_name=cal.config_name, text_field=cal.text_field,
                       num_samples=cal.num_samples, seed=cal.seed)
    ctx.log(f"calibration: {len(texts)} samples from {cal.dataset}")
    device = "cuda:0" if ctx.device.startswith("cuda") else "cpu"
    dtype = torch.float32 if spec.dtype == "float32" or device == "cpu" else getattr(torch, spec.dtype, "auto")
    torch.manual_seed(cal.seed)
    with timer("load"):
        try:
            model = gptqmodel.GPTQModel.load(str(ctx.base.path), qconfig, device=device, dtype=dtype,
                                             trust_remote_code=spec.trust_remote_code)
        except (TypeError, ValueError, KeyError, NotImplementedError) as e:
            raise QuantizationError(f"GPTQModel cannot load this model: {str(e).splitlines()[0]}",
                                    hint="use algorithm: gptq (llm-compressor) for architectures GPTQModel lacks")
    with timer("quantize"):
        model.quantize(texts, batch_size=min(8, len(texts)))
    with timer("save"):
        model.save(str(ctx.out_dir))
    return {"ignore": ignore, "calibration_samples": len(texts), "gptqmodel_dynamic": list(dynamic or {})}
