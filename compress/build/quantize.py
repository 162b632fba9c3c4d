"""Build an artifact: resolve the base, run the method, write model + recipe + manifest atomically.

The same function serves ``compress quantize``, ``compress distill`` and the artifact stage
of ``compress run``; only the method differs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from compress.core.artifact import FORMAT_VERSION, MANIFEST, RECIPE_FILE, atomic_dir, content_hash, dir_size, file_hashes, read_json, sha256_file, weights_size, write_json
from compress.core.env import environment, library_versions
from compress.core.faults import fault_point
from compress.build.methods import METHODS
from compress.core.schemes import describe_method
from compress.core.models import ModelRef
from compress.core.weights import check_weights
from compress.core.recipe import Recipe, dump_recipe

# Sections whose content decides an artifact's bytes (and so its cache key).
CALIBRATED = {("fp8", "static"), ("int8", "w8a8"), ("int4", "gptq"), ("int4", "awq"), ("int4", "autoround"),
              ("int4", "gptq-hf")}


def uses_calibration(recipe: Recipe) -> bool:
    m = recipe.method
    if m.kind == "distill":
        return True  # layer importance and the held-out KL are measured on it
    if getattr(m, "kv_cache", None):
        return True  # the KV cache scales are measured on it, whatever the weight scheme
    if m.kind == "fp4":
        return m.format == "nvfp4" and not m.weights_only  # the activations' global scales
    return (m.kind, getattr(m, "scheme", None) or getattr(m, "algorithm", None)) in CALIBRATED


def data_fingerprint(dataset: str) -> str:
    """What a dataset reference currently holds: a content hash for built-in sets and local
    files or folders (an edited file makes a new artifact), the reference itself for hub ids."""
    from compress.core.models import BUILTIN_DATASETS

    path = BUILTIN_DATASETS.get(dataset.split(":", 1)[1]) if dataset.startswith("builtin:") else Path(dataset)
    if path is None or not path.exists():
        return dataset
    return content_hash(file_hashes(path)) if path.is_dir() else sha256_file(path)


def artifact_key(recipe: Recipe, base_hash: str) -> str:
    """Content key of an artifact: base model bytes, method, the data it learns from (settings
    and content), dtype, libraries."""
    parts: dict[str, Any] = {
        "base": base_hash,
        "method": recipe.effective()["method"],
        "dtype": recipe.model.dtype,
        "libraries": library_versions(),
    }
    if uses_calibration(recipe):
        parts["calibration"] = recipe.effective()["calibration"]
        parts["calibration_data"] = data_fingerprint(recipe.calibration.dataset)
    if recipe.method.kind == "distill":
        parts["training_data"] = data_fingerprint(recipe.method.training.dataset)
    if recipe.method.kind == "none" and recipe.serve is not None:
        # The base model's bytes under other serving settings: the settings are what this artifact is, so each
        # gets its own (its run folder, reports and decision), and the recipe copy it keeps is never stale.
        parts["serve"] = recipe.serve.model_dump(mode="json")
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def recipe_header(recipe: Recipe) -> str:
    verb = "distill" if recipe.method.kind == "distill" else "quantize"
    return (f"# Effective recipe of this artifact (defaults filled in, overrides applied).\n"
            f"# Rebuild: compress {verb} {RECIPE_FILE}   (or the whole flow: compress run {RECIPE_FILE})\n")


def process_rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 when run alone)."""
    return int(os.environ.get("RANK", "0") or 0)


def build_artifact(recipe: Recipe, out: Path, *, base: ModelRef, base_hash: str, key: str, force: bool = False,
                   device: str = "auto", log: Callable[[str], None] = print,
                   warn: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Run the recipe's method on ``base`` (content hash ``base_hash``, artifact key ``key``, as
    ``runs.build`` resolved them) and write a complete artifact to ``out``.

    The directory appears only when complete (built under a temporary name, then renamed);
    an existing ``out`` is an error unless ``force``.

    Returns:
        The manifest; None in the non-main processes of a multi-process launch.
    """
    from compress.build.methods.base import MethodContext
    from compress.core.models import pick_device

    start = time.time()
    check_weights(base.path, recipe.model.allow_pickle)
    apply = METHODS.load(recipe.method.kind)
    device = pick_device(device)
    work = work_dir(out)
    if process_rank() > 0:
        # Under `accelerate launch`, every process takes part in the method (training is
        # data-parallel); only the main process writes the artifact.
        with tempfile.TemporaryDirectory(prefix="compress-rank-") as tmp:
            apply(MethodContext(recipe=recipe, base=base, out_dir=Path(tmp), device=device, log=lambda m: None,
                                warn=lambda m: None, work_dir=work, artifact_key=key))
        return None
    with atomic_dir(out, overwrite=force) as tmp:
        ctx = MethodContext(recipe=recipe, base=base, out_dir=tmp, device=device, log=log, warn=warn, work_dir=work,
                            artifact_key=key)
        result = apply(ctx)
        fault_point("build.after-method")
        (tmp / RECIPE_FILE).write_text(recipe_header(recipe) + dump_recipe(recipe))
        hashes = file_hashes(tmp)
        import torch

        base_weights, weights = weights_size(base.path), weights_size(tmp)
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "name": recipe.name,
            "artifact_key": key,
            "method": {"kind": recipe.method.kind, "name": describe_method(recipe.effective()["method"]),
                       "scheme": result.scheme, "format": result.format, "details": result.details,
                       "config": recipe.effective()["method"]},
            # The reference as given, never the builder's absolute path.
            "base_model": {**{k: v for k, v in base.describe().items() if k != "path"},
                           "content_hash": base_hash, "size_bytes": base_weights},
            "recipe_hash": recipe.section_hash(),
            "files": hashes,
            "content_hash": content_hash(hashes),
            "size": {"bytes": dir_size(tmp), "weights_bytes": weights, "base_weights_bytes": base_weights,
                     "ratio": round(weights / base_weights, 4) if base_weights else None},
            "environment": environment(torch),
            "timings": {**result.timings, "total_s": round(time.time() - start, 3)},
            "warnings": result.warnings,
            "gate": None,
        }
        write_json(tmp / MANIFEST, manifest, fault="build.manifest")
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def work_dir(out: Path) -> Path:
    """Where a method may keep scratch files that survive a crash (e.g. training checkpoints)."""
    return out.parent / f".{out.name}.work"


def existing_artifact(out: Path, key: str) -> dict[str, Any] | None:
    """The manifest of a complete artifact already at ``out`` with the same key, if any."""
    from compress.core.artifact import check_hashes

    path = out / MANIFEST
    if not path.exists():
        return None
    manifest = read_json(path)
    if manifest.get("artifact_key") != key or check_hashes(out, manifest.get("files", {})):
        return None
    return manifest
