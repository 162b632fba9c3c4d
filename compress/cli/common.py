"""What every command shares: the application, the `command` decorator (which adds -q/-v and
captures the back ends' output), the examples layout and the helpers that read settings."""
from __future__ import annotations

import contextlib
import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.markup import escape
from typer.core import TyperArgument, TyperGroup, TyperOption

from compress.core import console
from compress.core.errors import UsageError
from compress.cli.options import Quiet, Verbose

# typer 0.29 prints a type beside every option, "<bool>" beside flags too, which reads as if a
# flag took a value (`--force true`), and "<list[Path]>" beside a named argument: flags are
# shown bare, and an argument by its name.
_option_type, _argument_type = TyperOption.display_type_rich, TyperArgument.display_type_rich
TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else _option_type(self, ctx)
TyperArgument.display_type_rich = lambda self, ctx: None if self.metavar else _argument_type(self, ctx)
HELP = {"help_option_names": ["-h", "--help"]}

# The panels of `compress --help`, in the order of the flow.
SETUP, BUILD, MEASURE, DECIDE, SHIP = "Set-up", "Build", "Measure", "Decide", "Ship"


class FlowOrder(TyperGroup):
    """Commands (and so their panels) in the order they are registered, the order of the flow,
    not alphabetical."""

    def list_commands(self, ctx) -> list[str]:
        return list(self.commands)


app = typer.Typer(
    cls=FlowOrder,
    name="compress",
    help="Make models cheaper to serve without making them worse: quantize or distill, "
    "then gate every artifact on accuracy, speed, size and cost before it can be exported.",
    epilog="Exit codes: 0 pass, 1 gate failed, 2 bad usage, invalid recipe or bad input, 3 inconclusive, "
    "4 runtime failure, 130 interrupted. Back-end output goes to a log file (-v shows it); "
    "COMPRESS_DEBUG=1 shows tracebacks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings=HELP,
)
recipes_app = typer.Typer(cls=FlowOrder, help="Validate and list recipe files.", no_args_is_help=True,
                          context_settings=HELP)


def _print_version(value: bool) -> None:
    if value:
        from compress import __version__

        console.out.print(f"compress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print compress's version and exit.")] = False) -> None:
    pass


app.add_typer(recipes_app, name="recipes", rich_help_panel=SETUP)


def examples(*lines: str) -> str:
    """A command's epilog: its examples, one per paragraph, in the layout every command shares."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines) + "\n"


def command(name: str, *, panel: str | None = None, epilog: str, capture: bool = False,
            group: typer.Typer = app) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command, adding -q/--quiet and -v/--verbose to its options.

    Args:
        capture: the command runs back ends (torch, lm-eval, llm-compressor, ...): their output
            goes to a log file while it runs (``console.captured``), shown live only with -v.
    """
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, quiet: bool = False, verbose: bool = False, **kwargs: Any) -> Any:
            console.set_verbosity(quiet, verbose)
            with console.captured(name) if capture else contextlib.nullcontext():
                return fn(*args, **kwargs)

        signature = inspect.signature(fn, eval_str=True)
        extra = [inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Quiet),
                 inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Verbose)]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()]
        wrapper.__signature__ = signature.replace(parameters=[*params, *extra])
        wrapper.__annotations__ = {**{p.name: p.annotation for p in params}, "quiet": Quiet, "verbose": Verbose}
        return group.command(name, epilog=epilog, rich_help_panel=panel)(wrapper)

    return register


def default(spec: type, field: str) -> str:
    """`  \\[default: X]` for a help text, from the recipe schema (options left unset fall back to a
    recipe, then to the schema: their default is shown from the one place that holds it)."""
    value = spec.model_fields[field].get_default(call_default_factory=True)
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return f"  \\[default: {value}]"


# ----------------------------------------------------------------------- settings

def settings_from(cls, recipe, section: str, flags: dict):
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


def traffic_spec(recipe, path: Optional[Path]):
    """The evals.traffic settings: the recipe's, with ``--traffic FILE`` as the file (None without either)."""
    from compress.core.recipe import TrafficSpec

    spec = recipe.evals.traffic if recipe is not None else None
    if path is None:
        return spec
    return TrafficSpec.model_validate({**(spec.model_dump() if spec else {}), "path": str(path)})


def traffic_overrides(overrides: Optional[list[str]], path: Optional[Path]) -> list[str]:
    """``--traffic FILE`` as a recipe override (evals.traffic.path), after the ``--set`` ones."""
    return [*(overrides or []), *([f"evals.traffic.path={path}"] if path is not None else [])]


def serving_flags(recipe, *, workload: Optional[Path] = None, arrival: Optional[str] = None,
                  rates: Optional[str] = None, goodput: Optional[float] = None, slo_ttft_ms: Optional[float] = None,
                  slo_tpot_ms: Optional[float] = None, slo_e2e_ms: Optional[float] = None) -> dict[str, Any]:
    """The bench settings the workload, arrival and SLO flags set (BenchSpec keys), merged into the recipe's own
    sections: ``--workload`` keeps the recipe's shared prefix, ``--slo-*`` its other bounds."""
    bench = recipe.bench.model_dump(mode="json") if recipe is not None else {}
    flags: dict[str, Any] = {}
    if workload is not None:
        if not workload.is_file():
            raise UsageError(f"--workload: {workload} is not a file", hint="give a JSONL file of requests")
        flags["workload"] = {**{k: v for k, v in (bench.get("workload") or {}).items() if k != "prompt_tokens"},
                             "path": str(workload)}
    if arrival is not None:
        if arrival not in ("closed", "poisson", "constant"):
            raise UsageError(f"--arrival: '{arrival}' is not closed, poisson or constant", hint="e.g. --arrival poisson")
        flags["arrival"] = arrival
    if rates:
        try:
            flags["rates"] = [float(x) for x in rates.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--rates: '{rates}' is not a list of numbers", hint="e.g. --rates 0.5,1,2") from None
        if any(r <= 0 for r in flags["rates"]):
            raise UsageError(f"--rates: '{rates}' has a rate that is not positive", hint="e.g. --rates 0.5,1,2")
    if goodput is not None:
        flags["goodput"] = {**(bench.get("goodput") or {}), "attainment": goodput}
    bounds = {"ttft_ms": slo_ttft_ms, "tpot_ms": slo_tpot_ms, "e2e_ms": slo_e2e_ms}
    if any(v is not None for v in bounds.values()):
        flags["slo"] = {**(bench.get("slo") or {}), **{k: v for k, v in bounds.items() if v is not None}}
    if (flags.get("rates") or "goodput" in flags) and "arrival" not in flags and bench.get("arrival", "closed") == "closed":
        flags["arrival"] = "poisson"  # rates mean an open loop
    return flags


def serving_overrides(flags: dict[str, Any]) -> list[str]:
    """Those settings as recipe overrides (``bench.KEY=VALUE``, the value as JSON, which YAML reads)."""
    import json

    return [f"bench.{k}={json.dumps(v)}" for k, v in flags.items()]


def load_optional(recipe: Optional[Path], overrides: Optional[list[str]] = None):
    from compress.core.recipe import load_recipe

    if overrides and not recipe:
        raise UsageError("--set changes a recipe's values, and no --recipe was given",
                         hint="pass --recipe FILE with --set, or use this command's own options")
    return load_recipe(recipe, overrides or []) if recipe else None


def model_dtype(recipe, dtype: Optional[str]) -> str:
    return dtype or (recipe.model.dtype if recipe else "auto")


def run_recipe(run_dir: Path, recipe: Optional[Path], overrides: Optional[list[str]] = None):
    """The recipe a run was made with (its artifact keeps a copy), or the one given; --set applies to either."""
    from compress.core.artifact import RECIPE_FILE
    from compress.core.recipe import load_recipe

    source = recipe or run_dir / "model" / RECIPE_FILE
    if not Path(source).exists():
        raise UsageError(f"{run_dir} has no model/{RECIPE_FILE}", hint="pass --recipe FILE")
    return load_recipe(source, overrides or [])


def method_name(method, search=None) -> str:
    """A recipe's method in a few words; a search recipe's is what it searches."""
    from compress.core.schemes import describe_method

    if search is not None:
        what = [f"ladder {search.ladder}"] if search.ladder else []
        what += [f"{len(search.candidates)} candidate(s)"] if search.candidates else []
        return "search: " + ", ".join(what)
    return describe_method(method.model_dump())


# ------------------------------------------------------------------------- output

def emit(report, cached: bool, out: Optional[Path], json_: bool, render) -> bool:
    """Save, print as JSON or as a table; True when the table was printed (callers may add a line)."""
    if out:
        report.save(out)
    if json_:
        console.print_json(report.model_dump(mode="json"))
        return False
    console.out.print(render(report))
    console.out.print("from the cache (--rerun to measure again)" if cached else f"measured in {report.duration_s:.1f} s")
    return True


def plain(data):
    """Rows holding intervals and spreads, as plain JSON data."""
    from dataclasses import asdict, is_dataclass

    from pydantic import BaseModel

    if isinstance(data, dict):
        return {k: plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [plain(v) for v in data]
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if is_dataclass(data):
        return asdict(data)
    return data


def print_gate(gate, result: str = "") -> None:
    """The gate's checks as a table, then its verdict (and the run's outcome) on one line."""
    colour = {"PASS": "green", "FAIL": "red", "INCONCLUSIVE": "yellow"}
    rows = [[f"[{colour[c.verdict]}]{c.verdict}[/{colour[c.verdict]}]", c.metric, c.shown or f"{c.measured:.4g}",
             c.threshold, escape(c.note)] for c in gate.checks]
    console.out.print(console.table(None, ["gate", "check", "measured", "threshold", "detail"], rows))
    tail = f" · {escape(result)}" if result else ""
    console.out.print(f"[bold {colour[gate.verdict]}]{gate.summary()}[/bold {colour[gate.verdict]}]{tail}")
