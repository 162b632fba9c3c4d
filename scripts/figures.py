#!/usr/bin/env python3
"""The README's measured figures, generated from the results files under scripts/results/.

A generated block in a Markdown file sits between two comments:

    <!-- figure: NAME (scripts/figures.py from scripts/results/FILE.json) -->
    ...
    <!-- /figure -->

and its text is what ``BLOCKS[NAME]`` makes of the results file, never typed by hand. This script
rewrites every block; tests/test_figures.py fails when a block differs from what its file gives (a
figure edited by hand, or a results file measured again without regenerating).

    python scripts/figures.py            # rewrite the blocks in README.md
    python scripts/figures.py --check    # exit 1 naming each stale block
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "scripts" / "results"
DOCUMENTS = [ROOT / "README.md"]
_BLOCK = re.compile(r"(<!-- figure: (?P<name>[\w-]+) \(scripts/figures\.py from (?P<file>[^)]+)\) -->\n)"
                    r"(?P<body>.*?)(<!-- /figure -->)", re.S)


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def demo_transcript() -> str:
    d = _load("demo_lines.json")
    return (f"Its whole output, off a terminal ({d['lines']} lines; {d['command']}: exit {d['exit_code']} in "
            f"{_minutes(d['seconds'])}; `scripts/demo_lines.py` counts them; the back ends' output is in each run's "
            "`logs/`):\n\n```\n" + "\n".join(d["output"]) + "\n```\n")


def cold_start() -> str:
    d = _load("cold_start.json")
    rows = ["| case | exit | verdict | wall time | baseline start | candidate start | int4 speedup |",
            "|---|---|---|---|---|---|---|"]
    for c in d["cases"]:
        if c.get("stopped"):
            r = c["round1_tok_s_at_16"]
            rows.append(f"| {c['case']} | - | stopped {c['stopped']} | - | - | - | round 1 at concurrency 16: "
                        f"{r['candidate'] / r['baseline']:.2f}x ({r['baseline']:.1f} → {r['candidate']:.1f} tok/s) |")
            continue
        sides = c.get("sides", {})
        speed = next((k["shown"] for k in c.get("checks", []) if k["metric"] == "throughput_speedup@1"), "-")
        starts = [f"{sides[s]['start_s']:.0f} s" if sides.get(s, {}).get("start_s") else "-"
                  for s in ("baseline", "candidate")]
        rows.append(f"| {c['case']} | {c['exit']} | {c.get('verdict', c.get('error', ['-'])[-1])} | "
                    f"{_minutes(c['seconds'])} | {starts[0]} | {starts[1]} | {speed} at concurrency 1 |")
    demo = d.get("demo")
    lines = "\n".join(rows) + "\n"
    if demo:
        lines += (f"\n`make demo` on a machine that never ran the project (`../shared/tools/cold-start`: a fresh clone, "
                  f"every compile and model cache empty, pip's download cache kept): exit {demo['exit']} in "
                  f"{_minutes(demo['seconds'])}, the environments included; the same command again, warm: "
                  f"{_minutes(demo['warm_seconds'])}.\n" if demo.get("warm_seconds") else
                  f"\n`make demo` on a machine that never ran the project (`../shared/tools/cold-start`): exit "
                  f"{demo['exit']} in {_minutes(demo['seconds'])}, the environments included.\n")
    return lines


def speed_table() -> str:
    d = _load("speed.json")
    rows = ["| scheme | concurrency | bf16 output tok/s [95%] | scheme output tok/s [95%] | speedup [95%] "
            "| $/1M output tokens: bf16 → scheme | within the SLO: bf16 → scheme |", "|---|---|---|---|---|---|---|"]
    for s in d["schemes"]:
        for i, lv in enumerate(s["levels"]):
            b, c, x = lv["base_tok_s"], lv["cand_tok_s"], lv["speedup"]
            slo = f"{s['slo'][0]:.1f} → {s['slo'][1]:.1f} tok/s" if i == 0 and s.get("slo") else ""
            rows.append(f"| {s['scheme']} | {lv['concurrency']} | {b['value']:.1f} [{b['lower']:.1f}, {b['upper']:.1f}] "
                        f"| {c['value']:.1f} [{c['lower']:.1f}, {c['upper']:.1f}] | {x['estimate']:.2f}x "
                        f"[{x['lower']:.2f}, {x['upper']:.2f}] | ${lv['base_cost_per_mtok']:.2f} → "
                        f"${lv['cand_cost_per_mtok']:.2f} ({lv['cand_cost_per_mtok'] / lv['base_cost_per_mtok']:.2f}x) "
                        f"| {slo} |")
    return "\n".join(rows) + "\n"


def mixed_precision_table() -> str:
    d = _load("mixed_precision.json")
    rows = ["| candidate | layers kept | weights | drop [95%] | verdict | recovered | per extra MB |",
            "|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        lo, hi = r["acc_drop_interval_pts"]
        kept = len(r["kept_layers"])
        per_mb = f"{r['recovered_pts_per_extra_mb']:.1f} pts" if r["recovered_pts_per_extra_mb"] is not None else ""
        recovered = f"{r['recovered_pts']:.1f} pts" if kept else ""
        rows.append(f"| {r['candidate']} | {kept or ''} | {r['weights_mb']:.2f} MB | {r['acc_drop_pts']:.1f} pts "
                    f"[{lo:.1f}, {hi:.1f}] | {r['verdict']} | {recovered} | {per_mb} |")
    return f"{d['metric']}; {d['model']}:\n\n" + "\n".join(rows) + "\n"


BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "demo-transcript": ("scripts/results/demo_lines.json", demo_transcript),
    "cold-start": ("scripts/results/cold_start.json", cold_start),
    "speed-table": ("scripts/results/speed.json", speed_table),
    "mixed-precision-table": ("scripts/results/mixed_precision.json", mixed_precision_table),
}


def render(text: str) -> tuple[str, list[str]]:
    """The document with every block regenerated, and the names of the blocks that changed."""
    stale: list[str] = []

    def one(m: re.Match) -> str:
        name = m["name"]
        if name not in BLOCKS:
            raise SystemExit(f"unknown figure block {name!r}: known ones are {', '.join(BLOCKS)}")
        source, make = BLOCKS[name]
        if m["file"] != source:
            raise SystemExit(f"figure block {name!r} names {m['file']}, but it is made from {source}")
        body = make()
        if body != m["body"]:
            stale.append(name)
        return m.group(1) + body + m.group(5)

    return _BLOCK.sub(one, text), stale


def blocks_in(text: str) -> list[str]:
    return [m["name"] for m in _BLOCK.finditer(text)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    args = ap.parse_args()
    code = 0
    for doc in DOCUMENTS:
        text = doc.read_text()
        new, stale = render(text)
        for name in stale:
            print(f"{doc.relative_to(ROOT)}: figure block {name} differs from {BLOCKS[name][0]}")
        if stale and args.check:
            code = 1
        elif new != text:
            doc.write_text(new)
    return code


if __name__ == "__main__":
    sys.exit(main())
