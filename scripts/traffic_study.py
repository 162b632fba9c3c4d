#!/usr/bin/env python3
"""Fidelity on traffic against accuracy, over the default search ladder on the embedded model: every candidate
built and gated as `compress search --all` does (every document, no early stop), with the sample traffic file
(evals/traffic/tiny-llama-sample.jsonl) answered by base and candidate. Records each candidate's traffic/kl,
traffic/top1, traffic/greedy_match (with bootstrap intervals) beside its tiny_facts_mc/acc drop, the rank
correlation (Spearman) between KL and the accuracy drop, and what the traffic measurement costs in requests per
second against the accuracy evaluation's documents per second.

    .venv/bin/python scripts/traffic_study.py        # about 10 minutes on 2 CPU cores

Writes scripts/results/traffic.json. Nothing else may run meanwhile.
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
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "scripts" / "results" / "traffic.json"
RECIPE = "recipes/tiny-llama-search.yaml"
TRAFFIC = "evals/traffic/tiny-llama-sample.jsonl"


def main() -> int:
    from scipy.stats import spearmanr

    from compress.core.reports import AccuracyReport
    from compress.core.traffic_reports import TrafficReport
    from compress.core.stats import mean_bootstrap

    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="compress-traffic-study-") as tmp:
        env = dict(os.environ, COMPRESS_RUNS_DIR=f"{tmp}/runs", COMPRESS_CACHE_DIR=f"{tmp}/cache")
        command = ["search", RECIPE, "--all", "--no-early-stop", "--no-export", "--traffic", TRAFFIC,
                   "--chosen", f"{tmp}/chosen.yaml", "--json"]
        p = subprocess.run([sys.executable, "-m", "compress", *command], cwd=ROOT, env=env, capture_output=True,
                           text=True)
        if p.returncode not in (0, 1, 3):
            sys.exit(f"compress search exited {p.returncode}: {p.stderr[-2000:]}")
        rows = []
        for c in json.loads(p.stdout)["candidates"]:
            reports = Path(c["run_dir"]) / "reports"
            traffic = TrafficReport.load(reports / "traffic.json")
            cand_acc = AccuracyReport.load(reports / "candidate-accuracy.json")
            row = {"candidate": c["candidate"], "weights_bytes": c["weights_bytes"], "verdict": c["verdict"],
                   "acc_drop": c["quality_interval"]["estimate"],
                   "acc_drop_interval": [c["quality_interval"]["lower"], c["quality_interval"]["upper"]],
                   "traffic_seconds": traffic.seconds, "requests": len(traffic.requests),
                   "eval_seconds": cand_acc.duration_s, "documents": cand_acc.documents}
            for name in ("kl", "top1", "greedy_match", "acceptance", "nll_increase"):
                iv = mean_bootstrap(traffic.values(name))
                row[name] = {"estimate": iv.estimate, "lower": iv.lower, "upper": iv.upper}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("candidate", "acc_drop")} | {"kl": row["kl"]["estimate"]}),
                  flush=True)
    rho, pvalue = spearmanr([r["kl"]["estimate"] for r in rows], [r["acc_drop"] for r in rows])
    rho_top1, _ = spearmanr([1 - r["top1"]["estimate"] for r in rows], [r["acc_drop"] for r in rows])
    record = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": f"{os.cpu_count()} CPU cores",
              "command": "compress " + " ".join(command[:-3] + ["--json"]), "traffic": TRAFFIC,
              "seconds": round(time.monotonic() - began, 1), "rows": rows,
              "spearman_kl_vs_acc_drop": {"rho": float(rho), "p": float(pvalue)},
              "spearman_top1_disagreement_vs_acc_drop": float(rho_top1),
              "requests_per_s": sum(r["requests"] for r in rows) / sum(r["traffic_seconds"] for r in rows),
              "documents_per_s": sum(r["documents"] for r in rows) / sum(r["eval_seconds"] for r in rows)}
    RESULTS.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}: Spearman(KL, accuracy drop) {rho:.2f} (p {pvalue:.3g}) over "
          f"{len(rows)} candidates")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
