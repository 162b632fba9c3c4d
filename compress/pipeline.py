"""`compress run`: recipe -> artifact -> reports -> gate -> export, each stage cached and resumable.

Every stage writes a file, so a rerun after a crash picks up where it stopped: the artifact
is reused when its content key matches, reports come from the content-addressed cache, the
gate is recomputed from stored reports (it is cheap), and an identical export is left alone.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress import runs
from compress.artifact import MANIFEST, read_json, write_json
from compress.errors import UsageError
from compress.evidence import GATE_FILE, REPORT_FILES, report_hashes
from compress.evidence import load_reports as _load_folder
from compress.export import export_run
from compress.faults import fault_point
from compress.gate import GateResult, evaluate
from compress.locks import locked
from compress.recipe import Recipe
from compress.stats import PASS


@dataclass
class RunResult:
    recipe: Recipe
    run_dir: Path
    manifest: dict[str, Any]
    gate: GateResult
    reports: dict[tuple[str, str], Any]
    exported_to: Path | None
    stages: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def needs(recipe: Recipe) -> tuple[bool, bool]:
    """Whether the recipe's gate needs accuracy reports, and whether it needs bench reports."""
    checks = recipe.gate.checks
    quality = any("/" in c.metric for c in checks)
    efficiency = any("/" not in c.metric for c in checks)
    return quality, efficiency


def load_reports(run_dir: Path) -> dict[tuple[str, str], Any]:
    """The reports stored in a run directory (missing ones left out)."""
    return _load_folder(run_dir / "reports")


def gate_run(run_dir: Path, recipe: Recipe, reports: dict[tuple[str, str], Any] | None = None,
             policy_source: str = "recipe") -> GateResult:
    """Evaluate the recipe's gate on a run's stored reports; write gate.json (with the policy and
    the sha256 of each report it was decided on) and record the decision in the manifest.

    Args:
        reports: the reports as already loaded (they must be the ones stored in the run).
        policy_source: "recipe" for the artifact's own recipe, else the file the policy came from.
    """
    with locked(run_dir.parent, f"runs of {recipe.name}"):
        reports = load_reports(run_dir) if reports is None else reports
        result = evaluate(recipe.gate, reports.get(("baseline", "accuracy")), reports.get(("candidate", "accuracy")),
                          reports.get(("baseline", "bench")), reports.get(("candidate", "bench")))
        hashes = report_hashes(run_dir / "reports")
        used = {REPORT_FILES[k] for k in reports}
        result.reports = {name: digest for name, digest in hashes.items() if name in used}
        result.policy_source = policy_source
        result.save(run_dir / GATE_FILE)
        fault_point("gate.before-manifest")
        manifest_path = run_dir / "model" / MANIFEST
        manifest = read_json(manifest_path)
        manifest["gate"] = result.model_dump(mode="json")
        write_json(manifest_path, manifest)
    return result


def run(recipe: Recipe, *, force: bool = False, rerun_reports: bool = False, export: bool = True,
        export_to: Path | None = None, device: str = "auto", log: Callable[[str], None] = print,
        warn: Callable[[str], None] = print, model_card: Callable[..., str] | None = None,
        signer: Callable[[Path], None] | None = None) -> RunResult:
    """The whole flow for one recipe. See the module docstring for what each stage reuses.

    The recipe's runs folder is locked for the whole run: a second `compress run` of the same
    recipe waits for this one (COMPRESS_LOCK_WAIT) instead of writing beside it.
    """
    if not recipe.gate.checks:
        raise UsageError(f"recipe {recipe.name} has no gate checks, so nothing could be exported",
                         hint="add gate.checks, e.g. - {metric: tiny_facts_mc/acc, max_regression: 0.02}")
    with locked(runs.recipe_dir(recipe), f"runs of {recipe.name}", log=log):
        return _run(recipe, force=force, rerun_reports=rerun_reports, export=export, export_to=export_to,
                    device=device, log=log, warn=warn, model_card=model_card, signer=signer)


def _run(recipe: Recipe, *, force: bool, rerun_reports: bool, export: bool, export_to: Path | None, device: str,
         log: Callable[[str], None], warn: Callable[[str], None], model_card: Callable[..., str] | None,
         signer: Callable[[Path], None] | None) -> RunResult:
    from compress.evals.accuracy import run_eval
    from compress.evals.bench import run_bench

    start = time.time()
    stages: list[dict[str, Any]] = []

    def stage(name: str, fn: Callable[[], Any], reused: Callable[[Any], bool]) -> Any:
        t = time.time()
        value = fn()
        entry = {"stage": name, "seconds": round(time.time() - t, 2), "reused": bool(reused(value))}
        stages.append(entry)
        log(f"{name}: {'reused' if entry['reused'] else 'done'} ({entry['seconds']:.1f} s)")
        fault_point(f"run.after-{name.replace(' ', '-')}")
        return value

    _, _, model_dir = stage(
        "artifact", lambda: runs.build(recipe, force=force, device=device, log=log, warn=warn), lambda r: r[1])
    run_dir = model_dir.parent
    (run_dir / "reports").mkdir(exist_ok=True)
    want_acc, want_bench = needs(recipe)
    spec = recipe.model
    base_spec = spec.id
    measurers = [("accuracy", "eval", run_eval, recipe.evals, want_acc),
                 ("bench", "bench", run_bench, recipe.bench, want_bench)]
    reports: dict[tuple[str, str], Any] = {}
    for who, target in (("baseline", base_spec), ("candidate", str(model_dir))):
        for kind, verb, measure, settings, wanted in measurers:
            if not wanted:
                continue
            report, _ = stage(f"{verb} {who}", lambda t=target, f=measure, s=settings: f(
                t, s, dtype=spec.dtype, revision=spec.revision if t == base_spec else None,
                rerun=rerun_reports, trust_remote_code=spec.trust_remote_code, allow_pickle=spec.allow_pickle),
                lambda r: r[1])
            report.save(run_dir / "reports" / REPORT_FILES[(who, kind)])
            reports[(who, kind)] = report
    gate = stage("gate", lambda: gate_run(run_dir, recipe, reports), lambda _: False)
    manifest = read_json(model_dir / MANIFEST)
    exported = None
    if gate.verdict == PASS and export:
        to = export_to or Path(recipe.export.to or f"dist/{recipe.name}")
        card = (lambda m, g: model_card(recipe, m, g, reports)) if (model_card and recipe.export.model_card) else None
        before = (to / MANIFEST).exists() and read_json(to / MANIFEST).get("content_hash")
        stage("export", lambda: export_run(run_dir, to, model_card=card, force=force, signer=signer),
              lambda m: before == m.get("content_hash"))
        exported = to
    result = RunResult(recipe=recipe, run_dir=run_dir, manifest=manifest, gate=gate, reports=reports,
                       exported_to=exported, stages=stages, seconds=round(time.time() - start, 2))
    write_json(run_dir / "stages.json", {"recipe": recipe.name, "seconds": result.seconds, "stages": stages,
                                         "verdict": gate.verdict, "exported_to": str(exported) if exported else None})
    return result
