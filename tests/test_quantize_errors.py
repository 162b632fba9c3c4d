"""Bad quantization input: one clear line, the right exit code, nothing half-written."""
import json
import shutil
import subprocess
import sys

import pytest

from compress.core.errors import BackendMissingError
from compress.build.methods.base import require
from conftest import BUILTIN, ROOT, run_cli


def test_unknown_scheme_lists_the_known_ones(tmp_path):
    p = run_cli("quantize", "--model", "builtin:tiny-llama", "--scheme", "int4-gptqq", "-o", str(tmp_path / "x"))
    assert p.returncode == 2
    assert "Unknown scheme 'int4-gptqq'. Did you mean: int4-gptq" in p.stderr
    assert "fp8-dynamic" in p.stderr and "int4-nf4" in p.stderr
    assert not (tmp_path / "x").exists()


def test_group_size_that_does_not_divide_names_the_layer(tmp_path):
    p = run_cli("quantize", "--model", "builtin:tiny-llama", "--scheme", "int4-rtn", "-o", str(tmp_path / "x"),
                "--set", "method.group_size=96")
    assert p.returncode == 2, p.stderr
    assert "group size 96 does not divide layer 'model.layers.0.self_attn.q_proj' (input width 256)" in p.stderr
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())


def test_missing_back_end_names_the_extra(tmp_path):
    with pytest.raises(BackendMissingError, match=r"pip install 'compress\[bnb\]'"):
        require("surely_not_installed_backend", "bitsandbytes", "bnb", "LLM.int8")
    # The whole CLI path, with bitsandbytes made unimportable in the child process.
    code = ("import sys; sys.modules['bitsandbytes'] = None\n"
            "from compress.cli import main\n"
            f"sys.exit(main(['quantize', '--model', 'builtin:tiny-llama', '--scheme', 'int4-nf4', '--out', "
            f"{str(tmp_path / 'x')!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 4, p.stderr[-2000:]
    assert "needs the Python package 'bitsandbytes'" in p.stderr and "compress[bnb]" in p.stderr
    assert not (tmp_path / "x").exists()


def test_pickled_weights_refused_unless_the_recipe_allows_them(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path / "pickled"
    shutil.copytree(BUILTIN, model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    (model_dir / "model.safetensors").unlink()
    torch.save(model.state_dict(), model_dir / "pytorch_model.bin")
    p = run_cli("quantize", "--model", str(model_dir), "--scheme", "int4-rtn", "-o", str(tmp_path / "x"))
    assert p.returncode == 2  # bad input (a refused model), like a missing one
    assert "only pickled weights" in p.stderr and "allow_pickle" in p.stderr
    assert not (tmp_path / "x").exists()
    p = run_cli("quantize", "--model", str(model_dir), "--scheme", "int4-rtn", "-o", str(tmp_path / "x"),
                "--set", "model.allow_pickle=true", "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout)["manifest"]["size"]["ratio"] < 0.5


def test_existing_output_is_never_overwritten_silently(tmp_path, runs_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my work")
    p = run_cli("quantize", "--model", "builtin:tiny-llama", "--scheme", "int4-rtn", "-o", str(out))
    assert p.returncode == 2 and "already exists" in p.stderr and "--force" in p.stderr
    assert (out / "notes.txt").read_text() == "my work"


def test_ignore_entry_must_name_a_layer(tmp_path, runs_dir):
    p = run_cli("quantize", "--model", "builtin:tiny-llama", "--scheme", "int4-rtn", "-o", str(tmp_path / "x"),
                "--set", "method.ignore=[lm_head, down_proj]")
    assert p.returncode == 2
    assert "ignore entry 'down_proj' names no Linear layer" in p.stderr and "re:PATTERN" in p.stderr


def test_fp8_without_native_support_warns_and_still_builds(tmp_path, runs_dir):
    import torch

    if torch.cuda.is_available() and torch.cuda.get_device_capability(0) >= (8, 9):
        pytest.skip("this machine has native FP8")
    p = run_cli("quantize", "--model", "builtin:tiny-llama", "--scheme", "fp8-dynamic", "-o",
                str(tmp_path / "fp8"), "--json")
    assert p.returncode == 0
    assert "no native FP8" in p.stderr
    manifest = json.loads(p.stdout)["manifest"]
    assert any("no native FP8" in w for w in manifest["warnings"])
    assert (tmp_path / "fp8" / "model.safetensors").exists()
