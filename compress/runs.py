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

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.core.artifact import sweep_stale, write_bytes_atomic
from compress.core.faults import fault_point
from compress.core.locks import locked
from compress.core.env import runs_root
from compress.core.models import resolve_model
from compress.core.recipe import Recipe


def recipe_dir(recipe: Recipe) -> Path:
    return runs_root() / recipe.name


def run_dir(recipe: Recipe, key: str) -> Path:
    return recipe_dir(recipe) / key


def mark_latest(recipe: Recipe, key: str) -> None:
    write_bytes_atomic(recipe_dir(recipe) / "LATEST", (key + "\n").encode(), fault="latest")


def build(recipe: Recipe, *, out: Path | None = None, force: bool = False, device: str = "auto",
          log: Callable[[str], None] = print, warn: Callable[[str], None] = print) -> tuple[dict[str, Any] | None, bool, Path]:
    """Build the recipe's artifact, or reuse an identical complete one.

    Returns:
        (manifest, reused, artifact directory); the manifest is None in the non-main processes
        of a multi-process launch, which take part in training but write nothing.
    """
    from compress.core.cache import model_content_hash
    from compress.build.quantize import artifact_key, build_artifact, existing_artifact, process_rank

    base = resolve_model(recipe.model.id, recipe.model.revision)
    if base.source == "run" and base.extra.get("gate_verdict") != "PASS":
        warn(f"{recipe.model.id} has not passed its own gate (verdict: {base.extra.get('gate_verdict') or 'none'}); "
             "building on it anyway")
    base_hash = model_content_hash(base.path)
    key = artifact_key(recipe, base_hash)
    target = out if out is not None else run_dir(recipe, key) / "model"
    if out is None:
        from compress.core import console

        console.log_into(target.parent / "logs")  # the back ends' output of this command, kept with its run
    # Runs of one recipe share a lock; an artifact written elsewhere locks the folder it goes in.
    folder = recipe_dir(recipe) if out is None else Path(out).absolute().parent
    # Only the main process of a multi-process launch writes, so only it locks (the others
    # must not wait for it: they train alongside it).
    lock = locked(folder, f"runs of {recipe.name}" if out is None else str(folder), log=warn) \
        if process_rank() == 0 else contextlib.nullcontext()
    with lock:
        sweep_stale(target.parent)  # temporaries of an earlier build that was killed
        if not force and (manifest := existing_artifact(target, key)) is not None:
            log(f"{target} already holds this artifact (same base, method and calibration); reusing it")
            if out is None:
                mark_latest(recipe, key)
            return manifest, True, target
        log(f"{recipe.method.kind}: {recipe.model.id} -> {target}")
        manifest = build_artifact(recipe, target, base=base, base_hash=base_hash, key=key, force=force,
                                  device=device, log=log, warn=warn)
        fault_point("build.before-latest")
        if out is None and manifest is not None:
            mark_latest(recipe, key)
    return manifest, False, target
