#!/usr/bin/env python3
"""What each compression path costs as models grow: wall time and peak memory against checkpoint bytes.

Builds random-weight Llama checkpoints with the shapes of 1B, 3B and 7B models (bfloat16,
2 GB shards, written shard by shard by ``compress.core.fixtures.build_llama``, never shipped; the
embedded tokenizer, a 32,000-row embedding as those models have), then for each size runs:

- ``compress quantize --scheme int4-rtn`` and ``--scheme fp8-dynamic`` (data-free: streamed shard
  by shard), each as a fresh process;
- llm-compressor's own ``model_free_ptq`` with the same W4A16 scheme (one worker), for comparison;
- with ``--calibrated``: ``compress quantize --scheme int4-gptq`` (8 calibration samples of 128
  tokens) on the sizes given by ``--calibrated-sizes`` (default 1b).

Peak memory is the peak RSS of the process and its children (``wait4``). With ``--serve``, the
largest int4 artifact is served by vLLM from ``.venv-engine`` and asked for 8 greedy tokens.

    python scripts/scaling.py                       # 1b,3b,7b; about 20 minutes and 30 GB of disk here
    python scripts/scaling.py --sizes 1b --calibrated

Random weights: figures of time and memory only, never of accuracy. Writes
scripts/results/scaling.json and prints a Markdown table for docs/results.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "scaling.json"
GB = 10**9

# Llama shapes: TinyLlama-1.1B, Llama-3.2-3B (untied), Llama-2-7B; a 32,000-token vocabulary.
SIZES = {
    "1b": {"hidden_size": 2048, "num_hidden_layers": 22, "intermediate_size": 5632, "num_attention_heads": 32,
           "num_key_value_heads": 4},
    "3b": {"hidden_size": 3072, "num_hidden_layers": 28, "intermediate_size": 8192, "num_attention_heads": 24,
           "num_key_value_heads": 8},
    "7b": {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008, "num_attention_heads": 32,
           "num_key_value_heads": 32},
}
LLMC_RAW = """
import sys
from llmcompressor.entrypoints.model_free import model_free_ptq
model_free_ptq(model_stub=sys.argv[1], save_directory=sys.argv[2], scheme="W4A16",
               ignore=["lm_head", "re:.*embed_tokens"], max_workers=1, device="cpu")
"""


def measure(label: str, cmd: list[str], env: dict[str, str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    print(f"  {label}: exit {code}, {seconds:.1f} s, peak RSS {usage.ru_maxrss / 1024**2:.2f} GiB", flush=True)
    out = {"label": label, "exit_code": code, "wall_s": round(seconds, 1), "peak_rss_bytes": usage.ru_maxrss * 1024,
           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}
    if code != 0:
        out["error"] = err.strip().splitlines()[-1] if err.strip() else ""
    return out


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def build(size: str, folder: Path) -> float:
    from compress.core.fixtures import build_llama

    if (folder / "model.safetensors.index.json").exists():
        return 0.0
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    build_llama(folder, {**SIZES[size], "vocab_size": 32000}, seed=0, max_shard_bytes=2 * GB)
    return time.perf_counter() - start


def serve(artifact: Path) -> dict:
    from compress.measure.engines.servable import _generate
    from compress.measure.engines.vllm import VllmServer

    log = artifact.parent / f"{artifact.name}-vllm.log"
    server = VllmServer(artifact, dtype="bfloat16", log_path=log, startup_timeout=1200)
    try:
        with server:
            choices = _generate(server, [[1, 369, 28, 223]], 8)
            return {"served": True, "start_s": round(server.start_seconds or 0.0, 1), "kernels": server.kernels,
                    "tokens": len(choices[0].get("token_ids") or []), "engine_version": server.version}
    except Exception as e:  # noqa: BLE001 - the study records why it did not serve
        return {"served": False, "error": f"{type(e).__name__}: {e}"[:500], "log": str(log)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1b,3b,7b")
    ap.add_argument("--schemes", default="int4-rtn,fp8-dynamic")
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / ".scaling",
                    help="where checkpoints and artifacts go (kept for reruns; about 30 GB for all sizes)")
    ap.add_argument("--no-llmcompressor", action="store_true", help="skip llm-compressor's own model_free_ptq")
    ap.add_argument("--calibrated", action="store_true", help="also int4-gptq (8 samples) on --calibrated-sizes")
    ap.add_argument("--calibrated-sizes", default="1b")
    ap.add_argument("--serve", action="store_true", help="serve the largest int4 artifact with vLLM")
    args = ap.parse_args()

    env = dict(os.environ, COMPRESS_CACHE_DIR=str(args.workdir / "cache"), HF_HUB_OFFLINE="1")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("runs", {})
    results["machine"] = {"cpus": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE")
                                                                      * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
    compress = [sys.executable, "-m", "compress"]
    for size in args.sizes.split(","):
        ckpt = args.workdir / f"llama-{size}"
        print(f"{size}: building {ckpt}", flush=True)
        built = build(size, ckpt)
        ckpt_bytes = dir_bytes(ckpt)
        row = results["runs"].setdefault(size, {})
        row.update(checkpoint_bytes=ckpt_bytes, shards=len(list(ckpt.glob("*.safetensors"))), shapes=SIZES[size])
        if built:
            row["build_s"] = round(built, 1)
        schemes = args.schemes.split(",") + (["int4-gptq"] if args.calibrated and size in args.calibrated_sizes else [])
        for scheme in schemes:
            out = args.workdir / f"llama-{size}-{scheme}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [*compress, "quantize", "--model", str(ckpt), "--scheme", scheme, "-o", str(out), "--force"]
            if scheme == "int4-gptq":
                cmd += ["--set", "calibration.num_samples=8", "--set", "calibration.max_seq_length=128"]
            r = measure(f"compress {scheme}", cmd, env)
            if r["exit_code"] == 0:
                manifest = json.loads((out / "manifest.json").read_text())
                r.update(artifact_bytes=dir_bytes(out), path=_path(manifest["method"]["details"]),
                         index_complete=_index_complete(out))
            r["peak_over_checkpoint"] = round(r["peak_rss_bytes"] / ckpt_bytes, 3)
            row[f"compress {scheme}"] = r
            if scheme != "int4-rtn":
                shutil.rmtree(out, ignore_errors=True)  # disk: keep the int4 artifact only
        if not args.no_llmcompressor:
            out = args.workdir / f"llama-{size}-llmc"
            shutil.rmtree(out, ignore_errors=True)
            r = measure("llm-compressor model_free_ptq W4A16", [sys.executable, "-c", LLMC_RAW, str(ckpt), str(out)], env)
            r["peak_over_checkpoint"] = round(r["peak_rss_bytes"] / ckpt_bytes, 3)
            row["llm-compressor model_free_ptq W4A16"] = r
            shutil.rmtree(out, ignore_errors=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if args.serve:
        largest = max(args.sizes.split(","), key=lambda s: SIZES[s]["hidden_size"])
        print(f"serving llama-{largest}-int4-rtn with vLLM", flush=True)
        results["runs"][largest]["vllm int4-rtn"] = serve(args.workdir / f"llama-{largest}-int4-rtn")
        print(f"  {results['runs'][largest]['vllm int4-rtn']}")
    results["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}\n")
    print("| checkpoint | path | wall time | peak RSS | peak / checkpoint bytes |\n|---|---|---|---|---|")
    for size, row in results["runs"].items():
        for label, r in row.items():
            if isinstance(r, dict) and "wall_s" in r:
                ok = "" if r["exit_code"] == 0 else f" (exit {r['exit_code']})"
                print(f"| {size} ({row['checkpoint_bytes'] / 2**30:.1f} GiB) | {label}{ok} | {r['wall_s']:.0f} s | "
                      f"{r['peak_rss_bytes'] / GB:.1f} GB | {r['peak_over_checkpoint']:.2f}x |")


def _path(details: dict) -> str:
    """How the artifact was made: streamed, in memory, or with the weights left on disk."""
    return details.get("path") or ("weights on disk, a layer at a time" if details.get("offload") else "in memory")


def _index_complete(folder: Path) -> bool:
    """Every tensor the index names is in the shard it names, and every shard's tensors are named."""
    from safetensors import safe_open

    if not (folder / "model.safetensors.index.json").exists():  # one file needs no index
        return [p.name for p in folder.glob("*.safetensors")] == ["model.safetensors"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    for shard in set(index.values()):
        with safe_open(str(folder / shard), "pt") as f:
            if set(f.keys()) != {k for k, v in index.items() if v == shard}:
                return False
    return set(index.values()) == {p.name for p in folder.glob("*.safetensors")}


if __name__ == "__main__":
    main()
