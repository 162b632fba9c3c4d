#!/usr/bin/env python3
"""The measured figures of README.md and docs/*.md, generated from the results files under scripts/results/.

A generated block in a Markdown file sits between two comments:

    <!-- figure: NAME (scripts/figures.py from scripts/results/FILE.json) -->
    ...
    <!-- /figure -->

and its text is what ``BLOCKS[NAME]`` makes of the results file, never typed by hand. This script
rewrites every block; tests/test_figures.py fails when a block differs from what its file gives (a
figure edited by hand, or a results file measured again without regenerating).

    python scripts/figures.py            # rewrite the blocks in README.md and every docs/*.md
    python scripts/figures.py --check    # exit 1 naming each stale block

Every Markdown file it covers is listed by ``documents()``: README.md, then docs/*.md in name order (the
generated docs/reference/ pages are not in it, being made by scripts/docs.py).
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
DOCS = ROOT / "docs"
_BLOCK = re.compile(r"(<!-- figure: (?P<name>[\w-]+) \(scripts/figures\.py from (?P<file>[^)]+)\) -->\n)"
                    r"(?P<body>.*?)(<!-- /figure -->)", re.S)


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _header(*columns: str) -> list[str]:
    """A Markdown table's header and separator lines."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def demo_transcript() -> str:
    d = _load("demo_lines.json")
    return (f"Its whole output, off a terminal ({d['lines']} lines; {d['command']}: exit {d['exit_code']} in "
            f"{_minutes(d['seconds'])}; `scripts/demo_lines.py` counts them; the back ends' output is in each run's "
            "`logs/`):\n\n```\n" + "\n".join(d["output"]) + "\n```\n")


def cold_start() -> str:
    d = _load("cold_start.json")
    rows = _header("case", "exit", "verdict", "wall time", "baseline start", "candidate start", "int4 speedup")
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


def first_run() -> str:
    """The README's one sentence on what a first run takes: the demo cold, and the speed recipe cold and warm."""
    from compress.measure.bench import DEFAULT_START_ORDER

    d = _load("cold_start.json")
    case = {c["case"]: c for c in d["cases"] if not c.get("stopped")}
    cold, warm, demo = case.get(f"cold-{DEFAULT_START_ORDER}"), case.get(f"warm-{DEFAULT_START_ORDER}"), d.get("demo")
    parts = []
    if demo:
        parts.append(f"`make demo` on a machine with {d['machine']} that never ran the project (every compile and model "
                     f"cache empty) exits {demo['exit']} in {_minutes(demo['seconds'])}, both environments built")
    if cold and warm:
        parts.append(f"its speed recipe takes {_minutes(cold['seconds'])} with vLLM's compile caches empty "
                     f"({cold['verdict']}) and {_minutes(warm['seconds'])} with them warm ({warm['verdict']})")
    return "; ".join(parts) + ". The details are on the [results page](docs/results.md#cold-start).\n"


def speed_table() -> str:
    d = _load("speed.json")
    rows = _header("scheme", "concurrency", "bf16 output tok/s [95%]", "scheme output tok/s [95%]", "speedup [95%]",
                   "$/1M output tokens: bf16 → scheme", "within the SLO: bf16 → scheme")
    for s in d["schemes"]:
        for i, lv in enumerate(s["levels"]):
            b, c, x = lv["base_tok_s"], lv["cand_tok_s"], lv["speedup"]
            slo = f"{s['slo'][0]:.1f} → {s['slo'][1]:.1f} tok/s" if i == 0 and s.get("slo") else ""
            engine = s.get("runtime", {}).get("engine", "vllm")
            label = s["scheme"] if engine == "vllm" else f"{s['scheme']} (llama.cpp; base: its F16)"
            rows.append(f"| {label} | {lv['concurrency']} | {b['value']:.1f} [{b['lower']:.1f}, {b['upper']:.1f}] "
                        f"| {c['value']:.1f} [{c['lower']:.1f}, {c['upper']:.1f}] | {x['estimate']:.2f}x "
                        f"[{x['lower']:.2f}, {x['upper']:.2f}] | ${lv['base_cost_per_mtok']:.2f} → "
                        f"${lv['cand_cost_per_mtok']:.2f} ({lv['cand_cost_per_mtok'] / lv['base_cost_per_mtok']:.2f}x) "
                        f"| {slo} |")
    return "\n".join(rows) + "\n"


def mixed_precision_table() -> str:
    d = _load("mixed_precision.json")
    rows = _header("candidate", "layers kept", "weights", "drop [95%]", "verdict", "recovered", "per extra MB")
    for r in d["rows"]:
        lo, hi = r["acc_drop_interval_pts"]
        kept = len(r["kept_layers"])
        per_mb = f"{r['recovered_pts_per_extra_mb']:.1f} pts" if r["recovered_pts_per_extra_mb"] is not None else ""
        recovered = f"{r['recovered_pts']:.1f} pts" if kept else ""
        rows.append(f"| {r['candidate']} | {kept or ''} | {r['weights_mb']:.2f} MB | {r['acc_drop_pts']:.1f} pts "
                    f"[{lo:.1f}, {hi:.1f}] | {r['verdict']} | {recovered} | {per_mb} |")
    return f"{d['metric']}; {d['model']}:\n\n" + "\n".join(rows) + "\n"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def quality_tables() -> str:
    d = _load("quality.json")
    base = d["base"]
    rows = [f"Base: {_pct(base['acc'])} on `tiny_facts_mc`, word perplexity {base['word_perplexity']:.2f}. "
            "Default settings (symmetric, group 128, 64 calibration samples):", "",
            *_header("scheme", "format", "weights vs base", "top-1 agreement", "KL (nats/token)",
                     "tiny_facts_mc (Δ points)", "word ppl", "build")]
    for m in d["methods"]:
        rows.append(f"| `{m['label']}` | {m['format']} | {m['size_ratio']:.2f}x | {_pct(m['top1_agreement'])} | "
                    f"{m['kl']:.4f} | {_pct(m['acc'])} ({m['acc_delta_points']:+.1f}) | {m['word_perplexity']:.2f} | "
                    f"{m['build_seconds']:.1f} s |")
    for m in d.get("gguf", {}).get("rows", []):  # through llama.cpp: its logits, lm-eval's gguf model
        rows.append(f"| `{m['label']}` | gguf (llama.cpp) | {m['size_ratio']:.2f}x | {_pct(m['top1_agreement'])} | "
                    f"{m['kl']:.4f} | {_pct(m['acc'])} ({m['acc_delta_points']:+.1f}) | - | "
                    f"{m['build_seconds']:.1f} s |")
    if d.get("gguf"):
        rows += ["", "The `gguf-*` rows are measured through llama.cpp (`python scripts/gguf_quality.py`): top-1 "
                 "agreement and KL from llama.cpp's own logits on the same token ids, `tiny_facts_mc` through its "
                 "server with lm-eval's gguf model; that model scores no rolling log-likelihoods, hence no word "
                 "perplexity."]
    rows += ["", "Lower bits, round-to-nearest against GPTQ, AWQ and AutoRound (group 128, asymmetric, 512 calibration "
             "samples):", "",
             *_header("weights", "top-1 agreement", "KL", "tiny_facts_mc", "Δ points", "word ppl")]
    for m in d["low_bit"]:
        rows.append(f"| {m['method']} | {_pct(m['top1_agreement'])} | {m['kl']:.4f} | {_pct(m['acc'])} | "
                    f"{m['acc_delta_points']:+.1f} | {m['word_perplexity']:.2f} |")
    return "\n".join(rows) + "\n"


def servable_table() -> str:
    """What vLLM's CPU build did with each scheme's artifact (scripts/servable_check.py)."""
    d = _load("servable.json")
    version = next((r["engine_version"] for r in d["rows"] if r["engine_version"]), "?")
    rows = _header("scheme", f"vLLM CPU {version} here, {d['tokens']} greedy tokens on {d['prompts']} prompts",
                   "kernels (as vLLM's log names them)")
    for r in d["rows"]:
        kernels = ", ".join(f"`{k}`" for k in r["kernels"]) or "-"
        if r["ok"]:
            said = "serves: every prompt matches transformers"
        elif r["started"]:
            matched = sum(m == d["tokens"] for m in r["matching_prefix"])
            said = f"loads; {matched} of {d['prompts']} prompts match transformers"
        else:
            said = f"does not start: `{r['error'].split('. ')[0]}`"  # its first sentence: not the list of what it knows
        rows.append(f"| `{r['scheme']}` | {said} | {kernels} |")
    return "\n".join(rows) + "\n"


def sensitivity_table() -> str:
    d = _load("sensitivity.json")
    rows = [f"{d['method']}; {d['model']}:", "",
            *_header("weights (RTN)", "tiny_facts_mc acc", "Δ points", "tiny_bios_ppl word perplexity")]
    for r in d["rows"]:
        rows.append(f"| {r['label']} | {_pct(r['acc'])} | {r['acc_delta_points']:+.1f} | {r['word_perplexity']:.2f} |")
    return "\n".join(rows) + "\n"


def scaling_table() -> str:
    d = _load("scaling.json")
    rows = _header("checkpoint", "command", "path", "wall time", "peak RSS", "peak / checkpoint bytes")
    for size, run in d["runs"].items():
        first = True
        for key, r in run.items():
            if not isinstance(r, dict) or "wall_s" not in r:
                continue
            name = f"{size} ({run['checkpoint_bytes'] / 1e9:.1f} GB, {run['shards']} shards)" if first else ""
            first = False
            rows.append(f"| {name} | {r['label']} | {r.get('path', '')} | {r['wall_s']:.0f} s | "
                        f"{r['peak_rss_bytes'] / 1e9:.1f} GB | {r['peak_over_checkpoint']:.2f}x |")
    m = d["machine"]
    return (f"Each command a fresh process on {m['cpus']} CPU cores and {m['memory_gib']:.1f} GiB of memory; peak RSS "
            "includes child processes:\n\n" + "\n".join(rows) + "\n")


def toolkit_cost_table() -> str:
    d = _load("toolkit_cost.json")
    rows = _header("command", "wall time", "peak memory (RSS)", "CPU time")
    for r in d["rows"]:
        rows.append(f"| `{r['command']}` ({r['label']}) | {r['seconds']:.1f} s | {r['peak_rss_mib']:.0f} MiB | "
                    f"{r['cpu_seconds']:.1f} s |")
    return (f"{d['cpu_count']} CPU cores; a rerun of the same recipe is {d['rerun_speedup']:.1f}x faster than its "
            "first run (every stage reused, inputs checked, the gate decided again):\n\n" + "\n".join(rows) + "\n")


def distill_table() -> str:
    d = _load("distill_study.json")
    rows = _header("model", "tiny_facts_mc", "word perplexity", "KL to teacher (held-out)", "training")
    for name, r in d["rows"].items():
        kl = f"{r['heldout_kl_after']:.2f}" if "heldout_kl_after" in r else "-"
        train = f"{r['steps']:,} steps, {r['train_minutes']:.1f} min" if "steps" in r else "-"
        rows.append(f"| {name} | {_pct(r['acc'])} | {r['word_perplexity']:.2f} | {kl} | {train} |")
    s = d["summary"]
    lo, hi = s["distillation_minus_cross_entropy_95ci_points"]
    text = ("\n".join(rows) + f"\n\nPruning alone lost {s['pruning_lost_points']:.1f} points; distillation recovered "
            f"{100 * s['distillation_recovered_fraction']:.1f}% of them, plain fine-tuning "
            f"{100 * s['cross_entropy_recovered_fraction']:.0f}%. Distilled minus fine-tuned: "
            f"{s['distillation_minus_cross_entropy_points']:+.1f} points, paired 95% interval [{lo:+.1f}, {hi:+.1f}].\n")
    speed = ["", *_header("batch", "teacher decode tok/s", "student decode tok/s", "speedup")]
    for name, r in d["speed"].items():
        speed.append(f"| {name} | {r['teacher_decode_tok_s']:.0f} | {r['student_decode_tok_s']:.0f} | {r['speedup']:.2f}x |")
    return text + "\n".join(speed) + "\n"


def eval_tasks_tables() -> str:
    d = _load("eval_tasks.json")
    names = list(d["evals"])
    figures = [("`tiny_facts_mc/acc`", "tiny_facts_mc/acc,none"),
               ("`tiny_facts_gen/exact_match,strict-match`", "tiny_facts_gen/exact_match,strict-match"),
               ("`tiny_facts_gen_3shot/exact_match,strict-match`", "tiny_facts_gen_3shot/exact_match,strict-match"),
               ("`tiny_world/exact_match,strict-match` (group, by size)", "tiny_world/exact_match,strict-match"),
               ("`tiny_world_places/exact_match,strict-match`", "tiny_world_places/exact_match,strict-match"),
               ("`tiny_world_traits/exact_match,strict-match`", "tiny_world_traits/exact_match,strict-match")]
    rows = _header("metric", *names)
    for label, key in figures:
        rows.append(f"| {label} | " + " | ".join(_pct(d["evals"][n]["figures"][key]) for n in names) + " |")
    rows.append("| documents/s | " + " | ".join(f"{d['evals'][n]['documents_per_s']:.0f}" for n in names) + " |")
    g = d["gate"]
    gate = ["", f"The gate of `recipes/tiny-llama-int4-rtn-generative.yaml` on every document, chat template and few-shot "
            f"turns included: {g['verdict']} in {g['wall_seconds']:.0f} s for both models.", "",
            *_header("check", "base", "INT4 RTN", "drop, 95% interval", "verdict")]
    for c in g["checks"]:
        i = c["interval"]
        gate.append(f"| `{c['metric']}` | {_pct(c['baseline'])} | {_pct(c['candidate'])} | {100 * i['estimate']:+.1f} "
                    f"[{100 * i['lower']:+.1f}, {100 * i['upper']:+.1f}] pts ({i['method']}) | {c['verdict']} |")
    return "\n".join(rows + gate) + "\n"


def routing_tables() -> str:
    d = _load("routing.json")
    rows = [f"Base {d['base']}; bound: {d['bound']}.", "",
            *_header("small model", "alone", "small serves (verified)", "cascade vs base (held-out half)",
                     "blended cost vs base")]
    for name, r in d["rows"].items():
        c, i, b = r["cascade"], r["cascade"]["drop_interval"], r["cascade"]["blended_cost_vs_large"]
        rows.append(f"| {name} (`{r['model']}`) | {_pct(c['small_acc'])} (base {_pct(c['large_acc'])}) | "
                    f"{_pct(c['share_verified'])} (threshold {c['threshold']:.3f}) | {100 * i['estimate']:+.1f} pts "
                    f"[{100 * i['lower']:.1f}, {100 * i['upper']:.1f}], {c['verdict']} | {b['estimate']:.3f}x "
                    f"[{b['lower']:.3f}, {b['upper']:.3f}] |")
    rows += ["", "As drafts for the base (transformers assisted generation, batch 1):", "",
             *_header("draft", "acceptance", "tokens per target forward", "speedup", "greedy outputs")]
    for name, r in d["rows"].items():
        g = r["draft"]
        lo, hi = g["draft_speedup"]["interval"]
        rows.append(f"| {name} | {_pct(g['acceptance_rate']['estimate'])} | {g['tokens_per_target_forward']['estimate']:.2f} "
                    f"| {g['draft_speedup']['estimate']:.2f}x [{lo:.2f}, {hi:.2f}] | "
                    f"{'identical' if g['identical'] else 'differ'} |")
    return "\n".join(rows) + "\n"


def aa_check() -> str:
    d = _load("speed.json")["aa"]
    rows = [f"bf16 against itself (two servers of the same model): {d['verdict']} in {_minutes(d['seconds'])}.", "",
            *_header("check", "measured [95%]", "bound", "verdict")]
    for c in d["checks"]:
        rows.append(f"| `{c['metric']}` | {c['shown']} | {c['threshold']} | {c['verdict']} |")
    return "\n".join(rows) + "\n"


def tiny_model() -> str:
    d = _load("build_tiny_model.json")
    return (f"{int(d['parameters']) / 1e6:.2f}M parameters, trained for {int(d['steps']):,} steps of "
            f"{d['batch']}×{d['seq_len']} tokens in {float(d['train_minutes']):.1f} minutes on {d['threads']} CPU threads; "
            f"it scores {100 * float(d['heldout_mc_accuracy']):.1f}% on the {int(d['mc_items']):,} held-out "
            "questions of `tiny_facts_mc` (chance: 25%).\n")


def engine_start() -> str:
    d = _load("engine_start.json")
    rows = _header("model", "vLLM's AOT cache (`VLLM_USE_AOT_COMPILE`)", "cold start", "warm start",
                   "the warm start's log")
    by = {(r["model"], r["setting"], r["caches"]): r for r in d["rows"]}
    for model, setting in dict.fromkeys((r["model"], r["setting"]) for r in d["rows"]):
        cold, warm = by[(model, setting, "cold")], by[(model, setting, "warm")]
        loaded = "failed to load the AOT cache, compiled again" if warm["aot_load_failed"] else "no AOT load failure"
        rows.append(f"| `{model}` | {'on (vLLM default)' if warm['VLLM_USE_AOT_COMPILE'] == '1' else 'off (compress default)'}"
                    f" | {cold['start_s']:.0f} s | {warm['start_s']:.0f} s | {loaded} |")
    return "\n".join(rows) + "\n"


def _drop(row: dict) -> str:
    """A candidate's accuracy drop in points, with its interval where it was decided on every document."""
    iv = row["quality_interval"] or {}
    text = f"{100 * iv['estimate']:+.1f} pts" if "estimate" in iv else row["quality_change"] or "-"
    if "lower" in iv and not row["stopped_at_look"]:
        text += f" [{100 * iv['lower']:.1f}, {100 * iv['upper']:.1f}]"
    return text


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def search_table() -> str:
    d = _load("search.json")
    first, every = d["first"], d["all"]
    rows = _header("candidate", "weights", f"{first['candidates'][0]['quality_metric']} drop", "verdict", "documents")
    for r in first["candidates"]:
        verdict = r["verdict"] + (f" (stopped at look {r['stopped_at_look']})" if r["stopped_at_look"] else "")
        name, weights = r["candidate"], _mb(r["weights_bytes"])
        if r["chosen"]:
            name, weights, verdict = f"**{name}**", f"{weights} ({r['size_ratio']:.3f}x)", f"**{verdict}: chosen**"
        full = r["documents"] + r["documents_saved"]
        docs = f"{r['documents']} of {full}" if r["documents_saved"] else f"{r['documents']}"
        rows.append(f"| {name} | {weights} | {_drop(r)} | {verdict} | {docs} |")
    seen = {r["candidate"] for r in first["candidates"]}
    rest = [r for r in every["candidates"] if r["candidate"] not in seen]
    verdicts = sorted({r["verdict"] for r in rest})
    listed = ", ".join(f"{r['candidate']} ({_mb(r['weights_bytes'])}, {_drop(r)}, {r['verdict']})" for r in rest)
    return (f"On the embedded model (fresh runs and caches, {d['machine']}) `{first['command']}` took "
            f"{_minutes(first['seconds'])}; the default ladder's first {len(first['candidates'])} candidates were "
            f"enough:\n\n" + "\n".join(rows) + "\n\n"
            f"With `--all` (reusing the caches, {_minutes(every['seconds'])} more) the other {len(rest)} candidates "
            f"came out {' and '.join(verdicts)}: {listed}.\n")


def search_early_stopping() -> str:
    d = _load("search.json")
    conf = d["looks"]["confidence"][:-1]
    sim = d["simulation_at_bound"]
    seq, fixed = sim["sequential"], sim["fixed"]
    rows = d["first"]["candidates"]
    saved = sum(r["documents_saved"] for r in rows)
    full = sum(r["documents"] + r["documents_saved"] for r in rows)
    stopped = sum(1 for r in rows if r["stopped_at_look"])
    pct = lambda x: f"{100 * x:.3f}".rstrip("0").rstrip(".") + "%"  # noqa: E731
    return (f"With {d['looks']['looks']} looks and {d['looks']['spending']} spending, the intervals at the interim "
            f"looks are computed at {', '.join(pct(c) for c in conf)} confidence instead of 95%. In a simulation of "
            f"{sim['trials']:,} trials of {sim['n']} paired documents whose true drop sits exactly on the bound "
            f"({100 * sim['margin']:.0f} points), the sequential rule passed {100 * seq['PASS']:.1f}% of them and the "
            f"fixed-sample gate {100 * fixed['PASS']:.1f}% (McNemar's own rate at this size; the test allows 2.5% plus "
            f"three Monte Carlo errors), and called FAIL {100 * seq['FAIL']:.1f}% against {100 * fixed['FAIL']:.1f}%. "
            f"In the search above, {stopped} candidate(s) stopped early: **{saved:,} of {full:,} candidate documents "
            f"not evaluated ({saved / full:.0%})**.\n")


def traffic_table() -> str:
    d = _load("traffic.json")
    rows = _header("candidate", "weights", "tiny_facts_mc/acc drop [95%]", "traffic/kl [95%]", "traffic/top1 [95%]",
                   "traffic/greedy_match [95%]", "gate (accuracy)")

    def iv(x: dict, pct: bool) -> str:
        f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
        return f"{f(x['estimate'])} [{f(x['lower'])}, {f(x['upper'])}]"

    for r in sorted(d["rows"], key=lambda r: (r["weights_bytes"], r["candidate"])):
        lo, hi = r["acc_drop_interval"]
        rows.append(f"| {r['candidate']} | {r['weights_bytes'] / 1e6:.1f} MB | {100 * r['acc_drop']:+.1f} pts "
                    f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | {iv(r['kl'], False)} | {iv(r['top1'], True)} | "
                    f"{iv(r['greedy_match'], True)} | {r['verdict']} |")
    sp = d["spearman_kl_vs_acc_drop"]
    n = d["rows"][0]["requests"]
    return ("\n".join(rows) + "\n\n"
            f"KL in nats per token, over {n} requests of `{d['traffic']}` ({d['machine']}, `{d['command']}`, "
            f"{_minutes(d['seconds'])} in all). The rank correlation between `traffic/kl` and the accuracy drop "
            f"over these {len(d['rows'])} candidates is Spearman's rho = {sp['rho']:.2f} (p = {sp['p']:.2g}); with "
            f"the top-1 disagreement in KL's place, {d['spearman_top1_disagreement_vs_acc_drop']:.2f}. The "
            f"measurement costs {d['requests_per_s']:.1f} requests per second here (both models, greedy answers of "
            f"up to 32 tokens, teacher forcing), against {d['documents_per_s']:.0f} documents per second for the "
            f"accuracy evaluation of one model.\n")


sys.path.insert(0, str(Path(__file__).resolve().parent))  # the serving figures live beside this script
from figures_serving import (fleet_policies, fleet_waterfall, goodput_table, peer_table,  # noqa: E402
                             prefix_caching_table, replay_table)

BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "goodput-table": ("scripts/results/goodput.json", goodput_table),
    "prefix-caching-table": ("scripts/results/runtime.json", prefix_caching_table),
    "peer-table": ("scripts/results/peer_bench.json", peer_table),
    "replay-table": ("scripts/results/replay.json", replay_table),
    "fleet-policies": ("scripts/results/fleet.json", fleet_policies),
    "fleet-waterfall": ("scripts/results/fleet.json", fleet_waterfall),
    "demo-transcript": ("scripts/results/demo_lines.json", demo_transcript),
    "cold-start": ("scripts/results/cold_start.json", cold_start),
    "engine-start": ("scripts/results/engine_start.json", engine_start),
    "search-table": ("scripts/results/search.json", search_table),
    "traffic-table": ("scripts/results/traffic.json", traffic_table),
    "search-early-stopping": ("scripts/results/search.json", search_early_stopping),
    "first-run": ("scripts/results/cold_start.json", first_run),
    "speed-table": ("scripts/results/speed.json", speed_table),
    "mixed-precision-table": ("scripts/results/mixed_precision.json", mixed_precision_table),
    "quality-tables": ("scripts/results/quality.json", quality_tables),
    "sensitivity-table": ("scripts/results/sensitivity.json", sensitivity_table),
    "servable-table": ("scripts/results/servable.json", servable_table),
    "scaling-table": ("scripts/results/scaling.json", scaling_table),
    "toolkit-cost-table": ("scripts/results/toolkit_cost.json", toolkit_cost_table),
    "distill-table": ("scripts/results/distill_study.json", distill_table),
    "eval-tasks-tables": ("scripts/results/eval_tasks.json", eval_tasks_tables),
    "routing-tables": ("scripts/results/routing.json", routing_tables),
    "aa-check": ("scripts/results/speed.json", aa_check),
    "tiny-model": ("scripts/results/build_tiny_model.json", tiny_model),
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


def documents() -> list[Path]:
    """README.md and every docs/*.md, the files whose figure blocks this script fills."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def blocks_in(text: str) -> list[str]:
    return [m["name"] for m in _BLOCK.finditer(text)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    args = ap.parse_args()
    code = 0
    for doc in documents():
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
