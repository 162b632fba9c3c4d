"""Open-loop levels and goodput, for the terminal and for Markdown: per rate, what was offered and achieved, the
latencies, the SLO attainment with its interval and verdict, and what the engine said about its queue and caches."""
from __future__ import annotations

from typing import Any

from compress.core.console import fmt_seconds
from compress.core.reports import Goodput, Measured, RateResult

COLUMNS = ["offered req/s", "achieved req/s", "output tok/s", "TTFT p50", "TTFT p99", "E2E p50", "E2E p99",
           "SLO attainment [95%]", "verdict", "engine queue", "KV max", "prefix hits", "$/1M out"]


def _share(r: RateResult) -> str:
    a = r.attainment
    return "-" if a is None else f"{a.value:.0%} [{a.lower:.0%}, {a.upper:.0%}]"


def _queue(r: RateResult) -> str:
    """Mean queueing time and the most requests waiting, as the engine reported them."""
    if r.queue_time_mean_s is None and r.waiting_max is None:
        return "-"
    wait = fmt_seconds(r.queue_time_mean_s) if r.queue_time_mean_s is not None else "-"
    return f"{wait}, ≤{r.waiting_max:g} waiting" if r.waiting_max is not None else wait


def rate_row(r: RateResult) -> list[str]:
    verdict = (r.verdict or "-") + (" (client behind)" if r.client_bound else "")
    return [f"{r.rate:g}", f"{r.achieved_requests_per_s:.2f}", f"{r.output_tokens_per_s:,.1f}",
            fmt_seconds(r.ttft.p50), fmt_seconds(r.ttft.p99), fmt_seconds(r.e2e.p50), fmt_seconds(r.e2e.p99),
            _share(r), verdict, _queue(r), "-" if r.kv_cache_usage_max is None else f"{r.kv_cache_usage_max:.1%}",
            "-" if r.prefix_cache_hit_rate is None else f"{r.prefix_cache_hit_rate:.0%}",
            f"${r.cost_per_mtok_usd:.4g}"]


def slo_text(slo: dict[str, float]) -> str:
    names = {"ttft": "TTFT", "tpot": "time per output token", "e2e": "end-to-end"}
    return ", ".join(f"{names.get(k, k)} ≤ {v:g} ms" for k, v in slo.items())


def goodput_line(g: Goodput) -> str:
    """One sentence: the goodput, its bracket, and what it costs."""
    head = f"goodput at ≥{g.target:.0%} of requests within {slo_text(g.slo)}: "
    if g.rps is None:
        return head + f"none found ({g.reason})"
    upper = f"below {g.upper_rps:g}/s (the next probe was not a pass)" if g.upper_rps else \
        "every probe passed (the upper end is open)"
    undecided = f"; undecided at {', '.join(f'{r:g}/s' for r in g.undecided)}" if g.undecided else ""
    cost = f"; ${g.cost_per_mtok_usd:.4g} per 1M output tokens there" if g.cost_per_mtok_usd is not None else ""
    return head + f"{g.rps:g} req/s, {upper}{undecided}{cost} ({len(g.probes)} probes)"


def rates_rows(m: Measured) -> list[list[str]]:
    return [rate_row(r) for r in m.rates]


def open_loop_lines(sides: dict[str, Measured]) -> list[str]:
    """Goodput sentences per side (empty when no side searched it)."""
    return [f"{name}: {goodput_line(m.goodput)}" for name, m in sides.items() if m.goodput is not None]


def rates_markdown(sides: dict[str, Measured]) -> str:
    """A Markdown table per side of its open-loop levels, then the goodput sentences."""
    parts = []
    for name, m in sides.items():
        if m.rates:
            rows = [COLUMNS, ["---"] * len(COLUMNS), *rates_rows(m)]
            parts.append(f"**{name}**\n\n" + "\n".join("| " + " | ".join(r) + " |" for r in rows))
    parts += [f"- {line}" for line in open_loop_lines(sides)]
    return "\n\n".join(parts)


def workload_text(workload: dict[str, Any] | None) -> str:
    """"a traffic file (sha256 1a2b3c4d), prompts p50 13 / p99 16 tokens, outputs p50 16 tokens"."""
    if not workload:
        return ""
    src = (f"a traffic file (sha256 {workload['file_sha256'][:8]})" if workload["source"] == "file"
           else "synthetic requests")
    p, o = workload["prompt_tokens"], workload["output_tokens"]
    prefix = (f", a shared prefix of {workload['shared_prefix_tokens']} tokens on {workload['prefixed_share']:.0%}"
              if workload.get("shared_prefix_tokens") else "")
    return (f"{src}, prompts p50 {p['p50']:g} / p99 {p['p99']:.0f} tokens, outputs p50 {o['p50']:g} / p99 "
            f"{o['p99']:.0f} tokens{prefix}")
