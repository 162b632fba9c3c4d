"""Markdown sections: gate checks, accuracy and speed tables, how to serve an artifact, spread warnings."""
from __future__ import annotations

from typing import Any

from compress.core.reports import AccuracyReport, SpeedReport
from compress.ship.report.tables import fmt_value, ratio_text, runtime_line

# ------------------------------------------------------------------------- Markdown


def _md_table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def checks_markdown(gate: Any) -> str:
    icon = {"PASS": "✅", "FAIL": "❌", "INCONCLUSIVE": "⚠️"}
    rows = [[f"{icon[c.verdict]} {c.verdict}", f"`{c.metric}`", c.shown or f"{c.measured:.4g}", c.threshold, c.note]
            for c in gate.checks]
    return _md_table(["verdict", "check", "measured", "threshold", "detail"], rows)


def accuracy_markdown(base: AccuracyReport, cand: AccuracyReport) -> str:
    from compress.measure.compare import accuracy_rows

    rows = []
    for r in accuracy_rows(base, cand):
        delta = f"{100 * r['delta']:+.1f} pts" if r["unit"] == "fraction" else (
            f"{100 * r['relative']:+.1f}%" if r["relative"] is not None else f"{r['delta']:+.4g}")
        rows.append([f"`{r['metric']}` {'↑' if r['higher_is_better'] else '↓'}", fmt_value(r["baseline"], r["unit"]),
                     fmt_value(r["candidate"], r["unit"]), delta])
    return _md_table(["metric", "base", "this model", "change"], rows)


def _side_value(row: dict[str, Any], who: str) -> str:
    sp = row.get(f"{who}_spread")
    if sp is not None and sp.rounds > 1:
        return f"{sp.value:,.1f} [{sp.lower:,.1f}, {sp.upper:,.1f}]"
    return fmt_value(row[who], row["unit"])


def speed_markdown(report: SpeedReport, confidence: float = 0.95) -> str:
    """Both models side by side; throughput with its interval over rounds, headline ratios with theirs."""
    from compress.measure.compare import level_intervals, speed_rows

    intervals = level_intervals(report, confidence=confidence)
    rows = [[r["figure"], _side_value(r, "baseline"), _side_value(r, "candidate"), ratio_text(r)]
            for r in speed_rows(report, intervals)]
    text = _md_table(["figure", "base", "this model", f"ratio [{confidence:.0%} interval over rounds]"], rows)
    if report.baseline.rates or report.candidate.rates:
        from compress.ship.report.serving import rates_markdown

        text += "\n\nOpen loop (requests arriving on their own schedule):\n\n" + rates_markdown(
            {"base": report.baseline, "this model": report.candidate})
    return text


def speed_heading(report: SpeedReport) -> str:
    """Which runtime measured the figures, how, and at what price."""
    c = report.candidate
    return runtime_line(report.settings, c.runtime, c.device, report.workload) + ", baseline and candidate interleaved"


def _environment_line(env: dict[str, Any]) -> str:
    libs = env.get("libraries", {})
    dev = env.get("device", {})
    where = dev.get("gpu") or f"CPU ({dev.get('cpu_count')} cores, {dev.get('torch_threads')} torch threads)"
    keys = ["torch", "transformers", "llmcompressor", "compressed-tensors", "lm-eval", "bitsandbytes", "gptqmodel"]
    return f"{where}; " + ", ".join(f"{k} {libs[k]}" for k in keys if k in libs)


# How to serve an artifact, per format: the engines that load it, with the export's own path.
SERVE = {
    "compressed-tensors": [
        ("vLLM", "vllm serve {path}"),
        ("SGLang", "python -m sglang.launch_server --model-path {path}"),
    ],
    "gptq": [
        ("vLLM", "vllm serve {path}"),
        ("TGI", "text-generation-launcher --model-id {path} --quantize gptq"),
    ],
    "bitsandbytes": [
        ("TGI", "text-generation-launcher --model-id {path} --quantize {bnb}"),
        ("vLLM", "vllm serve {path} --quantization bitsandbytes"),
    ],
    "safetensors": [
        ("vLLM", "vllm serve {path}"),
        ("SGLang", "python -m sglang.launch_server --model-path {path}"),
        ("TGI", "text-generation-launcher --model-id {path}"),
    ],
}
TRANSFORMERS_NEEDS = {"compressed-tensors": "`compressed-tensors`", "gptq": "`optimum` and `gptqmodel`",
                      "bitsandbytes": "`bitsandbytes`", "safetensors": "nothing more"}


def serve_markdown(fmt: str, path: Any, method: str = "", flags: list[str] | None = None) -> str:
    """The card's serving section for a format, with the export's own path; ``flags``: the vLLM flags of the
    serving settings the model passed its gate with (``ServeSpec.engine_args()``), added to vLLM's command."""
    import shlex

    fmt = fmt if fmt in SERVE else "safetensors"
    bnb = "bitsandbytes-nf4" if "nf4" in method else "bitsandbytes"
    lines = []
    if flags:
        lines += [f"It was gated with these vLLM serving settings: `{shlex.join(flags)}`. vLLM's command below "
                  "carries them (other engines have settings of their own).", ""]
    for engine, command in SERVE[fmt]:
        line = command.format(path=path, bnb=bnb) + (f" {shlex.join(flags)}" if flags and engine == "vLLM" else "")
        lines += [f"{engine}:", "", "```bash", line, "```", ""]
    lines += [f"transformers (needs {TRANSFORMERS_NEEDS[fmt]} installed):", "",
              "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
              f"model = AutoModelForCausalLM.from_pretrained(\"{path}\")\n"
              f"tokenizer = AutoTokenizer.from_pretrained(\"{path}\")\n```"]
    return "\n".join(lines)


# A speed ratio or throughput whose interval spans more than this share of its value is flagged.
WIDE_SPREAD = 0.25


def spread_warning(report: SpeedReport, confidence: float = 0.95) -> str | None:
    """A sentence when the speed figures are too noisy to be taken as facts, else None."""
    from compress.measure.compare import level_intervals, speed_rows

    widest, where = 0.0, ""
    for row in speed_rows(report, level_intervals(report, confidence=confidence)):
        if any(tail in row["figure"] for tail in ("p90", "p99")):
            continue  # a tail percentile over a few rounds is noisy by nature; the headline figures are judged
        iv = row.get("interval")
        if iv is not None and iv.n > 1 and iv.estimate:
            width = (iv.upper - iv.lower) / abs(iv.estimate)
            if width > widest:
                widest, where = width, row["figure"]
        for who in ("baseline", "candidate"):
            sp = row.get(f"{who}_spread")
            if sp is not None and sp.rounds > 1 and sp.value:
                width = (sp.upper - sp.lower) / abs(sp.value)
                if width > widest:
                    widest, where = width, f"{row['figure']} ({who})"
    if widest <= WIDE_SPREAD:
        return None
    rounds = report.settings.get("rounds", 1)
    return (f"the speed figures vary widely between rounds: the {confidence:.0%} interval of {where} spans "
            f"{widest:.0%} of its value over {rounds} rounds. The machine was probably shared or busy; treat these "
            "figures as indicative and measure again on the serving machine (`compress bench`, more "
            "`bench.rounds`).")




def traffic_markdown(report: Any, confidence: float = 0.95) -> str:
    """The user's traffic as a card states it: its hash, size and lengths (never its content), how it was
    answered, and the candidate's fidelity and behaviour figures with their intervals."""
    from compress.measure.compare import traffic_rows

    t = report.traffic
    p = t["prompt_tokens"]
    show = (lambda name, v: f"{v:.4f} nats" if name in ("traffic/kl", "traffic/nll_increase") else f"{100 * v:.1f}%")
    rows = []
    for r in traffic_rows(report, confidence):
        if r["kind"] == "fidelity":
            rows.append([f"`{r['metric']}`", f"{show(r['metric'], r['value'])} [{show(r['metric'], r['lower'])}, "
                         f"{show(r['metric'], r['upper'])}]", r["what"]])
        else:
            rows.append([f"`{r['metric']}`", f"{100 * r['candidate']:.1f}% (base {100 * r['baseline']:.1f}%)",
                         "share of answers passing the check"])
    head = (f"{t['requests']} requests (sha256 `{t['sha256'][:16]}…` of the file; prompts of {p['min']}-{p['max']} "
            f"tokens, median {p['p50']:.0f}; {t['chat_requests']} as chat), each answered greedily by both models in "
            f"{report.engine['name']} ({report.engine['kl']}). The requests' text is not kept here; "
            f"{confidence:.0%} intervals are bootstraps over the requests.")
    return head + "\n\n" + _md_table(["figure", "candidate [95%]", "what"], rows)
