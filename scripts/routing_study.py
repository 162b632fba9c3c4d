"""Routing on the embedded model: the distilled half-depth student and the demo's INT4 model as
the small model of a cascade before the float32 base, and as speculative-decoding drafts for it.
Writes scripts/results/routing.json and the cascade plots under docs/.

    .venv/bin/python scripts/routing_study.py      # builds the student first if it is missing (~8 min)

The cascade is held to a 1-point accuracy loss against the base (tiny_facts_mc, 1000 documents:
the threshold chosen on 500, verified on the other 500), its cost measured with both models
benchmarked together (transformers, batch 1 and 4).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "scripts" / "results" / "routing.json"
ONE_POINT = "gate.checks=[{metric: tiny_facts_mc/acc, max_regression: 0.01}]"


def cli(*args: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "compress", *args, "--json"], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if p.returncode not in (0, 1, 3):
        sys.exit(f"compress {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    started = time.time()
    smalls = {}
    t = time.time()
    student = cli("distill", "recipes/tiny-llama-distill.yaml")
    smalls["student"] = {"model": "run:tiny-llama-distill", "recipe": "recipes/tiny-llama-distill.yaml",
                         "artifact": student["path"], "reused": student["reused"],
                         "build_s": round(time.time() - t, 1)}
    t = time.time()
    int4 = cli("quantize", "recipes/tiny-llama-int4-gptq.yaml")
    smalls["int4"] = {"model": "run:tiny-llama-int4-gptq", "recipe": "recipes/tiny-llama-int4-gptq.yaml",
                      "artifact": int4["path"], "reused": int4["reused"], "build_s": round(time.time() - t, 1)}
    rows = {}
    for name, small in smalls.items():
        t = time.time()
        casc = cli("cascade", small["model"], "builtin:tiny-llama", "--recipe", "recipes/tiny-llama-distill.yaml",
                   "--set", ONE_POINT, "--plot", f"docs/cascade-{name}", "-o", f"dist/cascade-{name}", "--force")
        cascade_s = time.time() - t
        t = time.time()
        draft = cli("bench", "builtin:tiny-llama", "--draft", small["model"], "--recipe",
                    "recipes/tiny-llama-distill.yaml", "--set", "bench.batch_sizes=[1]", "--set", "bench.repeats=8",
                    "--set", "bench.rounds=4", "--set", "bench.output_tokens=64", "--dtype", "float32")
        draft_s = time.time() - t
        from compress.measure.speculative import DraftReport

        f = DraftReport.model_validate(draft).figures()
        v = casc["verified"]
        rows[name] = {
            **small,
            "cascade": {"verdict": casc["verdict"], "small_acc": casc["small_value"], "large_acc": casc["large_value"],
                        "threshold": v and v["threshold"], "share_verified": v and v["share"],
                        "share_chosen": casc["chosen"] and casc["chosen"]["share"],
                        "cascade_acc": v and v["value"], "drop": v and v["checks"][0]["shown"],
                        "drop_interval": v and v["checks"][0]["interval"],
                        "blended_cost_vs_large": v and v["cost_ratio"], "costs": casc["costs"],
                        "notes": casc["notes"], "seconds": round(cascade_s, 1)},
            "draft": {"identical": draft["identical"], "seconds": round(draft_s, 1),
                      **{k: {"estimate": round(x.estimate, 4), "interval": [round(x.lower, 4), round(x.upper, 4)]}
                         for k, x in f.items()}},
        }
    result = {"base": "builtin:tiny-llama (float32)", "bound": "tiny_facts_mc/acc, at most 1 point lower (95%)",
              "machine": f"{os.cpu_count()} CPU cores", "seconds": round(time.time() - started, 1), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, r in rows.items():
        c, d = r["cascade"], r["draft"]
        print(f"{name}: cascade {c['verdict']} share {c['share_verified']} acc {c['cascade_acc']} "
              f"(small {c['small_acc']}, large {c['large_acc']}) cost {c['blended_cost_vs_large']}; draft speedup "
              f"{d['draft_speedup']} acceptance {d['acceptance_rate']} identical {d['identical']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
