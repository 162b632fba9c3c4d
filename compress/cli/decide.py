"""Decide: gate (a verdict from stored reports) and report (every run side by side)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from compress import console
from compress.cli.common import DECIDE, command, examples, print_gate, run_recipe
from compress.cli.options import JsonOut, SetOverrides
from compress.errors import UsageError


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
    from compress.models import newest_run
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
    from compress.report import collect_runs, pareto_plot, runs_table

    if not runs_dir.is_dir():
        raise UsageError(f"no runs directory {runs_dir}", hint="run a recipe first: compress run RECIPE")
    rows = collect_runs(runs_dir)
    if out:
        from compress.artifact import write_json

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

