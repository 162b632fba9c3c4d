#!/usr/bin/env python3
"""Quality of every quantization method on the embedded model, measured.

For each method, the artifact is built exactly as `compress quantize` builds it, reloaded
with plain `transformers.AutoModelForCausalLM.from_pretrained`, and compared with the base:

- top-1 agreement and KL(base || candidate) of the next-token distribution, over every token
  of the 200 held-out perplexity documents;
- bundled-task accuracy (tiny_facts_mc) and word perplexity (tiny_bios_ppl) through lm-eval;
- weights on disk against the base, and build time.

A second table sets RTN against GPTQ, AWQ and AutoRound at 4, 3 and 2 bits, group 128,
asymmetric, 512 calibration samples: where RTN visibly loses accuracy, how much of it the
calibrated algorithms recover.

    python scripts/quality.py               # about 15 minutes on 2 CPU cores, plus the AutoRound rows
                                            # (their builds took 0.4 to 7 minutes each, 512 samples)
    python scripts/quality.py --only int4-gptq,int4-rtn,int3-autoround-g128

A partial run (--only) replaces the rows it measured and keeps the others.

Writes scripts/results/quality.json and prints Markdown tables for docs/results.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from compress import runs
from compress.measure.accuracy import run_eval
from compress.build.kd import forward_kl
from compress.core.schemes import scheme_method
from compress.core.models import load_model, load_tokenizer, resolve_model
from compress.core.recipe import EvalSpec, validate_document

RESULTS = Path(__file__).resolve().parent / "results" / "quality.json"
PPL_DOCS = Path(__file__).resolve().parents[1] / "evals" / "data" / "tiny_bios_ppl.jsonl"

SCHEMES = ["fp8-dynamic", "fp8-static", "fp8-block", "int8-w8a8", "int8-llm-int8", "int4-gptq", "int4-awq",
           "int4-rtn", "int4-autoround", "int4-gptq-hf", "int4-nf4", "nvfp4", "mxfp4"]
LOW_BIT = [(algo, bits) for bits in (4, 3, 2) for algo in ("rtn", "gptq", "awq", "autoround")]
# Low-bit comparisons: asymmetric (what 2- and 3-bit need), 512 calibration samples.
LOW_BIT_CALIBRATION = {"num_samples": 512}


@torch.no_grad()
def agreement(base, cand, tok, texts: list[str]) -> dict[str, float]:
    """Top-1 agreement and mean KL(base || cand) over every non-padding next-token position."""
    agree = kl = n = 0.0
    for i in range(0, len(texts), 16):
        enc = tok(texts[i:i + 16], return_tensors="pt", padding=True)
        mask = enc["attention_mask"].bool()
        lb, lc = base(**enc).logits, cand(**enc).logits
        tokens = mask.sum().item()
        agree += ((lb.argmax(-1) == lc.argmax(-1)) & mask).sum().item()
        kl += forward_kl(lc, lb, mask=mask).item() * tokens  # KL(base || cand), masked mean
        n += tokens
    return {"top1_agreement": agree / n, "kl": kl / n, "tokens": int(n)}


def build(name: str, method: dict, calibration: dict | None = None) -> tuple[Path, dict, float]:
    recipe = validate_document({"name": name, "model": {"id": "builtin:tiny-llama"}, "method": method,
                                "calibration": calibration or {}}, name)
    start = time.time()
    manifest, _, path = runs.build(recipe, log=lambda m: None, warn=lambda m: None)
    return path, manifest, time.time() - start


def measure(label: str, method: dict, base, tok, texts, settings, base_acc, calibration: dict | None = None) -> dict:
    path, manifest, seconds = build(f"quality-{label}", method, calibration)
    cand = load_model(path)  # plain from_pretrained under the hood
    agree = agreement(base, cand, tok, texts)
    report, _ = run_eval(str(path), settings)
    acc = report.metric("tiny_facts_mc/acc").value
    row = {"label": label, "method": manifest["method"]["scheme"], "format": manifest["method"]["format"],
           "size_ratio": manifest["size"]["ratio"], "build_seconds": round(seconds, 1),
           "acc": acc, "acc_delta_points": round(100 * (acc - base_acc), 1),
           "word_perplexity": report.metric("tiny_bios_ppl/word_perplexity").value, **agree}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated labels to run (default: all)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    os.environ.setdefault("COMPRESS_RUNS_DIR", tempfile.mkdtemp(prefix="compress-quality-"))
    only = set(args.only.split(",")) if args.only else None
    labels = SCHEMES + [f"int{bits}-{algo}-g128" for algo, bits in LOW_BIT]
    if only and only - set(labels):
        raise SystemExit(f"unknown --only label(s): {', '.join(sorted(only - set(labels)))}; known: {', '.join(labels)}")

    path = resolve_model("builtin:tiny-llama").path
    base, tok = load_model(path), load_tokenizer(path)
    texts = [json.loads(line)["text"] for line in PPL_DOCS.read_text().splitlines()]
    settings = EvalSpec(tasks=["tiny_facts_mc", "tiny_bios_ppl"], batch_size=32)
    base_report, _ = run_eval("builtin:tiny-llama", settings)
    base_acc = base_report.metric("tiny_facts_mc/acc").value
    base_ppl = base_report.metric("tiny_bios_ppl/word_perplexity").value

    methods, low = [], []
    for scheme in SCHEMES:
        if only is None or scheme in only:
            methods.append(measure(scheme, scheme_method(scheme), base, tok, texts, settings, base_acc))
    for algo, bits in LOW_BIT:
        label = f"int{bits}-{algo}-g128"
        if only is None or label in only:
            method = {"kind": "int4", "algorithm": algo, "bits": bits, "group_size": 128, "symmetric": False}
            low.append(measure(label, method, base, tok, texts, settings, base_acc, LOW_BIT_CALIBRATION))

    result = {"base": {"acc": base_acc, "word_perplexity": base_ppl}, "methods": methods, "low_bit": low,
              "environment": base_report.environment}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if only and args.out.exists():  # a partial run updates the rows it measured, in the tables' order
        old = json.loads(args.out.read_text())
        for key in ("methods", "low_bit"):
            fresh = {r["label"] for r in result[key]}
            rows = [r for r in old.get(key, []) if r["label"] not in fresh] + result[key]
            result[key] = sorted(rows, key=lambda r: labels.index(r["label"]) if r["label"] in labels else len(labels))
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nBase: tiny_facts_mc {100 * base_acc:.1f}%, word perplexity {base_ppl:.3f}\n")
    header = "| method | format | weights vs base | top-1 agreement | KL (nats/token) | tiny_facts_mc | Δ points | word ppl | build |"
    print(header + "\n|" + "---|" * 9)
    for r in result["methods"] + result["low_bit"]:
        print(f"| {r['label']} | {r['format']} | {r['size_ratio']:.2f}x | {100 * r['top1_agreement']:.1f}% | "
              f"{r['kl']:.4f} | {100 * r['acc']:.1f}% | {r['acc_delta_points']:+.1f} | {r['word_perplexity']:.3f} | "
              f"{r['build_seconds']:.0f} s |")


if __name__ == "__main__":
    sys.exit(main())
