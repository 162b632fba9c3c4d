"""Where runs live on disk.

    runs/<recipe name>/<artifact key>/model/         the artifact
    runs/<recipe name>/<artifact key>/reports/       accuracy and bench reports (base and candidate)
    runs/<recipe name>/<artifact key>/gate.json      the decision
    runs/<recipe name>/<artifact key>/stages.json    what each stage did, for resume
    runs/<recipe name>/LATEST                        the key of the newest complete artifact

The artifact key is a content key (base model bytes, method, calibration, libraries), so a
rerun of an unchanged recipe finds its artifact, and a changed recipe never reuses a stale one.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.models import resolve_model, runs_root
from compress.recipe import Recipe


def run_dir(recipe: Recipe, key: str) -> Path:
    return runs_root() / recipe.name / key


def mark_latest(recipe: Recipe, key: str) -> None:
    latest = runs_root() / recipe.name / "LATEST"
    latest.parent.mkdir(parents=True, exist_ok=True)
    tmp = latest.with_suffix(".tmp")
    tmp.write_text(key + "\n")
    tmp.replace(latest)


def build(recipe: Recipe, *, out: Path | None = None, force: bool = False, device: str = "auto",
          log: Callable[[str], None] = print, warn: Callable[[str], None] = print) -> tuple[dict[str, Any] | None, bool, Path]:
    """Build the recipe's artifact, or reuse an identical complete one.

    Returns:
        (manifest, reused, artifact directory); the manifest is None in the non-main processes
        of a multi-process launch, which take part in training but write nothing.
    """
    from compress.evals.cache import model_content_hash
    from compress.quantize import artifact_key, build_artifact, existing_artifact

    base = resolve_model(recipe.model.id, recipe.model.revision)
    if base.source == "run" and base.extra.get("gate_verdict") != "PASS":
        warn(f"{recipe.model.id} has not passed its own gate (verdict: {base.extra.get('gate_verdict') or 'none'}); "
             "building on it anyway")
    base_hash = model_content_hash(base.path)
    key = artifact_key(recipe, base_hash)
    target = out if out is not None else run_dir(recipe, key) / "model"
    if not force and (manifest := existing_artifact(target, key)) is not None:
        log(f"{target} already holds this artifact (same base, method and calibration); reusing it")
        return manifest, True, target
    log(f"{recipe.method.kind}: {recipe.model.id} -> {target}")
    manifest = build_artifact(recipe, target, base=base, base_hash=base_hash, key=key, force=force, device=device,
                              log=log, warn=warn)
    if out is None and manifest is not None:
        mark_latest(recipe, key)
    return manifest, False, target
