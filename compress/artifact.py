"""Artifacts on disk: content hashes, the manifest, and atomic directory writes.

An artifact directory holds a servable model, its tokenizer, ``recipe.yaml`` (the effective
recipe) and ``manifest.json``. The manifest lists the sha256 of every other file, so that
``compress export`` and ``compress verify`` can prove that the bytes are the ones gated.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compress.errors import IntegrityError, UsageError

MANIFEST = "manifest.json"
RECIPE_FILE = "recipe.yaml"
MODEL_CARD = "README.md"
# Files describing an artifact rather than being the model; left out of its content hash.
DESCRIPTIVE = {MANIFEST, RECIPE_FILE, MODEL_CARD}
FORMAT_VERSION = 1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_files(root: Path) -> list[Path]:
    """Files that make up a model directory (hidden files and descriptive files excluded)."""
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if rel.as_posix() in DESCRIPTIVE:
            continue
        files.append(path)
    return files


def file_hashes(root: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"sha256", "size"}}`` for every model file under ``root``."""
    return {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in model_files(root)
    }


def content_hash(hashes: dict[str, dict[str, Any]]) -> str:
    """One hash for a whole model: over the sorted (path, sha256) pairs."""
    lines = "\n".join(f"{name}\0{entry['sha256']}" for name, entry in sorted(hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def dir_size(root: Path) -> int:
    return sum(p.stat().st_size for p in model_files(root))


def weights_size(root: Path) -> int:
    """Bytes of weight files (what quantization shrinks), falling back to all model files."""
    weights = [p for p in model_files(root) if p.suffix in {".safetensors", ".bin", ".pt", ".pth"}]
    return sum(p.stat().st_size for p in weights) if weights else dir_size(root)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Any:
    with path.open() as f:
        return json.load(f)


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place only when complete.

    Args:
        final: where the directory should end up.
        overwrite: replace an existing directory (the old one is removed only after the new
            one is complete). Without it an existing directory is an error.

    Yields:
        The temporary directory to write into (on the same file system as ``final``).
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise UsageError(f"{final} already exists", hint="choose another --out or pass --force to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the artifact is meant to be shared
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{int(time.time())}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.exists():
        raise UsageError(f"{root} has no {MANIFEST}", hint="is this a directory written by compress?")
    return read_json(path)


def check_hashes(root: Path, recorded: dict[str, dict[str, Any]]) -> list[str]:
    """Compare the model files under ``root`` with recorded hashes; return every mismatch."""
    problems = []
    actual = file_hashes(root)
    for name, entry in recorded.items():
        if name not in actual:
            problems.append(f"{name}: missing")
        elif actual[name]["sha256"] != entry["sha256"]:
            problems.append(f"{name}: sha256 differs from the recorded one (file changed)")
    for name in actual.keys() - recorded.keys():
        problems.append(f"{name}: not in the manifest (file added)")
    return problems


def verify_dir(root: Path) -> dict[str, Any]:
    """Re-check every file of an artifact against its manifest.

    Raises:
        IntegrityError: naming every file that is missing, changed or added.
    """
    manifest = read_manifest(root)
    problems = check_hashes(root, manifest.get("files", {}))
    if content_hash(manifest.get("files", {})) != manifest.get("content_hash"):
        problems.append("manifest: content_hash does not match its own file list")
    if problems:
        raise IntegrityError(f"{root}: " + "; ".join(problems),
                             hint="the files are not the ones recorded; rebuild or re-export the artifact")
    return manifest
