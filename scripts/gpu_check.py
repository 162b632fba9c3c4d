#!/usr/bin/env python3
"""GPU check: FP8 and INT4 artifacts of a ~1B Llama load and run on a CUDA GPU, with decode
throughput next to bf16. No network needed; about 3-4 minutes on one H100 for the FP8-dynamic
and INT4 rows (the FP8-block and FP4 rows are new and not yet timed).

1. A randomly initialised Llama with TinyLlama-1.1B's shape (22 layers, hidden 2048, MLP
   5632, 32 heads, 4 KV heads, vocabulary 32,000) is written in bf16.
2. `compress quantize` makes an FP8 W8A8 dynamic artifact, an INT4 W4A16 artifact (RTN,
   group 128: GPTQ's calibration adds minutes and nothing to a load-and-speed check), and the
   formats vLLM's CPU build cannot serve: FP8 with 128x128 weight blocks, MXFP4 and NVFP4
   (W4A4; NVFP4 calibrates its activation scales on the built-in text, so it takes longest;
   both FP4 formats need a Blackwell GPU for vLLM's FP4 kernels, elsewhere its refusal is
   recorded as the row's vLLM result).
3. Each artifact is reloaded with plain `AutoModelForCausalLM.from_pretrained` on the GPU,
   checked for finite logits, and `compress bench` measures decode throughput at batch
   sizes 1 and 16 (128 prompt + 128 output tokens), next to the bf16 model.
4. Where the engine environment exists (`make engine` installs vLLM's CUDA build on a GPU
   machine), `compress bench --engine vllm` serves each model and measures output tokens/s
   at concurrency 1 and 16 over 3 rounds, with intervals: the GPU column of the served-speed
   table in docs/results.md.

Run on the GPU machine from the repository root (it needs compress's dependencies; on the
lent machine, carry llmcompressor, compressed-tensors, pydantic and lm-eval as wheels, see
../.library/device/README.md):

    python3 scripts/gpu_check.py --out "$OUT"

Prints a table and writes gpu_check.json to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMES = ["fp8-dynamic", "fp8-block", "int4-rtn", "mxfp4", "nvfp4"]
SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)


def make_base(path: Path) -> float:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from compress.core.models import BUILTIN_MODELS, load_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPE, dtype="bfloat16")
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(path), safe_serialization=True)
    load_tokenizer(BUILTIN_MODELS["tiny-llama"]).save_pretrained(str(path))  # ids beyond it are never needed
    params = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    return params / 1e9


def compress_cli(*args: str, check: bool = True) -> dict:
    """A compress command's JSON; with ``check`` False a failure gives ``{"error": its last stderr line}``
    (an engine that refuses a format is a result of this check, not the end of it)."""
    p = subprocess.run([sys.executable, "-m", "compress", *args, "--json"], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        if not check:
            return {"error": (p.stderr.strip().splitlines() or ["(no output)"])[-1][:300]}
        raise SystemExit(f"compress {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout)


def finite_on_gpu(path: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    start = time.time()
    model = AutoModelForCausalLM.from_pretrained(str(path), device_map="cuda", dtype=torch.bfloat16)
    ids = torch.randint(3, 1000, (2, 64), device="cuda")
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    out = {"finite": bool(torch.isfinite(logits).all()), "load_s": round(time.time() - start, 1),
           "gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
           "first_linear": type(model.model.layers[0].mlp.down_proj).__name__}
    del model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for a GPU machine")
    os.environ.setdefault("COMPRESS_RUNS_DIR", tempfile.mkdtemp(prefix="gpu-check-runs-"))
    from compress.measure.engines.vllm import engine_info

    engine = engine_info()["installed"]
    print("vLLM engine: " + ("found, server-mode benchmark included" if engine else
                             "not found (`make engine`): transformers figures only"), flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    start = time.time()
    billions = make_base(work / "base")
    print(f"base: random Llama, {billions:.2f}B parameters, bf16 ({time.time() - start:.0f} s)", flush=True)
    rows = {}
    for label, scheme in [(s, s) for s in SCHEMES]:
        t = time.time()
        built = compress_cli("quantize", "--model", str(work / "base"), "--scheme", scheme, "-o",
                             str(work / label), "--set", "model.dtype=bfloat16", "--device", "cuda")
        rows[label] = {"build_s": round(time.time() - t, 1), "size_ratio": built["manifest"]["size"]["ratio"]}
        print(f"{label}: built in {rows[label]['build_s']} s, {rows[label]['size_ratio']:.2f}x the bf16 weights", flush=True)
    rows["bf16"] = {"build_s": 0.0, "size_ratio": 1.0}
    for label in ["bf16", *SCHEMES]:
        path = work / ("base" if label == "bf16" else label)
        rows[label].update(finite_on_gpu(path))
        bench = compress_cli("bench", str(path), "--device", "cuda", "--dtype", "bfloat16", "--batch-sizes", "1,16",
                             "--prompt-tokens", "128", "--output-tokens", "128", "--warmup", "2", "--repeats", "5")
        for b in bench["measured"]["batches"]:
            rows[label][f"decode_tok_s_b{b['batch_size']}"] = round(b["decode_tokens_per_s"], 1)
            rows[label][f"ttft_p50_ms_b{b['batch_size']}"] = round(1000 * b["ttft"]["p50"], 1)
        rows[label]["gpu"] = bench["environment"]["device"].get("gpu")
        if engine:
            # Where the artifact is served: vLLM (the CUDA build from `make engine`), streamed
            # requests at concurrency 1 and 16, 3 rounds, output tok/s with its interval.
            served = compress_cli("bench", str(path), "--engine", "vllm", "--dtype", "bfloat16", "--concurrency", "1,16",
                                  "--prompt-tokens", "128", "--output-tokens", "128", "--repeats", "4", "--rounds", "3",
                                  check=False)
            if "error" in served:
                rows[label]["vllm_error"] = served["error"]
                print(label, json.dumps(rows[label]), flush=True)
                continue
            for b in served["measured"]["batches"]:
                sp = b["output_tokens_per_s_spread"]
                rows[label][f"vllm_tok_s_c{b['batch_size']}"] = [round(sp["value"], 1), round(sp["lower"], 1),
                                                                 round(sp["upper"], 1)]
            rows[label]["vllm_kernels"] = served["measured"]["runtime"]["kernels"]
        print(label, json.dumps(rows[label]), flush=True)
    print("\n| model | weights vs bf16 | loads, finite logits | transformers decode tok/s b1 / b16 | TTFT p50 b1 "
          "| vLLM output tok/s c1 [95%] | vLLM output tok/s c16 [95%] |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        served = [r.get(f"vllm_tok_s_c{c}") for c in (1, 16)]
        cells = [f"{v[0]} [{v[1]}, {v[2]}]" if v else f"refused: {r['vllm_error']}" if r.get("vllm_error") else "not run"
                 for v in served]
        print(f"| {label} | {r['size_ratio']:.2f}x | {r['finite']} ({r['first_linear']}) | {r['decode_tok_s_b1']} / "
              f"{r['decode_tok_s_b16']} | {r['ttft_p50_ms_b1']} ms | {cells[0]} | {cells[1]} |")
    total = time.time() - start
    print(f"\ntotal {total:.0f} s on {rows['bf16'].get('gpu')}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps({"rows": rows, "seconds": round(total, 1),
                                                         "parameters_b": billions}, indent=2))
    if not all(r["finite"] for r in rows.values()):
        raise SystemExit("non-finite logits")


if __name__ == "__main__":
    main()
