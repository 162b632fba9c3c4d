"""How much of the loss of 2- and 3-bit quantization per-layer mixed precision recovers, per
extra megabyte, on the embedded model: `compress search --all` over the uniform candidate and
mixed ones at several budgets (the most sensitive layers kept at 8 bits, or unquantized), each
gated on the full tiny_facts_mc (1000 documents) and tiny_bios_ppl, beside one more uniform
bit. Writes scripts/results/mixed_precision.json.

    .venv/bin/python scripts/mixed_precision.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "scripts" / "results" / "mixed_precision.json"
# (method, its next uniform step up, [(budget, keep), ...])
SETTINGS = [({"kind": "int4", "algorithm": "gptq", "bits": 2, "group_size": 32},
             {"kind": "int4", "algorithm": "gptq", "bits": 3, "group_size": 32},
             [(0.05, "int8"), (0.15, "int8"), (0.30, "int8"), (0.15, "unquantized"), (0.30, "unquantized")]),
            ({"kind": "int4", "algorithm": "rtn", "bits": 3, "group_size": 64},
             {"kind": "int4", "algorithm": "rtn", "bits": 4, "group_size": 64},
             [(0.05, "int8"), (0.15, "int8"), (0.30, "int8"), (0.15, "unquantized"), (0.30, "unquantized")])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="compress-mixed-") as tmp:
        env = dict(os.environ, COMPRESS_RUNS_DIR=f"{tmp}/runs",
                   COMPRESS_CACHE_DIR=os.environ.get("COMPRESS_CACHE_DIR", str(ROOT / "runs" / ".cache")))
        for method, step_up, budgets in SETTINGS:
            recipe = {"name": f"mixed-b{method['bits']}", "model": {"id": "builtin:tiny-llama", "dtype": "float32"},
                      "search": {"candidates": [method, step_up],
                                 "mixed": [{"method": method, "budget": b, "keep": k} for b, k in budgets]},
                      "gate": {"checks": [{"metric": "tiny_facts_mc/acc", "max_regression": 0.03},
                                          {"metric": "tiny_bios_ppl/word_perplexity", "max_regression": 0.15,
                                           "relative": True}]}}
            path = Path(tmp) / f"{recipe['name']}.yaml"
            path.write_text(yaml.safe_dump(recipe, sort_keys=False))
            p = subprocess.run([sys.executable, "-m", "compress", "search", str(path), "--all", "--no-export",
                                "--json"], capture_output=True, text=True, env=env, cwd=tmp)
            if p.returncode not in (0, 1, 3):
                sys.exit(p.stderr[-3000:])
            cands = json.loads(p.stdout)["candidates"]
            uniform = next(c for c in cands if c["method"] == {**c["method"], **method} and "-int8x" not in
                           c["candidate"] and "-keep" not in c["candidate"])
            for c in cands:
                run = Path(c["run_dir"])
                gate = json.loads((run / "gate.json").read_text())
                acc = next(x for x in gate["checks"] if x["metric"] == "tiny_facts_mc/acc")
                ppl = next(x for x in gate["checks"] if x["metric"] == "tiny_bios_ppl/word_perplexity")
                extra_mb = (c["weights_bytes"] - uniform["weights_bytes"]) / 1e6
                recovered = 100 * (uniform_drop(uniform) - acc["measured"])
                rows.append({"candidate": c["candidate"], "base": uniform["candidate"],
                             "kept_unquantized": sorted(set(c["method"]["ignore"]) - {"lm_head"}),
                             "kept_int8": c["method"].get("int8_layers", []),
                             "weights_mb": round(c["weights_bytes"] / 1e6, 3), "extra_mb": round(extra_mb, 3),
                             "acc_drop_pts": round(100 * acc["measured"], 2),
                             "acc_drop_interval_pts": [round(100 * acc["interval"]["lower"], 2),
                                                       round(100 * acc["interval"]["upper"], 2)],
                             "ppl_increase_pct": round(100 * ppl["measured"], 2), "verdict": c["verdict"],
                             "recovered_pts": round(recovered, 2),
                             "recovered_pts_per_extra_mb": round(recovered / extra_mb, 2) if extra_mb > 0 else None})
    result = {"model": "builtin:tiny-llama (float32: a layer kept unquantized costs 4 bytes per weight, "
                       "at 8 bits 1 byte)",
              "metric": "tiny_facts_mc/acc drop against the base, 1000 documents, paired; ppl on tiny_bios_ppl",
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(f"{r['candidate']:<28} {r['weights_mb']:6.2f} MB (+{r['extra_mb']:.2f})  drop {r['acc_drop_pts']:+6.2f} pts "
              f"{r['acc_drop_interval_pts']}  ppl {r['ppl_increase_pct']:+6.2f}%  {r['verdict']:<12} "
              f"recovered {r['recovered_pts']:+.2f} pts ({r['recovered_pts_per_extra_mb']} per MB)")
    return 0


def uniform_drop(uniform: dict) -> float:
    gate = json.loads((Path(uniform["run_dir"]) / "gate.json").read_text())
    return next(x for x in gate["checks"] if x["metric"] == "tiny_facts_mc/acc")["measured"]


if __name__ == "__main__":
    sys.exit(main())
