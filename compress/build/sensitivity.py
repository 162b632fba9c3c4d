"""How much each linear layer of a model suffers from being rounded: the KL divergence of the
model's next-token distribution when only that layer is quantized (round-to-nearest at the
candidate's bits and group size), measured on calibration text.

Measured once per base model, bits, group size and calibration data, and cached beside the
reports (``<cache>/sensitivity/KEY.json``). A mixed-precision candidate of `compress search`
keeps the layers that cost the most per byte at 8 bits (or unquantized), within a byte budget.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMAT = "compress-sensitivity/1"
SAMPLES = 16  # calibration texts (of calibration.max_seq_length tokens) the KL is averaged over


def fake_quant(weight: Any, bits: int, group_size: int | None, symmetric: bool = True) -> Any:
    """The weight as round-to-nearest leaves it (quantized and back, in its own dtype): per
    group of ``group_size`` input columns (per output channel when None)."""
    import torch

    out, inp = weight.shape
    g = group_size or inp
    w = weight.reshape(out, inp // g, g) if inp % g == 0 else weight.reshape(out, 1, inp)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = w.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax
        q = torch.clamp(torch.round(w / scale), -qmax - 1, qmax) * scale
    else:
        lo, hi = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
        scale = ((hi - lo) / (2 ** bits - 1)).clamp(min=1e-12)
        zero = torch.round(-lo / scale)
        q = (torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1) - zero) * scale
    return q.reshape(out, inp)


def cache_key(base_hash: str, recipe: Any, bits: int, group_size: int | None) -> str:
    from compress.build.quantize import data_fingerprint

    cal = recipe.calibration
    parts = {"format": FORMAT, "base": base_hash, "bits": bits, "group_size": group_size,
             "dataset": cal.dataset, "data": data_fingerprint(cal.dataset), "split": cal.split,
             "field": cal.text_field, "max_seq_length": cal.max_seq_length, "seed": cal.seed, "samples": SAMPLES}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def layer_sensitivity(recipe: Any, bits: int, group_size: int | None, *,
                      log: Callable[[str], None] = lambda m: None) -> dict[str, float]:
    """{linear layer name: mean KL(base || base with only that layer rounded)} in nats per token."""
    from compress.core.artifact import read_json, write_json
    from compress.core.cache import cache_root, model_content_hash
    from compress.core.models import resolve_model

    base = resolve_model(recipe.model.id, recipe.model.revision)
    key = cache_key(model_content_hash(base.path), recipe, bits, group_size)
    path = cache_root() / "sensitivity" / f"{key}.json"
    if path.exists():
        data = read_json(path)
        if data.get("format") == FORMAT:
            return data["kl"]
    kl = _measure(base.path, recipe, bits, group_size, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"format": FORMAT, "model": recipe.model.id, "bits": bits, "group_size": group_size,
                      "samples": SAMPLES, "kl": kl})
    return kl


def _measure(path: Path, recipe: Any, bits: int, group_size: int | None, log: Callable[[str], None]) -> dict[str, float]:
    import torch

    from compress.core.data import load_texts
    from compress.build.methods.base import quantizable_linears
    from compress.core.models import load_model, load_tokenizer

    cal = recipe.calibration
    tokenizer = load_tokenizer(path, recipe.model.trust_remote_code)
    model = load_model(path, "float32", "cpu", trust_remote_code=recipe.model.trust_remote_code)
    model.eval()
    texts = load_texts(cal.dataset, split=cal.split, config_name=cal.config_name, text_field=cal.text_field,
                       num_samples=SAMPLES, seed=cal.seed)
    enc = tokenizer(texts, truncation=True, max_length=cal.max_seq_length, padding=True, return_tensors="pt")
    mask = enc["attention_mask"].bool()

    def log_probs() -> Any:
        with torch.no_grad():
            return torch.log_softmax(model(**enc).logits.float(), dim=-1)[mask]

    reference = log_probs()
    layers = quantizable_linears(model, [])
    log(f"sensitivity: {len(layers)} layers at {bits} bits, group {group_size or 'per channel'}, "
        f"{len(texts)} calibration texts")
    out = {}
    for name, module in layers:
        saved = module.weight.data.clone()
        module.weight.data.copy_(fake_quant(saved, bits, group_size))
        lp = log_probs()
        module.weight.data.copy_(saved)
        # KL(base || candidate) per token: sum_v p (log p - log q), averaged over tokens.
        out[name] = float((reference.exp() * (reference - lp)).sum(-1).mean())
    return out


# Layers serving engines fuse into one matrix (vLLM's packed modules: qkv_proj, gate_up_proj):
# every part of a fused layer must have the same scheme, so they are kept or not together.
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def units(names: list[str]) -> list[list[str]]:
    """The layers grouped as an engine fuses them: q/k/v and gate/up of one block together,
    every other layer alone."""
    out, seen = [], set()
    for name in sorted(names):
        if name in seen:
            continue
        parent, _, leaf = name.rpartition(".")
        group = next((g for g in FUSED if leaf in g), None)
        members = [f"{parent}.{p}" if parent else p for p in group] if group else [name]
        members = [m for m in members if m in names] if group else members
        seen.update(members)
        out.append(members)
    return out


def keep_within_budget(sensitivity: dict[str, float], shapes: dict[str, tuple[int, int]], bits: int,
                       kept_bytes: float, budget_bytes: int) -> list[str]:
    """The layers to keep at ``kept_bytes`` per weight (1 for 8 bits; the checkpoint's item size
    to leave them unquantized) instead of ``bits``: greedily the fused units (see ``units``)
    with the most KL saved per extra byte, while their extra bytes fit in ``budget_bytes``. A
    unit's KL is the sum of its layers' (each measured alone)."""
    def extra(unit: list[str]) -> float:
        return sum(shapes[n][0] * shapes[n][1] for n in unit) * (kept_bytes - bits / 8)

    def kl(unit: list[str]) -> float:
        return sum(sensitivity[n] for n in unit)

    candidates = units([n for n in sensitivity if n in shapes])
    ranked = sorted(candidates, key=lambda u: kl(u) / extra(u), reverse=True)
    kept, spent = [], 0.0
    for unit in ranked:
        cost = extra(unit)
        if spent + cost <= budget_bytes and kl(unit) > 0:
            kept.extend(unit)
            spent += cost
    return sorted(kept)


def budget_for(uniform_bytes: int, fraction: float) -> int:
    return int(math.floor(uniform_bytes * fraction))
