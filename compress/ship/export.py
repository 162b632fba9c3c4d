"""Export: only an artifact with a PASS for exactly these bytes leaves the run directory.

``export_run`` never trusts a stored verdict. It re-checks every model file against the
manifest, checks that each report is the one the decision was made on and measured exactly the
candidate's and the baseline's bytes, applies the recorded gate policy to those reports again,
and refuses on any disagreement. The export carries its evidence (``evidence/``: the reports
and ``gate.json``) and a manifest that lists the sha256 of every file, so that ``verify`` can
do all of this again on the exported directory alone. There is no flag that skips any of it.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.core.artifact import MANIFEST, MODEL_CARD, MODEL_SIG, PROVENANCE, RECIPE_FILE, atomic_dir, check_hashes, content_hash, inside, read_json, safe_name, sha256_file, sweep_stale, verify_dir, write_json
from compress.core.errors import ExportRefused, IntegrityError, UsageError
from compress.decide.evidence import EVIDENCE_DIR, GATE_FILE, REPORT_FILES, check_evidence
from compress.core.faults import fault_point
from compress.core.locks import locked
from compress.core.stats import PASS

__all__ = ["GATE_FILE", "check_exportable", "export_run", "own_policy", "policy_line", "served_with", "verify"]


def _refuse(run_dir: Path, why: str, hint: str) -> ExportRefused:
    return ExportRefused(f"refusing to export {run_dir}: {why}", hint=hint)


def _gate(data: Any, where: str) -> Any:
    from pydantic import ValidationError

    from compress.decide.gate import GateResult

    try:
        return GateResult.model_validate(data)
    except ValidationError as e:
        raise IntegrityError(f"{where} is not a gate decision: {e.errors(include_url=False)[0]['msg']}",
                             hint="decide again with `compress gate RUN_DIR`") from None


def _recipe_policy_hash(recipe_file: Path) -> str | None:
    """The policy hash of the gate in an artifact's own recipe (None if it cannot be read)."""
    from compress.core.errors import RecipeError
    from compress.decide.gate import policy_hash
    from compress.core.recipe import load_recipe

    try:
        return policy_hash(load_recipe(recipe_file).gate)
    except (RecipeError, OSError):
        return None


def own_policy(gate: Any, recipe_hash: str | None) -> bool:
    """Whether a decision applied the artifact's own recipe's gate policy (both read with this
    version's defaults, so that a field added since the decision does not tell them apart)."""
    if recipe_hash is None or not gate.policy:
        return False
    from compress.decide.gate import policy_hash
    from compress.core.recipe import GateSpec

    return policy_hash(GateSpec.model_validate(gate.policy)) == recipe_hash


def policy_line(gate: Any, recipe_hash: str | None) -> str:
    """How the applied policy is described to people (CLI output and model card)."""
    where = "the artifact's own recipe" if own_policy(gate, recipe_hash) else (
        f"{gate.policy_source}, NOT the artifact's own recipe" if gate.policy_source not in (None, "recipe")
        else "a policy that differs from the artifact's own recipe")
    checks = ", ".join(f"{c.metric} {c.threshold}" for c in gate.checks)
    return (f"gate policy from {where} (sha256 {str(gate.policy_hash)[:12]}…, {gate.confidence:.0%} confidence, "
            f"{gate.test}): {checks}")


def served_with(recipe: Any, speed: Any = None) -> dict[str, dict[str, Any]]:
    """The serving settings a gated model passed with, per side (``candidate``, ``baseline``; a side with none
    is left out): those its speed report measured when it has one, else the recipe's ``serve`` and
    ``baseline_serve``. Each is a ``ServeSpec``'s settings; ``ServeSpec.model_validate(s).engine_args()`` gives
    vLLM's flags."""
    if speed is not None:
        return {side: dict(v) for side, v in sorted((speed.settings.get("serve") or {}).items()) if v}
    if recipe is None:
        return {}
    return {side: spec.model_dump(mode="json") for side, spec in
            (("baseline", recipe.baseline_serve), ("candidate", recipe.serve)) if spec is not None}


def _served(run_dir: Path, gate: Any) -> dict[str, dict[str, Any]]:
    """``served_with`` for a checked run: its speed report when the decision used one, else its own recipe."""
    from compress.core.errors import RecipeError
    from compress.core.recipe import load_recipe
    from compress.core.reports import SpeedReport

    name = REPORT_FILES[("both", "speed")]
    if name in gate.reports:
        return served_with(None, SpeedReport.load(run_dir / "reports" / name))
    try:
        return served_with(load_recipe(run_dir / "model" / RECIPE_FILE))
    except (RecipeError, OSError):
        return {}


def check_exportable(run_dir: Path) -> tuple[dict[str, Any], Any]:
    """The manifest and gate decision of a run that may be exported; else an ExportRefused (exit 1).

    The decision is recomputed from the stored reports, never read.
    """
    model_dir = run_dir / "model"
    if not (model_dir / MANIFEST).exists():
        raise UsageError(f"{run_dir} is not a run directory (no model/{MANIFEST})",
                         hint="pass runs/NAME/KEY as written by `compress run`")
    gate_path = run_dir / GATE_FILE
    if not gate_path.exists():
        raise _refuse(run_dir, "it has not been gated", f"run `compress gate {run_dir}` first")
    manifest = read_json(model_dir / MANIFEST)
    gate = _gate(read_json(gate_path), str(gate_path))
    if gate.verdict != PASS:
        raise _refuse(run_dir, f"its gate verdict is {gate.verdict}", "only a PASS can be exported")
    problems = check_hashes(model_dir, manifest.get("files", {}))
    if problems:
        raise _refuse(run_dir, "files changed after gating: " + "; ".join(problems),
                      "rebuild and gate again (compress run RECIPE)")
    if content_hash(manifest["files"]) != manifest.get("content_hash"):
        raise _refuse(run_dir, "its manifest does not match its own file list", "rebuild the artifact")
    if gate.candidate_hash != manifest.get("content_hash"):
        raise _refuse(run_dir, "the PASS was given to different bytes than the ones on disk",
                      f"gate these bytes: compress gate {run_dir}")
    base_hash = (manifest.get("base_model") or {}).get("content_hash", "")
    problems = check_evidence(run_dir / "reports", gate, manifest["content_hash"], base_hash)
    if problems:
        raise _refuse(run_dir, "its gate decision does not follow from its reports: " + "; ".join(problems),
                      f"measure and decide again: compress run RECIPE --rerun, or compress gate {run_dir}")
    return manifest, gate


def export_run(run_dir: Path, to: Path, *, model_card: Callable[[dict[str, Any], Any], str] | None,
               force: bool = False, signer: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Copy a gated artifact to ``to`` with its evidence, manifest and model card.

    ``model_card(manifest, gate)`` writes the card from the decision as checked here (None: no card); the
    manifest it gets has ``serve``, the serving settings the model passed with (``served_with``), which the
    export's manifest records too (when there are any).

    An identical earlier export at ``to`` is left as it is; anything else there needs ``force``,
    and is then replaced in one atomic step (``to`` is the old export or the new one, never
    neither). The copy is checked against the gated hashes before it appears at ``to``.
    """
    to = Path(to)
    # The run is checked before anything is made at the destination: a refused export leaves no folder.
    with locked(run_dir.parent, f"runs in {run_dir.parent}"):
        manifest, gate = check_exportable(run_dir)
        with locked(to.absolute().parent, str(to.parent)):
            return _export_checked(run_dir, to, manifest, gate, model_card, force, signer)


def _export_checked(run_dir: Path, to: Path, manifest: dict[str, Any], gate: Any, model_card: Any, force: bool,
                    signer: Callable[[Path], None] | None) -> dict[str, Any]:
    """The export itself, of a run that check_exportable passed, under both locks."""
    sweep_stale(to.absolute().parent)  # what an interrupted export left (an old version comes back)
    serve = _served(run_dir, gate)
    if (previous := _same_export(to, manifest, gate, signer, serve)) is not None:
        return previous
    if to.exists() and not force:
        raise UsageError(f"{to} already exists and holds something else",
                         hint="choose another -o/--output or pass --force")
    with atomic_dir(to, overwrite=force) as tmp:
        _copy_tree(run_dir, tmp, manifest, gate, model_card(dict(manifest, serve=serve), gate) if model_card else None)
        fault_point("export.before-manifest")
        export_files = {p.relative_to(tmp).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
                        for p in sorted(tmp.rglob("*")) if p.is_file() and p.relative_to(tmp).as_posix()
                        not in manifest["files"]}
        out = dict(manifest, gate=gate.model_dump(mode="json"), export_files=export_files,
                   evidence={"candidate_hash": gate.candidate_hash, "baseline_hash": gate.baseline_hash,
                             "policy_hash": gate.policy_hash, "policy_source": gate.policy_source,
                             "reports": gate.reports})
        if serve:
            out["serve"] = serve  # the serving settings it passed with (the model card's serve command has them)
        write_json(tmp / MANIFEST, out, fault="export.manifest")
        if signer is not None:
            signer(tmp)  # PROVENANCE over every file above, then MODEL_SIG over all, before the export appears
    return out


def _same_export(to: Path, manifest: dict[str, Any], gate: Any, signer: Callable[[Path], None] | None,
                 serve: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest of an intact earlier export of the same bytes under the same policy and serving settings
    (signed by the same key if a signature is asked for), which a rerun leaves as it is."""
    if not (to / MANIFEST).exists():
        return None
    if signer is not None:
        from compress.ship.provenance import signed_by

        if getattr(signer, "keyid", None) not in (signed_by(to) or []):
            return None
        if getattr(signer, "writes_model_sig", False) and not (to / MODEL_SIG).is_file():
            return None
    try:
        previous = verify(to)
    except (IntegrityError, UsageError, ValueError, KeyError):
        return None
    same = previous["manifest"].get("content_hash") == manifest["content_hash"] and \
        previous["gate"].policy_hash == gate.policy_hash and previous["manifest"].get("serve") == (serve or None)
    return previous["manifest"] if same else None


def _copy_tree(run_dir: Path, tmp: Path, manifest: dict[str, Any], gate: Any, model_card: str | None) -> None:
    for name in manifest["files"]:  # each one a model file on disk (check_hashes)
        dest = inside(tmp, name, str(run_dir / "model" / MANIFEST))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "model" / name, dest)
        fault_point("export.after-file")
    shutil.copyfile(run_dir / "model" / RECIPE_FILE, tmp / RECIPE_FILE)
    evidence = tmp / EVIDENCE_DIR
    evidence.mkdir()
    for name in gate.reports:  # checked against the known report names by check_exportable
        shutil.copyfile(inside(run_dir / "reports", name, str(run_dir / GATE_FILE)), evidence / name)
    shutil.copyfile(run_dir / GATE_FILE, evidence / GATE_FILE)
    problems = check_hashes(tmp, manifest["files"])
    if problems:
        raise IntegrityError("the copy differs from the gated files: " + "; ".join(problems))
    if model_card is not None:
        (tmp / MODEL_CARD).write_text(model_card)


def verify(path: Path) -> dict[str, Any]:
    """Re-check an exported artifact: every file's hash, no file missing or added, and a PASS
    that follows from the evidence it carries for exactly these bytes.

    Returns:
        ``{"manifest", "gate", "files", "signed", "policy"}``.

    Raises:
        IntegrityError: naming every file and every fact that does not check out.
    """
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path} is not a directory", hint="pass the folder written by `compress export`")
    manifest = verify_dir(path)  # model files against the manifest, and its content hash
    if "export_files" not in manifest:
        raise IntegrityError(f"{path}: the manifest lists no export files (not written by `compress export`, "
                             "or by an older compress)", hint="export it again with `compress export`")
    for name in manifest["export_files"]:
        safe_name(name, f"{path}/{MANIFEST}")
    expected = {**manifest["files"], **manifest["export_files"]}
    actual = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() or p.is_symlink()}
    actual -= {MANIFEST, PROVENANCE, MODEL_SIG}  # the signatures, checked by `compress verify --key`
    problems = [f"{name}: missing" for name in sorted(expected.keys() - actual)]
    problems += [f"{name}: not in the manifest (file added)" for name in sorted(actual - expected.keys())]
    for name in sorted(expected.keys() & actual):  # verify_dir has hashed the model files already
        if (path / name).is_symlink():
            problems.append(f"{name}: is a symbolic link")
        elif name not in manifest["files"] and sha256_file(path / name) != expected[name]["sha256"]:
            problems.append(f"{name}: sha256 differs from the recorded one (file changed)")
    if problems:
        raise IntegrityError(f"{path}: " + "; ".join(problems),
                             hint="the files are not the ones exported; export the artifact again")
    gate_file = path / EVIDENCE_DIR / GATE_FILE
    if not gate_file.exists():
        raise IntegrityError(f"{path}: no {EVIDENCE_DIR}/{GATE_FILE}", hint="export it with `compress export`")
    gate = _gate(read_json(gate_file), f"{path}/{EVIDENCE_DIR}/{GATE_FILE}")
    if manifest.get("gate") != read_json(gate_file):
        raise IntegrityError(f"{path}: the manifest's gate decision differs from {EVIDENCE_DIR}/{GATE_FILE}")
    if gate.verdict != PASS:
        raise IntegrityError(f"{path}: the recorded gate verdict is {gate.verdict}, not PASS")
    if gate.candidate_hash != manifest.get("content_hash"):
        raise IntegrityError(f"{path}: the recorded PASS belongs to other bytes")
    base_hash = (manifest.get("base_model") or {}).get("content_hash", "")
    problems = check_evidence(path / EVIDENCE_DIR, gate, manifest["content_hash"], base_hash)
    speed = path / EVIDENCE_DIR / REPORT_FILES[("both", "speed")]
    if "serve" in manifest and speed.name in gate.reports and speed.is_file():
        from compress.core.reports import SpeedReport

        if served_with(None, SpeedReport.load(speed)) != manifest["serve"]:
            problems.append("the manifest's serving settings are not the ones its speed report measured")
    if problems:
        raise IntegrityError(f"{path}: the PASS does not follow from the evidence it carries: " + "; ".join(problems))
    policy = policy_line(gate, _recipe_policy_hash(path / RECIPE_FILE))
    return {"manifest": manifest, "gate": gate, "files": len(expected) + 1, "signed": (path / PROVENANCE).exists(),
            "policy": policy}
