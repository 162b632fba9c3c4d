"""Compression methods, one file each, behind a lazy registry.

Each method module exposes ``apply(ctx) -> MethodResult`` (see ``base.py``). The registry
holds ``"module:attr"`` strings, so listing methods imports no torch.
"""
from __future__ import annotations

from compress.core.registry import LazyRegistry

METHODS = LazyRegistry("method", {
    "fp8": "compress.build.methods.fp8:apply",
    "fp4": "compress.build.methods.fp4:apply",
    "int8": "compress.build.methods.int8:apply",
    "int4": "compress.build.methods.int4:apply",
    "gguf": "compress.build.methods.gguf:apply",
    "distill": "compress.build.methods.distill:apply",
    "none": "compress.build.methods.none:apply",
})
