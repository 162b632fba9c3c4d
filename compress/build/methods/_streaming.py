"""Data-free schemes, tensor by tensor: the model is never loaded.

FP8-dynamic, FP8-block, MXFP4 and round-to-nearest integer weights need no calibration data, so
each weight can be quantized on its own. Each Linear weight is read from its safetensors shard alone (plain reads,
not a memory map, whose touched pages would count against the process), quantized with
llm-compressor's model-free converter (the observers and compressors ``oneshot`` uses), and
collected into output shards of at most ``SHARD_BYTES``. Peak memory is bounded by one output
shard and one tensor, not by the model or its input shards. The artifact is the same
compressed-tensors format with the same ``quantization_config`` as the in-memory path writes.

Which tensors are Linear weights is read from the model's module tree built on the meta device
(no weights), so the layers quantized are exactly those the in-memory path quantizes: every
``torch.nn.Linear`` but the ``ignore`` list. Everything else (embeddings, norms, the output
layer when ignored) keeps the checkpoint's bytes and dtype.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from compress.build.methods import _llmcompressor as llmc
from compress.build.methods.base import MethodContext, Timer, meta_model, resolve_ignore

# The files of a model directory an artifact carries besides its weights.
CARRIED = re.compile(r"^(config\.json|generation_config\.json|.*token.*\.json|.*\.model|merges\.txt|vocab\.(json|txt)"
                     r"|chat_template\.(jinja|json)|special_tokens_map\.json|added_tokens\.json"
                     r"|preprocessor_config\.json)$")
SHARD_BYTES = 1 << 30  # the most tensor bytes per output shard, and so held in memory at once
INDEX = "model.safetensors.index.json"


def eligible(ctx: MethodContext) -> bool:
    """Whether the recipe's method can stream: a data-free scheme through llm-compressor, no KV
    cache scales to measure, safetensors weights, and no dtype change asked of the unquantized
    layers (``model.dtype`` is ``auto`` or the checkpoint's own)."""
    from compress.core.models import checkpoint_dtype
    from compress.core.weights import check_safetensors

    m = ctx.recipe.method
    # (NVFP4 is data-free only as W4A16, and even then its global scale is shared by the layers an
    # engine fuses, q/k/v and gate/up, so its tensors are not independent: it takes the in-memory path.)
    data_free = ((m.kind == "fp8" and m.scheme in ("dynamic", "block")) or (m.kind == "int4" and m.algorithm == "rtn")
                 or (m.kind == "fp4" and m.format == "mxfp4"))
    if not data_free or getattr(m, "kv_cache", None) or not any(Path(ctx.base.path).glob("*.safetensors")):
        return False
    dtype = ctx.recipe.model.dtype
    if dtype not in ("auto", checkpoint_dtype(ctx.base.path)):
        return False
    # The module tree's names must be the checkpoint's: a checkpoint whose keys transformers
    # renames on load (older layouts, some multimodal models) takes the in-memory path.
    import torch

    stored = {name for shard in Path(ctx.base.path).glob("*.safetensors") for name in check_safetensors(shard)}
    return {f"{n}.weight" for n, mod in meta_model(ctx).named_modules() if isinstance(mod, torch.nn.Linear)} <= stored


def run(ctx: MethodContext, groups: dict[str, Any], timer: Timer) -> dict[str, Any]:
    """Quantize ``ctx.base`` tensor by tensor into ``ctx.out_dir`` with compressed-tensors config
    groups (``{"group_0": QuantizationScheme, ...}``; the first that names a layer is its scheme)
    for every Linear layer not ignored.

    Returns:
        Details for the manifest (ignored layers, layers quantized, shards written, the path taken).
    """
    import torch

    llmc.load("llmcompressor", "quantization into compressed-tensors")
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus
    from llmcompressor.entrypoints.model_free.converter import ModelFreePtqConverter
    from llmcompressor.entrypoints.model_free.save_utils import update_config

    from compress.core.weights import read_tensors, release_freed_memory

    with timer("load"):
        skeleton = meta_model(ctx)
        ignore = resolve_ignore(skeleton, ctx.recipe.method.ignore)
        linear = {n for n, mod in skeleton.named_modules() if isinstance(mod, torch.nn.Linear)}
    quantized = {f"{n}.weight" for n in linear - set(ignore)}
    config = QuantizationConfig(config_groups=groups, ignore=ignore,
                                quantization_status=QuantizationStatus.INITIALIZED)
    converter = ModelFreePtqConverter(config)
    device = torch.device("cuda" if ctx.device.startswith("cuda") else "cpu")
    inputs = sorted(Path(ctx.base.path).glob("*.safetensors"))
    for f in Path(ctx.base.path).iterdir():
        if f.is_file() and CARRIED.match(f.name):
            shutil.copyfile(f, ctx.out_dir / f.name)
    ctx.log(f"streaming: {len(inputs)} shard(s) read one tensor at a time; the model is never loaded")
    writer = ShardWriter(ctx.out_dir)
    with llmc.quiet_logs(), timer("quantize"):
        for k, shard in enumerate(inputs, 1):
            for name, tensor in read_tensors(shard):
                if name in quantized:
                    out = converter.process({name: tensor.to(device)})
                    del tensor
                    writer.add({key: value.cpu() for key, value in out.items()})
                    release_freed_memory()  # the input and the converter's working copies
                else:
                    writer.add({name: tensor})
            ctx.log(f"streaming: input shard {k}/{len(inputs)} done")
        shards = writer.close()
    update_config(str(ctx.out_dir), config)
    return {"ignore": ignore, "calibration_samples": 0, "layers_quantized": len(quantized),
            "path": "streamed tensor by tensor (llm-compressor model-free converter)", "shards": shards}


class ShardWriter:
    """Collects tensors into shards of at most ``SHARD_BYTES`` (a larger tensor gets one of its
    own), writes each when full, and names them as ``save_pretrained`` does: ``model.safetensors``
    when one shard holds everything (written under that name), otherwise
    ``model-0000K-of-0000N.safetensors`` with an index (written as ``model-0000K.safetensors``
    until N is known)."""

    def __init__(self, out: Path, limit: int | None = None) -> None:
        self.out, self.limit = Path(out), limit or SHARD_BYTES
        self.pending: dict[str, Any] = {}
        self.pending_bytes = 0
        self.written: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, tensors: dict[str, Any]) -> None:
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.pending and self.pending_bytes + nbytes > self.limit:
            self._flush(f"model-{len(self.written) + 1:05d}.safetensors")
        self.pending.update(tensors)
        self.pending_bytes += nbytes

    def _flush(self, name: str) -> None:
        from safetensors.torch import save_file

        from compress.core.weights import release_freed_memory

        path = self.out / name
        save_file({k: v.contiguous() for k, v in self.pending.items()}, str(path), metadata={"format": "pt"})
        self.written.append((path, sorted(self.pending)))
        self.total += self.pending_bytes
        self.pending, self.pending_bytes = {}, 0
        release_freed_memory()

    def close(self) -> int:
        """Write what is pending, give the shards their final names, write the index (several
        shards). Returns the number of shards."""
        from compress.core.artifact import write_json

        if not self.written:
            self._flush("model.safetensors")
            return 1
        if self.pending:
            self._flush(f"model-{len(self.written) + 1:05d}.safetensors")
        n = len(self.written)
        weight_map = {}
        for k, (path, names) in enumerate(self.written, 1):
            final = f"model-{k:05d}-of-{n:05d}.safetensors"
            os.replace(path, self.out / final)
            weight_map.update(dict.fromkeys(names, final))
        write_json(self.out / INDEX, {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))})
        return n
