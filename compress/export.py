"""Export: only an artifact with a PASS for exactly these bytes leaves the run directory.

``export_run`` re-checks every file against the manifest and the gate's recorded content
hash, copies the artifact, checks the copy again, and writes a model card. There is no flag
that skips any of this. ``verify`` re-checks an exported directory.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from compress.artifact import (
    MANIFEST, MODEL_CARD, atomic_dir, check_hashes, content_hash, read_json, verify_dir, write_json,
)
from compress.errors import ExportRefused, IntegrityError, UsageError
from compress.stats import PASS

GATE_FILE = "gate.json"


def _refuse(run_dir: Path, why: str, hint: str) -> ExportRefused:
    return ExportRefused(f"refusing to export {run_dir}: {why}", hint=hint)


def check_exportable(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and gate result of a run that may be exported; else an ExportRefused."""
    model_dir = run_dir / "model"
    if not (model_dir / MANIFEST).exists():
        raise UsageError(f"{run_dir} is not a run directory (no model/{MANIFEST})",
                         hint="pass runs/NAME/KEY as written by `compress run`")
    gate_path = run_dir / GATE_FILE
    if not gate_path.exists():
        raise _refuse(run_dir, "it has not been gated", f"run `compress gate {run_dir}` first")
    gate = read_json(gate_path)
    manifest = read_json(model_dir / MANIFEST)
    if gate.get("verdict") != PASS:
        raise _refuse(run_dir, f"its gate verdict is {gate.get('verdict')}", "only a PASS can be exported")
    problems = check_hashes(model_dir, manifest.get("files", {}))
    if problems:
        raise _refuse(run_dir, "files changed after gating: " + "; ".join(problems),
                      "rebuild and gate again (compress run RECIPE)")
    if content_hash(manifest["files"]) != manifest.get("content_hash"):
        raise _refuse(run_dir, "its manifest does not match its own file list", "rebuild the artifact")
    if gate.get("candidate_hash") != manifest.get("content_hash"):
        raise _refuse(run_dir, "the PASS was given to different bytes than the ones on disk",
                      f"gate these bytes: compress gate {run_dir}")
    return manifest, gate


def export_run(run_dir: Path, to: Path, *, model_card: str | None, force: bool = False) -> dict[str, Any]:
    """Copy a gated artifact to ``to`` with its manifest (gate included) and model card.

    An identical earlier export at ``to`` is left as it is; anything else there needs ``force``.
    """
    manifest, gate = check_exportable(run_dir)
    to = Path(to)
    if (to / MANIFEST).exists():
        previous = read_json(to / MANIFEST)
        if previous.get("content_hash") == manifest["content_hash"] and not check_hashes(to, previous.get("files", {})):
            return previous
    if to.exists() and not force:
        raise UsageError(f"{to} already exists and holds something else", hint="choose another --to or pass --force")
    manifest = dict(manifest, gate=gate)
    with atomic_dir(to, overwrite=force) as tmp:
        for name in manifest["files"]:
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / "model" / name, dest)
        shutil.copy2(run_dir / "model" / "recipe.yaml", tmp / "recipe.yaml")
        problems = check_hashes(tmp, manifest["files"])
        if problems:
            raise IntegrityError("the copy differs from the gated files: " + "; ".join(problems))
        if model_card is not None:
            (tmp / MODEL_CARD).write_text(model_card)
        write_json(tmp / MANIFEST, manifest)
    return manifest


def verify(path: Path) -> dict[str, Any]:
    """Re-check an exported (or run) artifact: every hash, and a PASS for exactly these bytes."""
    if not path.is_dir():
        raise UsageError(f"{path} is not a directory")
    manifest = verify_dir(path)
    gate = manifest.get("gate")
    if not gate:
        raise IntegrityError(f"{path}: the manifest records no gate decision", hint="export it with `compress export`")
    if gate.get("verdict") != PASS:
        raise IntegrityError(f"{path}: the recorded gate verdict is {gate.get('verdict')}, not PASS")
    if gate.get("candidate_hash") != manifest.get("content_hash"):
        raise IntegrityError(f"{path}: the recorded PASS belongs to other bytes")
    return manifest
