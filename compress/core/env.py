"""The environment a result was produced in: library versions, device, CPU, git sha.

Every report and manifest records it, and cache keys include the library versions, so a
result measured with one llm-compressor is never reused for another.
"""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# The compress package folder (its assets/ beside the code; the checkout above it when run from one).
PACKAGE = Path(__file__).resolve().parents[1]

# Distribution names whose versions matter to results.
TRACKED_PACKAGES = [
    "compress", "torch", "transformers", "accelerate", "safetensors", "tokenizers",
    "llmcompressor", "compressed-tensors", "bitsandbytes", "gptqmodel", "optimum", "lm-eval",
    "datasets", "vllm",
]

# Optional back ends: distribution -> (extra to install, what it is for).
BACKENDS = {
    "llmcompressor": ("llmcompressor", "FP8, INT8 W8A8, INT4 GPTQ/AWQ/RTN into compressed-tensors"),
    "compressed-tensors": ("llmcompressor", "the compressed-tensors checkpoint format"),
    "bitsandbytes": ("bnb", "LLM.int8 and NF4"),
    "gptqmodel": ("gptq", "INT4 GPTQ in the Hugging Face GPTQ format"),
    "optimum": ("gptq", "loading GPTQ checkpoints in transformers"),
    "lm-eval": ("core", "accuracy with lm-evaluation-harness (a core dependency)"),
    "matplotlib": ("plot", "the accuracy/size/cost plot of `compress report`"),
}


def package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str]:
    """Installed versions of the packages that influence results (missing ones left out)."""
    return {d: v for d in TRACKED_PACKAGES if (v := package_version(d)) is not None}


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The commit of the compress checkout, or None outside a git checkout."""
    root = PACKAGE.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = out.stdout.strip()
    if not sha:
        return None
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def device_info(torch_module: Any | None = None) -> dict[str, Any]:
    """Device facts. Pass the torch module when it is already imported; else torch is not touched."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    torch = torch_module
    if torch is None:
        return info
    info["torch_threads"] = torch.get_num_threads()
    # AMX tiles usable by this process (the CPU has them and the kernel grants them): vLLM's CPU int4
    # (W4A16) kernel and oneDNN's bf16 matmuls use them; without them int4 is no faster than bf16.
    amx = getattr(getattr(torch, "cpu", None), "_is_amx_tile_supported", None)
    info["amx"] = bool(amx()) if callable(amx) else None
    info["cuda"] = bool(torch.cuda.is_available())
    info["torch_cuda"] = torch.version.cuda
    if info["cuda"]:
        major, minor = torch.cuda.get_device_capability(0)
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["compute_capability"] = f"{major}.{minor}"
        info["fp8_native"] = (major, minor) >= (8, 9)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        info["fp8_native"] = False
    return info


def environment(torch_module: Any | None = None) -> dict[str, Any]:
    """Everything a report records about where it was measured."""
    return {"libraries": library_versions(), "device": device_info(torch_module), "git_sha": git_sha()}


def runs_root() -> Path:
    """Where runs live: ``$COMPRESS_RUNS_DIR``, else ``runs`` in the current directory."""
    return Path(os.environ.get("COMPRESS_RUNS_DIR", "runs"))
