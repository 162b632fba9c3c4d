"""Every run at once: the table, the Pareto front of cost against accuracy, and its plot."""
from __future__ import annotations

from typing import Any

from rich.table import Table

from compress.core.console import fmt_bytes, fmt_seconds, table
from compress.core.reports import AccuracyReport, SpeedReport
from compress.ship.report.tables import fmt_value

# --------------------------------------------------------------------- all runs


def collect_runs(runs_dir: Any) -> list[dict[str, Any]]:
    """One row per gated run under ``runs_dir`` (newest per recipe), plus one per base model."""
    from pathlib import Path

    from compress.core.artifact import MANIFEST, read_json

    rows: list[dict[str, Any]] = []
    bases: dict[str, dict[str, Any]] = {}
    for gate_path in sorted(Path(runs_dir).glob("*/*/gate.json")):
        run_dir = gate_path.parent
        manifest_path = run_dir / "model" / MANIFEST
        if not manifest_path.exists():
            continue
        manifest, gate = read_json(manifest_path), read_json(gate_path)
        reports = run_dir / "reports"
        headline = next((c["metric"] for c in gate["checks"] if c["kind"] == "quality"), None)

        rows.append({"name": manifest["name"], "method": manifest["method"]["name"], "format": manifest["method"]["format"],
                     "size_bytes": manifest["size"]["weights_bytes"], "verdict": gate["verdict"],
                     "created": gate.get("created", ""), "run_dir": str(run_dir),
                     **_figures(reports, "candidate", headline)})
        base = manifest["base_model"]
        if base["content_hash"] not in bases:
            bases[base["content_hash"]] = {"name": f"base: {base['id']}", "method": "base", "format": "safetensors",
                                           "size_bytes": base["size_bytes"], "verdict": "-", "created": "",
                                           "run_dir": "", **_figures(reports, "baseline", headline)}
    newest: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["name"] not in newest or row["created"] > newest[row["name"]]["created"]:
            newest[row["name"]] = row
    return list(bases.values()) + sorted(newest.values(), key=lambda r: r["name"])


def _figures(reports: Any, who: str, headline: str | None) -> dict[str, Any]:
    """Headline accuracy, latency and cost of one model from a run's stored reports."""
    acc_path, speed_path = reports / f"{who}-accuracy.json", reports / "speed.json"
    out: dict[str, Any] = {}
    if acc_path.exists():
        acc = AccuracyReport.load(acc_path)
        name = headline or acc.metric_names()[0]
        m = acc.metric(name)
        out.update(metric=name, accuracy=m.value, accuracy_stderr=m.stderr, accuracy_unit=m.unit,
                   higher_is_better=m.higher_is_better)
    if speed_path.exists():
        side = SpeedReport.load(speed_path).side(who)
        b = max(side.batches, key=lambda x: x.batch_size)
        out.update(latency_p50_s=b.e2e.p50, cost_per_mtok=b.cost_per_mtok_usd, batch=b.batch_size,
                   peak_memory=side.peak_memory_bytes, runtime=side.runtime.engine)
        sp = b.output_tokens_per_s_spread
        if sp is not None and sp.rounds > 1 and sp.lower > 0:
            # Cost is price / throughput: its interval over rounds follows from throughput's.
            out["cost_interval"] = [b.cost_per_mtok_usd * sp.value / sp.upper, b.cost_per_mtok_usd * sp.value / sp.lower]
    return out


def pareto(rows: list[dict[str, Any]], cost_key: str) -> list[dict[str, Any]]:
    """Rows not dominated in (higher accuracy, lower cost_key), sorted by cost."""
    pts = [r for r in rows if r.get("accuracy") is not None and r.get(cost_key) is not None]

    def good(r: dict[str, Any]) -> float:  # higher is better, whatever the metric (perplexity is lower)
        return r["accuracy"] if r.get("higher_is_better", True) else -r["accuracy"]

    front = [r for r in pts if not any(
        good(o) >= good(r) and o[cost_key] <= r[cost_key]
        and (good(o) > good(r) or o[cost_key] < r[cost_key]) for o in pts)]
    return sorted(front, key=lambda r: r[cost_key])


def _shared(rows: list[dict[str, Any]], key: str) -> Any:
    """The value every row that has ``key`` shares, else None."""
    values = {r[key] for r in rows if r.get(key) is not None}
    return values.pop() if len(values) == 1 else None


def runs_table(rows: list[dict[str, Any]], plot: Any = None) -> Table:
    """One row per run; the load (batch size or concurrency) and runtime that measured latency and
    cost are named in the headers when all runs share them, in the cells when not."""
    colour = {"PASS": "green", "FAIL": "red", "INCONCLUSIVE": "yellow", "-": "dim"}
    front_size = {r["name"] for r in pareto(rows, "size_bytes")}
    batch, runtime, metric = _shared(rows, "batch"), _shared(rows, "runtime"), _shared(rows, "metric")
    load = f"{runtime or 'hf'}, batch {batch}" if batch is not None else None
    out = []
    for r in rows:
        acc = "-" if r.get("accuracy") is None else fmt_value(r["accuracy"], r.get("accuracy_unit") or (
            "fraction" if r["accuracy"] <= 1 else ""))
        if r.get("accuracy_stderr") is not None and r.get("accuracy") is not None:
            acc += f" ± {fmt_value(1.96 * r['accuracy_stderr'], r.get('accuracy_unit') or '')}"
        cost = "-" if r.get("cost_per_mtok") is None else f"${r['cost_per_mtok']:.4g}"
        latency = fmt_seconds(r.get("latency_p50_s"))
        if load is None and r.get("batch") is not None:
            cost += f" ({r.get('runtime', 'hf')}, batch {r['batch']})"
            latency += f" (batch {r['batch']})"
        out.append([r["name"] + (" *" if r["name"] in front_size else ""), r["method"], fmt_bytes(r["size_bytes"]),
                    acc, latency, cost, f"[{colour[r['verdict']]}]{r['verdict']}[/{colour[r['verdict']]}]"])
    at = f" ({load})" if load else ""
    return table("Runs (* = on the accuracy/size Pareto front" + (f"; plotted in {plot}" if plot else "") + ")",
                 ["run", "method", "weights", f"{metric or 'accuracy'} [95%]", f"latency p50{at}", f"$/1M out{at}",
                  "verdict"], out)


def _accuracy_axis(values: list[tuple[float, float]], percent: bool) -> tuple[float, float]:
    """Limits for the accuracy axis: the points and their error bars, in a window at least 10
    points wide (or 10% of the value), so that a 1-point drop does not look like a cliff."""
    lo = min(v - e for v, e in values)
    hi = max(v + e for v, e in values)
    span = 10.0 if percent else 0.1 * max(abs(v) for v, _ in values)
    if hi - lo < span:
        mid = (hi + lo) / 2
        lo, hi = mid - span / 2, mid + span / 2
    pad = 0.08 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if percent:
        lo, hi = max(lo, 0.0), min(hi, 100.0)
    return lo, hi


def pareto_plot(rows: list[dict[str, Any]], path: Any) -> None:
    """PNG: accuracy against size and against cost, with 95% error bars (accuracy from its standard
    error, cost from throughput's interval over rounds) and the Pareto fronts marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"PASS": "tab:green", "FAIL": "tab:red", "INCONCLUSIVE": "tab:orange", "-": "tab:blue"}
    pts_all = [r for r in rows if r.get("accuracy") is not None]
    percent = all((r.get("accuracy_unit") or "fraction") == "fraction" for r in pts_all)
    scale_y = 100.0 if percent else 1.0
    batch, runtime, metric = _shared(rows, "batch"), _shared(rows, "runtime"), _shared(rows, "metric")
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    cost_label = "USD per million output tokens" + (f" ({runtime or 'hf'}, batch {batch})" if batch is not None else "")
    for ax, key, axis_label, scale in [(axes[0], "size_bytes", "weights on disk (MB)", 1e-6),
                                       (axes[1], "cost_per_mtok", cost_label, 1.0)]:
        pts = [r for r in pts_all if r.get(key) is not None]
        for r in pts:
            x, y = r[key] * scale, scale_y * r["accuracy"]
            yerr = 1.96 * scale_y * r["accuracy_stderr"] if r.get("accuracy_stderr") is not None else None
            xerr = None
            if key == "cost_per_mtok" and r.get("cost_interval"):
                lo, hi = r["cost_interval"]
                xerr = [[max(x - lo, 0.0)], [max(hi - x, 0.0)]]
            ax.errorbar(x, y, yerr=yerr, xerr=xerr, fmt="o", color=colours[r["verdict"]], ms=6, capsize=3,
                        elinewidth=1, zorder=3)
            name = r["name"].replace("base: ", "")
            if key == "cost_per_mtok" and batch is None and r.get("runtime"):
                name += f" ({r['runtime']}, batch {r.get('batch')})"  # which runtime and load measured the cost
            ax.annotate(name, (x, y), fontsize=7, xytext=(5, 4), textcoords="offset points")
        front = pareto(rows, key)
        if front:
            ax.step([r[key] * scale for r in front], [scale_y * r["accuracy"] for r in front], where="post",
                    color="black", linestyle="--", linewidth=1, zorder=2)
        if pts:
            ax.set_ylim(*_accuracy_axis([(scale_y * r["accuracy"], 1.96 * scale_y * (r.get("accuracy_stderr") or 0))
                                         for r in pts], percent))
        ax.set_xlabel(axis_label)
        ax.set_ylabel(f"{metric or 'accuracy'}{' (%)' if percent else ''}, 95% error bars")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=v if v != "-" else "base")
               for v, c in colours.items()]
    handles.append(plt.Line2D([], [], linestyle="--", color="black", label="Pareto front"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("compress runs: accuracy against size and cost")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
