"""The `compress` command line. Thin: parse, call a module, print, map errors to exit codes.

Heavy libraries (torch, transformers, lm_eval) are imported inside command bodies only, so
``compress --help`` and ``compress recipes validate`` stay fast (tests/test_cli_lean.py).
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.markup import escape

from compress import console
from compress.errors import EXIT_RUNTIME, EXIT_USAGE, CompressError, RecipeError, UsageError
from compress.options import Device, Force, JsonOut, RecipeFile, Rerun, SetOverrides

app = typer.Typer(
    name="compress",
    help="Make models cheaper to serve without making them worse: quantize or distill, "
    "then gate every artifact on accuracy, speed, size and cost before it can be exported.",
    epilog="Exit codes: 0 pass, 1 gate failed, 2 bad usage or invalid recipe, 3 inconclusive, "
    "4 runtime failure. Set COMPRESS_DEBUG=1 for tracebacks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
recipes_app = typer.Typer(help="Validate and list recipe files.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes", rich_help_panel="Set-up")


# ---------------------------------------------------------------------------- recipes

@recipes_app.command("validate", epilog="Examples:  compress recipes validate recipes/*.yaml")
def recipes_validate(
    files: Annotated[list[Path], typer.Argument(help="Recipe files to check.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", metavar="KEY=VALUE",
                                                      help="Override a value before validating.")] = None,
    show: Annotated[bool, typer.Option("--show", help="Print each effective recipe (defaults filled in).")] = False,
) -> None:
    """Check recipes against the schema; report every problem with its path and line."""
    from compress.recipe import dump_recipe, load_recipe

    failed = 0
    for f in files:
        try:
            recipe = load_recipe(f, set_ or [])
        except RecipeError as e:
            failed += 1
            console.err.print(f"[red]✗[/red] {f}: {len(e.problems)} problem(s)")
            for p in e.problems:
                console.err.print(f"    {p}", markup=False)
            continue
        console.out.print(f"[green]✓[/green] {f} ({recipe.name}: {_method_name(recipe.method)})")
        if show:
            console.out.print(dump_recipe(recipe), markup=False)
    if failed:
        raise typer.Exit(EXIT_USAGE)


@recipes_app.command("list", epilog="Examples:  compress recipes list   ·   compress recipes list my-recipes/")
def recipes_list(
    directory: Annotated[Path, typer.Argument(help="Directory of recipes.")] = Path("recipes"),
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the recipes in a directory, and the methods and schemes compress knows."""
    from compress.methods import SCHEME_HELP
    from compress.recipe import load_recipe

    if not directory.is_dir():
        raise UsageError(f"no recipe directory {directory}", hint="pass the directory that holds your recipes")
    rows = []
    for f in sorted(directory.glob("*.y*ml")):
        try:
            r = load_recipe(f)
            rows.append({"file": str(f), "name": r.name, "method": _method_name(r.method), "model": r.model.id,
                         "purpose": _purpose(f), "valid": True})
        except RecipeError as e:
            rows.append({"file": str(f), "name": f.stem, "method": "-", "model": "-",
                         "purpose": f"INVALID: {len(e.problems)} problem(s)", "valid": False})
    if json_:
        console.print_json({"recipes": rows, "schemes": SCHEME_HELP})
        return
    console.out.print(console.table(
        f"Recipes in {directory}", ["name", "method", "model", "purpose"],
        [[r["name"], r["method"], r["model"], r["purpose"]] for r in rows]))
    console.out.print(console.table("Schemes (compress quantize --scheme NAME)", ["scheme", "what"],
                                    [[k, v] for k, v in SCHEME_HELP.items()]))


def _method_name(method) -> str:
    from compress.methods import describe_method

    return describe_method(method.model_dump())


def _purpose(path: Path) -> str:
    """The opening comment of a recipe (what it is for), up to its `Run:` line."""
    words = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("Run:"):
            break
        words.append(text.split(" Run: ")[0])
    return " ".join(words)


# ----------------------------------------------------------------------------- doctor

@app.command(epilog="Examples:  compress doctor   ·   compress doctor --json", rich_help_panel="Set-up")
def doctor(json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print the environment: torch and CUDA, GPU and native FP8, installed back ends."""
    from compress import doctor as doc

    info = doc.collect()
    if json_:
        console.print_json(info)
        return
    dev = info["device"]
    rows = [
        ["torch", info["torch"] or "not installed"],
        ["CUDA", f"{dev.get('torch_cuda') or '-'} (available: {dev.get('cuda', False)})"],
        ["GPU", f"{dev['gpu']} ×{dev['gpu_count']}, compute {dev['compute_capability']}" if dev.get("gpu") else "none"],
        ["native FP8", "yes" if dev.get("fp8_native") else "no"],
        ["CPU", f"{dev['cpu']}, {dev['cpu_count']} cores, torch threads {dev.get('torch_threads', '-')}"],
        ["python", dev["python"]],
        ["git", info["git_sha"] or "-"],
        ["built-in models", ", ".join(f"{k} ({'ok' if v else 'MISSING'})" for k, v in info["builtin_models"].items())],
    ]
    console.out.print(console.table("Environment", ["", ""], rows))
    console.out.print(console.table(
        "Back ends", ["package", "version", "extra", "for"],
        [[d, b["version"] or "[red]missing[/red]", b["extra"], b["for"]] for d, b in info["backends"].items()]))
    for note in doc.notes(info):
        console.out.print(f"• {note}")


# --------------------------------------------------------------------------- quantize

def _log(msg: str) -> None:
    console.err.print(f"[dim]•[/dim] {escape(msg)}")


def _warn(msg: str) -> None:
    console.err.print(f"[yellow]warning:[/yellow] {escape(msg)}")


QUANTIZE_EPILOG = """Examples:

  compress quantize recipes/tiny-llama-int4-gptq.yaml

  compress quantize --model builtin:tiny-llama --scheme int4-gptq --out out/tiny-int4

  compress quantize --model ./my-llama --scheme fp8-dynamic --out out/fp8 --set method.ignore='[lm_head]'

Schemes: fp8-dynamic, fp8-static, int8-w8a8, int8-llm-int8, int4-gptq, int4-awq, int4-rtn, int4-gptq-hf, int4-nf4.
"""


@app.command(epilog=QUANTIZE_EPILOG, rich_help_panel="Build")
def quantize(
    recipe: Annotated[Optional[Path], typer.Argument(help="Recipe file (or use --model and --scheme).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="builtin:NAME, a local directory, run:NAME or a hub id.")] = None,
    scheme: Annotated[Optional[str], typer.Option("--scheme", help="Method shortcut; replaces the recipe's method.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Artifact directory (default: runs/NAME/KEY/model).")] = None,
    set_: SetOverrides = None,
    force: Force = False,
    device: Device = "auto",
    json_: JsonOut = False,
) -> None:
    """Quantize a model into a servable, self-describing artifact (model, tokenizer, recipe, manifest)."""
    from compress import runs
    from compress.recipe import build_recipe

    r = build_recipe(recipe, model=model, scheme=scheme, overrides=set_ or [])
    if r.method.kind == "distill":
        raise UsageError("this recipe distills", hint="use `compress distill` or `compress run`")
    with console.stdout_to_stderr():
        manifest, reused, path = runs.build(r, out=out, force=force, device=device, log=_log, warn=_warn)
    _artifact_summary(manifest, reused, path, json_)


DISTILL_EPILOG = """Examples:

  compress distill recipes/tiny-llama-distill.yaml

  compress distill recipes/tiny-llama-distill.yaml --set method.training.max_steps=50 --out out/student

  accelerate launch -m compress distill recipes/my-distill.yaml     # several GPUs, same recipe
"""


@app.command(epilog=DISTILL_EPILOG, rich_help_panel="Build")
def distill(
    recipe: Annotated[Path, typer.Argument(help="A recipe with method.kind: distill.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Artifact directory (default: runs/NAME/KEY/model).")] = None,
    set_: SetOverrides = None,
    force: Force = False,
    device: Device = "auto",
    json_: JsonOut = False,
) -> None:
    """Train a smaller student on the teacher's outputs (pruned teacher or given student); resumes from checkpoints."""
    from compress import runs
    from compress.recipe import load_recipe

    r = load_recipe(recipe, set_ or [])
    if r.method.kind != "distill":
        raise UsageError(f"{recipe} is a {r.method.kind} recipe", hint="use `compress quantize` for it")
    with console.stdout_to_stderr():
        manifest, reused, path = runs.build(r, out=out, force=force, device=device, log=_log, warn=_warn)
    _artifact_summary(manifest, reused, path, json_)


def _artifact_summary(manifest: Optional[dict], reused: bool, path: Path, json_: bool) -> None:
    if manifest is None:
        return  # a non-main process of `accelerate launch`: the main process reports
    if json_:
        console.print_json({"path": str(path), "reused": reused, "manifest": manifest})
        return
    size = manifest["size"]
    row = [manifest["method"]["name"], manifest["method"]["format"], console.fmt_bytes(size["base_weights_bytes"]),
           console.fmt_bytes(size["weights_bytes"]), f"{size['ratio']:.2f}x" if size["ratio"] else "-",
           console.fmt_seconds(manifest["timings"].get("total_s"))]
    console.out.print(console.table(None, ["method", "format", "size before", "size after", "ratio", "time"], [row]))
    console.out.print(f"{'Reused' if reused else 'Wrote'} {path}")


# ------------------------------------------------------------------------ eval, bench

def _settings(cls, recipe, section: str, flags: dict):
    """Settings from a loaded recipe's section (if any), overridden by the flags that were set."""
    from pydantic import ValidationError

    base = getattr(recipe, section).model_dump() if recipe else {}
    base.update({k: v for k, v in flags.items() if v is not None})
    try:
        return cls.model_validate(base)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        name = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "a setting"
        raise UsageError(f"{name}: {err['msg']}", hint="see --help") from None


def _load_optional(recipe: Optional[Path]):
    from compress.recipe import load_recipe

    return load_recipe(recipe) if recipe else None


def _model_dtype(recipe, dtype: Optional[str]) -> str:
    return dtype or (recipe.model.dtype if recipe else "float32")


def _emit(report, cached: bool, out: Optional[Path], json_: bool, render) -> bool:
    """Save, print as JSON or as a table; True when the table was printed (callers may add a line)."""
    if out:
        report.save(out)
    if json_:
        console.print_json(report.model_dump(mode="json"))
        return False
    console.out.print(render(report))
    console.out.print("from the cache (--rerun to measure again)" if cached else f"measured in {report.duration_s:.1f} s")
    return True


EVAL_EPILOG = """Examples:

  compress eval builtin:tiny-llama

  compress eval runs/tiny-llama-int4-gptq/KEY/model --tasks tiny_facts_mc --limit 200

  compress eval ./my-model --tasks hellaswag,arc_easy --num-fewshot 0 --batch-size 8 --out acc.json
"""


@app.command("eval", epilog=EVAL_EPILOG, rich_help_panel="Measure")
def eval_(
    model: Annotated[str, typer.Argument(help="builtin:NAME, an artifact or model directory, run:NAME or a hub id.")],
    tasks: Annotated[Optional[str], typer.Option("--tasks", "-t", help="Comma-separated lm-eval task names.")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option("--num-fewshot", help="Few-shot examples.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Documents per task (default: all).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Batch size.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for sampling and few-shot choice.")] = None,
    backend: Annotated[Optional[str], typer.Option("--backend", help="hf, or vllm where installed.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="float32, bfloat16, float16 or auto.")] = None,
    recipe: RecipeFile = None,
    rerun: Rerun = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the report JSON here.")] = None,
    json_: JsonOut = False,
) -> None:
    """Accuracy with lm-evaluation-harness, per-sample results kept; cached by model bytes and settings."""
    from compress.evals.accuracy import run_eval
    from compress.recipe import EvalSpec

    flags = {"tasks": [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None, "num_fewshot": num_fewshot,
             "limit": limit, "batch_size": batch_size, "seed": seed, "backend": backend, "device": device}
    r = _load_optional(recipe)
    settings = _settings(EvalSpec, r, "evals", flags)
    with console.err.status(f"Evaluating {model} on {', '.join(settings.tasks)}"), console.stdout_to_stderr():
        report, cached = run_eval(model, settings, dtype=_model_dtype(r, dtype), rerun=rerun)
    from compress.report import accuracy_table

    if _emit(report, cached, out, json_, accuracy_table):
        console.out.print(f"{model}: {sum(t.n_samples for t in report.tasks.values())} per-document results kept")


BENCH_EPILOG = """Examples:

  compress bench builtin:tiny-llama

  compress bench runs/tiny-llama-int4-gptq/KEY/model --batch-sizes 1,8 --prompt-tokens 128 --output-tokens 64

  compress bench ./my-model --price-per-hour 2.50 --out bench.json
"""


@app.command(epilog=BENCH_EPILOG, rich_help_panel="Measure")
def bench(
    model: Annotated[str, typer.Argument(help="builtin:NAME, an artifact or model directory, run:NAME or a hub id.")],
    batch_sizes: Annotated[Optional[str], typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = None,
    prompt_tokens: Annotated[Optional[int], typer.Option("--prompt-tokens", help="Prompt length in tokens.")] = None,
    output_tokens: Annotated[Optional[int], typer.Option("--output-tokens", help="Tokens generated per request.")] = None,
    warmup: Annotated[Optional[int], typer.Option("--warmup", help="Untimed calls per batch size.")] = None,
    repeats: Annotated[Optional[int], typer.Option("--repeats", help="Timed calls per batch size.")] = None,
    price_per_hour: Annotated[Optional[float], typer.Option("--price-per-hour", help="USD per hour of this machine.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="float32, bfloat16, float16 or auto.")] = None,
    recipe: RecipeFile = None,
    rerun: Rerun = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the report JSON here.")] = None,
    json_: JsonOut = False,
) -> None:
    """Generation benchmark: TTFT, inter-token and end-to-end latency (p50/p90/p99), tok/s, memory, $/1M tokens."""
    from compress.evals.bench import run_bench
    from compress.recipe import BenchSpec

    sizes = None
    if batch_sizes:
        try:
            sizes = [int(x) for x in batch_sizes.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--batch-sizes: '{batch_sizes}' is not a list of integers",
                             hint="e.g. --batch-sizes 1,4,8") from None
    flags = {"batch_sizes": sizes, "prompt_tokens": prompt_tokens, "output_tokens": output_tokens, "warmup": warmup,
             "repeats": repeats, "price_per_hour": price_per_hour, "device": device}
    r = _load_optional(recipe)
    settings = _settings(BenchSpec, r, "bench", flags)
    with console.err.status(f"Benchmarking {model} (batch sizes {', '.join(map(str, settings.batch_sizes))})"), \
            console.stdout_to_stderr():
        report, cached = run_bench(model, settings, dtype=_model_dtype(r, dtype), rerun=rerun)
    from compress.report import bench_table

    if _emit(report, cached, out, json_, bench_table):
        console.out.print(f"{model}: peak memory {console.fmt_bytes(report.peak_memory_bytes)} ({report.memory_kind}), "
                          f"size {console.fmt_bytes(report.size_bytes)}, device {report.device}")


COMPARE_EPILOG = """Examples:

  compress compare builtin:tiny-llama runs/tiny-llama-int4-gptq/KEY/model

  compress compare ./base ./candidate --recipe recipes/tiny-llama-int4-gptq.yaml --no-bench
"""


@app.command(epilog=COMPARE_EPILOG, rich_help_panel="Measure")
def compare(
    baseline: Annotated[str, typer.Argument(help="The reference model.")],
    candidate: Annotated[str, typer.Argument(help="The model to compare against it.")],
    recipe: RecipeFile = None,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip accuracy.")] = False,
    no_bench: Annotated[bool, typer.Option("--no-bench", help="Skip the benchmark.")] = False,
    rerun: Rerun = False,
    json_: JsonOut = False,
) -> None:
    """Baseline and candidate side by side, with deltas, for accuracy and speed (reports cached)."""
    from compress.compare import accuracy_rows, speed_rows
    from compress.evals.accuracy import run_eval
    from compress.evals.bench import run_bench
    from compress.recipe import BenchSpec, EvalSpec

    r = _load_optional(recipe)
    dtype = _model_dtype(r, None)
    result: dict = {}
    if not no_eval:
        settings = _settings(EvalSpec, r, "evals", {})
        with console.err.status("Evaluating both models"), console.stdout_to_stderr():
            a, _ = run_eval(baseline, settings, dtype=dtype, rerun=rerun)
            b, _ = run_eval(candidate, settings, dtype=dtype, rerun=rerun)
        result["accuracy"] = accuracy_rows(a, b)
    if not no_bench:
        settings = _settings(BenchSpec, r, "bench", {})
        with console.err.status("Benchmarking both models"), console.stdout_to_stderr():
            a, _ = run_bench(baseline, settings, dtype=dtype, rerun=rerun)
            b, _ = run_bench(candidate, settings, dtype=dtype, rerun=rerun)
        result["speed"] = speed_rows(a, b)
    if json_:
        console.print_json(result)
        return
    from compress.report import compare_tables

    for t in compare_tables(result):
        console.out.print(t)


# ------------------------------------------------------------------ gate, export, run

def _print_gate(gate) -> None:
    colour = {"PASS": "green", "FAIL": "red", "INCONCLUSIVE": "yellow"}
    rows = [[f"[{colour[c.verdict]}]{c.verdict}[/{colour[c.verdict]}]", c.metric, c.shown or f"{c.measured:.4g}",
             c.threshold, escape(c.note)] for c in gate.checks]
    console.out.print(console.table("Gate", ["verdict", "check", "measured", "threshold", "detail"], rows))
    console.out.print(f"[bold {colour[gate.verdict]}]{gate.summary()}[/bold {colour[gate.verdict]}]")


def _run_recipe(run_dir: Path, recipe: Optional[Path]):
    from compress.artifact import RECIPE_FILE
    from compress.recipe import load_recipe

    source = recipe or run_dir / "model" / RECIPE_FILE
    if not Path(source).exists():
        raise UsageError(f"{run_dir} has no model/{RECIPE_FILE}", hint="pass --recipe FILE")
    return load_recipe(source)


@app.command(rich_help_panel="Release", epilog="Examples:  compress gate runs/tiny-llama-int4-gptq/KEY   ·   "
                    "compress gate runs/tiny-llama-int4-gptq/KEY --recipe stricter.yaml --json")
def gate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (runs/NAME/KEY) with stored reports.")],
    recipe: Annotated[Optional[Path], typer.Option("--recipe", "-r", help="Take the gate policy from this recipe instead.")] = None,
    json_: JsonOut = False,
) -> None:
    """Decide PASS / FAIL / INCONCLUSIVE from a run's stored reports; exit 0, 1 or 3."""
    from compress.pipeline import gate_run

    if not (run_dir / "reports").is_dir():
        raise UsageError(f"{run_dir} has no reports/", hint="run `compress run RECIPE` first")
    result = gate_run(run_dir, _run_recipe(run_dir, recipe))
    if json_:
        console.print_json(result.model_dump(mode="json"))
    else:
        _print_gate(result)
    raise typer.Exit(result.exit_code)


@app.command(epilog="Examples:  compress export runs/tiny-llama-int4-gptq/KEY --to dist/tiny-llama-int4-gptq", rich_help_panel="Release")
def export(
    run_dir: Annotated[Path, typer.Argument(help="A gated run directory (runs/NAME/KEY).")],
    to: Annotated[Path, typer.Option("--to", help="Where to write the exported artifact.")],
    force: Force = False,
) -> None:
    """Export an artifact that passed its gate, with manifest and model card; refuses anything else."""
    from compress.pipeline import load_reports
    from compress.export import check_exportable, export_run
    from compress.gate import GateResult
    from compress.report import model_card

    recipe = _run_recipe(run_dir, None)
    manifest, gate_data = check_exportable(run_dir)
    card = model_card(recipe, manifest, GateResult.model_validate(gate_data), load_reports(run_dir)) \
        if recipe.export.model_card else None
    export_run(run_dir, to, model_card=card, force=force)
    console.out.print(f"[green]Exported[/green] {run_dir} -> {to} (verify with: compress verify {to})")


@app.command(epilog="Examples:  compress verify dist/tiny-llama-int4-gptq", rich_help_panel="Release")
def verify(path: Annotated[Path, typer.Argument(help="An exported artifact directory.")]) -> None:
    """Re-check every file of an exported artifact against its manifest and its PASS; exit non-zero on any mismatch."""
    from compress.export import verify as verify_artifact

    manifest = verify_artifact(path)
    console.out.print(f"[green]OK[/green] {path}: {len(manifest['files'])} files match their sha256; "
                      f"gate PASS for content {manifest['content_hash'][:16]}…")


RUN_EPILOG = """Examples:

  compress run recipes/tiny-llama-int4-gptq.yaml

  compress run recipes/tiny-llama-fp8-dynamic.yaml --junit gate.xml --summary gate.md

  compress run recipes/demo/tiny-llama-int2-rtn.yaml     # exits 1: the gate fails it, nothing is exported

Exit codes: 0 PASS (exported), 1 FAIL, 2 bad usage or recipe, 3 INCONCLUSIVE, 4 runtime failure.
"""


@app.command("run", epilog=RUN_EPILOG, rich_help_panel="Release")
def run_(
    recipe: Annotated[Path, typer.Argument(help="Recipe file.")],
    set_: SetOverrides = None,
    export_to: Annotated[Optional[Path], typer.Option("--export-to", help="Export directory (default: recipe export.to or dist/NAME).")] = None,
    no_export: Annotated[bool, typer.Option("--no-export", help="Stop after the gate.")] = False,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Write a JUnit XML file, one test case per check.")] = None,
    summary: Annotated[Optional[Path], typer.Option("--summary", help="Write a Markdown summary (also appended to $GITHUB_STEP_SUMMARY).")] = None,
    rerun: Rerun = False,
    force: Force = False,
    device: Device = "auto",
    json_: JsonOut = False,
) -> None:
    """The whole flow: quantize or distill, evaluate, benchmark, gate, export; cached and resumable."""
    from compress import pipeline
    from compress.recipe import load_recipe
    from compress.report import junit_xml, model_card, run_summary_markdown

    r = load_recipe(recipe, set_ or [])
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise UsageError("`compress run` evaluates and benchmarks in one process",
                         hint="train with `accelerate launch -m compress distill RECIPE`, then "
                              "`compress run RECIPE` reuses the artifact")
    with console.stdout_to_stderr():
        result = pipeline.run(r, force=force, rerun_reports=rerun, export=not no_export, export_to=export_to,
                              device=device, log=_log, warn=_warn, model_card=model_card)
    md = run_summary_markdown(result)
    if summary:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(md)
    if step := os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(step, "a") as f:
            f.write(md + "\n")
    if junit:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(junit_xml(result))
    if json_:
        console.print_json({"recipe": r.name, "verdict": result.gate.verdict, "run_dir": str(result.run_dir),
                            "exported_to": str(result.exported_to) if result.exported_to else None,
                            "seconds": result.seconds, "stages": result.stages,
                            "gate": result.gate.model_dump(mode="json")})
    else:
        _print_gate(result.gate)
        where = f"exported to {result.exported_to}" if result.exported_to else "nothing exported"
        console.out.print(f"{r.name}: run dir {result.run_dir}; {where}; {result.seconds:.1f} s")
    raise typer.Exit(result.gate.exit_code)


@app.command(epilog="Examples:  compress report runs   ·   compress report runs --plot runs.png --json", rich_help_panel="Release")
def report(
    runs_dir: Annotated[Path, typer.Argument(help="Directory of runs.")] = Path("runs"),
    plot: Annotated[Optional[Path], typer.Option("--plot", help="PNG of accuracy against size and cost (Pareto front marked).")] = None,
    json_: JsonOut = False,
) -> None:
    """One table of every run: method, size, accuracy, latency, $/1M tokens, verdict; optional Pareto plot."""
    from compress.report import collect_runs, pareto_plot, runs_table

    if not runs_dir.is_dir():
        raise UsageError(f"no runs directory {runs_dir}", hint="run a recipe first: compress run RECIPE")
    rows = collect_runs(runs_dir)
    if not rows:
        raise UsageError(f"no gated runs under {runs_dir}", hint="run a recipe first: compress run RECIPE")
    if plot:
        pareto_plot(rows, plot)
    if json_:
        console.print_json(rows)
        return
    console.out.print(runs_table(rows))
    if plot:
        console.out.print(f"Plot written to {plot}")


# ------------------------------------------------------------------------------ entry

def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code instead of raising."""
    debug = os.environ.get("COMPRESS_DEBUG") == "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        # Without standalone mode, click returns the code of a typer.Exit instead of raising it.
        code = app(args=argv, standalone_mode=False, prog_name="compress")
        return code if isinstance(code, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        console.err.print("Aborted.")
        return 130
    except click.ClickException as e:
        e.show()
        return EXIT_USAGE
    except RecipeError as e:
        if debug:
            traceback.print_exc()
        console.err.print(f"[red]Error:[/red] {e.source}: {len(e.problems)} problem(s)")
        for p in e.problems:
            console.err.print(f"    {p}", markup=False)
        return e.exit_code
    except CompressError as e:
        if debug:
            traceback.print_exc()
        console.err.print(f"[red]Error:[/red] {escape(str(e))}", soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        console.err.print("Interrupted.")
        return 130
    except MemoryError:
        if debug:
            traceback.print_exc()
        console.err.print("[red]Error:[/red] out of memory (use a smaller batch size or model, or a larger machine)")
        return EXIT_RUNTIME
    except Exception as e:  # noqa: BLE001 - the last resort keeps the exit-code contract
        if debug:
            traceback.print_exc()
        first = str(e).splitlines()[0] if str(e) else ""
        console.err.print(f"[red]Error:[/red] {type(e).__name__}: {escape(first)} "
                          "(unexpected; rerun with COMPRESS_DEBUG=1 for a traceback)", soft_wrap=True)
        return EXIT_RUNTIME


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
