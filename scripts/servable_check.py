#!/usr/bin/env python3
"""What vLLM's CPU build does with each scheme's artifact of the embedded model.

For each scheme given (every scheme vLLM could load when none is), the artifact is built exactly as
`compress quantize --scheme NAME` builds it, then checked as the gate's `servable: vllm` check does: vLLM
started on it in bfloat16, 8 greedy tokens for each of 6 prompts compared token by token with transformers'.
A refusal is recorded with the engine's own last error line, a start with the kernels vLLM chose.

    make engine && python scripts/servable_check.py                     # about 15 minutes on 2 CPU cores
    python scripts/servable_check.py fp8-block mxfp4                    # some schemes; the others' rows stay

Merges the rows into scripts/results/servable.json, which docs/03-quantization.md's table is generated from.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "scripts" / "results" / "servable.json"
PROMPTS, TOKENS, DTYPE = 6, 8, "bfloat16"


def schemes() -> list[str]:
    """Every scheme whose artifact is a transformers checkpoint (GGUF files are llama.cpp's to serve)."""
    from compress.core.schemes import SCHEMES

    return [name for name, method in SCHEMES.items() if method["kind"] != "gguf"]


def check(scheme: str, work: Path) -> dict:
    from compress.core.models import load_tokenizer
    from compress.measure.engines.servable import check_servable, hf_reference, token_prompts

    out = work / scheme
    build = subprocess.run([sys.executable, "-m", "compress", "quantize", "--model", "builtin:tiny-llama",
                            "--scheme", scheme, "-o", str(out), "--quiet"], cwd=ROOT, capture_output=True, text=True)
    if build.returncode != 0:
        sys.exit(f"{scheme}: compress quantize exited {build.returncode}: {build.stderr.strip()[-500:]}")
    tokenizer = load_tokenizer(out)
    prompts = token_prompts(out, tokenizer, PROMPTS)  # the gate's own
    reference = hf_reference(out, DTYPE, prompts, TOKENS)
    start = time.perf_counter()
    result = check_servable(out, dtype=DTYPE, prompts=prompts, reference=reference, tokens=TOKENS,
                            log_path=work / f"{scheme}-vllm.log")
    return {"scheme": scheme, "ok": result.ok, "started": result.start_s is not None,
            "agreement": result.agreement, "matching_prefix": result.matching_prefix,
            "kernels": result.kernels, "error": result.error, "engine_version": result.engine_version,
            "dtype": DTYPE, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("schemes", nargs="*", help="schemes to check (default: every scheme vLLM could load)")
    args = ap.parse_args()
    known = schemes()
    unknown = [s for s in args.schemes if s not in known]
    if unknown:
        sys.exit(f"not a scheme vLLM could load: {', '.join(unknown)} (choose from {', '.join(known)})")
    from compress.core.env import environment

    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": []}
    rows = {r["scheme"]: r for r in old["rows"]}
    with tempfile.TemporaryDirectory(prefix="servable-check-") as tmp:
        for scheme in args.schemes or known:
            print(f"{scheme} ...", file=sys.stderr, flush=True)
            rows[scheme] = check(scheme, Path(tmp))
            r = rows[scheme]
            print(f"  {'serves' if r['ok'] else 'no'}: {r['error'] or r['kernels']}", file=sys.stderr, flush=True)
    data = {"machine": environment(), "prompts": PROMPTS, "tokens": TOKENS,
            "rows": [rows[s] for s in known if s in rows]}
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
