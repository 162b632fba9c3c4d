"""GPTQ into the Hugging Face GPTQ format through GPTQModel (the maintained successor of auto-gptq).

Artifacts load in transformers (with optimum and gptqmodel installed), TGI and vLLM.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from compress.core.data import load_texts
from compress.core.errors import QuantizationError
from compress.build.methods.base import MethodContext, Timer, meta_model, output_embedding_name, require, resolve_ignore

EXTRA = "gptq"


def run(ctx: MethodContext, timer: Timer) -> dict[str, Any]:
    # GPTQModel sizes its CPU worker pools from this variable when it is imported; its model
    # loader alone asks for two workers, so below two it refuses to start ("requests 2 workers
    # but parent 'cpu' only has 1"), which is what it picks by itself on a 2-core machine.
    try:
        workers = int(os.environ.get("GPTQMODEL_CPU_WORKERS", "0"))
    except ValueError:
        workers = 0
    os.environ["GPTQMODEL_CPU_WORKERS"] = str(max(2, workers or min(4, os.cpu_count() or 2)))
    with _log_dir_outside_cwd():
        return _run(ctx, timer)


@contextlib.contextmanager
def _log_dir_outside_cwd():
    """GPTQModel writes a per-layer log file under `logs/` in the current directory (from a
    background thread, so the directory must outlive the call); keep the user's working
    directory untouched by pointing it at a private folder in the user's cache."""
    try:
        from gptqmodel.looper import loop_processor
    except ImportError:  # not installed: `require` names the extra to install
        yield
        return
    saved = loop_processor._PROJECT_LOG_DIR
    from compress.core.procs import private_dir

    loop_processor._PROJECT_LOG_DIR = private_dir("gptqmodel-logs")
    try:
        yield
    finally:
        loop_processor._PROJECT_LOG_DIR = saved


def _run(ctx: MethodContext, timer: Timer) -> dict[str, Any]:
    gptqmodel = require("gptqmodel", "gptqmodel", EXTRA, "GPTQ in the Hugging Face format")
    from logbar import LogBar

    LogBar.shared().setLevel(os.environ.get("COMPRESS_BACKEND_LOG", "WARNING").upper())
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
        # Its disk offload loses output layers not named lm_head (GPT-NeoX's embed_out:
        # "Offloaded tensor 'lm_head.weight' not found"); compress loads the model in memory anyway.
        offload_to_disk=False,
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
                                    hint="use algorithm: gptq (llm-compressor) for architectures GPTQModel lacks") from None
    with timer("quantize"):
        model.quantize(texts, batch_size=min(8, len(texts)))
    with timer("save"):
        model.save(str(ctx.out_dir))
    return {"ignore": ignore, "calibration_samples": len(texts), "gptqmodel_dynamic": list(dynamic or {})}
