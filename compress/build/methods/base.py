"""The one small protocol every method follows, and helpers they share.

A method module exposes ``apply(ctx: MethodContext) -> MethodResult``. It loads what it
needs from ``ctx.base``, writes a servable model and its tokenizer into ``ctx.out_dir`` and
reports what it did. Everything around it (atomic directories, manifest, hashes, the
recipe copy, the closing table) is done once, by ``compress.build.quantize``.
"""
from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.core.errors import BackendMissingError, QuantizationError
from compress.core.models import ModelRef
from compress.core.recipe import Recipe


@dataclass
class MethodContext:
    recipe: Recipe
    base: ModelRef
    out_dir: Path
    work_dir: Path  # persists across attempts (checkpoints); removed once the artifact is complete
    artifact_key: str  # the work directory belongs to this artifact only
    device: str = "cpu"
    log: Callable[[str], None] = print
    warn: Callable[[str], None] = print


@dataclass
class MethodResult:
    format: str  # compressed-tensors | bitsandbytes | gptq | safetensors
    scheme: str  # human name, e.g. "W4A16 GPTQ g128 sym"
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class Timer:
    """Collects named durations: ``with timer("calibrate"): ...``."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[f"{name}_s"] = round(self.timings.get(f"{name}_s", 0) + time.perf_counter() - start, 3)


def require(module: str, dist: str, extra: str, purpose: str) -> Any:
    """Import an optional back end or raise a BackendMissingError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendMissingError(dist, extra, purpose) from None


def output_embedding_name(model: Any) -> str | None:
    """The module name of the output projection (``lm_head`` in Llama, ``embed_out`` in GPT-NeoX)."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is None:
        return None
    for name, mod in model.named_modules():
        if mod is out:
            return name
    return None


def resolve_ignore(model: Any, ignore: list[str], key: str = "ignore") -> list[str]:
    """Module names to leave unquantized (or, with ``key`` int8_layers, to quantize to 8 bits).

    ``lm_head`` means the model's output projection, whatever the architecture calls it.
    Entries starting with ``re:`` are regular expressions over module names (as in
    llm-compressor). Exact names that match no module are errors.
    """
    import torch

    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    resolved: list[str] = []
    for entry in ignore:
        if entry.startswith("re:"):
            pattern = re.compile(entry[3:])
            resolved.extend(sorted(n for n in names if pattern.search(n)))
        elif entry == "lm_head" and "lm_head" not in names:
            head = output_embedding_name(model)
            if head is not None:
                resolved.append(head)
        elif entry in names:
            resolved.append(entry)
        else:
            close = [n for n in names if n.endswith(entry) or entry in n]
            hint = f"did you mean {', '.join(sorted(close)[:3])}? " if close else ""
            raise QuantizationError(f"{key} entry '{entry}' names no Linear layer of this model",
                                    hint=f"{hint}use exact module names or 're:PATTERN'")
    return sorted(set(resolved))


def quantizable_linears(model: Any, ignore: list[str]) -> list[tuple[str, Any]]:
    """(name, module) of every nn.Linear that will be quantized, in model order."""
    import torch

    skip = set(ignore)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in skip]


def check_group_size(model: Any, ignore: list[str], group_size: int | None) -> None:
    """Every quantized layer's input width must be a multiple of the group size."""
    if group_size is None:
        return
    for name, mod in quantizable_linears(model, ignore):
        if mod.in_features % group_size:
            raise QuantizationError(
                f"group size {group_size} does not divide layer '{name}' (input width {mod.in_features})",
                hint="pick a group size that divides every width (e.g. 32 or 64), set group_size: null for "
                     f"per-channel, or add '{name}' to ignore",
            )


def meta_model(ctx: MethodContext) -> Any:
    """The model's module tree without weights (to resolve layer names before loading). Built
    once per model directory: the group-size check, the streaming decision and the streaming
    itself all read it (an edited config.json is read again). Callers only read it."""
    st = (Path(ctx.base.path) / "config.json").stat()
    return _meta_model(str(ctx.base.path), ctx.recipe.model.trust_remote_code, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=1)
def _meta_model(path: str, trust_remote_code: bool, mtime_ns: int, size: int) -> Any:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def claim_work_dir(ctx: MethodContext) -> Path:
    """Create (or reuse) the method's scratch directory for this artifact key only.

    A directory left by a different recipe is emptied first: resuming from it would mix runs.
    Every process of a multi-process launch claims it; a lock file inside it makes the check and
    the emptying one step, so that one process never empties what another has just stamped.
    """
    import fcntl
    import shutil

    from compress.core.artifact import write_bytes_atomic

    work = ctx.work_dir
    stamp, lock_file = work / "KEY", work / ".claim.lock"
    work.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists() or stamp.read_text().strip() != ctx.artifact_key:
            for child in work.iterdir():
                if child == lock_file:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            write_bytes_atomic(stamp, (ctx.artifact_key + "\n").encode())
    return work


def save_tokenizer(ctx: MethodContext, tokenizer: Any = None) -> None:
    from compress.core.models import load_tokenizer

    tok = tokenizer or load_tokenizer(ctx.base.path, ctx.recipe.model.trust_remote_code)
    tok.save_pretrained(str(ctx.out_dir))
