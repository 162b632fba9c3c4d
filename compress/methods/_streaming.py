"""Data-free schemes, shard by shard: the model is never loaded.

FP8-dynamic and round-to-nearest integer weights need no calibration data, so each weight can be
quantized on its own. llm-compressor's ``model_free_ptq`` reads one safetensors shard at a time,
quantizes its Linear weights with the same observers and compressors ``oneshot`` uses, and
writes the shard compressed; peak memory is bounded by a shard, not by the model. The artifact
is the same compressed-tensors format with the same ``quantization_config``.

Which tensors are Linear weights is read from the model's module tree built on the meta device
(no weights), so the layers quantized are exactly those the in-memory path quantizes: every
``torch.nn.Linear`` but the ``ignore`` list. Everything else (embeddings, norms, the output
layer when ignored) keeps the checkpoint's bytes and dtype.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from compress.methods import _llmcompressor as llmc
from compress.methods.base import MethodContext, Timer, meta_model, resolve_ignore

# The files of a model directory an artifact carries besides its weights.
CARRIED = re.compile(r"^(config\.json|generation_config\.json|.*token.*\.json|.*\.model|merges\.txt|vocab\.(json|txt)"
                     r"|chat_template\.(jinja|json)|special_tokens_map\.json|added_tokens\.json|preprocessor_config\.json"
                     r"|model\.safetensors\.index\.json|.*\.safetensors)$")


def eligible(ctx: MethodContext) -> bool:
    """Whether the recipe's method can stream: a data-free scheme through llm-compressor, no KV
    cache scales to measure, safetensors weights, and no dtype change asked of the unquantized
    layers (``model.dtype`` is ``auto`` or the checkpoint's own)."""
    from compress.models import checkpoint_dtype

    m = ctx.recipe.method
    data_free = (m.kind == "fp8" and m.scheme == "dynamic") or (m.kind == "int4" and m.algorithm == "rtn")
    if not data_free or getattr(m, "kv_cache", None) or not any(Path(ctx.base.path).glob("*.safetensors")):
        return False
    dtype = ctx.recipe.model.dtype
    return dtype == "auto" or dtype == checkpoint_dtype(ctx.base.path)


def run(ctx: MethodContext, scheme: Any, timer: Timer) -> dict[str, Any]:
    """Quantize ``ctx.base`` shard by shard into ``ctx.out_dir`` with one compressed-tensors
    ``QuantizationScheme`` for every Linear layer not ignored.

    Returns:
        Details for the manifest (ignored layers, layers quantized, shards, the path taken).
    """
    import torch

    llmc.load("llmcompressor", "quantization into compressed-tensors")
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus
    from llmcompressor.entrypoints.model_free import model_free_ptq

    with timer("load"):
        skeleton = meta_model(ctx)
        ignore = resolve_ignore(skeleton, ctx.recipe.method.ignore)
        linear = {n for n, mod in skeleton.named_modules() if isinstance(mod, torch.nn.Linear)}
        # Every other module with a weight (embeddings, norms whatever their names) is left
        # alone, as the in-memory path leaves it: the model-free matcher knows names, not classes.
        others = sorted({name.rpartition(".")[0] for name, _ in skeleton.named_parameters()
                         if name.endswith(".weight")} - linear)
        del skeleton
    config = QuantizationConfig(config_groups={"group_0": scheme}, ignore=ignore + [_exact(n) for n in others],
                                quantization_status=QuantizationStatus.INITIALIZED)
    with tempfile.TemporaryDirectory(prefix=".stage-", dir=ctx.out_dir) as stage:
        for f in Path(ctx.base.path).iterdir():  # only what an artifact carries, linked, not copied
            if f.is_file() and CARRIED.match(f.name):
                os.symlink(f.resolve(), Path(stage) / f.name)
        shards = len(list(Path(stage).glob("*.safetensors")))
        ctx.log(f"streaming: {shards} shard(s), one at a time; the model is never loaded")
        with llmc.quiet_logs(), timer("quantize"):
            model_free_ptq(model_stub=stage, save_directory=str(ctx.out_dir), config=config, max_workers=1,
                           device="cuda" if ctx.device.startswith("cuda") else "cpu")
    _strip_ignore_of_non_linear(ctx.out_dir, others)
    return {"ignore": ignore, "calibration_samples": 0, "layers_quantized": len(linear - set(ignore)),
            "path": "streamed shard by shard (model_free_ptq)", "shards": shards}


def _exact(name: str) -> str:
    return f"re:^{re.escape(name)}$"


def _strip_ignore_of_non_linear(out: Path, others: list[str]) -> None:
    """The written ``quantization_config.ignore`` lists, as ``oneshot`` writes it, the Linear
    layers left unquantized only; the embeddings were never candidates."""
    import json

    from compress.artifact import write_json

    path = out / "config.json"
    config = json.loads(path.read_text())
    qc = config.get("quantization_config") or {}
    drop = {_exact(n) for n in others}
    qc["ignore"] = [n for n in qc.get("ignore", []) if n not in drop]
    write_json(path, config)

