"""The `compress` command line. Thin: parse, call a module, print, map errors to exit codes.

Heavy libraries (torch, transformers, lm_eval) are imported inside command bodies only, so
``compress --help`` and ``compress recipes validate`` stay fast (tests/test_cli_lean.py).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperArgument, TyperOption
from rich.markup import escape

from compress import console
from compress.errors import (
    EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_USAGE, CompressError, InputError, RecipeError, UsageError,
)
from compress.options import (DataParallel, Device, Force, JsonOut, RecipeFile, Rerun, SetOverrides, SignKey,
                              TensorParallel)

# typer 0.29 prints a type beside every option, "<bool>" beside flags too, which reads as if a
# flag took a value (`--force true`), and "<list[Path]>" beside a named argument: flags are
# shown bare, and an argument by its name.
_option_type, _argument_type = TyperOption.display_type_rich, TyperArgument.display_type_rich
TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else _option_type(self, ctx)
TyperArgument.display_type_rich = lambda self, ctx: None if self.metavar else _argument_type(self, ctx)
HELP = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="compress",
    help="Make models cheaper to serve without making them worse: quantize or distill, "
    "then gate every artifact on accuracy, speed, size and cost before it can be exported.",
    epilog="Exit codes: 0 pass, 1 gate failed, 2 bad usage, invalid recipe or bad input, 3 inconclusive, "
    "4 runtime failure, 130 interrupted. Set COMPRESS_DEBUG=1 for tracebacks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings=HELP,
)
recipes_app = typer.Typer(help="Validate and list recipe files.", no_args_is_help=True, context_settings=HELP)


def _print_version(value: bool) -> None:
    if value:
        from compress import __version__

        console.out.print(f"compress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print compress's version and exit.")] = False) -> None:
    pass
app.add_typer(recipes_app, name="recipes", rich_help_panel="Set-up")


# ---------------------------------------------------------------------------- recipes

def examples(*lines: str) -> str:
    """A command's epilog: its examples, one per paragraph, in the layout every command shares."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines) + "\n"


@recipes_app.command("validate", epilog=examples(
    "compress recipes validate recipes/*.yaml",
    "compress recipes validate my-recipe.yaml --set method.group_size=64 --show"))
def recipes_validate(
    files: Annotated[list[Path], typer.Argument(metavar="FILE", help="Recipe files to check.")],
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


@recipes_app.command("list", epilog=examples("compress recipes list", "compress recipes list my-recipes/ --json"))
def recipes_list(
    directory: Annotated[Path, typer.Argument(help="Directory of recipes.")] = Path("recipes"),
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the recipes in a directory and its sub-folders, and the methods and schemes compress knows."""
    from compress.methods import SCHEME_HELP
    from compress.recipe import load_recipe

    if not directory.is_dir():
        raise UsageError(f"no recipe directory {directory}", hint="pass the directory that holds your recipes")
    rows = []
    for f in sorted(directory.rglob("*.y*ml")):  # sub-folders too (recipes/demo/)
        if any(part.startswith(".") for part in f.relative_to(directory).parts):
            continue
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

@app.command(epilog=examples("compress doctor", "compress doctor --json"), rich_help_panel="Set-up")
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
        ["speed fixtures", ", ".join(f"{k} ({'generated' if v else 'generated on first use'})"
                                     for k, v in info["fixtures"].items())],
    ]
    console.out.print(console.table("Environment", ["", ""], rows))
    console.out.print(console.table(
        "Back ends", ["package", "version", "extra", "for"],
        [[d, b["version"] or "[red]missing[/red]", b["extra"], b["for"]] for d, b in info["backends"].items()]))
    eng = info["engine"]
    if eng["installed"]:
        console.out.print(console.table(
            f"Serving engine: {eng['package']} {eng['version']} ({eng['device']}, {eng['path']})",
            ["scheme", "kernel, or why it is refused"],
            [[k, v] for k, v in eng["serves"].items()] + [[k, f"[red]{v}[/red]"] for k, v in eng["refuses"].items()]))
    for note in doc.notes(info):
        console.out.print(f"• {note}")


# --------------------------------------------------------------------------- quantize

def _log(msg: str) -> None:
    console.err.print(f"[dim]•[/dim] {escape(msg)}")


def _warn(msg: str) -> None:
    console.warn(msg)


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
    from compress.inputs import check_recipe
    from compress.recipe import build_recipe

    r = build_recipe(recipe, model=model, scheme=scheme, overrides=set_ or [])
    if r.method.kind == "distill":
        raise UsageError("this recipe distills", hint="use `compress distill` or `compress run`")
    check_recipe(r)  # bad inputs fail here, before any compute or write
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
    from compress.inputs import check_recipe
    from compress.recipe import load_recipe

    r = load_recipe(recipe, set_ or [])
    if r.method.kind != "distill":
        raise UsageError(f"{recipe} is a {r.method.kind} recipe", hint="use `compress quantize` for it")
    check_recipe(r)  # bad inputs fail here, before any compute or write
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


def _load_optional(recipe: Optional[Path], overrides: Optional[list[str]] = None):
    from compress.recipe import load_recipe

    if overrides and not recipe:
        raise UsageError("--set changes a recipe's values, and no --recipe was given",
                         hint="pass --recipe FILE with --set, or use this command's own options")
    return load_recipe(recipe, overrides or []) if recipe else None


def _model_dtype(recipe, dtype: Optional[str]) -> str:
    return dtype or (recipe.model.dtype if recipe else "auto")


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

  compress eval dist/tiny-llama-int4-rtn --engine vllm --dtype bfloat16

  compress eval builtin:tiny-llama --tasks tiny_facts_gen_3shot,tiny_world --apply-chat-template --limit 0.2

  compress eval ./my-model --tasks my_task --include-path ./my-tasks --gen-kwargs max_gen_toks=256
"""


@app.command("eval", epilog=EVAL_EPILOG, rich_help_panel="Measure")
def eval_(
    model: Annotated[str, typer.Argument(help="builtin:NAME, an artifact or model directory, run:NAME or a hub id.")],
    tasks: Annotated[Optional[str], typer.Option("--tasks", "-t", help="Comma-separated lm-eval task names.")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option("--num-fewshot", help="Few-shot examples.")] = None,
    limit: Annotated[Optional[float], typer.Option(
        "--limit", help="Documents per task: a count, or a fraction such as 0.25 (default: all).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Batch size (also of generation).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for sampling and few-shot choice.")] = None,
    apply_chat_template: Annotated[bool, typer.Option(
        "--apply-chat-template", help="Format prompts with the model's chat template.")] = False,
    chat_template: Annotated[Optional[str], typer.Option(
        "--chat-template", metavar="NAME", help="Which of the tokenizer's named chat templates (implies --apply-chat-template).")] = None,
    fewshot_as_multiturn: Annotated[Optional[bool], typer.Option(
        "--fewshot-as-multiturn/--fewshot-in-one-turn",
        help="With a chat template: few-shot examples as separate turns (default) or in the user's message.",
        show_default=False)] = None,
    system_instruction: Annotated[Optional[str], typer.Option(
        "--system-instruction", help="A system message before every prompt.")] = None,
    gen_kwargs: Annotated[Optional[str], typer.Option(
        "--gen-kwargs", metavar="KEY=VALUE,...", help="Generation settings for generative tasks, e.g. max_gen_toks=64.")] = None,
    include_path: Annotated[Optional[list[Path]], typer.Option(
        "--include-path", metavar="DIR", help="A folder of extra lm-eval task YAML files (repeatable).")] = None,
    backend: Annotated[Optional[str], typer.Option(
        "--engine", "--backend", help="hf (transformers) or vllm (lm-eval against a vLLM server from `make engine`; "
        "int4 needs --dtype bfloat16).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
    device_map: Annotated[Optional[str], typer.Option(
        "--device-map", help="hf: 'auto' spreads a model too large for one device over GPUs, CPU memory and disk.")] = None,
    tensor_parallel: TensorParallel = None,
    data_parallel: DataParallel = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="float32, bfloat16, float16 or auto.")] = None,
    recipe: RecipeFile = None,
    set_: SetOverrides = None,
    rerun: Rerun = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the report JSON here.")] = None,
    json_: JsonOut = False,
) -> None:
    """Accuracy with lm-evaluation-harness, per-sample results kept; cached by model bytes and settings."""
    from compress.evals.accuracy import check_eval_settings, run_eval
    from compress.inputs import check_model
    from compress.recipe import EvalSpec

    flags = {"tasks": [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None, "num_fewshot": num_fewshot,
             "limit": _limit(limit), "batch_size": batch_size, "seed": seed, "backend": backend, "device": device,
             "apply_chat_template": chat_template or (True if apply_chat_template else None), "fewshot_as_multiturn": fewshot_as_multiturn,
             "system_instruction": system_instruction, "gen_kwargs": _gen_kwargs(gen_kwargs),
             "include_path": [str(p) for p in include_path] if include_path else None, "device_map": device_map,
             "tensor_parallel": tensor_parallel, "data_parallel": data_parallel}
    r = _load_optional(recipe, set_)
    settings = _settings(EvalSpec, r, "evals", flags)
    check_eval_settings(settings)  # bad inputs fail here, before any compute or write
    check_model(model)
    with console.err.status(f"Evaluating {model} on {', '.join(settings.tasks)}"), console.stdout_to_stderr():
        report, cached = run_eval(model, settings, dtype=_model_dtype(r, dtype), rerun=rerun)
    from compress.report import accuracy_table

    if _emit(report, cached, out, json_, accuracy_table):
        console.out.print(f"{model}: {sum(t.n_samples for t in report.tasks.values())} per-document results kept")


def _limit(value: Optional[float]) -> int | float | None:
    """--limit 200 is a count, --limit 0.25 a fraction of each task."""
    return int(value) if value is not None and value >= 1 and value == int(value) else value


def _gen_kwargs(text: Optional[str]) -> dict[str, Any] | None:
    """``max_gen_toks=64,temperature=0`` -> {"max_gen_toks": 64, "temperature": 0} (values read as YAML)."""
    if text is None:
        return None
    import yaml

    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--gen-kwargs: '{item}' is not KEY=VALUE", hint="e.g. --gen-kwargs max_gen_toks=64,do_sample=false")
        out[key.strip()] = yaml.safe_load(value)
    return out


BENCH_EPILOG = """Examples:

  compress bench builtin:tiny-llama

  compress bench runs/tiny-llama-int4-gptq/KEY/model --batch-sizes 1,8 --prompt-tokens 128 --output-tokens 64

  compress bench ./my-model --price-per-hour 2.50 --out bench.json

  compress bench dist/tiny-llama-int4-rtn --engine vllm --concurrency 1,4,16 --rounds 3

  compress bench ./my-model --endpoint http://127.0.0.1:8000 --concurrency 1,8
"""


@app.command(epilog=BENCH_EPILOG, rich_help_panel="Measure")
def bench(
    model: Annotated[str, typer.Argument(help="builtin:NAME, an artifact or model directory, run:NAME or a hub id.")],
    engine: Annotated[Optional[str], typer.Option(
        "--engine", help="hf (transformers generate) or vllm (a vLLM server from `make engine`).")] = None,
    endpoint: Annotated[Optional[str], typer.Option(
        "--endpoint", help="Benchmark an OpenAI-compatible server already running at this URL (MODEL gives "
        "the tokenizer and the hash recorded).")] = None,
    batch_sizes: Annotated[Optional[str], typer.Option(
        "--batch-sizes", "--concurrency", help="Comma-separated batch sizes (hf) or concurrency levels (vllm).")] = None,
    rounds: Annotated[Optional[int], typer.Option("--rounds", help="Rounds; figures carry their spread over them.")] = None,
    prompt_tokens: Annotated[Optional[int], typer.Option("--prompt-tokens", help="Prompt length in tokens.")] = None,
    output_tokens: Annotated[Optional[int], typer.Option("--output-tokens", help="Tokens generated per request.")] = None,
    warmup: Annotated[Optional[int], typer.Option("--warmup", help="Untimed calls per batch size.")] = None,
    repeats: Annotated[Optional[int], typer.Option(
        "--repeats", help="Timed calls per batch size (hf), requests per level (vllm), per round.")] = None,
    price_per_hour: Annotated[Optional[float], typer.Option("--price-per-hour", help="USD per hour of this machine.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
    tensor_parallel: TensorParallel = None,
    data_parallel: DataParallel = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="float32, bfloat16, float16 or auto.")] = None,
    recipe: RecipeFile = None,
    set_: SetOverrides = None,
    rerun: Rerun = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the report JSON here.")] = None,
    json_: JsonOut = False,
) -> None:
    """Generation benchmark: TTFT, inter-token and end-to-end latency (p50/p90/p99), tok/s, memory, $/1M tokens."""
    from compress.evals.bench import run_bench
    from compress.inputs import check_model
    from compress.recipe import BenchSpec

    sizes = None
    if batch_sizes:
        try:
            sizes = [int(x) for x in batch_sizes.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--batch-sizes: '{batch_sizes}' is not a list of integers",
                             hint="e.g. --batch-sizes 1,4,8") from None
    flags = {"engine": engine, "batch_sizes": sizes, "rounds": rounds, "prompt_tokens": prompt_tokens,
             "output_tokens": output_tokens, "warmup": warmup, "repeats": repeats, "price_per_hour": price_per_hour,
             "device": device, "tensor_parallel": tensor_parallel, "data_parallel": data_parallel}
    r = _load_optional(recipe, set_)
    settings = _settings(BenchSpec, r, "bench", flags)
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise UsageError(f"--endpoint: '{endpoint}' is not an http(s) URL", hint="e.g. --endpoint http://127.0.0.1:8000")
    check_model(model)  # a bad model fails here, before any compute or write
    where = f"at {endpoint}" if endpoint else f"with {settings.engine}"
    with console.err.status(f"Benchmarking {model} {where} (levels {', '.join(map(str, settings.batch_sizes))}, "
                            f"{settings.rounds} rounds)"), console.stdout_to_stderr():
        report, cached = run_bench(model, settings, dtype=_model_dtype(r, dtype), rerun=rerun, endpoint=endpoint)
    from compress.report import bench_table

    if _emit(report, cached, out, json_, bench_table):
        m = report.measured
        console.out.print(f"{model}: peak memory {console.fmt_bytes(m.peak_memory_bytes)} ({m.memory_kind}), "
                          f"size {console.fmt_bytes(m.size_bytes)}, device {m.device}"
                          + (f", kernels {', '.join(m.runtime.kernels)}" if m.runtime.kernels else ""))


COMPARE_EPILOG = """Examples:

  compress compare builtin:tiny-llama runs/tiny-llama-int4-gptq/KEY/model

  compress compare ./base ./candidate --recipe recipes/tiny-llama-int4-gptq.yaml --no-bench
"""


@app.command(epilog=COMPARE_EPILOG, rich_help_panel="Measure")
def compare(
    baseline: Annotated[str, typer.Argument(help="The reference model.")],
    candidate: Annotated[str, typer.Argument(help="The model to compare against it.")],
    recipe: RecipeFile = None,
    set_: SetOverrides = None,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip accuracy.")] = False,
    no_bench: Annotated[bool, typer.Option("--no-bench", help="Skip the benchmark.")] = False,
    rerun: Rerun = False,
    json_: JsonOut = False,
) -> None:
    """Baseline and candidate side by side, with deltas, for accuracy and speed (reports cached)."""
    from compress.compare import accuracy_rows, speed_rows
    from compress.evals.accuracy import run_eval
    from compress.evals.bench import run_speed
    from compress.inputs import check_model
    from compress.recipe import BenchSpec, EvalSpec

    r = _load_optional(recipe, set_)
    check_model(baseline)  # bad models fail here, before any compute or write
    check_model(candidate)
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
        with console.err.status(f"Benchmarking both models together ({settings.engine}, {settings.rounds} "
                                "alternating rounds)"), console.stdout_to_stderr():
            speed, _ = run_speed(baseline, candidate, settings, dtype=dtype, rerun=rerun)
        from compress.compare import level_intervals

        result["speed"] = speed_rows(speed, level_intervals(speed))
        from compress.report import speed_heading

        result["speed_measured_with"] = speed_heading(speed)
    if json_:
        console.print_json(_plain(result))
        return
    from compress.report import compare_tables

    for t in compare_tables(result):
        console.out.print(t)


def _plain(data):
    """Rows holding intervals and spreads, as plain JSON data."""
    from dataclasses import asdict, is_dataclass

    from pydantic import BaseModel

    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if is_dataclass(data):
        return asdict(data)
    return data


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


@app.command(rich_help_panel="Release", epilog=examples(
    "compress gate runs/tiny-llama-int4-gptq",
    "compress gate runs/tiny-llama-int4-gptq/KEY --recipe stricter.yaml --json"))
def gate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (runs/NAME/KEY, or runs/NAME for its newest) with stored reports.")],
    recipe: Annotated[Optional[Path], typer.Option("--recipe", "-r", help="Take the gate policy from this recipe instead.")] = None,
    json_: JsonOut = False,
) -> None:
    """Decide PASS / FAIL / INCONCLUSIVE from a run's stored reports; exit 0, 1 or 3."""
    from compress.models import newest_run
    from compress.pipeline import gate_run

    run_dir = newest_run(run_dir)
    if not (run_dir / "reports").is_dir():
        raise UsageError(f"{run_dir} has no reports/", hint="run `compress run RECIPE` first")
    result = gate_run(run_dir, _run_recipe(run_dir, recipe), policy_source=str(recipe) if recipe else "recipe")
    if json_:
        console.print_json(result.model_dump(mode="json"))
    else:
        _print_gate(result)
    raise typer.Exit(result.exit_code)


@app.command(rich_help_panel="Release", epilog=examples(
    "compress export runs/tiny-llama-int4-gptq --to dist/tiny-llama-int4-gptq",
    "compress export runs/tiny-llama-int4-gptq/KEY --to dist/tiny-llama-int4-gptq --sign keys/compress-signing.key --json"))
def export(
    run_dir: Annotated[Path, typer.Argument(help="A gated run directory (runs/NAME/KEY, or runs/NAME for its newest).")],
    to: Annotated[Path, typer.Option("--to", help="Where to write the exported artifact.")],
    force: Force = False,
    sign: SignKey = None,
    json_: JsonOut = False,
) -> None:
    """Export an artifact that passed its gate, with manifest and model card; refuses anything else."""
    from compress.export import export_run, own_policy, policy_line
    from compress.gate import GateResult, policy_hash
    from compress.pipeline import load_reports
    from compress.provenance import choose_signer
    from compress.models import newest_run
    from compress.report import local_base, model_card

    run_dir = newest_run(run_dir)
    if not (run_dir / "model").is_dir():
        raise InputError(f"{run_dir} is not a run directory (it has no model/)",
                         hint="pass a run directory, runs/NAME/KEY, as written by `compress run`")
    recipe = _run_recipe(run_dir, None)
    signer = choose_signer(sign, recipe.export.sign_key)  # a bad key fails here, before any work
    card = (lambda m, g: model_card(recipe, m, g, load_reports(run_dir), path=to, base_path=local_base(recipe))) \
        if recipe.export.model_card else None
    exported = export_run(run_dir, to, model_card=card, force=force, signer=signer)
    gate_result, own = GateResult.model_validate(exported["gate"]), policy_hash(recipe.gate)
    (_log if own_policy(gate_result, own) else console.warn)(policy_line(gate_result, own))
    if json_:
        console.print_json({"run_dir": str(run_dir), "path": str(to), "content_hash": exported["content_hash"],
                            "verdict": gate_result.verdict, "signed_by": signer.keyid if signer else None})
        return
    signed = f", signed by key {signer.keyid[:16]}" if signer else ""
    key_flag = " --key PUB" if signer else ""
    console.out.print(f"[green]Exported[/green] {run_dir} -> {to}{signed} (verify with: compress verify {to}{key_flag})")


@app.command(epilog=examples("compress verify dist/tiny-llama-int4-gptq",
                             "compress verify dist/tiny-llama-int4-gptq --key keys/compress-signing.pub --json"),
             rich_help_panel="Release")
def verify(
    path: Annotated[Path, typer.Argument(help="An exported artifact directory.")],
    key: Annotated[Optional[Path], typer.Option(
        "--key", metavar="PUB", help="Also check the signed provenance with this Ed25519 public key "
        "(compress-signing.pub): signed by it, and exactly the signed files.")] = None,
    json_: JsonOut = False,
) -> None:
    """Re-check every file of an exported artifact against its manifest and its PASS; exit non-zero on any mismatch."""
    from compress import provenance
    from compress.export import verify as verify_artifact

    checked = verify_artifact(path)
    statement = provenance.verify_signature(path, key) if key is not None else None
    if json_:
        console.print_json({"path": str(path), "ok": True, "files": checked["files"],
                            "content_hash": checked["manifest"]["content_hash"], "policy": checked["policy"],
                            "signature": None if statement is None else {
                                "keyid": provenance.keyid(provenance.load_public_key(key)),
                                "files": len(statement["subject"])},
                            "signed_by": provenance.signed_by(path)})
        return
    console.out.print(f"[green]OK[/green] {path}: all {checked['files']} files match their sha256, nothing added "
                      f"or missing; the gate PASS follows from the evidence it carries, for content "
                      f"{checked['manifest']['content_hash'][:16]}…")
    console.out.print(f"  {escape(checked['policy'])}")
    if statement is not None:
        console.out.print(f"[green]signature OK[/green] (key {provenance.keyid(provenance.load_public_key(key))}): "
                          f"{len(statement['subject'])} signed files, nothing added or missing")
    elif keyids := provenance.signed_by(path):
        console.out.print(f"signed by {escape(', '.join(keyids))} (not checked: pass --key PUB)")


KEYGEN_EPILOG = """Examples:

  compress keygen --out keys

  compress keygen --out ~/.compress --force     # replace the pair (old signatures then fail to verify)
"""


@app.command(epilog=KEYGEN_EPILOG, rich_help_panel="Release")
def keygen(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for compress-signing.key and .pub.")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key pair.")] = False,
    json_: JsonOut = False,
) -> None:
    """Make an Ed25519 key pair for signing exports (private key 0600; public key for `verify --key`)."""
    from compress.provenance import ENV_KEY, generate_keypair

    private, public, kid = generate_keypair(out, force=force)
    if json_:
        console.print_json({"keyid": kid, "private_key": str(private), "public_key": str(public)})
        return
    console.out.print(f"[green]Wrote[/green] {escape(str(private))} (private, mode 0600) and "
                      f"{escape(str(public))} (public); key id {kid}")
    console.out.print(f"• sign:   compress export RUN --to DIR --sign {escape(str(private))}   "
                      f"(in CI: store the text of {private.name} as the secret {ENV_KEY}; never commit it)")
    console.out.print(f"• verify: compress verify DIR --key {escape(str(public))}   "
                      f"(commit the public key, e.g. as keys/{public.name})")


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
    sign: SignKey = None,
    device: Device = "auto",
    json_: JsonOut = False,
) -> None:
    """The whole flow: quantize or distill, evaluate, benchmark, gate, export; cached and resumable."""
    from compress import pipeline
    from compress.inputs import check_inside_tree, check_recipe
    from compress.provenance import choose_signer
    from compress.recipe import load_recipe
    from compress.report import junit_xml, model_card, run_summary_markdown

    r = load_recipe(recipe, set_ or [])
    if export_to is None and not no_export and r.export.to:
        check_inside_tree(r.export.to, "recipe export.to")  # only a flag may write outside the tree
    if sign is not None and no_export:
        raise UsageError("--sign signs the export, and --no-export skips it", hint="drop one of the two")
    signer = None if no_export else choose_signer(sign, r.export.sign_key)  # a bad key fails before any work
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise UsageError("`compress run` evaluates and benchmarks in one process",
                         hint="train with `accelerate launch -m compress distill RECIPE`, then "
                              "`compress run RECIPE` reuses the artifact")
    check_recipe(r, evals=True)  # bad inputs fail here, before any compute or write
    with console.stdout_to_stderr():
        result = pipeline.run(r, force=force, rerun_reports=rerun, export=not no_export, export_to=export_to,
                              device=device, log=_log, warn=_warn, model_card=model_card, signer=signer)
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


@app.command(epilog=examples("compress report runs", "compress report runs --plot runs.png --json"),
             rich_help_panel="Release")
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

# errno -> what the user can do about a refused write (beside writing somewhere else).
_WRITE_ERRNOS = {
    errno.EROFS: None,
    errno.EACCES: "make it writable for this user",
    errno.EPERM: "make it writable for this user",
    errno.ENOSPC: "free some disk space",
    errno.EDQUOT: "free some disk space (quota)",
    errno.EFBIG: "raise the file-size limit (ulimit -f)",
}
# Temporaries next to a final path (artifact.py): `.NAME.tmp-…`, `.NAME.old-…`, `.NAME.work`.
_TEMP_PART = re.compile(r"^\.(?P<name>.+?)\.(?:(?:tmp|old)-[\w-]+|work)$")


def _shown_path(path: str | os.PathLike) -> str:
    """The path a user asked for, not the temporary it was being built under:
    ``out/.q.tmp-123-ab12/model.safetensors`` -> ``out/q/model.safetensors``."""
    parts = Path(path).parts
    return str(Path(*[m["name"] if (m := _TEMP_PART.match(p)) else p for p in parts])) if parts else str(path)


def _path_in_traceback(tb) -> str | None:
    """The file a library was writing when it failed without naming it (safetensors' Rust I/O
    errors): the innermost frame's ``filename``/``save_directory`` local."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for name in ("filename", "file_path", "save_directory"):
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and str(value):
                return os.fspath(value)
    return None


def _os_error_line(err_no: int | None, strerror: str, path: str | None) -> tuple[str, int] | None:
    """One line for an error from the OS, or None when it is not one that names a file.

    A refused write (read-only file system, permissions, disk full, file too large) is a
    runtime failure (exit 4) whose fix is on this machine, not in the recipe.
    """
    if err_no is None:
        return None
    shown = _shown_path(path) if path else None
    if err_no in _WRITE_ERRNOS:
        if shown and err_no in (errno.EACCES, errno.EPERM) and os.path.exists(path) \
                and not os.access(path, os.R_OK):
            return f"cannot read {shown}: {strerror} (make it readable for this user)", EXIT_RUNTIME
        elsewhere = "choose another output path"
        if shown:
            from compress.models import runs_root

            target = Path(os.path.abspath(shown))
            cache = Path(os.path.abspath(os.environ.get("COMPRESS_CACHE_DIR") or runs_root() / ".cache"))
            if target.is_relative_to(cache):
                elsewhere = "set COMPRESS_CACHE_DIR to a writable directory"
            elif target.is_relative_to(Path(os.path.abspath(runs_root()))):
                elsewhere = "set COMPRESS_RUNS_DIR to a writable directory"
        action = _WRITE_ERRNOS[err_no]
        fix = f"{action}, or {elsewhere}" if action else elsewhere
        return f"cannot write {shown or 'a file'}: {strerror} ({fix})", EXIT_RUNTIME
    if shown:
        return f"{shown}: {strerror} (rerun with COMPRESS_DEBUG=1 for a traceback)", EXIT_RUNTIME
    return None


def _error(line: str) -> None:
    console.err.print(f"[red]Error:[/red] {escape(' '.join(line.split()))}", soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code instead of raising.

    Every failure ends here as one line on stderr starting with ``Error:`` (a recipe with
    several problems adds one indented line per problem) and an exit code: 2 for bad usage,
    recipes and input, 4 for runtime failures, 130 for Ctrl-C. A traceback only with
    COMPRESS_DEBUG=1.
    """
    debug = os.environ.get("COMPRESS_DEBUG") == "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with _ctrl_c() as interrupted:
        code = _main(argv, debug)
    if interrupted() and code != EXIT_INTERRUPTED:
        # A library swallowed the KeyboardInterrupt (a bare `except:` somewhere) and the command
        # went on; the user still asked it to stop, and its result is not to be relied on.
        _say_interrupted()
        return EXIT_INTERRUPTED
    return code


def _say_interrupted() -> None:
    # On a line of its own: a progress bar (or the terminal's ^C echo) may hold the cursor mid-line.
    console.err.print("\nInterrupted.")


@contextlib.contextmanager
def _ctrl_c():
    """Ctrl-C raises KeyboardInterrupt, so that servers are stopped and temporaries removed on
    the way out; a second Ctrl-C, or one that a library swallowed, still ends with exit 130."""
    hits = []

    def handler(signum, frame):
        hits.append(signum)
        if len(hits) > 1:
            _say_interrupted()
            os._exit(EXIT_INTERRUPTED)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (an embedding program): leave its handler alone
        yield lambda: False
        return
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


def _main(argv: list[str] | None, debug: bool) -> int:
    try:
        # Without standalone mode, typer returns the code of a typer.Exit instead of raising it,
        # and a Ctrl-C inside a command comes back as 130 (typer turns it into Exit(130)).
        code = app(args=argv, standalone_mode=False, prog_name="compress")
        code = code if isinstance(code, int) else 0
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        code = EXIT_INTERRUPTED
    except typer.TyperException as e:
        # Usage errors from the command line parser (typer bundles its own click, so these are
        # not click.ClickException): no such option or command, a missing or invalid value.
        if debug:
            traceback.print_exc()
        ctx = getattr(e, "ctx", None)
        where = f"{ctx.command_path} --help" if ctx is not None else "compress --help"
        message = e.format_message().strip()
        if type(e).__name__ == "NoArgsIsHelpError" or not message:
            message = "missing command"  # the help has been printed on stdout
        _error(f"{message} (see '{where}')")
        return EXIT_USAGE
    except RecipeError as e:
        if debug:
            traceback.print_exc()
        if len(e.problems) == 1:
            _error(str(e))
        else:
            console.err.print(f"[red]Error:[/red] {escape(e.source)}: {len(e.problems)} problems "
                              f"({escape(e.hint or '')})", soft_wrap=True)
            for p in e.problems:
                console.err.print(f"    {p}", markup=False)
        return e.exit_code
    except CompressError as e:
        if debug:
            traceback.print_exc()
        _error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except MemoryError:
        if debug:
            traceback.print_exc()
        _error("out of memory (use a smaller batch size or model, or a larger machine)")
        return EXIT_RUNTIME
    except Exception as e:  # noqa: BLE001 - the last resort keeps the exit-code contract
        if debug:
            traceback.print_exc()
        line = None
        if isinstance(e, OSError):
            line = _os_error_line(e.errno, e.strerror or str(e), e.filename2 or e.filename)
        elif m := re.search(r"\((?:os error|errno) (\d+)\)", str(e), flags=re.IGNORECASE):
            # Rust and C++ back ends (safetensors, tokenizers) report OS errors as text.
            n = int(m[1])
            line = _os_error_line(n, os.strerror(n), _path_in_traceback(e.__traceback__))
        if line is not None:
            _error(line[0])
            return line[1]
        first = str(e).splitlines()[0] if str(e) else ""
        _error(f"{type(e).__name__}: {first} (unexpected; rerun with COMPRESS_DEBUG=1 for a traceback)")
        return EXIT_RUNTIME
    if code == EXIT_INTERRUPTED:
        _say_interrupted()
    return code


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
