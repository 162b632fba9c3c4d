"""Structured pruning to make a student from its teacher: whole decoder layers, MLP channels.

Layer importance is measured on calibration text as one minus the cosine similarity between
a layer's input and output hidden states (the "block influence" of ShortGPT, Men et al.
2024): a layer that barely changes its input is the cheapest to drop. MLP channels are
ranked by their mean activation magnitude times the norm of their output weights.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from compress.core.errors import QuantizationError, UsageError


def decoder_layers(model: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """The ModuleList holding the decoder layers, its parent and attribute name (any architecture)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        for attr, child in module.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == n and n:
                return module, attr, child
    raise UsageError(f"cannot find the decoder layers of {type(model).__name__}",
                     hint="give the student as a model directory or config instead of pruning")


@torch.no_grad()
def layer_importance(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[float]:
    """1 - cos(input, output) per decoder layer, averaged over non-padding tokens.

    Inputs and outputs are captured with hooks on the layers themselves, so the residual
    stream is compared before any final norm, whatever the architecture.
    """
    _, _, layers = decoder_layers(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    inputs: dict[int, torch.Tensor] = {}
    current_mask: list[torch.Tensor] = []
    hooks = []

    def first_tensor(value: Any) -> torch.Tensor:
        return value[0] if isinstance(value, (tuple, list)) else value

    for i, layer in enumerate(layers):
        def pre(mod, args, kwargs, i=i):
            inputs[i] = first_tensor(args) if args else kwargs["hidden_states"]

        def post(mod, args, kwargs, output, i=i):
            cos = torch.nn.functional.cosine_similarity(inputs.pop(i).float(), first_tensor(output).float(), dim=-1)
            sums[i] += (1 - cos)[current_mask[0]].double().sum()

        hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(layer.register_forward_hook(post, with_kwargs=True))
    count = 0
    try:
        for batch in batches:
            current_mask[:] = [batch["attention_mask"].bool()]
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            count += int(batch["attention_mask"].sum())
    finally:
        for h in hooks:
            h.remove()
    return (sums / max(1, count)).tolist()


def choose_layers(importance: list[float], keep: int, how: str) -> list[int]:
    """Indexes of the layers to keep, in model order."""
    n = len(importance)
    if not 0 < keep <= n:
        raise UsageError(f"cannot keep {keep} of {n} layers")
    if how == "first":
        return list(range(keep))
    if how == "last":
        return list(range(n - keep, n))
    ranked = sorted(range(n), key=lambda i: importance[i], reverse=True)
    return sorted(ranked[:keep])


def prune_depth(model: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """A copy of ``model`` with only the decoder layers in ``keep``; config and cache indexes updated."""
    student = copy.deepcopy(model)
    parent, attr, layers = decoder_layers(student)
    n = len(layers)
    if sorted(set(keep)) != sorted(keep) or any(i < 0 or i >= n for i in keep):
        raise UsageError(f"keep_layers must be distinct indexes between 0 and {n - 1}, got {keep}")
    kept = torch.nn.ModuleList([layers[i] for i in sorted(keep)])
    for new_idx, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx  # KV-cache slots follow the new order
    setattr(parent, attr, kept)
    student.config.num_hidden_layers = len(kept)
    layer_types = getattr(student.config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n:
        student.config.layer_types = [layer_types[i] for i in sorted(keep)]
    return student


MLP_LAYOUTS = [("gate_proj", "up_proj", "down_proj"), (None, "up_proj", "down_proj"), (None, "fc1", "fc2"),
               (None, "dense_h_to_4h", "dense_4h_to_h"), (None, "c_fc", "c_proj")]


def _mlp_parts(layer: torch.nn.Module) -> tuple[Any, Any, Any]:
    for module in layer.modules():
        for gate, up, down in MLP_LAYOUTS:
            ups = getattr(module, up, None)
            downs = getattr(module, down, None)
            if isinstance(ups, torch.nn.Linear) and isinstance(downs, torch.nn.Linear) and \
                    (gate is None or isinstance(getattr(module, gate, None), torch.nn.Linear)):
                return (getattr(module, gate) if gate else None), ups, downs
    raise UsageError(f"width pruning does not know the MLP of {type(layer).__name__}",
                     hint="set student.mlp_width_ratio: 1.0 (depth pruning only) for this architecture")


@torch.no_grad()
def prune_width(model: torch.nn.Module, ratio: float, batches: list[dict[str, torch.Tensor]],
                multiple: int = 128) -> tuple[torch.nn.Module, int]:
    """Keep the most important ``ratio`` of MLP channels in every layer (rounded to ``multiple``).

    Returns:
        The pruned model (in place) and the new intermediate size.
    """
    _, _, layers = decoder_layers(model)
    width = _mlp_parts(layers[0])[1].out_features
    keep = max(multiple, int(round(width * ratio / multiple)) * multiple) if width >= 2 * multiple else \
        max(1, int(round(width * ratio)))
    if keep >= width:
        return model, width
    scores = [torch.zeros(width, dtype=torch.float64) for _ in layers]
    hooks = []
    for i, layer in enumerate(layers):
        _, _, down = _mlp_parts(layer)

        def hook(mod, args, i=i):
            scores[i] += args[0].detach().abs().double().reshape(-1, args[0].shape[-1]).sum(0)

        hooks.append(down.register_forward_pre_hook(hook))
    try:
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
    for i, layer in enumerate(layers):
        gate, up, down = _mlp_parts(layer)
        importance = scores[i] * down.weight.detach().double().norm(dim=0)
        idx = torch.sort(torch.topk(importance, keep).indices).values
        for lin in (gate, up):
            if lin is not None:
                _slice_linear(lin, idx, dim=0)
        _slice_linear(down, idx, dim=1)
    for key in ("intermediate_size", "ffn_dim", "n_inner"):
        if hasattr(model.config, key) and getattr(model.config, key) == width:
            setattr(model.config, key, keep)
            break
    else:
        raise QuantizationError("cannot record the new MLP width in this model's config",
                                hint="set student.mlp_width_ratio: 1.0 for this architecture")
    return model, keep


def _slice_linear(lin: torch.nn.Linear, idx: torch.Tensor, dim: int) -> None:
    lin.weight = torch.nn.Parameter(lin.weight.detach().index_select(dim, idx).clone())
    if dim == 0:
        if lin.bias is not None:
            lin.bias = torch.nn.Parameter(lin.bias.detach().index_select(0, idx).clone())
        lin.out_features = len(idx)
    else:
        lin.in_features = len(idx)
