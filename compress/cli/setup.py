"""Set-up: recipes (validate, list), doctor, keygen."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from compress.core import console
from compress.cli.common import SETUP, command, examples, method_name, recipes_app
from compress.cli.options import JsonOut, SetOverrides
from compress.core.errors import EXIT_USAGE, RecipeError, UsageError


@command("validate", group=recipes_app, epilog=examples(
    "compress recipes validate recipes/*.yaml",
    "compress recipes validate my-recipe.yaml --set method.group_size=64 --show",
    "compress recipes validate recipes/*.yaml --json"))
def recipes_validate(
    files: Annotated[list[Path], typer.Argument(metavar="FILE", help="Recipe files to check.")],
    set_: SetOverrides = None,
    show: Annotated[bool, typer.Option("--show", help="Print each effective recipe (defaults filled in).")] = False,
    json_: JsonOut = False,
) -> None:
    """Check recipes against the schema; report every problem with its path and line.

    One file: a line naming it. Several: a line per invalid one, with its problems, and a count."""
    from compress.core.recipe import dump_recipe, load_recipe

    results = []
    for f in files:
        try:
            recipe = load_recipe(f, set_ or [])
        except RecipeError as e:
            results.append({"file": str(f), "valid": False, "problems": [str(p) for p in e.problems]})
            if not json_:
                console.err.print(f"[red]✗[/red] {escape(str(f))}: {len(e.problems)} problem(s)")
                for p in e.problems:
                    console.err.print(f"    {p}", markup=False)
            continue
        results.append({"file": str(f), "valid": True, "name": recipe.name, "method": method_name(recipe.method, recipe.search)})
        if show and not json_:
            console.out.print(f"# {f}", markup=False)
            console.out.print(dump_recipe(recipe), markup=False)
    valid = [r for r in results if r["valid"]]
    if json_:
        console.print_json({"recipes": results, "valid": len(valid), "invalid": len(results) - len(valid)})
    elif len(results) == 1 and valid:
        console.out.print(f"[green]✓[/green] {escape(valid[0]['file'])} ({escape(valid[0]['name'])}: "
                          f"{escape(valid[0]['method'])})")
    elif valid:
        invalid = len(results) - len(valid)
        console.out.print(f"[green]✓[/green] {len(valid)} of {len(results)} recipes valid"
                          + (f", [red]{invalid} invalid[/red]" if invalid else ""))
    if len(valid) < len(results):
        raise typer.Exit(EXIT_USAGE)


@command("list", group=recipes_app, epilog=examples("compress recipes list", "compress recipes list my-recipes/ --json"))
def recipes_list(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Directory of recipes.")] = Path("recipes"),
    json_: JsonOut = False,
) -> None:
    """List the recipes in a directory and its sub-folders, and the methods and schemes compress knows."""
    from compress.core.schemes import SCHEME_HELP
    from compress.core.recipe import load_recipe

    if not directory.is_dir():
        raise UsageError(f"no recipe directory {directory}", hint="pass the directory that holds your recipes")
    rows = []
    for f in sorted(directory.rglob("*.y*ml")):  # sub-folders too (recipes/demo/)
        if any(part.startswith(".") for part in f.relative_to(directory).parts):
            continue
        try:
            r = load_recipe(f)
            rows.append({"file": str(f), "name": r.name, "method": method_name(r.method, r.search), "model": r.model.id,
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

@command("doctor", panel=SETUP, epilog=examples("compress doctor", "compress doctor --json",
                                                 "compress doctor --probe     # serve the embedded model with vLLM"))
def doctor(
    probe: Annotated[bool, typer.Option("--probe", help="Also serve the embedded model with the installed engine "
                                                        "and generate 4 tokens (a minute warm; a first start "
                                                        "compiles for longer).")] = False,
    json_: JsonOut = False,
) -> None:
    """Print the environment: torch and CUDA, GPU and native FP8, installed back ends, and what the installed
    engine's quantization registry accepts (read from it, and served for real with --probe)."""
    from compress import doctor as doc

    info = doc.collect()
    if probe and info["engine"]["installed"]:
        from compress.measure.engines.vllm import probe as serve_probe
        from compress.core.procs import private_dir

        with console.err.status("Serving the embedded model with vLLM"):
            info["engine"]["probe"] = serve_probe(info["engine"]["path"], log_path=private_dir("logs") / "doctor-vllm.log")
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
        ["AMX tiles", {True: "usable", False: "not usable (int4 in vLLM takes its slow vector path)",
                       None: "-"}[dev.get("amx")]],
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
        def accepted(a):
            return "[yellow]registry not readable[/yellow]" if a is None else "yes" if a else "[red]no[/red]"

        console.out.print(console.table(
            f"Serving engine: {eng['package']} {eng['version']} ({eng['device']}, {eng['path']})",
            ["scheme", "checkpoint format", "in vLLM's quantization registry"],
            [[k, v["format"], accepted(v["accepted"])] for k, v in eng["schemes"].items()]))
        if eng.get("probe"):
            p = eng["probe"]
            said = (f"served the embedded model: vLLM {p.get('version')}, started in {p.get('start_s')} s, "
                    f"answered {p.get('text')!r}" if p.get("ok") else f"could not serve the embedded model: {p['error']}")
            console.out.print(f"• probe: {escape(said)} (log: {escape(p['log'])})")
        else:
            console.out.print("• a format in the registry may still lack a kernel on this device: "
                              "`compress doctor --probe` serves a model; the gate's servable check serves the artifact")
    cpp = info["llamacpp"]
    if cpp["present"]:
        console.out.print(f"• llama.cpp: {cpp['package']} {cpp['version']} ({cpp['root']}); "
                          + ", ".join(f"{name} {'ok' if ok else '[red]missing[/red]'}" for name, ok in cpp["tools"].items()))
    for note in doc.notes(info):
        console.out.print(f"• {note}")



@command("keygen", panel=SETUP, epilog=examples(
    "compress keygen -o keys",
    "compress keygen -o keys --kind ed25519     # signs provenance.intoto.json only (no model.sig)",
    "compress keygen -o ~/.compress --force     # replace the pair (old signatures then fail to verify)"))
def keygen(
    out: Annotated[Path, typer.Option("--output", "-o", metavar="DIR",
                                      help="Directory for compress-signing.key and .pub.")] = Path("."),
    kind: Annotated[str, typer.Option("--kind", metavar="KIND", help="ec: an ECDSA P-256 pair, which signs both "
                                      "provenance.intoto.json and model.sig (OpenSSF model_signing); ed25519: "
                                      "provenance.intoto.json only.")] = "ec",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key pair.")] = False,
    json_: JsonOut = False,
) -> None:
    """Make a key pair for signing exports (private key 0600; public key for `verify --key`)."""
    from compress.ship.model_sig import verify_command
    from compress.ship.keygen import generate_keypair
    from compress.ship.provenance import ENV_KEY

    private, public, kid = generate_keypair(out, force=force, kind=kind)
    if json_:
        console.print_json({"keyid": kid, "kind": kind, "private_key": str(private), "public_key": str(public)})
        return
    console.out.print(f"[green]Wrote[/green] {escape(str(private))} (private, mode 0600) and "
                      f"{escape(str(public))} (public); {kind} key id {kid}")
    console.out.print(f"• sign:   compress export RUN -o DIR --sign {escape(str(private))}   "
                      f"(in CI: store the text of {private.name} as the secret {ENV_KEY}; never commit it)")
    console.out.print(f"• verify: compress verify DIR --key {escape(str(public))}   "
                      f"(commit the public key, e.g. as keys/{public.name})")
    if kind == "ec":
        console.out.print(f"• or without compress: {escape(verify_command('DIR', public))}")
