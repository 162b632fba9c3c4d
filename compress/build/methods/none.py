"""No method: the artifact is the base model's files, unchanged, to be served with the recipe's ``serve`` settings.

A runtime change (prefix caching, a larger batch budget, a draft model) then goes through the same flow as a
model change: its artifact is built here, measured beside the base under ``baseline_serve``, gated and exported
with the serving settings it passed with. Its content hash is the base's (the same model files).

Each file is a hard link to the base's where that is safe, else a copy; never a symbolic link, since an artifact
and its exports must hold their own bytes. A link is safe when the file is this user's and already has the
permissions the build gives every file of an artifact (``share``): the build then changes nothing of the base's.
Nothing in compress writes into an artifact's model files after its build (an export copies them), so the base
and the artifact stay the same bytes.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from compress.core.artifact import model_files
from compress.build.methods.base import MethodContext, MethodResult, Timer

# The format a quantized base is already in (config.json's quantization_config.quant_method), for the card's
# serving commands; a plain checkpoint is safetensors.
FORMATS = {"compressed-tensors": "compressed-tensors", "gptq": "gptq", "bitsandbytes": "bitsandbytes"}
SCHEME = "base model, serving settings only"


def base_format(model_dir: Path) -> str:
    """The format of a model directory's checkpoint, as an artifact's manifest names it."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "safetensors"
    method = (config.get("quantization_config") or {}).get("quant_method") if isinstance(config, dict) else None
    return FORMATS.get(str(method), "safetensors")


def _linkable(src: Path) -> bool:
    """Whether a hard link leaves the base as it is once the build gives the artifact's files their modes."""
    mask = os.umask(0)
    os.umask(mask)
    st = src.stat()
    return st.st_uid == os.getuid() and (st.st_mode & 0o777) == (0o666 & ~mask)


def place(src: Path, dest: Path) -> bool:
    """Put ``src``'s bytes at ``dest``: a hard link when safe and possible, else a copy. True when linked."""
    src = src.resolve()  # a hub cache's snapshot holds symbolic links to its blobs: link or copy the blob
    dest.parent.mkdir(parents=True, exist_ok=True)
    if _linkable(src):
        try:
            os.link(src, dest)
            return True
        except OSError:
            pass  # another file system, or one without hard links
    shutil.copyfile(src, dest)
    return False


def apply(ctx: MethodContext) -> MethodResult:
    base = Path(ctx.base.path)
    timer = Timer()
    linked = copied = 0
    with timer("copy"):
        for src in model_files(base):  # the files the base's content hash covers, and nothing else
            if place(src, ctx.out_dir / src.relative_to(base)):
                linked += 1
            else:
                copied += 1
    serve = ctx.recipe.serve
    details = {"weights": "the base model's, unchanged", "files_linked": linked, "files_copied": copied,
               "serve": serve.model_dump(mode="json") if serve is not None else None,
               "serve_flags": serve.engine_args() if serve is not None else []}
    ctx.log(f"none: the base model's {linked + copied} files ({linked} linked, {copied} copied); served with "
            f"{serve.flags_text() if serve is not None else 'the engine defaults'}")
    return MethodResult(format=base_format(base), scheme=SCHEME, details=details, timings=timer.timings)
