#!/usr/bin/env python3
"""How the embedded model's accuracy moves under plain weight-only round-to-nearest (RTN).

Every nn.Linear except lm_head is fake-quantized in float32 (quantize, then dequantize) with
asymmetric min-max RTN, per output channel or per group of input columns, and the bundled
tasks are run through lm-eval exactly as `compress eval` runs them.

    python scripts/sensitivity.py            # about 3 minutes on 2 CPU cores

Writes scripts/results/sensitivity.json and prints a Markdown table for docs/results.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from compress.measure.accuracy import evaluate_model
from compress.core.models import load_model, load_tokenizer, resolve_model
from compress.core.recipe import EvalSpec

RESULTS = Path(__file__).resolve().parent / "results" / "sensitivity.json"


def rtn_(weight: torch.Tensor, bits: int, group_size: int | None) -> None:
    """Asymmetric min-max round-to-nearest, in place, per row or per group of columns."""
    out_f, in_f = weight.shape
    g = in_f if group_size is None else group_size
    w = weight.data.reshape(out_f, in_f // g, g)
    lo = w.amin(-1, keepdim=True).clamp(max=0)
    hi = w.amax(-1, keepdim=True).clamp(min=0)
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).clamp(min=1e-12)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(w / scale) + zero, 0, qmax)
    weight.data.copy_(((q - zero) * scale).reshape(out_f, in_f))


def quantize_copy(model, bits: int, group_size: int | None):
    m = copy.deepcopy(model)
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and name != "lm_head":
            rtn_(mod.weight, bits, group_size)
    return m


def scores(results: dict) -> dict:
    r = results["results"]
    return {"acc": r["tiny_facts_mc"]["acc,none"], "acc_stderr": r["tiny_facts_mc"]["acc_stderr,none"],
            "word_perplexity": r["tiny_bios_ppl"]["word_perplexity,none"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:tiny-llama")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    torch.manual_seed(0)
    path = resolve_model(args.model).path
    model, tok = load_model(path), load_tokenizer(path)
    settings = EvalSpec(tasks=["tiny_facts_mc", "tiny_bios_ppl"], batch_size=32)
    rows = []
    configs = [("float32", None, None), ("int8 per-channel", 8, None), ("int4 per-channel", 4, None),
               ("int4 group-128", 4, 128), ("int3 per-channel", 3, None), ("int3 group-128", 3, 128),
               ("int2 per-channel", 2, None), ("int2 group-128", 2, 128)]
    for label, bits, group in configs:
        start = time.time()
        candidate = model if bits is None else quantize_copy(model, bits, group)
        s = scores(evaluate_model(candidate, tok, settings))
        s.update(label=label, bits=bits or 32, group_size=group, seconds=round(time.time() - start, 1))
        rows.append(s)
        print(f"{label:18s} acc {s['acc']:.3f} ± {s['acc_stderr']:.3f}   word ppl {s['word_perplexity']:.2f}",
              flush=True)
    base = rows[0]["acc"]
    for r in rows:
        r["acc_delta_points"] = round(100 * (r["acc"] - base), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "method": "asymmetric min-max RTN, weights only, "
                                    "all Linear but lm_head", "rows": rows}, indent=2) + "\n")
    print("\n| weights (RTN) | tiny_facts_mc acc | Δ points | tiny_bios_ppl word perplexity |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {100 * r['acc']:.1f}% | {r['acc_delta_points']:+.1f} | {r['word_perplexity']:.2f} |")


if __name__ == "__main__":
    main()
