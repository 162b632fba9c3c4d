"""Rendering: rich tables for the terminal (Markdown, JUnit and plots live beside them)."""
from __future__ import annotations

from typing import Any

from rich.table import Table

from compress.core.console import fmt_bytes, fmt_seconds, table
from compress.core.reports import AccuracyReport, BenchReport, SpeedReport, display_names


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


def runtime_line(settings: dict[str, Any], runtime: Any, device: str) -> str:
    """Which runtime measured a figure, for every cost or speed heading: "vLLM 0.32.0 (bfloat16) on cpu"."""
    if runtime.engine == "vllm":
        where = f"vLLM {runtime.version or '?'} server ({runtime.dtype}"
        where += f", KV cache {runtime.kv_cache_dtype})" if runtime.kv_cache_dtype not in (None, "auto") else ")"
    elif runtime.engine == "endpoint":
        where = f"the server at {runtime.url}"
    else:
        where = f"transformers {runtime.version or ''} generate ({runtime.dtype})".replace("  ", " ")
    return (f"{where} on {device}, {settings['prompt_tokens']} prompt + {settings['output_tokens']} output tokens, "
            f"{settings.get('rounds', 1)} rounds, ${settings['price_per_hour']}/hour")


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
    title = f"Generation: {report.model.spec}: {runtime_line(report.settings, m.runtime, m.device)}"
    return table(title, [level_word(report), "output tok/s [95% over rounds]", "TTFT p50", "TTFT p99", "ITL p50",
                         "ITL p99", "E2E p50", "E2E p90", "E2E p99", "$/1M out"], rows)


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
            ratio = _ratio_text(r)
            better = r["ratio"] is not None and ((r["ratio"] > 1) == r["higher_is_better"]) and r["ratio"] != 1
            rows.append([r["figure"], fmt_value(r["baseline"], r["unit"]), fmt_value(r["candidate"], r["unit"]),
                         f"[green]{ratio}[/green]" if better else ratio])
        title = "Speed, memory, size, cost" + (f": {result['speed_measured_with']}" if result.get("speed_measured_with") else "")
        tables.append(table(title, ["figure", "baseline", "candidate", "candidate/baseline [95%]"], rows))
    return tables


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


def _ratio_text(row: dict[str, Any]) -> str:
    if row["ratio"] is None:
        return "-"
    iv = row.get("interval")
    if iv is not None and iv.n > 1:
        return f"{iv.estimate:.2f}x [{iv.lower:.2f}, {iv.upper:.2f}]"
    return f"{row['ratio']:.2f}x"


def _side_value(row: dict[str, Any], who: str) -> str:
    sp = row.get(f"{who}_spread")
    if sp is not None and sp.rounds > 1:
        return f"{sp.value:,.1f} [{sp.lower:,.1f}, {sp.upper:,.1f}]"
    return fmt_value(row[who], row["unit"])


def speed_markdown(report: SpeedReport, confidence: float = 0.95) -> str:
    """Both models side by side; throughput with its interval over rounds, headline ratios with theirs."""
    from compress.measure.compare import level_intervals, speed_rows

    intervals = level_intervals(report, confidence=confidence)
    rows = [[r["figure"], _side_value(r, "baseline"), _side_value(r, "candidate"), _ratio_text(r)]
            for r in speed_rows(report, intervals)]
    return _md_table(["figure", "base", "this model", f"ratio [{confidence:.0%} interval over rounds]"], rows)


def speed_heading(report: SpeedReport) -> str:
    """Which runtime measured the figures, how, and at what price."""
    c = report.candidate
    return runtime_line(report.settings, c.runtime, c.device) + ", baseline and candidate interleaved"


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


def serve_markdown(fmt: str, path: Any, method: str = "") -> str:
    """The card's serving section for a format, with the export's own path."""
    fmt = fmt if fmt in SERVE else "safetensors"
    bnb = "bitsandbytes-nf4" if "nf4" in method else "bitsandbytes"
    lines = []
    for engine, command in SERVE[fmt]:
        lines += [f"{engine}:", "", "```bash", command.format(path=path, bnb=bnb), "```", ""]
    lines += [f"transformers (needs {TRANSFORMERS_NEEDS[fmt]} installed):", "",
              "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
              f"model = AutoModelForCausalLM.from_pretrained(\"{path}\")\n"
              f"tokenizer = AutoTokenizer.from_pretrained(\"{path}\")\n```"]
    return "\n".join(lines)


def _policy_sentence(recipe: Any, gate: Any) -> str:
    from compress.ship.export import policy_line
    from compress.decide.gate import policy_hash

    return policy_line(gate, policy_hash(recipe.gate))


FORMAT_TAGS = {"compressed-tensors": "compressed-tensors", "gptq": "gptq", "bitsandbytes": "bitsandbytes"}


def card_data(recipe: Any, manifest: dict[str, Any], gate: Any, base_path: Any = None) -> Any:
    """The model card's front matter (huggingface_hub ``ModelCardData``): base model, license,
    library, tags, pipeline tag, and a ``model-index`` of the gated accuracy results."""
    import re

    from huggingface_hub import EvalResult, ModelCardData

    method = manifest["method"]
    results = []
    for c in gate.checks:
        if c.kind != "quality" or c.candidate is None:
            continue
        task, _, metric = c.metric.partition("/")
        bracket = re.search(r"\[[^\]]*\]", c.note or "")
        spread = f", {gate.confidence:.0%} interval {bracket[0]}" if bracket else ""
        name = f"{metric} (gate {c.verdict}: {c.shown}{spread}; base {c.baseline:.4g})" if c.baseline is not None \
            else metric
        results.append(EvalResult(task_type="text-generation", dataset_type=task, dataset_name=task,
                                  metric_type=metric, metric_value=round(c.candidate, 6), metric_name=name,
                                  verified=False))
    tags = ["compress", "quantized" if method["kind"] != "distill" else "distilled",
            method["name"], FORMAT_TAGS.get(method["format"], "safetensors")]
    return ModelCardData(
        base_model=manifest["base_model"]["id"], license=recipe.export.license or _base_license(base_path) or "other",
        library_name="transformers", pipeline_tag="text-generation", tags=list(dict.fromkeys(tags)),
        model_name=recipe.name if results else None, eval_results=results or None)


def local_base(recipe: Any) -> Any:
    """The base model's folder when the recipe names a local one (its card may state a license)."""
    from pathlib import Path

    from compress.core.models import BUILTIN_MODELS

    spec = recipe.model.id
    if spec.startswith("builtin:"):
        return BUILTIN_MODELS.get(spec.split(":", 1)[1])
    return Path(spec) if Path(spec).expanduser().is_dir() else None


def _base_license(base_path: Any) -> str | None:
    """The license the base model's own card states in its front matter, if it has one."""
    from pathlib import Path

    if base_path is None or not (Path(base_path) / "README.md").is_file():
        return None
    try:
        from huggingface_hub import ModelCard

        return ModelCard.load(Path(base_path) / "README.md").data.license
    except Exception:  # noqa: BLE001 - a base card that does not parse states no license
        return None


def model_card(recipe: Any, manifest: dict[str, Any], gate: Any, reports: dict, *, path: Any = "PATH/TO/THIS/DIR",
               base_path: Any = None) -> str:
    """README.md for an exported artifact: front matter a model hub reads, what it is, how it was
    made, what it was measured to do, how to serve it from ``path``."""
    method = manifest["method"]
    base = manifest["base_model"]
    size = manifest["size"]
    parts = [
        "---", card_data(recipe, manifest, gate, base_path).to_yaml(), "---", "",
        f"# {recipe.name}",
        "",
        f"**{method['scheme']}** of `{base['id']}`, in the **{method['format']}** format, made by "
        f"compress and released because it **passed its gate** "
        f"({gate.confidence:.0%} confidence, {gate.test}).",
        "",
        f"- Weights: {fmt_bytes(size['weights_bytes'])} ({size['ratio']:.2f}x the base's "
        f"{fmt_bytes(size['base_weights_bytes'])})" if size.get("ratio") else "",
        f"- Base model: `{base['id']}` (content sha256 `{base['content_hash'][:16]}…`)",
        f"- Artifact content sha256: `{manifest['content_hash']}` (`compress verify DIR` re-checks every file)",
        f"- Built: {manifest['created']} on {_environment_line(manifest['environment'])}",
        "",
        "## Gate",
        "",
        f"Verdict: **{gate.verdict}**, decided by the {_policy_sentence(recipe, gate)}. `compress verify DIR` "
        f"decides again from the reports in `evidence/`.",
        "",
        checks_markdown(gate),
    ]
    acc = (reports.get(("baseline", "accuracy")), reports.get(("candidate", "accuracy")))
    if all(acc):
        parts += ["", "## Accuracy (lm-evaluation-harness, same documents for both)", "", accuracy_markdown(*acc)]
    speed = reports.get(("both", "speed"))
    if speed is not None:
        parts += ["", "## Speed, memory and cost", "", f"Measured with {speed_heading(speed)}; figures in brackets "
                  f"are {gate.confidence:.0%} intervals over the rounds.", "",
                  speed_markdown(speed, gate.confidence)]
        if warning := spread_warning(speed, gate.confidence):
            parts += ["", f"> **Warning:** {warning}"]
    draft = reports.get(("both", "draft"))
    if draft is not None:
        f = draft.figures(confidence=gate.confidence)
        same = ("identical" if draft.identical else f"different on prompts {draft.mismatched_prompts}")
        parts += ["", "## As a speculative-decoding draft", "",
                  f"`{base['id']}` generating with this model as its draft (transformers assisted generation, batch 1, "
                  f"{draft.settings['output_tokens']} tokens, {draft.settings['repeats']} prompts x "
                  f"{draft.settings['rounds']} alternating rounds): **{f['draft_speedup'].estimate:.2f}x** "
                  f"[{f['draft_speedup'].lower:.2f}, {f['draft_speedup'].upper:.2f}] against plain decoding, "
                  f"acceptance {f['acceptance_rate'].estimate:.1%}, {f['tokens_per_target_forward'].estimate:.2f} "
                  f"tokens per forward pass of the target; greedy outputs {same} with and without the draft."]
    parts += ["", "## How it was made", "", *how_made(recipe, manifest), "",
              "The recipe's settings that differ from compress's defaults (the artifact's `recipe.yaml` holds "
              "all of them):", "", "```yaml", recipe_excerpt(recipe).rstrip(), "```"]
    checked = sorted({c.metric for c in gate.checks if c.kind == "quality"})
    parts += [
        "", "## Intended use and limitations", "",
        f"A drop-in, cheaper-to-serve replacement for `{base['id']}` for the uses the base model serves. "
        f"The gate measured quality only on {', '.join(f'`{m}`' for m in checked) or 'no task'}; behaviour "
        "on other tasks, languages and prompts was not measured and may have changed. Speed figures hold for "
        "the machine and engine named above.",
        "", "## Serve it", "", serve_markdown(method["format"], path, method["name"]), "",
    ]
    return "\n".join(p for p in parts if p is not None)


def how_made(recipe: Any, manifest: dict[str, Any]) -> list[str]:
    """Bullets: the method, and the data it saw (calibration or training) with its size."""
    method, details = manifest["method"], manifest["method"].get("details", {})
    lines = [f"- Method: {method['name']} ({method['scheme']}), saved as {method['format']}; "
             f"{fmt_seconds(manifest['timings'].get('total_s'))} to build."]
    cal = recipe.calibration
    if recipe.method.kind == "distill":
        t = recipe.method.training
        lines.append(f"- Training data: `{t.dataset}` ({t.split} split, field `{t.text_field}`), blocks of "
                     f"{t.max_seq_length} tokens, {t.max_steps} steps of {t.batch_size}; the teacher is the base model.")
    elif details.get("calibration_samples"):
        lines.append(f"- Calibration data: {details['calibration_samples']} samples of `{cal.dataset}` ({cal.split} "
                     f"split, field `{cal.text_field}`), up to {cal.max_seq_length} tokens each, seed {cal.seed}. "
                     "Calibration text should look like the traffic the model will serve; text unlike it "
                     "can cost accuracy the gate's tasks do not show.")
    else:
        lines.append("- Calibration data: none (the method is data-free: weights are rounded on their own).")
    if method.get("details", {}).get("ignore"):
        lines.append(f"- Left in the base precision: {', '.join(f'`{x}`' for x in details['ignore'])}.")
    return lines


def recipe_excerpt(recipe: Any) -> str:
    """The recipe as YAML with only what differs from the defaults; the method in full (its
    defaults are part of what was done)."""
    import yaml

    data = recipe.model_dump(mode="json", exclude_defaults=True)
    data["method"] = {k: v for k, v in recipe.model_dump(mode="json")["method"].items() if v is not None}
    order = ["name", "description", "model", "method", "calibration", "evals", "bench", "gate", "export"]
    return yaml.safe_dump({k: data[k] for k in order if k in data}, sort_keys=False)


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


def run_summary_markdown(result: Any) -> str:
    """The `--summary` of `compress run` (also appended to $GITHUB_STEP_SUMMARY)."""
    gate = result.gate
    icon = {"PASS": "✅", "FAIL": "❌", "INCONCLUSIVE": "⚠️"}[gate.verdict]
    m = result.manifest
    lines = [
        f"## {icon} {result.recipe.name}: {gate.verdict}",
        "",
        f"{m['method']['scheme']} of `{m['base_model']['id']}` ({m['method']['format']}); "
        f"weights {fmt_bytes(m['size']['weights_bytes'])}, {m['size']['ratio']:.2f}x the base."
        if m["size"].get("ratio") else "",
        "",
        checks_markdown(gate),
    ]
    acc = (result.reports.get(("baseline", "accuracy")), result.reports.get(("candidate", "accuracy")))
    if all(acc):
        lines += ["", "### Accuracy", "", accuracy_markdown(*acc)]
    speed = result.reports.get(("both", "speed"))
    if speed is not None:
        lines += ["", "### Speed, memory, cost", "", f"Measured with {speed_heading(speed)}.", "",
                  speed_markdown(speed, gate.confidence)]
    lines += ["", f"Exported to `{result.exported_to}`." if result.exported_to else
              "Nothing exported (only a PASS can be)." , ""]
    return "\n".join(lines)


def junit_document(suite: str, classname: str, seconds: float, cases: list[dict[str, Any]],
                   title: str = "compress") -> str:
    """A JUnit XML document (named ``title``) of one suite. Each case: ``name``, optional ``time`` (s), ``failure`` (a
    ``(type, message)`` pair, or None for a pass) and ``out`` (its system-out text)."""
    from xml.sax.saxutils import escape, quoteattr

    failures = sum(c.get("failure") is not None for c in cases)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuites name={quoteattr(title)} tests="{len(cases)}" failures="{failures}">',
           f'  <testsuite name={quoteattr(suite)} tests="{len(cases)}" failures="{failures}" time="{seconds:.2f}">']
    for c in cases:
        time = f' time="{c["time"]:.2f}"' if c.get("time") is not None else ""
        out.append(f'    <testcase classname={quoteattr(classname)} name={quoteattr(c["name"])}{time}>')
        if c.get("failure") is not None:
            kind, message = c["failure"]
            out.append(f'      <failure type={quoteattr(kind)} message={quoteattr(message)}/>')
        if c.get("out"):
            out.append(f'      <system-out>{escape(c["out"])}</system-out>')
        out.append("    </testcase>")
    out += ["  </testsuite>", "</testsuites>", ""]
    return "\n".join(out)


def junit_xml(result: Any) -> str:
    """One JUnit test case per gate check; FAIL and INCONCLUSIVE are failures of their case."""
    cases = [{"name": f"{c.metric} ({c.threshold})", "out": c.note,
              "failure": None if c.verdict == "PASS" else (c.verdict, c.note or c.verdict)}
             for c in result.gate.checks]
    return junit_document(result.recipe.name, "gate." + result.recipe.name, result.seconds, cases)


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
