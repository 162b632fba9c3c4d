"""Serve one model with vLLM from `.venv-engine` and time streamed requests per concurrency.

A first measurement tool for issue 11 (server-mode benchmarks), before `compress bench --engine
vllm` exists: it starts the server, sends seeded fixed-length prompts at each concurrency in
alternating rounds, and prints TTFT / inter-token / end-to-end percentiles and output tokens/s
per round; `--json` keeps every request's raw timings.

    python scripts/bench_engine.py compress/assets/tiny-llama --dtype float32
    python scripts/bench_engine.py /tmp/tiny-int4 --dtype bfloat16 --concurrency 1 4 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from compress.engines.client import make_prompts, run_load
from compress.engines.vllm import VllmServer
from compress.evals.reports import summarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--requests", type=int, default=16, help="requests per concurrency and round")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log", type=Path, default=Path("runs/engine/vllm.log"))
    ap.add_argument("--json", type=Path, help="write every request's timings here")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    vocab = json.loads((args.model / "config.json").read_text())["vocab_size"]
    prompts = make_prompts(vocab, tok.all_special_ids, args.requests, args.prompt_tokens, args.seed)
    rows = []
    with VllmServer(args.model, dtype=args.dtype, log_path=args.log) as server:
        print(f"vLLM {server.version} ready in {server.start_seconds:.1f} s; kernels {server.kernels}")
        run_load(server.url, server.served_model_name, prompts[:2], args.output_tokens, 1)  # warm-up
        for rnd in range(args.rounds):
            for c in args.concurrency:
                begun = time.perf_counter()
                reqs = run_load(server.url, server.served_model_name, prompts, args.output_tokens, c)
                wall = time.perf_counter() - begun
                ttft, e2e = summarize([r.ttft_s for r in reqs]), summarize([r.e2e_s for r in reqs])
                itl = summarize([d for r in reqs for d in r.inter_token_s])
                tps = sum(r.output_tokens for r in reqs) / wall
                print(f"round {rnd} concurrency {c:>3}: {tps:8.1f} output tok/s  {len(reqs) / wall:6.2f} req/s  "
                      f"TTFT p50/p99 {ttft.p50 * 1e3:6.1f}/{ttft.p99 * 1e3:6.1f} ms  "
                      f"ITL p50/p99 {itl.p50 * 1e3:5.1f}/{itl.p99 * 1e3:5.1f} ms  E2E p50 {e2e.p50 * 1e3:6.1f} ms")
                rows.append({"round": rnd, "concurrency": c, "output_tokens_per_s": tps, "wall_s": wall,
                             "requests": [r.model_dump(mode="json") for r in reqs]})
        meta = {"engine_version": server.version, "kernels": server.kernels, "command": server.command,
                "start_s": server.start_seconds, "dtype": args.dtype}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**meta, "rounds": rows}, indent=1))


if __name__ == "__main__":
    main()
