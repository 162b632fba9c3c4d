#!/usr/bin/env python3
"""Quality of the GGUF schemes on the embedded model, measured through llama.cpp.

For each of gguf-q4_k_m, gguf-q5_k_m and gguf-q8_0, the artifact is built exactly as `compress quantize` builds it
(llama.cpp's converter, importance matrix and quantizer), and gguf-q4_k_m-autoround as `algorithm: autoround` builds
it (AutoRound, 200 iterations, auto-round's GGUF export), then:

- top-1 agreement and KL(base || candidate) of the next-token distribution over every token of the 200 held-out
  perplexity documents, from llama.cpp's own logits (llama-cpp-python in the llama.cpp environment, fed the same
  token ids the base reads) against the base's in transformers;
- tiny_facts_mc through llama.cpp's server with lm-eval's gguf model (`compress eval --engine llamacpp`), against the
  base in transformers, with the paired interval of the difference;
- weights on disk against the base, and build time.

lm-eval's gguf model scores no rolling log-likelihoods, so there is no word perplexity for these rows.

    make llamacpp && python scripts/gguf_quality.py     # about 5 minutes on 2 CPU cores
    python scripts/gguf_quality.py --only gguf-q4_k_m-autoround    # measure these rows again, keep the others

Merges the rows into scripts/results/quality.json ("gguf"), which docs/results.md's quality table is generated from:
a row measured replaces the row of its label, the others stay as they were.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "scripts" / "results" / "quality.json"
PPL_DOCS = ROOT / "evals" / "data" / "tiny_bios_ppl.jsonl"
# label -> the recipe's method section, in the table's order
ROWS = {
    "gguf-q4_k_m": {"kind": "gguf", "type": "q4_k_m"},
    "gguf-q5_k_m": {"kind": "gguf", "type": "q5_k_m"},
    "gguf-q8_0": {"kind": "gguf", "type": "q8_0"},
    "gguf-q4_k_m-autoround": {"kind": "gguf", "type": "q4_k_m", "algorithm": "autoround"},
}
LOGITS = """
import json, sys
import numpy as np
import llama_cpp
docs = json.load(open(sys.argv[2]))
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, logits_all=True, verbose=False, n_threads=2)
out = {}
for i, ids in enumerate(docs):
    llm.reset()
    llm.eval(ids)
    out[str(i)] = np.array(llm.scores[: len(ids)], dtype=np.float32)
np.savez(sys.argv[3], **out)
"""


def llamacpp_logits(gguf: Path, docs: list[list[int]], work: Path) -> list[np.ndarray]:
    """llama.cpp's logits at every position of every document (the same ids the base reads)."""
    from compress.build.methods import _llamacpp

    (work / "docs.json").write_text(json.dumps(docs))
    (work / "logits.py").write_text(LOGITS)
    subprocess.run([str(_llamacpp.venv() / "bin" / "python"), str(work / "logits.py"), str(gguf),
                    str(work / "docs.json"), str(work / "logits.npz")], check=True, timeout=1800)
    data = np.load(work / "logits.npz")
    return [data[str(i)] for i in range(len(docs))]


@torch.no_grad()
def agreement(base_logits: list[torch.Tensor], cand: list[np.ndarray]) -> dict[str, float]:
    """Top-1 agreement and mean KL(base || cand) over every position."""
    agree = kl = n = 0.0
    for lb, lc in zip(base_logits, cand):
        lc = torch.from_numpy(lc)
        pb, lpc = torch.log_softmax(lb, -1), torch.log_softmax(lc, -1)
        agree += (lb.argmax(-1) == lc.argmax(-1)).sum().item()
        kl += (pb.exp() * (pb - lpc)).sum(-1).sum().item()
        n += lb.shape[0]
    return {"top1_agreement": agree / n, "kl": kl / n, "tokens": int(n)}


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """The rows measured now in place of the rows of the same label; the others unchanged; in ROWS' order."""
    by_label = {r["label"]: r for r in old} | {r["label"]: r for r in new}
    order = [label for label in ROWS if label in by_label] + [label for label in by_label if label not in ROWS]
    return [by_label[label] for label in order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(ROWS), metavar="LABEL",
                        help=f"measure only these rows ({', '.join(ROWS)}) and keep the others")
    args = parser.parse_args()
    labels = args.only or list(ROWS)
    os.chdir(ROOT)
    from compress import runs
    from compress.core.models import load_model, load_tokenizer, resolve_model
    from compress.core.recipe import EvalSpec, validate_document
    from compress.core.stats import paired_bootstrap
    from compress.measure.scoring import parts
    from compress.measure.accuracy import run_eval

    began = time.time()
    base_path = resolve_model("builtin:tiny-llama").path
    tok = load_tokenizer(base_path)
    base = load_model(base_path)
    texts = [json.loads(line)["text"] for line in PPL_DOCS.read_text().splitlines() if line.strip()]
    docs = [tok(t)["input_ids"][:256] for t in texts]
    base_logits = [base(input_ids=torch.tensor([d])).logits[0] for d in docs]
    hf = EvalSpec(tasks=["tiny_facts_mc"])
    base_report, _ = run_eval("builtin:tiny-llama", hf)
    base_acc = base_report.metric("tiny_facts_mc/acc").value
    rows = []
    for label in labels:
        recipe = validate_document({"name": f"quality-{label}", "model": {"id": "builtin:tiny-llama"},
                                    "method": ROWS[label]}, label)
        start = time.time()
        manifest, _, path = runs.build(recipe, log=lambda m: None, warn=lambda m: None)
        seconds = time.time() - start
        report, _ = run_eval(str(path), hf.model_copy(update={"backend": "llamacpp"}))
        acc = report.metric("tiny_facts_mc/acc").value
        # the regression in points, paired per document (the gate's own interval: base minus candidate)
        values = [[p.values() for p in parts(r, "tiny_facts_mc/acc")[3]][0] for r in (base_report, report)]
        diff = paired_bootstrap(*values).as_dict()
        with tempfile.TemporaryDirectory() as tmp:
            agree = agreement(base_logits, llamacpp_logits(path / "model.gguf", docs, Path(tmp)))
        row = {"label": label, "method": manifest["method"]["scheme"], "format": "gguf",
               "engine": report.settings.get("engine"), "size_ratio": manifest["size"]["ratio"],
               "build_seconds": round(seconds, 1), "acc": acc, "acc_delta_points": round(100 * (acc - base_acc), 1),
               "acc_delta_interval": diff, "word_perplexity": None, **agree}
        print(json.dumps(row), flush=True)
        rows.append(row)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    before = data.get("gguf", {})
    if args.only and before.get("base_acc") not in (None, base_acc):
        sys.exit(f"the base answers {base_acc} now, {before['base_acc']} when the other rows were measured: "
                 f"measure every row again (no --only)")
    data["gguf"] = {"rows": merge(before.get("rows", []) if args.only else [], rows), "base_acc": base_acc,
                    "command": "python scripts/gguf_quality.py",
                    "seconds": before.get("seconds") if args.only else round(time.time() - began, 1),
                    "note": "top-1 agreement and KL from llama.cpp's logits; tiny_facts_mc through llama.cpp's "
                            "server (lm-eval's gguf model); no word perplexity (lm-eval's gguf model scores no "
                            "rolling log-likelihoods)"}
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)} in {time.time() - began:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
