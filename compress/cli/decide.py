"""Decide: gate (a verdict from stored reports) and report (every run side by side)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from compress.core import console
from compress.cli.common import DECIDE, command, examples, load_optional, print_gate, run_recipe, traffic_overrides
from compress.cli.options import Force, JsonOut, RecipeFile, Rerun, SetOverrides
from compress.core.errors import UsageError


@command("gate", panel=DECIDE, epilog=examples(
    "compress gate runs/tiny-llama-int4-gptq",
    "compress gate runs/tiny-llama-int4-gptq/KEY --recipe stricter.yaml --json",
    "compress gate runs/tiny-llama-int4-gptq --set gate.checks='[{metric: tiny_facts_mc/acc, max_regression: 0.01}]'"))
def gate(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A run directory (runs/NAME/KEY, or runs/NAME for its newest) with stored reports.")],
    recipe: Annotated[Optional[Path], typer.Option("--recipe", "-r", metavar="FILE", help="Take the gate policy from this recipe instead.  \\[default: the run's own recipe]")] = None,
    set_: SetOverrides = None,
    json_: JsonOut = False,
) -> None:
    """Decide PASS / FAIL / INCONCLUSIVE from a run's stored reports; exit 0, 1 or 3."""
    from compress.core.models import newest_run
    from compress.pipeline import gate_run

    run_dir = newest_run(run_dir)
    if not (run_dir / "reports").is_dir():
        raise UsageError(f"{run_dir} has no reports/", hint="run `compress run RECIPE` first")
    policy = run_recipe(run_dir, recipe, set_)
    source = str(recipe) if recipe else "recipe"
    result = gate_run(run_dir, policy, policy_source=source + (f" with --set {' '.join(set_)}" if set_ else ""))
    if json_:
        console.print_json(result.model_dump(mode="json"))
    else:
        print_gate(result)
    raise typer.Exit(result.exit_code)


@command("report", panel=DECIDE, epilog=examples(
    "compress report runs", "compress report runs --plot runs.png --json", "compress report runs -o runs.json"))
def report(
    runs_dir: Annotated[Path, typer.Argument(metavar="DIR", help="Directory of runs.")] = Path("runs"),
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="PNG", help="Plot accuracy against size and cost, with "
                                                 "intervals (Pareto front marked).")] = None,
    out: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="FILE",
                                                help="Also write the rows as JSON to this file.")] = None,
    json_: JsonOut = False,
) -> None:
    """One table of every run: method, size, accuracy, latency, $/1M tokens, verdict; optional Pareto plot."""
    from compress.ship.report import collect_runs, pareto_plot, runs_table

    if not runs_dir.is_dir():
        raise UsageError(f"no runs directory {runs_dir}", hint="run a recipe first: compress run RECIPE")
    rows = collect_runs(runs_dir)
    if out:
        from compress.core.artifact import write_json

        write_json(out, rows)
    if not rows:
        if json_:
            console.print_json([])  # a script reading the JSON gets an empty list, not nothing
        else:
            console.out.print(f"No gated runs under {escape(str(runs_dir))} yet (compress run RECIPE makes one).")
        return
    if plot:
        pareto_plot(rows, plot)
    if json_:
        console.print_json(rows)
        return
    console.out.print(runs_table(rows, plot=plot))



@command("cascade", panel=DECIDE, capture=True, epilog=examples(
    "compress cascade dist/tiny-llama-int4-gptq builtin:tiny-llama --recipe recipes/tiny-llama-int4-gptq.yaml",
    "compress cascade run:tiny-llama-distill builtin:tiny-llama --recipe recipes/tiny-llama-distill.yaml "
    "--min-share 0.5 -o dist/cascade --plot runs/cascade",
    "compress cascade SMALL LARGE --recipe R --set gate.checks='[{metric: tiny_facts_mc/acc, max_regression: 0.01}]' "
    "--no-bench --json",
    "compress cascade SMALL LARGE --recipe R --traffic prod-sample.jsonl "
    "--set gate.checks='[{metric: traffic/greedy_match, min: 0.95}]'")
    + "\nExit codes: 0 PASS (router exported with -o), 1 FAIL, 2 bad usage, 3 INCONCLUSIVE, 4 runtime failure.\n")
def cascade(
    small: Annotated[str, typer.Argument(metavar="SMALL", help="The cheap model: builtin:NAME, a model or artifact "
                                         "directory, run:NAME or a hub id.")],
    large: Annotated[str, typer.Argument(metavar="LARGE", help="The model it escalates to.")],
    recipe: RecipeFile = None,
    set_: SetOverrides = None,
    min_share: Annotated[Optional[float], typer.Option(
        "--min-share", help="The least share of requests the small model must serve (gate.cascade.min_share).  "
        "\\[default: the recipe's, else 0]")] = None,
    no_bench: Annotated[bool, typer.Option("--no-bench",
                                           help="Leave out cost (no benchmark of the two models).")] = False,
    traffic: Annotated[Optional[Path], typer.Option(
        "--traffic", metavar="FILE", help="Route your own requests instead of a labeled task: SMALL keeps a "
        "request when it is confident, and the cascade is held to traffic/greedy_match (the share of answers that "
        "stay LARGE's).  \\[default: the recipe's evals.traffic when its gate checks traffic/greedy_match]")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="DIR",
        help="On PASS, export the router (router.json), the analysis and a card here.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="DIR", help="Write cascade-calibration.png and "
                                                 "cascade-curve.png here.")] = None,
    rerun: Rerun = False,
    force: Force = False,
    json_: JsonOut = False,
) -> None:
    """Serve with SMALL, escalate to LARGE when unsure: threshold chosen on half the documents, verified on the rest."""
    from compress.decide import cascade as cs
    from compress.core.artifact import atomic_dir, write_bytes_atomic, write_json
    from compress.measure.compare import efficiency_metrics, level_word
    from compress.measure.accuracy import run_eval
    from compress.measure.bench import run_speed
    from compress.decide.gate import EXIT_CODES
    from compress.core.stats import PASS

    if recipe is None:
        raise UsageError("a cascade is held to a gate's quality checks, and no --recipe was given",
                         hint="pass --recipe FILE (its evals, bench and gate.checks apply)")
    r = load_optional(recipe, traffic_overrides(set_, traffic))
    if out is not None and out.exists() and not force:
        raise UsageError(f"{out} exists", hint="pass another -o, or --force to replace it")
    share = min_share if min_share is not None else (r.gate.cascade.min_share if r.gate.cascade else 0.0)
    if not 0 <= share <= 1:
        raise UsageError(f"--min-share {share} is not a fraction", hint="give a number from 0 to 1, e.g. 0.5")
    small, large = _model_in(small), _model_in(large)
    common = dict(dtype=r.model.dtype, trust_remote_code=r.model.trust_remote_code, rerun=rerun)

    def timed(stages, name, fn):
        t = time.time()
        stages.start(name)
        value, reused = fn()
        stages.end(name, time.time() - t, reused)
        return value

    costs = None
    spec = r.evals.traffic
    on_traffic = spec is not None and (traffic is not None or any(
        c.metric == f"{cs.TRAFFIC_TASK}/greedy_match" for c in r.gate.checks))
    policy = cs.traffic_policy(r.gate) if on_traffic else r.gate
    with console.Stages(3 - no_bench - on_traffic, "cascade") as stages:
        if on_traffic:
            from compress.measure.fidelity import run_traffic

            report = timed(stages, "traffic both", lambda: run_traffic(
                large, small, spec, dtype=r.model.dtype, rerun=rerun, log=console.detail))
            small_report, large_report = cs.traffic_reports(report)
        else:
            small_report = timed(stages, "eval small", lambda: run_eval(small, r.evals, **common))
            large_report = timed(stages, "eval large", lambda: run_eval(large, r.evals, **common))
        if not no_bench:
            # Both models in the same time window, alternating rounds (large = baseline).
            speed = timed(stages, "bench both", lambda: run_speed(large, small, r.bench, log=console.detail, **common))
            figures = efficiency_metrics(speed, confidence=r.gate.confidence)
            ratio = figures["cost_ratio"]
            small_cost = figures["cost_per_mtok"].estimate
            costs = {"cost_ratio": {"estimate": ratio.estimate, "lower": ratio.lower, "upper": ratio.upper},
                     "small_per_mtok": small_cost, "large_per_mtok": small_cost / ratio.estimate,
                     "level": max(b.batch_size for b in speed.candidate.batches), "level_word": level_word(speed),
                     "price_per_hour": float(speed.settings.get("price_per_hour", 1.0))}
    analysis = cs.analyse(small_report, large_report, policy, min_share=share, costs=costs)
    if plot:
        cs.plots(analysis, plot)
    exported = None
    if out is not None and analysis.verdict == PASS:
        with atomic_dir(out, overwrite=force) as tmp:
            write_json(tmp / "router.json", cs.router(analysis, small_report.model.content_hash,
                                                      large_report.model.content_hash))
            write_json(tmp / "cascade.json", summary_data(analysis))
            write_bytes_atomic(tmp / "README.md", cs.card(analysis).encode())
            cs.plots(analysis, tmp)
        exported = out
    if json_:
        console.print_json({**summary_data(analysis), "exported_to": str(exported) if exported else None})
    else:
        print_cascade(analysis, exported)
    raise typer.Exit(EXIT_CODES[analysis.verdict])


def _model_in(spec: str) -> str:
    """A run directory (runs/NAME/KEY, or runs/NAME for its newest) stands for its artifact."""
    from compress.core.models import newest_run

    path = newest_run(Path(spec))
    return str(path / "model") if (path / "model" / "config.json").exists() else spec


def summary_data(analysis) -> dict:
    """The analysis as JSON: the verdict, the chosen and verified points, the curve, calibration."""
    return {"verdict": analysis.verdict, "metric": analysis.metric, "score": analysis.score,
            "small": analysis.small, "large": analysis.large, "small_value": analysis.small_value,
            "large_value": analysis.large_value, "min_share": analysis.min_share,
            "chosen_on_documents": analysis.chosen_on, "verified_on_documents": analysis.verified_on,
            "chosen": analysis.chosen.as_dict() if analysis.chosen else None,
            "verified": analysis.verified.as_dict() if analysis.verified else None,
            "costs": analysis.costs, "notes": analysis.notes, "calibration": analysis.calibration,
            "curve": [p.as_dict() for p in analysis.curve]}


def print_cascade(analysis, exported) -> None:
    from compress.decide.cascade import blended_per_mtok

    rows = []
    step = max(1, len(analysis.curve) // 10)
    for p in analysis.curve[::step] + ([analysis.curve[-1]] if (len(analysis.curve) - 1) % step else []):
        rows.append([f"{p.threshold:.4g}", f"{p.share:.1%}", f"{p.value:.4g}",
                     next((c.shown for c in p.checks), ""), p.verdict,
                     f"{p.cost_ratio['estimate']:.3f}x" if p.cost_ratio else "-"])
    console.out.print(console.table(f"Cascade {analysis.small} -> {analysis.large} (all documents; "
                                    f"{analysis.score})", ["threshold", "small serves", analysis.metric,
                                                           "vs large", "verdict", "cost vs large"], rows))
    v = analysis.verified
    if analysis.chosen is not None:
        cost = (f"; cost {v.cost_ratio['estimate']:.3f}x the large model's "
                f"(${blended_per_mtok(analysis.costs, v.share):.4g} per 1M tokens)" if analysis.costs else "")
        console.out.print(f"chosen threshold {v.threshold:.4g} on {analysis.chosen_on} documents "
                          f"(small serves {analysis.chosen.share:.1%} there); verified on the other "
                          f"{analysis.verified_on}: small serves {v.share:.1%}, "
                          f"{', '.join(f'{c.metric} {c.shown} {c.verdict}' for c in v.checks)}{cost}")
    for note in analysis.notes:
        console.out.print(f"note: {note}")
    colour = {"PASS": "green", "FAIL": "red", "INCONCLUSIVE": "yellow"}[analysis.verdict]
    console.out.print(f"[{colour}]{analysis.verdict}[/{colour}]"
                      + (f" · router exported to {exported}" if exported else ""))
