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


def replay_table() -> str:
    d = _load("replay.json")
    rows = ["| server | offered req/s | throughput, measured | simulated | gap | p50 latency, measured | simulated | "
            "gap | fed closed-loop levels alone |", "|---|---|---|---|---|---|---|---|---|"]
    for name, server in d["servers"].items():
        for r in server["rates"]:
            m, s, g, c = r["measured"], r["simulated"], r["gap"], r["closed_loop_only"]
            behind = " (client behind)" if r["client_bound"] else ""
            outside = "" if r["agrees"] else " (outside)"
            rows.append(f"| {name} | {r['rate']:g}{behind} | {m['requests_per_s']:.3g}/s | "
                        f"{s['requests_per_s']:.3g}/s | {g['throughput']:+.1%} | {m['e2e_p50_s']:.3g} s | "
                        f"{s['e2e_p50_s']:.3g} s | {g['latency_p50']:+.1%}{outside} | "
                        f"{c['e2e_p50_s']:.3g} s ({c['gap_latency_p50']:+.1%}) |")
    t, b = d["tolerance"], d["bench"]
    first = next(iter(d["servers"]))
    verdict = (f"On `{first}` the simulation is within the stated tolerance ({t['throughput']:.0%} on throughput, "
               f"{t['latency_p50']:.0%} on p50 latency) at every rate." if d["agrees"] else
               f"On `{first}` not every rate is within the stated tolerance ({t['throughput']:.0%} on throughput, "
               f"{t['latency_p50']:.0%} on p50 latency): the rows above say where.")
    servers = "; ".join(f"`{n}`: {s['why']}" for n, s in d["servers"].items())
    w = b["workload"]
    return ("\n".join(rows) + "\n\n"
            f"{verdict} Servers: {servers}. One vLLM {d['vllm']} server of {d['model']} each. The simulation of "
            f"one replica is fed, per rate, the same server's closed-loop levels "
            f"({', '.join(str(x) for x in b['batch_sizes'])} in flight, {b['repeats']} requests per level and round, "
            f"{b['rounds']} rounds, each round's first and last wave set aside) and its open-loop requests at the "
            f"other rates, each at the occupancy it was admitted at: never the rate it predicts. The last column is "
            f"the simulation fed the closed-loop levels alone. {d['seeds']} seeded runs of {d['requests_per_seed']} "
            f"requests per rate. Measured: {b['requests_per_rate']} Poisson arrivals per rate and round (10% "
            f"warm-up and cool-down set aside); prompts log-normal around "
            f"{w['prompt_tokens']['lognormal']['mean']} tokens, {w['output_tokens']['uniform'][0]}-"
            f"{w['output_tokens']['uniform'][1]} output tokens. `{d['command']}`, {d['cpu_cores']} CPU cores, "
            f"{d['seconds'] / 60:.0f} min, {d['date'][:10]}.\n")


def _money(v) -> str:
    return "-" if v is None else f"${v:.4g}"


def fleet_waterfall() -> str:
    from compress.decide.waterfall import waterfall_markdown

    d = _load("fleet.json")
    w = d["waterfall"]
    runs = "; ".join(f"`compress run {r['recipe']}`: {r['verdict']} ("
                     + ", ".join(f"`{c['metric']}` {c['shown']}" for c in r["checks"]) + ")"
                     for r in d["runs"].values())
    t = w["traffic"]
    return (waterfall_markdown(w) + "\n\n"
            f"Each row is a fleet serving the same day ({d['traffic']}: {t['mean_rps']:.2g} requests/s on average, "
            f"{t['peak_rps']:.2g} at the peak), {w['attainment_goal']:.0%} of requests waiting at most "
            f"{w['slo'].get('wait_s', 0):g} s for a slot, at ${w['price_per_replica_hour']:g} per replica-hour; the "
            f"model and runtime rows are static fleets sized for the peak, the last row autoscales the last counted "
            f"layer. {runs}. The 1B fixture has random weights: its gates check speed, cost and size, not accuracy. "
            f"`{d['command']}`, {d['cpu_cores']} CPU cores, {d['seconds'] / 60:.0f} min, {d['date'][:10]}.\n")


def fleet_policies() -> str:
    d = _load("fleet.json")
    rows = ["| policy | replica-hours [95%] | $ / day | $ / 1M output tokens | SLO attainment | p99 latency | "
            "peak replicas | request slots in use |", "|---|---|---|---|---|---|---|---|"]

    def add(p, suffix=""):
        lo, hi = p["intervals"]["replica_hours"]
        busy = p.get("utilization")
        rows.append(f"| {p['label']}{suffix} | {p['replica_hours']:.1f} [{lo:.1f}, {hi:.1f}] | ${p['usd_per_day']:.2f} | "
                    f"{_money(p['usd_per_mtok'])} | {p['attainment']:.2%} | {p['latency_p99_s']:.3g} s | "
                    f"{p['peak_replicas']} | {'-' if busy is None else f'{busy:.0%}'} |")

    for p in d["policies"]["policies"]:
        add(p)
    for p in d["spot"]["policies"]:
        add(p, " + spot")
    pol = d["policies"]
    static = next(p for p in pol["policies"] if p["policy"] == "static")
    chosen = next((p for p in pol["policies"] if pol["chosen"] and p["label"] == pol["chosen"]["label"]), None)
    line = ""
    if chosen:
        fewer = 1 - chosen["replica_hours"] / static["replica_hours"]
        gap = static["attainment"] - chosen["attainment"]
        line = (f"The queue-depth target `compress plan` chose ({chosen['label'].split('(', 1)[1].rstrip(')')}: the "
                f"cheapest that kept the {pol['attainment_goal']:.0%} goal) used {chosen['replica_hours']:.1f} "
                f"replica-hours against static's {static['replica_hours']:.1f}, {fewer:.0%} fewer, at "
                f"{chosen['attainment']:.2%} attainment against {static['attainment']:.2%} "
                f"({gap * 100:.2f} points lower; the margin allowed is the goal's, {(1 - pol['attainment_goal']) * 100:g} "
                f"points). ")
    util = [p for p in pol["policies"] if p["policy"] == "utilization"]
    if util and min(p["replica_hours"] for p in util) > static["replica_hours"]:
        line += ("Scaling on utilization kept more replicas than the static fleet: a replica with one request in "
                 "service counts as busy, however many more it could take. ")
    sp = d["spot_flags"]
    return ("\n".join(rows) + "\n\n" + line +
            f"The deployed layer ({d['runs']['runtime']['recipe']}) over {d['traffic']}, {pol['settings']['repeats']} "
            f"seeded runs per policy; the cold start is its measured server start "
            f"({pol['settings']['cold_start_s']:.0f} s), scale-down after {pol['settings']['scale_down_delay_s']:g} s. "
            f"Spot rows: half the fleet at ${sp[1]} per replica-hour with {sp[3]} preemptions per replica-hour, each "
            f"preempted request served again. The plot below is the first seeded run of each policy.\n")
