#!/usr/bin/env python3
"""The speed recipe as a newcomer meets it: vLLM's compile caches empty (cold) or filled (warm), the two
servers started one after the other or side by side.

For each case given (``cold-sequential``, ``cold-parallel``, ``warm-sequential``, ``warm-parallel``) it runs
``compress run recipes/speed/llama-1b-int4-rtn.yaml --rerun --no-export`` with ``VLLM_CACHE_ROOT`` and
``TORCHINDUCTOR_CACHE_DIR`` pointed at a folder of the study's own (emptied first for a cold case; a warm case
reuses what the case before it left) and ``COMPRESS_ENGINE_START`` set to the order, then records each
server's start time (from the speed report), the kernels vLLM chose, the gate's checks and the wall time.

    python scripts/cold_start.py cold-sequential warm-sequential     # about 15 minutes on 2 CPU cores
    python scripts/cold_start.py demo     # `make demo` through ../shared/tools/cold-start (about 25 minutes)

``--no-amx`` hides AMX from the engine (what a CPU without usable AMX tiles gets): a ``.pth`` file in
``.venv-engine`` makes ``torch.cpu._is_amx_tile_supported()`` false while ``COMPRESS_STUDY_NO_AMX=1``, so
vLLM's int4 kernel takes its vector path, and ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` keeps oneDNN's bf16
matmuls off AMX too; the file is removed afterwards.

Needs `make engine`. Appends to scripts/results/cold_start.json (one entry per case, newest last).
Nothing else may run on the machine meanwhile: both the compile and the measurement use every core.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "cold_start.json"
RECIPE = ROOT / "recipes" / "speed" / "llama-1b-int4-rtn.yaml"
# The study's own compile caches (under the temporary directory, private to this user by name).
CASES = ("cold-sequential", "cold-parallel", "warm-sequential", "warm-parallel", "demo")
COLD_START = ROOT.parent / "shared" / "tools" / "cold-start"


def run_demo() -> dict:
    """The README's first command through ../shared/tools/cold-start (a fresh clone of the committed main, every
    compile and model cache empty): its exit and time, and the demo's output counted (scripts/demo_lines.py)."""
    import re

    if not COLD_START.exists():
        return {"exit": None, "error": f"{COLD_START} not found"}
    p = subprocess.run(["bash", str(COLD_START)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said = re.search(r"cold start: '(?P<cmd>[^']+)' exit (?P<exit>\d+) in (?P<s>\d+) s", p.stdout)
    log = re.search(r"\(log: (?P<log>[^)]+)\)", p.stdout)
    if not said or not log:
        return {"exit": p.returncode, "error": p.stdout.strip().splitlines()[-3:]}
    row = {"command": said["cmd"], "exit": int(said["exit"]), "seconds": int(said["s"]), "log": log["log"],
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_lines.py"), "--from-log", log["log"], "--exit",
                    said["exit"], "--seconds", said["s"]], cwd=ROOT, check=False)
    return row


def run_case(case: str, caches: Path, extra_env: dict[str, str] | None = None) -> dict:
    temperature, order = case.split("-")
    if temperature == "cold":
        shutil.rmtree(caches, ignore_errors=True)
    caches.mkdir(parents=True, exist_ok=True)
    empty = not any(p.is_file() for p in caches.rglob("*"))  # what the run really met, whatever the case says
    env = dict(os.environ, VLLM_CACHE_ROOT=str(caches / "vllm"), TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"),
               COMPRESS_ENGINE_START=order, **(extra_env or {}))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "compress", "run", str(RECIPE), "--rerun", "--no-export", "--json"],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1, 3):
        return {"case": case, "exit": proc.returncode, "seconds": round(seconds, 1),
                "error": (proc.stderr.strip().splitlines() or ["(nothing on stderr)"])[-2:]}
    out = json.loads(proc.stdout)
    from compress.core.reports import SpeedReport

    speed = SpeedReport.load(Path(out["run_dir"]) / "reports" / "speed.json")
    sides = {}
    for name, side in (("baseline", speed.baseline), ("candidate", speed.candidate)):
        rt = side.runtime
        level1 = next((b for b in side.batches if b.batch_size == 1), None)
        sides[name] = {"start_s": rt.start_s, "kernels": rt.kernels, "dtype": rt.dtype,
                       "tok_s_at_1": level1.output_tokens_per_s if level1 else None}
    return {"case": case + "".join(f" {k}={v}" for k, v in (extra_env or {}).items()),
            "caches_empty_at_start": empty, "exit": proc.returncode, "verdict": out["verdict"],
            "seconds": round(seconds, 1),
            "stages": {s["stage"]: s["seconds"] for s in out["stages"]}, "sides": sides,
            "checks": [{"metric": c["metric"], "verdict": c["verdict"], "shown": c["shown"]}
                       for c in out["gate"]["checks"]],
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", choices=CASES)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="set for the run (and so the servers), recorded with the case")
    parser.add_argument("--no-amx", action="store_true", help="hide AMX from the engine (see above)")
    args = parser.parse_args()
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    hook = None
    if args.no_amx:
        extra_env.update(COMPRESS_STUDY_NO_AMX="1", ONEDNN_MAX_CPU_ISA="AVX512_CORE_BF16")
        site = next((ROOT / ".venv-engine" / "lib").glob("python*/site-packages"))
        hook = site / "zz_compress_study_no_amx.pth"
        hook.write_text("import os; exec('import torch.cpu as _c; _c._is_amx_tile_supported = lambda: False') "
                        "if os.environ.get('COMPRESS_STUDY_NO_AMX') == '1' else None\n")
    try:
        return _run(args, extra_env)
    finally:
        if hook is not None:
            hook.unlink(missing_ok=True)


def _run(args, extra_env: dict[str, str]) -> int:
    caches = Path(tempfile.gettempdir()) / f"compress-cold-start-{os.getuid()}"
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"machine": f"{os.cpu_count()} CPU cores",
                                                                       "recipe": RECIPE.name, "cases": []}
    for case in args.cases:
        if case == "demo":
            results["demo"] = run_demo()
            print(json.dumps(results["demo"]), flush=True)
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
            continue
        row = run_case(case, caches, extra_env)
        print(json.dumps(row), flush=True)
        results["cases"].append(row)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    return 0  # the caches stay, so that a later warm case is warm (a cold case empties them first)


if __name__ == "__main__":
    sys.exit(main())
