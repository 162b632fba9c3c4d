"""Methods work on decoder-only architectures other than the embedded Llama: layer names come
from each model, never from a list. Tiny random Qwen2, Mistral, GPT-NeoX, OPT and Phi models."""
import json

import pytest

from archs import ARCHS, build
from conftest import BUILTIN, run_cli

# One scheme per architecture, plus the combinations that need something of their own, run by
# default; the rest of the matrix runs with `make test-slow`.
DEFAULT = [("qwen2", "int4-gptq"), ("mistral", "int4-nf4"), ("gpt_neox", "int4-rtn"), ("opt", "int4-gptq"),
           ("phi", "int4-gptq"), ("qwen2", "fp8-dynamic"), ("gpt_neox", "fp8-static"), ("phi", "int8-llm-int8"),
           ("qwen2", "int4-gptq-hf"),
           # llm-compressor has no SmoothQuant / AWQ tables for these: the mappings are read off the model.
           ("gpt_neox", "int8-w8a8"), ("opt", "int8-w8a8"), ("opt", "int4-awq"), ("phi", "int4-awq"),
           ("gpt_neox", "int4-gptq-hf")]
FULL = [(arch, scheme) for arch in ARCHS for scheme in ("int4-rtn", "int4-gptq", "int4-nf4", "int4-gptq-hf",
                                                        "fp8-dynamic", "int8-w8a8", "int4-awq")]
CASES = DEFAULT + [pytest.param(a, s, marks=pytest.mark.slow) for a, s in FULL if (a, s) not in DEFAULT]


EXPECTED_FEEDS = {
    "gpt_neox": {"gpt_neox.layers.0.input_layernorm": ["gpt_neox.layers.0.attention.query_key_value"],
                 "gpt_neox.layers.0.post_attention_layernorm": ["gpt_neox.layers.0.mlp.dense_h_to_4h"]},
    "opt": {"model.decoder.layers.0.self_attn_layer_norm": [f"model.decoder.layers.0.self_attn.{p}_proj"
                                                            for p in "qkv"],
            "model.decoder.layers.0.final_layer_norm": ["model.decoder.layers.0.fc1"]},
    # Phi runs attention and MLP in parallel from one norm.
    "phi": {"model.layers.0.input_layernorm": [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
            + ["model.layers.0.mlp.fc1"]},
}


@pytest.mark.parametrize("arch", list(EXPECTED_FEEDS))
def test_norm_to_layer_mappings_are_read_off_the_model(models, arch):
    from compress.build.methods._llmcompressor import norm_consumers
    from compress.core.models import load_model

    feeds = dict(norm_consumers(load_model(models[arch]), ["lm_head"]))
    for norm, layers in EXPECTED_FEEDS[arch].items():
        assert feeds[norm] == layers
    assert len(feeds) == len(EXPECTED_FEEDS[arch]) * 2  # the same in both layers, nothing else


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    return {arch: build(arch, root / arch, BUILTIN) for arch in ARCHS}


@pytest.mark.parametrize("arch,scheme", CASES)
def test_scheme_on_architecture(models, arch, scheme, tmp_path, runs_dir):
    out = tmp_path / "q"
    p = run_cli("quantize", "--model", str(models[arch]), "--scheme", scheme, "-o", str(out),
                "--set", "calibration.num_samples=8", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    manifest = json.loads(p.stdout)["manifest"]
    assert "lm_head" in manifest["method"]["details"].get("ignore", [])
    # It loads back with transformers' own class for the architecture and computes finite logits. (That a
    # process which never imported compress loads every format is tests/test_methods.py's to show.)
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out))
    with torch.no_grad():
        logits = model(input_ids=torch.randint(3, 1000, (2, 16), generator=torch.Generator().manual_seed(0))).logits
    assert model.config.model_type == arch and bool(torch.isfinite(logits).all())


def test_lm_head_in_ignore_means_the_output_layer_whatever_its_name():
    import torch

    from compress.build.methods.base import resolve_ignore

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(4, 4)
            self.embed_out = torch.nn.Linear(4, 8)

        def get_output_embeddings(self):
            return self.embed_out

    assert resolve_ignore(Model(), ["lm_head"]) == ["embed_out"]
    assert resolve_ignore(Model(), ["re:^bo"]) == ["body"]
