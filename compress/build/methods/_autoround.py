"""AutoRound through llm-compressor's ``AutoRoundModifier`` (auto-round does the tuning).

The modifier runs in llm-compressor's sequential pipeline like GPTQ: one decoder layer at a time,
on the calibration activations that reach it, and the model is saved as compressed-tensors, so
the ignore list, 8-bit layers, the KV cache scheme and disk offload work as for the other
algorithms.

One gap is filled here: llm-compressor 0.14 carries AutoRound's scales over but not its zero
points, so an asymmetric artifact was saved with every zero point 0 and its weights clamped
(on the embedded model at 2 bits, about a third of the values of a group). AutoRound counts
levels from 0 (``q`` in ``[0, 2^bits - 1]``, ``w = scale * (q - zp)``); compressed-tensors
from ``-2^(bits-1)``, so its zero point is AutoRound's less ``2^(bits-1)``.
"""
from __future__ import annotations

import functools
from typing import Any

from compress.build.methods import _llmcompressor as llmc


def modifier(groups: dict[str, Any], ignore: list[str], iterations: int, kv_cache: Any, device: str) -> Any:
    """The AutoRound modifier for compressed-tensors config groups.

    ``torch.compile`` of the tuning loop pays on a GPU only: on a CPU its compile time is longer
    than the loop it speeds up.
    """
    return _modifier_class()(config_groups=groups, ignore=ignore, iters=iterations, kv_cache_scheme=kv_cache,
                             enable_torch_compile=device.startswith("cuda"))


@functools.lru_cache(maxsize=1)
def _modifier_class() -> type:
    import torch

    base = llmc.load("llmcompressor.modifiers.autoround", "AutoRound").AutoRoundModifier

    # The same class name: llm-compressor's sequential pipeline recognises AutoRound by it (and then
    # does not propagate quantization error between layers, as AutoRound expects).
    class AutoRoundModifier(base):
        """``AutoRoundModifier`` that also keeps AutoRound's zero points (asymmetric schemes)."""

        def _postprocess_qparams(self, model: torch.nn.Module, llmc_registered_qparams: dict) -> None:
            zero_points = {name: mod.__dict__.pop("zp") for name, mod in model.named_modules()
                           if isinstance(mod.__dict__.get("zp"), torch.Tensor)}
            super()._postprocess_qparams(model, llmc_registered_qparams)
            for name, zp in zero_points.items():
                mod = model.get_submodule(name)
                scheme = getattr(mod, "quantization_scheme", None)
                current = getattr(mod, "weight_zero_point", None)
                if scheme is None or scheme.weights is None or scheme.weights.symmetric or current is None:
                    continue
                shifted = zp.to(torch.float32) - 2 ** (scheme.weights.num_bits - 1)
                current.data.copy_(shifted.reshape(current.shape).to(current.dtype).to(current.device))

    return AutoRoundModifier
