"""The serving figures of docs/06-serving-and-cost.md (goodput, prefix caching, agreement with vLLM's own
benchmark client), each made from its results file; scripts/figures.py places them."""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min"


def _slo(slo: dict) -> str:
    names = {"ttft": "time to first token", "tpot": "time per output token", "e2e": "end-to-end latency"}
    return " and ".join(f"{names[k]} ≤ {v:g} ms" for k, v in slo.items())


def goodput_table() -> str:
    d = _load("goodput.json")
    rows = ["| model | size | tok/s at concurrency 1 | goodput, req/s | bracket | output tok/s there | "
            "$ / 1M output tokens there | requests running there (engine, mean) |", "|---|---|---|---|---|---|---|---|"]
    target = None
    for name, m in d["models"].items():
        g = m["goodput"]
        target = g
        at = next((r for r in m["rates"] if r["rate"] == g["rps"]), None)
        bracket = (f"[{g['rps']:g}, {g['upper_rps']:g})" if g["rps"] is not None and g["upper_rps"] is not None
                   else f"≥ {g['rps']:g} (every probe passed)" if g["rps"] is not None
                   else f"< {min(g['probes']):g}")
        running = f"{at['running_mean']:.1f}" if at and at.get("running_mean") is not None else "-"
        rows.append(f"| {name} | {m['size_bytes'] / 1e9:.2f} GB | {m['concurrency_1']['output_tokens_per_s']:.1f} | "
                    f"{g['rps'] if g['rps'] is not None else 'none'} | {bracket} | "
                    f"{at['output_tokens_per_s']:.1f} | ${g['cost_per_mtok_usd']:.2f} | {running} |"
                    if at else f"| {name} | - | - | none | {bracket} | - | - | - |")
    waited = max((r["waiting_max"] or 0 for m in d["models"].values() for r in m["rates"]), default=0)
    found = {n: m["goodput"]["rps"] for n, m in d["models"].items() if m["goodput"]["rps"] is not None}
    best = max(found, key=found.get) if found else None
    fastest = max(d["models"], key=lambda n: d["models"][n]["concurrency_1"]["output_tokens_per_s"])
    w, s = d["workload"], d["settings"]
    return ("\n".join(rows) + "\n\n"
            f"SLO: {_slo(target['slo'])} for at least {target['target']:.0%} of requests. Workload: synthetic "
            f"prompts (log-normal, p50 {w['prompt_tokens']['p50']:g} / p99 {w['prompt_tokens']['p99']:.0f} tokens), "
            f"{w['output_tokens']['min']}-{w['output_tokens']['max']} output tokens, Poisson arrivals, "
            f"at least {s.get('requests_per_rate', 32)} requests per run and arrivals spanning at least eight "
            f"service times ({s.get('warmup_fraction', 0.1):.0%} warm-up and {s.get('cooldown_fraction', 0.1):.0%} "
            f"cool-down set aside), {s['goodput'].get('rounds', 2)} run(s) per probe, at most "
            f"{s['goodput']['max_probes']} probes per model. The three servers (vLLM {d['vllm']}) ran side by side "
            f"on {d['cpu_cores']} CPU cores, the order rotating every round and probe; "
            f"{_minutes(d['seconds'])} in all (`python scripts/goodput_study.py`, {d['date'][:10]}). The bracket "
            f"runs from the highest rate decided within the target to the lowest rate above it that was not; "
            f"${s['price_per_hour']}/hour."
            + (f" The most goodput came from {best}, while {fastest} was the fastest with one request at a time: "
               "speed at concurrency 1 does not rank models under load." if best and best != fastest else "")
            + (" vLLM's queue (`vllm:num_requests_waiting`) never rose above 0: this CPU build admits every request "
               "into its running batch, so overload showed as a growing batch and slower tokens, not a queue."
               if waited == 0 else f" vLLM's queue reached {waited:g} waiting requests.") + "\n")


def prefix_caching_table() -> str:
    d = _load("runtime.json")
    rows = ["| concurrency | TTFT, caching off | TTFT, on | prefill speedup [95%] | saved on the cached tokens | "
            "prefix-cache hits (vLLM) | $ / 1M output tokens, off → on | cost ratio [95%] |",
            "|---|---|---|---|---|---|---|---|"]
    lowest = min(lv["concurrency"] for lv in d["levels"])
    for lv in d["levels"]:
        sp, cr = lv["prefill_speedup"], lv["cost_ratio"]
        saved = f"{lv['saved_on_cached_portion']:.0%}" if lv["concurrency"] == lowest else "-"
        hits = f"{lv['prefix_cache_hit_rate']:.0%}" if lv["prefix_cache_hit_rate"] is not None else "-"
        rows.append(f"| {lv['concurrency']} | {lv['ttft_mean_s']['off']:.2f} s | {lv['ttft_mean_s']['on']:.2f} s | "
                    f"{sp['estimate']:.2f}x [{sp['lower']:.2f}, {sp['upper']:.2f}] | "
                    f"{saved} | {hits} | ${lv['cost_per_mtok']['off']:.2f} → "
                    f"${lv['cost_per_mtok']['on']:.2f} | {cr['estimate']:.3f}x [{cr['lower']:.3f}, {cr['upper']:.3f}] |")
    checks = "; ".join(f"`{c['metric']}` {c['shown']} ({c['threshold']}): {c['verdict']}" for c in d["checks"])
    w = d["workload"]
    return ("\n".join(rows) + "\n\n"
            f"`{d['command']}`: {d['verdict']} ({checks}). Every request began with the same "
            f"{w['shared_prefix_tokens']}-token system prompt, then its own text (p50 "
            f"{w['prompt_tokens']['p50'] - w['shared_prefix_tokens']:g} tokens); TTFT is the mean over "
            f"{d['rounds']} interleaved rounds; \"saved on the cached tokens\" is the drop in TTFT over the share of "
            f"prefill those tokens took with caching off (prefill taken as linear in tokens), read with one request "
            f"in flight (with more, TTFT without caching also waits for the other requests' prefill). vLLM {d['vllm']}, "
            f"{d['cpu_cores']} CPU cores, {_minutes(d['seconds'])}, {d['date'][:10]}.\n")


def peer_table() -> str:
    d = _load("peer_bench.json")
    names = {"request_throughput": "req/s", "output_throughput": "output tok/s", "ttft_p50_ms": "TTFT p50 ms",
             "ttft_p99_ms": "TTFT p99 ms", "e2e_p50_ms": "E2E p50 ms"}
    rows = ["| offered req/s | figure | vLLM's client | compress | difference |", "|---|---|---|---|---|"]
    notes = []
    for r in d["rates"]:
        for key, label in names.items():
            rel = r["relative"][key]
            flag = " (over 10%)" if key in d["headline"] and abs(rel) > d["tolerance"] else ""
            rows.append(f"| {r['rate']:g} | {label} | {r['vllm'][key]:.4g} | {r['compress'][key]:.4g} | "
                        f"{rel:+.1%}{flag} |")
        if r.get("explanation") and r.get("flagged"):
            notes.append(f"at {r['rate']:g} req/s, {r['explanation']}")
    e, w = d["environment"], d["workload"]
    agree = ("Throughput and TTFT p50 agree within 10% at every rate" if d["agree"] else
             "Not every headline figure agrees within 10%")
    return ("\n".join(rows) + "\n\n"
            f"{agree}. One vLLM {e['vllm_version']} server ({e['model']}, {e['cpu_count']} CPU cores), driven in turn "
            f"by `vllm.benchmarks.serve` and by compress's open-loop client: {w['prompt_tokens']}-token random "
            f"prompts, {w['output_tokens']} output tokens, Poisson arrivals, {w['requests_per_run']} requests per run, "
            f"{w['runs_per_tool']} runs per tool ({w['order']}); `{d['command'].strip()}`, {d['environment']['date'][:10]}."
            + ("".join(f" Measured: {n}." for n in notes)) + "\n")
