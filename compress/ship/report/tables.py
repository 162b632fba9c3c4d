"""Rich tables for the terminal: accuracy, bench, drafts and comparisons."""
from __future__ import annotations

from typing import Any

from rich.table import Table

from compress.core.console import fmt_bytes, fmt_seconds, table
from compress.core.reports import AccuracyReport, BenchReport, display_names


def fmt_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "fraction":
        return f"{100 * value:.1f}%"
    if unit == "s":
        return fmt_seconds(value)
    if unit == "bytes":
        return fmt_bytes(value)
    if unit == "USD":
        return f"${value:.4g}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def accuracy_table(report: AccuracyReport) -> Table:
    """One row per metric as a gate names it (``TASK/METRIC,FILTER`` where a task has several
    filters); a group's rows count the documents of all its subtasks."""
    rows = []
    for group, gr in report.groups.items():
        docs = sum(report.tasks[t].n_samples for t in gr.subtasks if t in report.tasks)
        for key, shown in display_names(group, gr.metrics).items():
            m = gr.metrics[key]
            weighting = "by size" if m.weight_by_size else "equal"
            rows.append([f"{shown} {'↑' if m.higher_is_better else '↓'}", fmt_value(m.value, m.unit),
                         "-" if m.stderr is None else f"± {fmt_value(m.stderr, m.unit)}", docs,
                         f"group of {len(gr.subtasks)} ({weighting})"])
    for task, tr in report.tasks.items():
        for key, shown in display_names(task, tr.metrics).items():
            m = tr.metrics[key]
            arrow = "↑" if m.higher_is_better else "↓"
            stderr = "-" if m.stderr is None else f"± {fmt_value(m.stderr, m.unit)}"
            rows.append([f"{shown} {arrow}", fmt_value(m.value, m.unit), stderr, tr.n_samples, tr.num_fewshot])
    rate = f", {report.documents_per_s:g} documents/s" if report.documents_per_s else ""
    return table(f"Accuracy: {report.model.spec}{rate}", ["metric", "value", "stderr", "documents", "shots"], rows)


def runtime_line(settings: dict[str, Any], runtime: Any, device: str, workload: dict[str, Any] | None = None) -> str:
    """Which runtime measured a figure, for every cost or speed heading: "vLLM 0.32.0 (bfloat16) on cpu"."""
    if runtime.engine == "vllm":
        where = f"vLLM {runtime.version or '?'} server ({runtime.dtype}"
        where += f", KV cache {runtime.kv_cache_dtype})" if runtime.kv_cache_dtype not in (None, "auto") else ")"
    elif runtime.engine == "endpoint":
        where = f"the server at {runtime.url}"
    else:
        where = f"transformers {runtime.version or ''} generate ({runtime.dtype})".replace("  ", " ")
    shape = f"{settings['prompt_tokens']} prompt + {settings['output_tokens']} output tokens"
    if settings.get("workload"):
        from compress.ship.report.serving import workload_text

        shape = workload_text(workload) if workload else "a workload (bench.workload)"
    return f"{where} on {device}, {shape}, {settings.get('rounds', 1)} rounds, ${settings['price_per_hour']}/hour"


def fmt_rate(b: Any) -> str:
    """Output tokens per second with its interval over rounds: "95.2 [90.1, 99.3]"."""
    sp = b.output_tokens_per_s_spread
    if sp is None or sp.rounds < 2:
        return f"{b.output_tokens_per_s:,.1f}"
    return f"{sp.value:,.1f} [{sp.lower:,.1f}, {sp.upper:,.1f}]"


def bench_table(report: BenchReport) -> Table:
    from compress.measure.compare import level_word

    m = report.measured
    rows = []
    for b in m.batches:
        rows.append([b.batch_size, fmt_rate(b), fmt_seconds(b.ttft.p50), fmt_seconds(b.ttft.p99),
                     fmt_seconds(b.itl.p50), fmt_seconds(b.itl.p99), fmt_seconds(b.e2e.p50), fmt_seconds(b.e2e.p90),
                     fmt_seconds(b.e2e.p99), f"${b.cost_per_mtok_usd:.4g}"
                     + ("" if b.meets_slo is None else (" (SLO met)" if b.meets_slo else " (SLO missed)"))])
    title = f"Generation: {report.model.spec}: {runtime_line(report.settings, m.runtime, m.device, report.workload)}"
    closed = table(title, [level_word(report), "output tok/s [95% over rounds]", "TTFT p50", "TTFT p99", "ITL p50",
                           "ITL p99", "E2E p50", "E2E p90", "E2E p99", "$/1M out"], rows)
    if not m.rates:
        return closed
    from rich.console import Group

    from compress.ship.report.serving import COLUMNS, goodput_line, rates_rows

    title = f"Open loop ({m.rates[0].arrival} arrivals; warm-up and cool-down set aside)"
    parts = [closed, table(title, COLUMNS, rates_rows(m))]
    if m.goodput is not None:
        parts.append(goodput_line(m.goodput))
    return Group(*parts)


def draft_table(report: Any) -> Table:
    """`compress bench --draft`: plain and assisted decoding side by side, with intervals over rounds."""
    f = report.figures()

    def iv(name: str, fmt: str = "{:.3g}") -> str:
        x = f[name]
        return f"{fmt.format(x.estimate)} [{fmt.format(x.lower)}, {fmt.format(x.upper)}]"

    rows = [["plain", "1", "-", iv("plain_p50_ms", "{:.0f}"), iv("plain_p90_ms", "{:.0f}"), iv("plain_p99_ms", "{:.0f}"),
             "1.00x"],
            ["with draft", iv("tokens_per_target_forward"), iv("acceptance_rate", "{:.1%}"),
             iv("draft_p50_ms", "{:.0f}"), iv("draft_p90_ms", "{:.0f}"), iv("draft_p99_ms", "{:.0f}"),
             iv("draft_speedup", "{:.2f}x")]]
    same = ("greedy outputs identical with and without the draft" if report.identical else
            f"[red]greedy outputs differ[/red] on prompts {report.mismatched_prompts}")
    title = (f"Speculative decoding: {report.target.spec} with draft {report.draft.spec} (batch 1, "
             f"{report.settings['output_tokens']} tokens, {report.settings['repeats']} prompts x "
             f"{report.settings['rounds']} rounds; {same})")
    return table(title, ["decoding", "tokens per target forward", "acceptance", "E2E p50 ms", "E2E p90 ms",
                         "E2E p99 ms", "speedup"], rows)


def identical_outputs(report: Any) -> tuple[int, int]:
    """(requests whose text differs between the two sides, requests compared): the same prompts
    went to both sides in each round and level, decoded greedily."""
    base = {(r.round, r.level, q.index): q.text for r in report.baseline.runs for q in r.requests}
    cand = {(r.round, r.level, q.index): q.text for r in report.candidate.runs for q in r.requests}
    shared = base.keys() & cand.keys()
    return sum(base[k] != cand[k] for k in shared), len(shared)


def served_draft_table(report: Any) -> Table:
    """`compress bench --draft --engine vllm`: speculative against plain serving at each level."""
    from compress.measure.compare import efficiency_metrics, level_word

    levels = sorted({b.batch_size for b in report.baseline.batches})
    rows = []
    for lvl in levels:
        f = efficiency_metrics(report, level=lvl)
        tps = {b.batch_size: b for b in report.candidate.batches}[lvl]
        base = {b.batch_size: b for b in report.baseline.batches}[lvl]
        iv = f["throughput_speedup"]
        rows.append([lvl, fmt_rate(base), fmt_rate(tps), f"{iv.estimate:.2f}x [{iv.lower:.2f}, {iv.upper:.2f}]",
                     f"{f['latency_p50_ratio'].estimate:.2f}x", f"{f['latency_p99_ratio'].estimate:.2f}x"])
    differ, total = identical_outputs(report)
    same = (f"greedy outputs identical on all {total} requests" if not differ else
            f"[red]greedy outputs differ on {differ} of {total} requests[/red]")
    d = report.settings.get("draft", {})
    title = (f"Speculative decoding in vLLM: {report.baseline.model.spec} with draft {d.get('model')} "
             f"({d.get('num_speculative_tokens')} tokens per step; {same})")
    return table(title, [level_word(report), "plain tok/s", "with draft tok/s", "speedup [95% over rounds]",
                         "E2E p50 ratio", "E2E p99 ratio"], rows)


def ratio_text(row: dict[str, Any]) -> str:
    if row["ratio"] is None:
        return "-"
    iv = row.get("interval")
    if iv is not None and iv.n > 1:
        return f"{iv.estimate:.2f}x [{iv.lower:.2f}, {iv.upper:.2f}]"
    return f"{row['ratio']:.2f}x"


def compare_tables(result: dict[str, Any]) -> list[Table]:
    tables = []
    if "accuracy" in result:
        rows = []
        for r in result["accuracy"]:
            unit = r["unit"]
            delta = (f"{100 * r['delta']:+.1f} pts" if unit == "fraction" else
                     f"{r['delta']:+.4g} ({100 * r['relative']:+.1f}%)" if r["relative"] is not None else f"{r['delta']:+.4g}")
            mark = "[red]worse[/red]" if r["worse"] and r["delta"] != 0 else ("[green]better[/green]" if r["delta"] else "same")
            rows.append([r["metric"], fmt_value(r["baseline"], unit), fmt_value(r["candidate"], unit), delta, mark])
        tables.append(table("Accuracy", ["metric", "baseline", "candidate", "delta", ""], rows))
    if "speed" in result:
        rows = []
        for r in result["speed"]:
            ratio = ratio_text(r)
            better = r["ratio"] is not None and ((r["ratio"] > 1) == r["higher_is_better"]) and r["ratio"] != 1
            rows.append([r["figure"], fmt_value(r["baseline"], r["unit"]), fmt_value(r["candidate"], r["unit"]),
                         f"[green]{ratio}[/green]" if better else ratio])
        title = "Speed, memory, size, cost" + (f": {result['speed_measured_with']}" if result.get("speed_measured_with") else "")
        tables.append(table(title, ["figure", "baseline", "candidate", "candidate/baseline [95%]"], rows))
    if "traffic" in result:
        tables.append(traffic_table(result["traffic"], result.get("traffic_measured_with", "")))
    return tables


def traffic_table(rows: list[dict[str, Any]], heading: str = "") -> Table:
    """The candidate's fidelity to the base on the user's traffic, and the behaviour checks' pass rates."""
    def show(name: str, v: float) -> str:
        return f"{v:.4f} nats" if name in ("traffic/kl", "traffic/nll_increase") else f"{100 * v:.1f}%"

    out = []
    for r in rows:
        if r["kind"] == "fidelity":
            out.append([r["metric"], "", f"{show(r['metric'], r['value'])} [{show(r['metric'], r['lower'])}, "
                        f"{show(r['metric'], r['upper'])}]", r["what"]])
        else:
            cand = "" if r["candidate"] is None else f"{100 * r['candidate']:.1f}%"
            out.append([r["metric"], f"{100 * r['baseline']:.1f}%", cand, "share of answers that pass"])
    return table("Traffic" + (f": {heading}" if heading else ""), ["figure", "baseline", "candidate [95%]", "what"],
                 out)


