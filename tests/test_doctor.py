"""`compress doctor` reports what this machine really has, and what follows from it."""
import json
import os
import subprocess
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from compress import doctor
from compress.core.env import BACKENDS, device_info
from conftest import run_cli


def test_doctor_json_matches_the_installed_environment():
    p = run_cli("doctor", "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    info = json.loads(p.stdout)
    assert info["torch"] == version("torch")
    assert info["device"]["cuda"] == torch.cuda.is_available()
    assert info["device"]["torch_threads"] >= 1
    if not torch.cuda.is_available():
        assert info["device"]["fp8_native"] is False and "gpu" not in info["device"]
    assert set(info["backends"]) == set(BACKENDS)
    # The test install has every back end but vLLM (GPU only); versions are the installed ones.
    for dist in ("llmcompressor", "compressed-tensors", "bitsandbytes", "gptqmodel", "optimum", "lm-eval", "matplotlib"):
        assert info["backends"][dist]["installed"], dist
        assert info["backends"][dist]["version"] == version(dist), dist
    assert info["builtin_models"]["tiny-llama"] is True


def test_doctor_table_names_versions_and_consequences():
    p = run_cli("doctor")
    assert p.returncode == 0, p.stderr[-2000:]
    assert version("torch") in p.stdout and version("llmcompressor") in p.stdout
    assert "native FP8" in p.stdout
    if not torch.cuda.is_available():
        assert "no CUDA device" in p.stdout


def _fake_torch(capability, name="Fake GPU"):
    cuda = SimpleNamespace(is_available=lambda: capability is not None, get_device_capability=lambda i: capability,
                           get_device_name=lambda i: name, device_count=lambda: 2,
                           get_device_properties=lambda i: SimpleNamespace(total_memory=80 * 2**30))
    return SimpleNamespace(cuda=cuda, version=SimpleNamespace(cuda="12.8"), get_num_threads=lambda: 4)


def test_native_fp8_needs_compute_capability_8_9():
    assert device_info(_fake_torch((9, 0)))["fp8_native"] is True       # H100
    assert device_info(_fake_torch((8, 9)))["fp8_native"] is True       # L40S, RTX 4090
    a100 = device_info(_fake_torch((8, 0), "A100"))
    assert a100["fp8_native"] is False and a100["gpu"] == "A100" and a100["compute_capability"] == "8.0"
    assert a100["gpu_count"] == 2 and a100["gpu_memory_gib"] == 80.0
    assert device_info(_fake_torch(None))["fp8_native"] is False


def test_notes_say_what_is_missing_and_how_to_fix_it():
    info = {"torch": "2.13.0", "device": device_info(_fake_torch((8, 0), "A100")),
            "backends": {"gptqmodel": {"installed": False, "version": None, "extra": "gptq", "for": "GPTQ"},
                         "vllm": {"installed": False, "version": None, "extra": "vllm", "for": "vLLM"},
                         "bitsandbytes": {"installed": True, "version": "0.50.2", "extra": "bnb", "for": "NF4"}}}
    lines = doctor.notes(info)
    assert any("A100" in line and "no native FP8" in line for line in lines)
    assert any("gptqmodel missing" in line and "pip install 'compress[gptq]'" in line for line in lines)
    assert not any("vllm" in line or "bitsandbytes" in line for line in lines)
    assert doctor.notes({**info, "torch": None})[0].startswith("torch is not installed")



def test_a_cpu_without_usable_amx_is_named_with_what_follows():
    """vLLM's CPU int4 kernel chooses its AMX path only where torch can use AMX tiles; elsewhere int4 is no
    faster than bf16 (the cause of a newcomer's 0.72x int4 "speedup"): doctor says so."""
    fake = _fake_torch(None)
    fake.cpu = SimpleNamespace(_is_amx_tile_supported=lambda: False)
    info = {"torch": "2.13.0", "device": device_info(fake), "backends": {}}
    assert info["device"]["amx"] is False
    assert any(line.startswith("no usable AMX") for line in doctor.notes(info))
    fake.cpu = SimpleNamespace(_is_amx_tile_supported=lambda: True)
    assert not any("AMX" in line for line in doctor.notes({**info, "device": device_info(fake)}))
    assert device_info(_fake_torch(None))["amx"] is None  # a torch without the probe: nothing claimed
    assert json.loads(run_cli("doctor", "--json").stdout)["device"]["amx"] == torch.cpu._is_amx_tile_supported()


ENGINE_PYTHON = Path(__file__).resolve().parents[1] / ".venv-engine" / "bin" / "python"


@pytest.mark.skipif(not ENGINE_PYTHON.exists(), reason="no engine environment: run `make engine`")
def test_doctor_reports_the_installed_engines_own_registry():
    """What doctor says the engine accepts is what the engine's registry holds when imported in its own
    environment, not a table compress carries."""
    p = run_cli("doctor", "--json")
    engine = json.loads(p.stdout)["engine"]
    code = ("import json; from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS as m; "
            "print(json.dumps(list(m)))")
    real = subprocess.run([str(ENGINE_PYTHON), "-c", code], capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert real.returncode == 0, real.stderr[-2000:]
    methods = json.loads(real.stdout.strip().splitlines()[-1])
    assert set(engine["quantization_methods"]) == set(methods)
    for scheme, entry in engine["schemes"].items():
        assert entry["accepted"] == (entry["format"] in methods), scheme
    table = run_cli("doctor").stdout
    assert "in vLLM's quantization registry" in table and "bitsandbytes" in table
