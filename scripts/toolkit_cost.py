#!/usr/bin/env python3
"""What compress itself costs here: wall time and peak memory of its commands.

Each command runs as a fresh process (its peak RSS includes the benchmark's worker process),
against a fresh runs directory and report cache, so nothing is served from earlier work:

- `compress --help` (must not import torch);
- a full baseline evaluation of the embedded model (`compress eval builtin:tiny-llama`);
- a full baseline benchmark (`compress bench builtin:tiny-llama`);
- `compress run recipes/tiny-llama-int4-gptq.yaml`, then the same command again (the rerun
  reuses every stage).

    python scripts/toolkit_cost.py            # about 2 minutes on 2 CPU cores

Writes scripts/results/toolkit_cost.json and prints a Markdown table for docs/results.md.
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
RESULTS = Path(__file__).resolve().parent / "results" / "toolkit_cost.json"


def measure(label: str, args: list[str], env: dict[str, str], cwd: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "compress", *args], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # wait4 gives this child's own resource use, including the children it waited for.
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{label} failed ({code}):\n{err[-2000:]}")
    # The command as a reader would type it: paths relative to the checkout, no scratch folder.
    shown = " ".join(args).replace(str(ROOT) + "/", "").replace(str(cwd) + "/", "")
    row = {"label": label, "command": "compress " + shown, "seconds": round(seconds, 2),
           "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="compress-cost-"))
    env = dict(os.environ, COMPRESS_RUNS_DIR=str(work / "runs"), COMPRESS_CACHE_DIR=str(work / "cache"),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    recipe = str(ROOT / "recipes" / "tiny-llama-int4-gptq.yaml")
    rows = [
        measure("help", ["--help"], env, work),
        measure("baseline eval", ["eval", "builtin:tiny-llama"], env, work),
        measure("baseline bench", ["bench", "builtin:tiny-llama"], env, work),
    ]
    env_run = dict(env, COMPRESS_RUNS_DIR=str(work / "runs2"), COMPRESS_CACHE_DIR=str(work / "cache2"))
    rows.append(measure("run (first)", ["run", recipe, "-o", str(work / "dist")], env_run, work))
    rows.append(measure("run (rerun)", ["run", recipe, "-o", str(work / "dist")], env_run, work))
    import platform

    result = {"rows": rows, "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "rerun_speedup": round(rows[-2]["seconds"] / rows[-1]["seconds"], 1)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| command | wall time | peak memory (RSS) | CPU time |\n|---|---|---|---|")
    for r in rows:
        print(f"| `{r['command']}` | {r['seconds']:.1f} s | "
              f"{r['peak_rss_mib']:.0f} MiB | {r['cpu_seconds']:.0f} s |")


if __name__ == "__main__":
    main()
