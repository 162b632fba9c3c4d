"""Ship: run (the whole flow), export (only what passed) and verify (an export against its evidence)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from compress.core import console
from compress.cli.common import (SHIP, command, examples, print_gate, run_recipe, serving_flags, serving_overrides,
                                 traffic_overrides)
from compress.cli.options import (Arrival, Device, Force, GoodputTarget, JsonOut, Rates, Rerun, SetOverrides,
                                  SignKey, SloE2e, SloTpot, SloTtft, Traffic, WorkloadFile)
from compress.core.errors import InputError, UsageError


@command("export", panel=SHIP, epilog=examples(
    "compress export runs/tiny-llama-int4-gptq -o dist/tiny-llama-int4-gptq",
    "compress export runs/tiny-llama-int4-gptq/KEY -o dist/tiny-llama-int4-gptq --sign keys/compress-signing.key --json"))
def export(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A gated run directory (runs/NAME/KEY, or runs/NAME for its newest).")],
    to: Annotated[Path, typer.Option("--output", "-o", metavar="DIR", help="Where to write the exported artifact "
                                     "(--to is the older spelling).")],
    force: Force = False,
    sign: SignKey = None,
    json_: JsonOut = False,
) -> None:
    """Export an artifact that passed its gate, with manifest and model card; refuses anything else."""
    from compress.ship.export import export_run, own_policy, policy_line
    from compress.decide.gate import GateResult, policy_hash
    from compress.pipeline import load_reports
    from compress.ship.provenance import choose_signer
    from compress.core.models import newest_run
    from compress.ship.report import local_base, model_card

    run_dir = newest_run(run_dir)
    if not (run_dir / "model").is_dir():
        raise InputError(f"{run_dir} is not a run directory (it has no model/)",
                         hint="pass a run directory, runs/NAME/KEY, as written by `compress run`")
    recipe = run_recipe(run_dir, None)
    signer = note_key(choose_signer(sign, recipe.export.sign_key))  # a bad key fails here, before any work
    card = (lambda m, g: model_card(recipe, m, g, load_reports(run_dir), path=to, base_path=local_base(recipe))) \
        if recipe.export.model_card else None
    exported = export_run(run_dir, to, model_card=card, force=force, signer=signer)
    gate_result, own = GateResult.model_validate(exported["gate"]), policy_hash(recipe.gate)
    (console.step if own_policy(gate_result, own) else console.warn)(policy_line(gate_result, own))
    if json_:
        console.print_json({"run_dir": str(run_dir), "path": str(to), "content_hash": exported["content_hash"],
                            "verdict": gate_result.verdict, "signed_by": signer.keyid if signer else None})
        return
    signed = f", signed by key {signer.keyid[:16]}" if signer else ""
    key_flag = " --key PUB" if signer else ""
    console.out.print(f"[green]Exported[/green] {run_dir} -> {to}{signed} (verify with: compress verify {to}{key_flag})")


@command("verify", panel=SHIP, epilog=examples(
    "compress verify dist/tiny-llama-int4-gptq",
    "compress verify dist/tiny-llama-int4-gptq --key keys/compress-signing.pub --json"))
def verify(
    path: Annotated[Path, typer.Argument(metavar="DIR", help="An exported artifact directory.")],
    key: Annotated[Optional[Path], typer.Option(
        "--key", metavar="PUB", help="Also check the signatures with this public key (compress-signing.pub): "
        "provenance.intoto.json (signed by it, and exactly the signed files) and, with an EC key, model.sig "
        "(OpenSSF model_signing's verifier).")] = None,
    json_: JsonOut = False,
) -> None:
    """Re-check every file of an exported artifact against its manifest and its PASS; exit non-zero on any mismatch."""
    from compress.ship import provenance
    from compress.ship.export import verify as verify_artifact
    from compress.ship.model_sig import MODEL_SIG

    checked = verify_artifact(path)
    statement, sig_checked = provenance.verify_signatures(path, key) if key is not None else (None, False)
    kid = provenance.keyid(provenance.load_public_key(key)) if key is not None else None
    if json_:
        console.print_json({"path": str(path), "ok": True, "files": checked["files"],
                            "content_hash": checked["manifest"]["content_hash"], "policy": checked["policy"],
                            "signature": None if statement is None else {
                                "keyid": kid, "files": len(statement["subject"])},
                            "model_sig": {"keyid": kid, "ok": True} if sig_checked else None,
                            "signed_by": provenance.signed_by(path)})
        return
    console.out.print(f"[green]OK[/green] {path}: all {checked['files']} files match their sha256, nothing added "
                      f"or missing; the gate PASS follows from the evidence it carries, for content "
                      f"{checked['manifest']['content_hash'][:16]}…")
    console.out.print(f"  {escape(checked['policy'])}")
    if statement is not None:
        console.out.print(f"[green]signature OK[/green] (key {kid}): "
                          f"{len(statement['subject'])} signed files, nothing added or missing")
        console.out.print(f"[green]{MODEL_SIG} OK[/green] (OpenSSF model_signing, key {kid}): every file of "
                          "the export, the provenance included" if sig_checked else
                          f"{MODEL_SIG}: none (an Ed25519 key signs the provenance only)")
    elif keyids := provenance.signed_by(path):
        console.out.print(f"signed by {escape(', '.join(keyids))} (not checked: pass --key PUB)")



def note_key(signer):
    """The signer, after one line when its key cannot sign model.sig (an Ed25519 key)."""
    if signer is not None and not signer.writes_model_sig:
        console.warn(f"the signing key ({signer.origin}) is Ed25519: the export gets provenance.intoto.json "
                     "but no model.sig, which model_signing signs with EC keys only (make one: compress keygen)")
    return signer


def export_signer(r, export_to: Optional[Path], no_export: bool, sign: Optional[Path]):
    """Check where the export will go and the signing key before any work; the signer (or None)."""
    from compress.inputs import check_inside_tree
    from compress.ship.provenance import choose_signer

    if export_to is None and not no_export and r.export.to:
        check_inside_tree(r.export.to, "recipe export.to")  # only a flag may write outside the tree
    if sign is not None and no_export:
        raise UsageError("--sign signs the export, and --no-export skips it", hint="drop one of the two")
    # A bad key fails here, before any work.
    return None if no_export else note_key(choose_signer(sign, r.export.sign_key))


def write_ci_files(markdown: str, summary: Optional[Path], junit_text: str, junit: Optional[Path]) -> None:
    """The Markdown summary (to --summary and $GITHUB_STEP_SUMMARY) and the JUnit XML (--junit)."""
    if summary:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(markdown)
    if step := os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(step, "a") as f:
            f.write(markdown + "\n")
    if junit:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(junit_text)


@command("run", panel=SHIP, capture=True, epilog=examples(
    "compress run recipes/tiny-llama-int4-gptq.yaml",
    "compress run recipes/tiny-llama-fp8-dynamic.yaml --junit gate.xml --summary gate.md -o dist/fp8",
    "compress run recipes/demo/tiny-llama-int2-rtn.yaml     # exits 1: the gate fails it, nothing is exported",
    "compress run recipes/tiny-llama-int4-gptq.yaml -v     # also show the back ends' output",
    "compress run my-recipe.yaml --traffic prod-sample.jsonl     # the gate's traffic/... checks on your requests")
    + "\nExit codes: 0 PASS (exported), 1 FAIL, 2 bad usage or recipe, 3 INCONCLUSIVE, 4 runtime failure.\n")
def run_(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe file.")],
    set_: SetOverrides = None,
    export_to: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="DIR", help="Export directory "
                                                      "(--export-to is the older spelling).  \\[default: the recipe's "
                                                      "export.to, else dist/NAME]", show_default=False)] = None,
    no_export: Annotated[bool, typer.Option("--no-export", help="Stop after the gate.")] = False,
    junit: Annotated[Optional[Path], typer.Option("--junit", metavar="FILE", help="Write a JUnit XML file, one test case per check.")] = None,
    summary: Annotated[Optional[Path], typer.Option("--summary", metavar="FILE", help="Write a Markdown summary (also appended to $GITHUB_STEP_SUMMARY).")] = None,
    traffic: Traffic = None,
    workload: WorkloadFile = None,
    arrival: Arrival = None,
    rates: Rates = None,
    goodput: GoodputTarget = None,
    slo_ttft_ms: SloTtft = None,
    slo_tpot_ms: SloTpot = None,
    slo_e2e_ms: SloE2e = None,
    rerun: Rerun = False,
    force: Force = False,
    sign: SignKey = None,
    device: Device = "auto",
    json_: JsonOut = False,
) -> None:
    """The whole flow: quantize or distill, evaluate, benchmark, gate, export; cached and resumable."""
    from compress import pipeline
    from compress.inputs import check_recipe
    from compress.core.recipe import load_recipe
    from compress.ship.report import junit_xml, model_card, run_summary_markdown

    r = load_recipe(recipe, traffic_overrides(set_, traffic))
    serving = serving_flags(r, workload=workload, arrival=arrival, rates=rates, goodput=goodput,
                            slo_ttft_ms=slo_ttft_ms, slo_tpot_ms=slo_tpot_ms, slo_e2e_ms=slo_e2e_ms)
    if serving:
        r = load_recipe(recipe, traffic_overrides(set_, traffic) + serving_overrides(serving))
    if r.search is not None:
        raise UsageError(f"{recipe} is a search recipe (it lists candidates)",
                         hint=f"run `compress search {recipe}`, then `compress run` on the chosen recipe it writes")
    signer = export_signer(r, export_to, no_export, sign)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise UsageError("`compress run` evaluates and benchmarks in one process",
                         hint="train with `accelerate launch -m compress distill RECIPE`, then "
                              "`compress run RECIPE` reuses the artifact")
    check_recipe(r, evals=True)  # bad inputs fail here, before any compute or write
    with console.Stages(len(pipeline.plan(r, export=not no_export)), r.name) as stages:
        result = pipeline.run(r, force=force, rerun_reports=rerun, export=not no_export, export_to=export_to,
                              device=device, log=console.detail, warn=console.warn, model_card=model_card,
                              signer=signer, stages=stages)
    write_ci_files(run_summary_markdown(result), summary, junit_xml(result), junit)
    if json_:
        console.print_json({"recipe": r.name, "verdict": result.gate.verdict, "run_dir": str(result.run_dir),
                            "exported_to": str(result.exported_to) if result.exported_to else None,
                            "seconds": result.seconds, "stages": result.stages,
                            "gate": result.gate.model_dump(mode="json")})
    else:
        print_gate(result.gate, result=f"{r.name}: " + (f"exported to {result.exported_to}" if result.exported_to
                                                         else "nothing exported")
                   + f"; run dir {result.run_dir}; {console.fmt_seconds(result.seconds)}")
    raise typer.Exit(result.gate.exit_code)




@command("search", panel=SHIP, capture=True, epilog=examples(
    "compress search recipes/tiny-llama-search.yaml",
    "compress search recipes/tiny-llama-search.yaml --all --plot frontier.png --json",
    "compress search recipes/tiny-llama-search.yaml --no-export --chosen release/chosen.yaml --summary search.md",
    "compress search recipes/tiny-llama-search.yaml --set search.looks=1   # every candidate on every document")
    + "\nExit codes: 0 a candidate passed (chosen, exported), 1 every candidate failed, 2 bad usage or recipe, "
    "3 none passed and one was INCONCLUSIVE, 4 runtime failure.\n")
def search_(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="A recipe with a search section.")],
    set_: SetOverrides = None,
    all_: Annotated[bool, typer.Option("--all", help="Try every candidate (the whole frontier), not only up to the "
                                       "cheapest that passes.")] = False,
    chosen: Annotated[Optional[Path], typer.Option(
        "--chosen", metavar="FILE", help="Where to write the chosen recipe.  \\[default: NAME.chosen.yaml beside "
        "RECIPE]")] = None,
    export_to: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="DIR", help="Export directory of the chosen artifact.  \\[default: the recipe's "
        "export.to, else dist/NAME-CANDIDATE]", show_default=False)] = None,
    no_export: Annotated[bool, typer.Option("--no-export", help="Choose, but export nothing.")] = False,
    no_early_stop: Annotated[bool, typer.Option("--no-early-stop", help="Evaluate every candidate on every document "
                                                "(search.looks: 1 in the recipe does the same).")] = False,
    junit: Annotated[Optional[Path], typer.Option("--junit", metavar="FILE", help="Write a JUnit XML file, one test "
                                                  "case per candidate tried.")] = None,
    summary: Annotated[Optional[Path], typer.Option("--summary", metavar="FILE", help="Write a Markdown summary "
                                                    "(also appended to $GITHUB_STEP_SUMMARY).")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="PNG", help="Plot each candidate's quality "
                                                 "change (with its interval) against its size.")] = None,
    traffic: Traffic = None,
    rerun: Rerun = False,
    force: Force = False,
    sign: SignKey = None,
    device: Device = "auto",
    json_: JsonOut = False,
) -> None:
    """The cheapest compression that passes the gate: try candidates from the smallest, gate each like `run`."""
    from compress import pipeline
    from compress import search as s
    from compress.ship.export import export_run
    from compress.inputs import check_recipe
    from compress.core.recipe import load_recipe
    from compress.ship.report import local_base, model_card
    from compress.decide.sequential import Design

    r = load_recipe(recipe, traffic_overrides(set_, traffic))
    if r.search is None:
        raise UsageError(f"{recipe} has no search section",
                         hint="add `search: {ladder: default}` (or a list of candidates), or use `compress run`")
    signer = export_signer(r, export_to, no_export, sign)
    check_recipe(r, evals=True)  # bad inputs fail here, before any compute or write
    target = chosen or Path(recipe).parent / f"{r.name}.chosen.yaml"
    ordered = s.plan(r)

    # Looks at growing shares of the documents stop a candidate certain to FAIL (--rerun measures
    # every candidate afresh on every document).
    design = None if (no_early_stop or rerun) else Design(r.search.looks, r.search.spending)

    def run_one(candidate):
        stopped = pipeline.screen(candidate, design, force=force, device=device, log=console.detail,
                                  warn=console.warn)
        return stopped or pipeline.run(candidate, force=force and design is None, rerun_reports=rerun, export=False,
                                       device=device, log=console.detail, warn=console.warn,
                                       requests_cache=design is not None)

    with console.Stages(len(ordered), f"{r.name} (search)") as stages:
        result = s.search(r, all_candidates=all_, run=run_one, log=console.detail, progress=stages)
    if result.chosen is not None:
        result.chosen_path = s.write_chosen(result, target, force=force)
        if not no_export:
            c = result.chosen
            to = export_to or Path(r.export.to or f"dist/{c.recipe.name}")
            card = (lambda m, g: model_card(c.recipe, m, g, c.run.reports, path=to, base_path=local_base(c.recipe))) \
                if c.recipe.export.model_card else None
            export_run(c.run.run_dir, to, model_card=card, force=force, signer=signer)
            result.exported_to = to
    write_ci_files(s.summary_markdown(result), summary, s.junit_xml(result), junit)
    if plot:
        s.frontier_plot(result, plot)
    rows = s.frontier_rows(result)
    if json_:
        console.print_json({"recipe": r.name, "chosen": result.chosen.candidate.slug if result.chosen else None,
                            "chosen_recipe": str(result.chosen_path) if result.chosen_path else None,
                            "exported_to": str(result.exported_to) if result.exported_to else None,
                            "candidates": rows, "not_tried": [c.slug for c in result.skipped],
                            "seconds": result.seconds})
    else:
        _print_frontier(rows)
        if result.chosen is not None:
            where = f"exported to {result.exported_to}" if result.exported_to else "nothing exported"
            console.out.print(f"[green]chose {result.chosen.candidate.slug}[/green] · recipe {result.chosen_path}; "
                              f"{where}; {console.fmt_seconds(result.seconds)}")
        else:
            console.out.print(f"[red]no candidate passed[/red] ({len(result.tried)} tried); nothing chosen or exported")
    raise typer.Exit(s.exit_code(result))


def _print_frontier(rows: list[dict]) -> None:
    from compress import search as s

    colour = {"PASS": "green", "FAIL": "red", "INCONCLUSIVE": "yellow"}
    table = [[("* " if row["chosen"] else "") + row["candidate"], console.fmt_bytes(row["predicted_bytes"]),
              console.fmt_bytes(row["weights_bytes"]), f"{row['size_ratio']:.3f}x",
              f"{row['quality_metric']} {row['quality_change']}" if row["quality_metric"] else "-",
              row["cost_ratio"] or "-", f"[{colour[row['verdict']]}]{row['verdict']}[/{colour[row['verdict']]}]",
              f"{row['documents']} (stopped at look {row['stopped_at_look']})" if row["stopped_at_look"]
              else row["documents"]] for row in rows]
    console.out.print(console.table("Search (* = chosen: the smallest that passed)",
                                    ["candidate", "predicted", "weights", "size", "quality", "cost", "verdict",
                                     "documents"], table))
    if line := s.saved_line(rows):
        console.out.print(line)
