"""Side-by-side rows for a baseline and a candidate: accuracy metrics and speed figures."""
from __future__ import annotations

from typing import Any

from compress.evals.reports import AccuracyReport, BenchReport


def accuracy_rows(base: AccuracyReport, cand: AccuracyReport) -> list[dict[str, Any]]:
    """One row per metric both reports have: values, delta, and whether the change is worse."""
    rows = []
    for task, tr in base.tasks.items():
        if task not in cand.tasks:
            continue
        for name, m in tr.metrics.items():
            c = cand.tasks[task].metrics.get(name)
            if c is None:
                continue
            delta = c.value - m.value
            rows.append({"metric": f"{task}/{name}", "baseline": m.value, "candidate": c.value, "delta": delta,
                         "relative": delta / m.value if m.value else None, "higher_is_better": m.higher_is_better,
                         "worse": (delta < 0) if m.higher_is_better else (delta > 0), "unit": m.unit})
    return rows


SPEED_FIGURES = [
    # (label, getter on a BatchResult or report, unit, higher is better)
    ("TTFT p50", lambda b: b.ttft.p50, "s", False),
    ("TTFT p99", lambda b: b.ttft.p99, "s", False),
    ("inter-token p50", lambda b: b.itl.p50, "s", False),
    ("inter-token p99", lambda b: b.itl.p99, "s", False),
    ("end-to-end p50", lambda b: b.e2e.p50, "s", False),
    ("end-to-end p90", lambda b: b.e2e.p90, "s", False),
    ("end-to-end p99", lambda b: b.e2e.p99, "s", False),
    ("prefill tok/s", lambda b: b.prefill_tokens_per_s, "tok/s", True),
    ("decode tok/s", lambda b: b.decode_tokens_per_s, "tok/s", True),
    ("$ / 1M output tokens", lambda b: b.cost_per_mtok_usd, "USD", False),
]


def speed_rows(base: BenchReport, cand: BenchReport) -> list[dict[str, Any]]:
    """Rows per shared batch size, plus memory and size; ``ratio`` is candidate / baseline."""
    rows = []
    cand_batches = {b.batch_size: b for b in cand.batches}
    for b in base.batches:
        c = cand_batches.get(b.batch_size)
        if c is None:
            continue
        for label, get, unit, hib in SPEED_FIGURES:
            bv, cv = get(b), get(c)
            rows.append({"figure": f"{label} (batch {b.batch_size})", "baseline": bv, "candidate": cv,
                         "ratio": cv / bv if bv else None, "unit": unit, "higher_is_better": hib})
    memory = [("peak memory", base.peak_memory_bytes, cand.peak_memory_bytes)]
    if base.model_memory_bytes and cand.model_memory_bytes:
        memory.append(("memory taken by loading the model", base.model_memory_bytes, cand.model_memory_bytes))
    for label, bv, cv in memory + [("size on disk", base.size_bytes, cand.size_bytes)]:
        rows.append({"figure": label, "baseline": bv, "candidate": cv, "ratio": cv / bv if bv else None,
                     "unit": "bytes", "higher_is_better": False})
    return rows


def efficiency_metrics(base: BenchReport, cand: BenchReport) -> dict[str, float]:
    """The efficiency metrics a gate can check (see ``recipe.EFFICIENCY_METRICS``).

    Ratios are read at the largest batch size both reports share.
    """
    shared = sorted({b.batch_size for b in base.batches} & {b.batch_size for b in cand.batches})
    if not shared:
        raise ValueError("the two bench reports share no batch size")
    bs = shared[-1]
    b = next(x for x in base.batches if x.batch_size == bs)
    c = next(x for x in cand.batches if x.batch_size == bs)
    return {
        "size_ratio": cand.size_bytes / base.size_bytes,
        "peak_memory_ratio": cand.peak_memory_bytes / base.peak_memory_bytes,
        "peak_memory_mb": cand.peak_memory_bytes / 2**20,
        "throughput_speedup": c.decode_tokens_per_s / b.decode_tokens_per_s,
        "prefill_speedup": c.prefill_tokens_per_s / b.prefill_tokens_per_s,
        "latency_p50_ratio": c.e2e.p50 / b.e2e.p50,
        "latency_p99_ratio": c.e2e.p99 / b.e2e.p99,
        "ttft_p99_ratio": c.ttft.p99 / b.ttft.p99,
        "cost_ratio": c.cost_per_mtok_usd / b.cost_per_mtok_usd,
        "cost_per_mtok": c.cost_per_mtok_usd,
    }
