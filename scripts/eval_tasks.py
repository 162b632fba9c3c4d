#!/usr/bin/env python3
"""The bundled generative, few-shot and grouped tasks on the embedded model, and a gate on them.

1. `compress eval builtin:tiny-llama` on every bundled task, all documents: plainly, and
   under the tokenizer's chat template with a system instruction (few-shot as turns).
2. `compress run recipes/tiny-llama-int4-rtn-generative.yaml` on every document
   (`--set evals.limit=null`): the gate's checks on two filters, a few-shot chat-templated
   task and a group, with their intervals.

Each step runs as a fresh process against a fresh report cache.

    python scripts/eval_tasks.py            # about 3 minutes on 2 CPU cores

Writes scripts/results/eval_tasks.json and prints Markdown tables for docs/results.md.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "eval_tasks.json"
TASKS = "tiny_facts_mc,tiny_facts_gen,tiny_facts_gen_3shot,tiny_world"
CHAT = ["--apply-chat-template", "--system-instruction", "Answer with one word."]


def compress(args: list[str], env: dict[str, str], cwd: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "compress", *args, "--json"], env=env, cwd=cwd,
                       capture_output=True, text=True)
    if p.returncode not in (0, 1, 3):
        sys.exit(f"compress {' '.join(args)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(p.stdout), time.perf_counter() - start


def figures(report: dict) -> dict[str, float]:
    out = {}
    for owner, source in [*report.get("groups", {}).items(), *report["tasks"].items()]:
        for key, metric in source["metrics"].items():  # a single filter's name as the gate reads it
            out[f"{owner}/{key.removesuffix(',none')}"] = metric["value"]
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, COMPRESS_CACHE_DIR=f"{tmp}/cache", COMPRESS_RUNS_DIR=f"{tmp}/runs")
        result: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "evals": {}}
        for label, extra in (("plain", []), ("chat template + system instruction", CHAT)):
            report, seconds = compress(["eval", "builtin:tiny-llama", "--tasks", TASKS, *extra], env, Path(tmp))
            result["evals"][label] = {"figures": figures(report), "documents": report["documents"],
                                      "documents_per_s": report["documents_per_s"],
                                      "eval_seconds": report["duration_s"], "wall_seconds": round(seconds, 1)}
        recipe = ROOT / "recipes" / "tiny-llama-int4-rtn-generative.yaml"
        run, seconds = compress(["run", str(recipe), "--set", "evals.limit=null", "--no-export"], env, Path(tmp))
        result["gate"] = {"verdict": run["gate"]["verdict"], "wall_seconds": round(seconds, 1),
                          "checks": [{k: c[k] for k in ("metric", "verdict", "baseline", "candidate", "interval")}
                                     for c in run["gate"]["checks"]]}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}\n")
    names = list(result["evals"]["plain"]["figures"])
    print("| metric | " + " | ".join(result["evals"]) + " |\n|---|" + "---|" * len(result["evals"]))
    for name in names:
        if "token_f1" in name:
            continue
        print(f"| `{name}` | " + " | ".join(f"{100 * r['figures'].get(name, float('nan')):.1f}%"
                                           for r in result["evals"].values()) + " |")
    print("| documents/s | " + " | ".join(f"{r['documents_per_s']:g}" for r in result["evals"].values()) + " |")
    print("\n| check | base | INT4 RTN | drop, 95% interval | verdict |\n|---|---|---|---|---|")
    for c in result["gate"]["checks"]:
        iv = c["interval"]
        print(f"| `{c['metric']}` | {100 * c['baseline']:.1f}% | {100 * c['candidate']:.1f}% | "
              f"{100 * iv['estimate']:+.1f} [{100 * iv['lower']:+.1f}, {100 * iv['upper']:+.1f}] pts "
              f"({iv['method']}) | {c['verdict']} |")


if __name__ == "__main__":
    main()
