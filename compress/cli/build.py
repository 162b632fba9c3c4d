"""Build: quantize and distill, each writing one self-describing artifact."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compress.core import console
from compress.cli.common import BUILD, command, examples, method_name
from compress.cli.options import ArtifactOut, Device, Force, JsonOut, SetOverrides
from compress.core.errors import UsageError
from compress.core.schemes import SCHEMES


@command("quantize", panel=BUILD, capture=True, epilog=examples(
    "compress quantize recipes/tiny-llama-int4-gptq.yaml",
    "compress quantize --model builtin:tiny-llama --scheme int4-gptq -o out/tiny-int4",
    "compress quantize --model ./my-llama --scheme fp8-dynamic -o out/fp8 --set method.ignore='[lm_head]'")
    + f"\nSchemes: {', '.join(SCHEMES)} (compress recipes list describes them).\n")
def quantize(
    recipe: Annotated[Optional[Path], typer.Argument(metavar="RECIPE", help="Recipe file (or use --model and --scheme).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="builtin:NAME, a local directory, run:NAME or a hub id.")] = None,
    scheme: Annotated[Optional[str], typer.Option("--scheme", help="Method shortcut; replaces the recipe's method.")] = None,
    out: ArtifactOut = None,
    set_: SetOverrides = None,
    force: Force = False,
    device: Device = "auto",
    json_: JsonOut = False,
) -> None:
    """Quantize a model into a servable, self-describing artifact (model, tokenizer, recipe, manifest)."""
    from compress.core.recipe import build_recipe

    r = build_recipe(recipe, model=model, scheme=scheme, overrides=set_ or [])
    if r.method.kind == "distill":
        raise UsageError("this recipe distills", hint="use `compress distill` or `compress run`")
    if r.search is not None:
        raise UsageError("this recipe searches (it lists candidates)", hint="use `compress search RECIPE`")
    build(r, out, force, device, json_)


@command("distill", panel=BUILD, capture=True, epilog=examples(
    "compress distill recipes/tiny-llama-distill.yaml",
    "compress distill recipes/tiny-llama-distill.yaml --set method.training.max_steps=50 -o out/student",
    "accelerate launch -m compress distill recipes/my-distill.yaml     # several GPUs, same recipe"))
def distill(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="A recipe with method.kind: distill.")],
    out: ArtifactOut = None,
    set_: SetOverrides = None,
    force: Force = False,
    device: Device = "auto",
    json_: JsonOut = False,
) -> None:
    """Train a smaller student on the teacher's outputs (pruned teacher or given student); resumes from checkpoints."""
    from compress.core.recipe import load_recipe

    r = load_recipe(recipe, set_ or [])
    if r.method.kind != "distill":
        raise UsageError(f"{recipe} is a {r.method.kind} recipe", hint="use `compress quantize` for it")
    build(r, out, force, device, json_)


def build(r, out: Optional[Path], force: bool, device: str, json_: bool) -> None:
    """Check the recipe's inputs (before any compute or write), build its artifact with compress's
    own progress (what it does, then how long it took), and print the result."""
    import time

    from compress import runs
    from compress.inputs import check_recipe

    check_recipe(r)
    with console.Stages(1, r.name) as stages:
        stages.start(r.method.kind)
        start = time.time()
        manifest, reused, path = runs.build(r, out=out, force=force, device=device, log=console.detail,
                                            warn=console.warn)
        stages.end(method_name(r.method), time.time() - start, reused)
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


