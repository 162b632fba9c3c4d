"""The model card an export carries: its Hugging Face metadata, its evidence and how it was made."""
from __future__ import annotations

from typing import Any

from compress.core.console import fmt_bytes, fmt_seconds
from compress.ship.report.markdown import (
    _environment_line,
    accuracy_markdown,
    checks_markdown,
    serve_markdown,
    speed_heading,
    speed_markdown,
    spread_warning,
    traffic_markdown,
)


def _policy_sentence(recipe: Any, gate: Any) -> str:
    from compress.decide.gate import policy_hash
    from compress.ship.export import policy_line

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
    tags = ["compress", {"distill": "distilled", "none": "serving-settings"}.get(method["kind"], "quantized"),
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


def serve_flags(recipe: Any, manifest: dict[str, Any], reports: dict) -> dict[str, list[str]]:
    """vLLM's flags per side (``candidate``, ``baseline``) of the serving settings the model passed with: the
    manifest's ``serve`` (an export puts it there), else what its speed report measured, else the recipe's."""
    from compress.core.recipe import ServeSpec
    from compress.ship.export import served_with

    settings = manifest["serve"] if "serve" in manifest else served_with(recipe, reports.get(("both", "speed")))
    return {side: ServeSpec.model_validate(s).engine_args() for side, s in (settings or {}).items() if s}


def model_card(recipe: Any, manifest: dict[str, Any], gate: Any, reports: dict, *, path: Any = "PATH/TO/THIS/DIR",
               base_path: Any = None) -> str:
    """README.md for an exported artifact: front matter a model hub reads, what it is, how it was
    made, what it was measured to do, how to serve it from ``path`` (with the serving settings it passed
    with: ``serve_flags``)."""
    flags = serve_flags(recipe, manifest, reports)
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
    traffic = reports.get(("both", "traffic"))
    if traffic is not None and traffic.candidate is not None:
        parts += ["", "## Fidelity on your own traffic", "", traffic_markdown(traffic, gate.confidence)]
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
    parts += ["", "## How it was made", "", *how_made(recipe, manifest, flags), "",
              "The recipe's settings that differ from compress's defaults (the artifact's `recipe.yaml` holds "
              "all of them):", "", "```yaml", recipe_excerpt(recipe).rstrip(), "```"]
    checked = sorted({c.metric for c in gate.checks if c.kind in ("quality", "traffic")})
    what = (f"`{base['id']}` itself, served with the settings below" if method["kind"] == "none" else
            f"A drop-in, cheaper-to-serve replacement for `{base['id']}`")
    parts += [
        "", "## Intended use and limitations", "",
        f"{what}, for the uses the base model serves. "
        f"The gate measured quality only on {', '.join(f'`{m}`' for m in checked) or 'no task'}; behaviour "
        "on other tasks, languages and prompts was not measured and may have changed. Speed figures hold for "
        "the machine and engine named above.",
        "", "## Serve it", "", serve_markdown(method["format"], path, method["name"], flags.get("candidate")), "",
    ]
    return "\n".join(p for p in parts if p is not None)


def how_made(recipe: Any, manifest: dict[str, Any], flags: dict[str, list[str]] | None = None) -> list[str]:
    """Bullets: the method, the data it saw (calibration or training) with its size, and the serving settings
    (``flags``: vLLM's, per side, as ``serve_flags`` gives them) it was measured with."""
    import shlex

    method, details = manifest["method"], manifest["method"].get("details", {})
    lines = [f"- Method: {method['name']} ({method['scheme']}), saved as {method['format']}; "
             f"{fmt_seconds(manifest['timings'].get('total_s'))} to build."]
    for side, who in (("candidate", "this model"), ("baseline", "the base it was compared with")):
        if (flags or {}).get(side):
            lines.append(f"- Serving settings of {who} (vLLM): `{shlex.join(flags[side])}`.")
    if flags:
        lines.append("- Settings not given are vLLM's defaults, except prefix caching: compress measures with it off "
                     "unless it is set.")
    cal = recipe.calibration
    if method["kind"] == "none":
        lines.append("- Weights: the base model's, unchanged (no calibration, no training).")
    elif recipe.method.kind == "distill":
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
    order = ["name", "description", "model", "method", "calibration", "evals", "bench", "serve", "baseline_serve",
             "gate", "export"]
    return yaml.safe_dump({k: data[k] for k in order if k in data}, sort_keys=False)


