"""Shared plumbing for the methods that run through llm-compressor into compressed-tensors."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from compress.core.data import load_texts, tokenize
from compress.build.methods.base import MethodContext, Timer, claim_work_dir, require, resolve_ignore, save_tokenizer

from compress.core.models import load_model, load_tokenizer

EXTRA = "llmcompressor"


def load(module: str, purpose: str) -> Any:
    """Import an llm-compressor module without its import-time console logging.

    On import, llm-compressor adds a loguru handler that prints INFO and up to *stdout*
    (which would corrupt ``--json`` output) and logs a CPU warning. Its own switch turns that
    off; ``quiet_logs`` re-enables its warnings, on stderr, while it runs.
    """
    os.environ.setdefault("LLM_COMPRESSOR_LOG_DISABLED", "true")
    return require(module, "llmcompressor", EXTRA, purpose)


def load_base(ctx: MethodContext, offload: Path | None = None) -> tuple[Any, Any]:
    """The base model in its recipe dtype, on the CPU (llm-compressor onloads as it goes).

    With ``offload``, every weight stays on disk (compressed-tensors' disk cache: links to the
    checkpoint's own files, and the layers a method updates written into ``offload``) and is
    read only while its layer runs; the sequential pipeline takes one decoder layer at a time.
    """
    spec = ctx.recipe.model
    kwargs: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if offload is not None:
            from compressed_tensors.offload import load_offloaded_model

            shutil.rmtree(offload, ignore_errors=True)  # what a crashed attempt wrote is not reused
            offload.mkdir(parents=True)
            stack.enter_context(load_offloaded_model())
            # accelerate warns that the weights it was asked to leave on disk are on disk
            quiet = logging.getLogger("accelerate.big_modeling")
            stack.callback(quiet.setLevel, quiet.level)
            quiet.setLevel(logging.ERROR)
            kwargs = {"device_map": {"": "disk"}, "offload_folder": str(offload)}
        model = load_model(ctx.base.path, dtype=spec.dtype, device="cpu", trust_remote_code=spec.trust_remote_code,
                           allow_pickle=spec.allow_pickle, **kwargs)
    return model, load_tokenizer(ctx.base.path, spec.trust_remote_code)


def offload_dir(ctx: MethodContext) -> Path | None:
    """Where the weights wait on disk during a calibrated method (``model.offload``), or None to
    keep them in memory. ``auto`` offloads when the weights, in the dtype they load in, take
    more than a quarter of the memory available now: in memory the peak is about the weights
    plus a gigabyte; on disk, one layer, its statistics and the embeddings, at little cost in
    time (the layers are read back from the page cache)."""
    import psutil

    from compress.core.models import resolve_dtype, weight_bytes_in

    choice = ctx.recipe.model.offload
    if choice == "auto":
        need = weight_bytes_in(ctx.base.path, resolve_dtype(ctx.base.path, ctx.recipe.model.dtype))
        choice = "disk" if need > psutil.virtual_memory().available / 4 else "memory"
    if choice == "memory":
        return None
    return claim_work_dir(ctx) / "offload"


def calibration_dataset(ctx: MethodContext, tokenizer: Any):
    cal = ctx.recipe.calibration
    texts = load_texts(cal.dataset, split=cal.split, config_name=cal.config_name, text_field=cal.text_field,
                       num_samples=cal.num_samples, seed=cal.seed)
    ctx.log(f"calibration: {len(texts)} samples from {cal.dataset}, up to {cal.max_seq_length} tokens each")
    return tokenize(texts, tokenizer, cal.max_seq_length)


@contextlib.contextmanager
def cpu_safe() -> Iterator[None]:
    """Let llm-compressor run where there is no accelerator.

    Its intermediates cache pins memory for faster host-to-device copies; pinning fails with
    "Cannot access accelerator device when none is available". Pinning only speeds up copies
    to a GPU, so without one it is skipped. The original method is restored afterwards.
    """
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.cuda.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original  # type: ignore[method-assign]


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """llm-compressor logs every module to stdout through loguru; send warnings to stderr only.

    stdout stays clean for ``--json``. ``COMPRESS_BACKEND_LOG=INFO`` shows everything.
    """
    import sys

    from loguru import logger as loguru_logger

    level = os.environ.get("COMPRESS_BACKEND_LOG", "WARNING").upper()
    loguru_logger.remove()
    loguru_logger.enable("llmcompressor")
    try:  # defined by llm-compressor's own logger set-up, which LLM_COMPRESSOR_LOG_DISABLED skips
        loguru_logger.level("METRIC")
    except ValueError:
        loguru_logger.level("METRIC", no=38)

    def keep(record: dict) -> bool:
        if level != "WARNING":
            return True
        # Per-layer metrics, and a CPU notice the caller already knows about, are noise here.
        return record["level"].name != "METRIC" and not record["message"].startswith("No accelerator available")

    handler = loguru_logger.add(sys.stderr, level=level, format="{level}: {message}", filter=keep)
    logging.getLogger("llmcompressor").setLevel(level)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            loguru_logger.remove(handler)
        loguru_logger.disable("llmcompressor")


def run(ctx: MethodContext, make_modifiers: Callable[[Any, list[str]], list[Any]], calibrate: bool,
        timer: Timer) -> dict[str, Any]:
    """Load the base, apply llm-compressor modifiers with ``oneshot``, save compressed.

    ``make_modifiers(model, ignore)`` builds the modifiers once the model is loaded and the
    ignore list resolved to its module names (some modifiers need the model's structure).
    With ``method.kv_cache`` set, calibration runs even for data-free weight schemes: the KV
    cache scales are measured on the calibration text.

    Returns:
        Details for the manifest: ignored layers, calibration samples, KV cache scheme.
    """
    import warnings

    # Imported before quiet_logs: importing llm-compressor resets loguru's handlers.
    load("llmcompressor", "quantization into compressed-tensors")
    with quiet_logs(), cpu_safe(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
        return _run(ctx, make_modifiers, calibrate or kv_cache_scheme(ctx) is not None, timer)


def _run(ctx: MethodContext, make_modifiers: Callable[[Any, list[str]], list[Any]], calibrate: bool,
         timer: Timer) -> dict[str, Any]:
    llmc = load("llmcompressor", "quantization into compressed-tensors")
    import torch

    offload = offload_dir(ctx)
    if offload is not None:
        ctx.log(f"weights stay on disk and are read one layer at a time (model.offload; scratch in {offload})")
    with timer("load"):
        model, tokenizer = load_base(ctx, offload)
    ignore = resolve_ignore(model, ctx.recipe.method.ignore)
    modifiers = make_modifiers(model, ignore)
    kwargs: dict[str, Any] = {}
    samples = 0
    if calibrate:
        ds = calibration_dataset(ctx, tokenizer)
        samples = len(ds)
        kwargs = {"dataset": ds, "num_calibration_samples": samples,
                  "max_seq_length": ctx.recipe.calibration.max_seq_length, "shuffle_calibration_samples": False}
    torch.manual_seed(ctx.recipe.calibration.seed)
    with timer("quantize"):
        llmc.oneshot(model=model, recipe=modifiers, tokenizer=tokenizer, **kwargs)
    with timer("save"):
        # Shards of at most a gigabyte: saving gathers one shard's tensors at a time.
        model.save_pretrained(str(ctx.out_dir), save_compressed=True, max_shard_size="1GB")
        save_tokenizer(ctx, tokenizer)
    details: dict[str, Any] = {
        "ignore": ignore, "calibration_samples": samples,
        "layers_quantized": sum(1 for n, m in model.named_modules()
                                if isinstance(m, torch.nn.Linear) and n not in ignore)}
    if offload is not None:
        details["offload"] = "disk"
    if kv_cache_scheme(ctx) is not None:
        details["kv_cache"] = {"dtype": ctx.recipe.method.kv_cache, "strategy": "tensor", "calibrated": True}
    return details


def kv_cache_scheme(ctx: MethodContext):
    """llm-compressor's ``kv_cache_scheme`` for the recipe's ``method.kv_cache``, or None.

    FP8 (E4M3), symmetric, one static scale per tensor for keys and one for values in each
    attention layer, measured on the calibration data: the layout engines read as
    ``k_scale``/``v_scale`` (llm-compressor's ``examples/quantization_kv_cache``).
    """
    if getattr(ctx.recipe.method, "kv_cache", None) != "fp8":
        return None
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(num_bits=8, type="float", strategy="tensor", dynamic=False, symmetric=True)


def kv_cache_label(ctx: MethodContext) -> str:
    """The suffix a scheme's human name gets for its KV cache (empty without one)."""
    return ", KV cache FP8 (per-tensor, calibrated)" if getattr(ctx.recipe.method, "kv_cache", None) else ""


def weight_args(bits: int, group_size: int | None, symmetric: bool, kind: str = "int"):
    """compressed-tensors QuantizationArgs for weights (per group, or per output channel)."""
    from compressed_tensors.quantization import QuantizationArgs

    if group_size is None:
        return QuantizationArgs(num_bits=bits, type=kind, symmetric=symmetric, strategy="channel")
    return QuantizationArgs(num_bits=bits, type=kind, symmetric=symmetric, strategy="group", group_size=group_size)


def scheme(weights: Any, activations: Any = None):
    from compressed_tensors.quantization import QuantizationScheme

    return {"group_0": QuantizationScheme(targets=["Linear"], weights=weights, input_activations=activations)}


def norm_consumers(model: Any, ignore: list[str]) -> list[tuple[str, list[str]]]:
    """Each normalisation layer with the Linear layers that read exactly its output.

    Found by one forward pass on a few tokens, from the model itself: hooks record every norm's
    output tensor and every Linear's input, and the two are matched by storage. This is what
    SmoothQuant and AWQ need to know (which activations to smooth, which weights absorb the
    scale), for architectures llm-compressor has no hand-written table for.
    """
    import torch

    outputs: list[tuple[str, torch.Tensor]] = []
    consumers: dict[str, list[str]] = {}
    hooks = []
    skip = set(ignore)

    def is_norm(module: Any) -> bool:
        return isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("Norm")

    for name, module in model.named_modules():
        if is_norm(module) and not isinstance(module, torch.nn.Linear):
            hooks.append(module.register_forward_hook(
                lambda mod, args, out, name=name: outputs.append((name, out)) if isinstance(out, torch.Tensor) else None))
        elif isinstance(module, torch.nn.Linear) and name not in skip:
            def pre(mod, args, name=name):
                x = args[0] if args else None
                for norm, out in reversed(outputs):
                    if x is not None and x.data_ptr() == out.data_ptr() and x.shape == out.shape:
                        consumers.setdefault(norm, []).append(name)
                        break
            hooks.append(module.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(input_ids=torch.arange(3, 11, device=device)[None, :])
    finally:
        for h in hooks:
            h.remove()
    return [(norm, names) for norm, names in consumers.items() if names]


def _exact(name: str) -> str:
    import re

    return f"re:^{re.escape(name)}$"


def smoothquant_mappings(model: Any, ignore: list[str]) -> list[list[Any]] | None:
    """SmoothQuant mappings for the model, or None where llm-compressor has its own."""
    from llmcompressor.modifiers.transform.smoothquant.utils import MAPPINGS_REGISTRY

    if type(model).__name__ in MAPPINGS_REGISTRY:
        return None
    return [[[_exact(n) for n in names], _exact(norm)] for norm, names in norm_consumers(model, ignore)]


def awq_mappings(model: Any, ignore: list[str]) -> list[Any] | None:
    """AWQ mappings (norm -> the layers it feeds), or None where llm-compressor has its own."""
    from llmcompressor.modifiers.transform.awq.dynamic_mappings import AWQ_DYNAMIC_MAPPING_REGISTRY
    from llmcompressor.modifiers.transform.awq.mappings import AWQ_MAPPING_REGISTRY, AWQMapping

    name = type(model).__name__
    if name in AWQ_MAPPING_REGISTRY or name in AWQ_DYNAMIC_MAPPING_REGISTRY:
        return None
    return [AWQMapping(smooth_layer=_exact(norm), balance_layers=[_exact(n) for n in names])
            for norm, names in norm_consumers(model, ignore)]
