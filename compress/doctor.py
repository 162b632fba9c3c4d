"""`compress doctor`: what this machine can do."""
from __future__ import annotations

from typing import Any

from compress.core import env
from compress.measure.engines.vllm import engine_info
from compress.core.models import BUILTIN_MODELS


def collect() -> dict[str, Any]:
    """Versions, device and back ends. Imports torch (this is the one command meant to)."""
    info: dict[str, Any] = {"libraries": env.library_versions(), "git_sha": env.git_sha()}
    try:
        import torch
    except ImportError:
        torch = None
    info["device"] = env.device_info(torch)
    info["torch"] = env.package_version("torch")
    info["backends"] = {
        dist: {"installed": env.package_version(dist) is not None, "version": env.package_version(dist),
               "extra": extra, "for": purpose}
        for dist, (extra, purpose) in env.BACKENDS.items()
    }
    info["builtin_models"] = {name: (path / "config.json").exists() for name, path in BUILTIN_MODELS.items()}
    from compress.core.fixtures import FIXTURES, fixtures_root, is_complete

    # Speed fixtures are generated on first use: "generated" or "generated on first use".
    info["fixtures"] = {name: is_complete(fixtures_root() / spec.dirname) for name, spec in FIXTURES.items()}
    info["engine"] = engine_info()
    from compress.measure.engines import llamacpp

    info["llamacpp"] = llamacpp.engine_info()
    return info


def notes(info: dict[str, Any]) -> list[str]:
    """Plain-language consequences of what was found."""
    dev = info["device"]
    lines = []
    if info["torch"] is None:
        lines.append("torch is not installed: run `make setup` (it pins the CPU build where there is no GPU)")
    elif not dev.get("cuda"):
        lines.append("no CUDA device: everything runs on the CPU in float32; FP8 artifacts are produced "
                     "but cannot run natively here")
    elif not dev.get("fp8_native"):
        lines.append(f"{dev.get('gpu')} (compute {dev.get('compute_capability')}) has no native FP8: "
                     "FP8 artifacts run through weight-only fallbacks in vLLM")
    if dev.get("amx") is False and not dev.get("cuda"):
        lines.append("no usable AMX on this CPU: vLLM's int4 (W4A16) kernel takes its vector path, no faster than "
                     "bf16 here, so the int4 speed gate (recipes/speed/llama-1b-int4-rtn.yaml) fails on this machine; "
                     "int8 W8A8 keeps its lead")
    engine = info.get("engine")
    if engine is not None and not engine["installed"]:
        lines.append(f"no serving engine at {engine['path']}: server-mode benchmarks unavailable; run `make engine`")
    cpp = info.get("llamacpp")
    if cpp is not None and not (cpp["present"] and all(cpp["tools"].values())):
        missing = [name for name, ok in cpp["tools"].items() if not ok] if cpp["present"] else ["llama-cpp-python"]
        lines.append(f"llama.cpp incomplete at {cpp['root']} ({', '.join(missing)} missing): GGUF schemes and "
                     "engine: llamacpp unavailable; run `make llamacpp`")
    for dist, b in info["backends"].items():
        if not b["installed"] and dist != "vllm":
            fix = "reinstall compress" if b["extra"] == "core" else f"pip install 'compress[{b['extra']}]'"
            lines.append(f"{dist} missing: {b['for']} unavailable; {fix}")
    return lines
