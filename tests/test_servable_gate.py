"""The `servable` gate check, decided from a stored report (no engine needed here)."""
import pytest

from compress.core.reports import ModelInfo, ServableReport
from compress.decide.gate import evaluate
from compress.core.recipe import GateSpec, RecipeError, ServableSpec, validate_document


def _report(**result):
    base = {"ok": True, "engine_version": "0.32.0", "dtype": "bfloat16", "tokens": 8,
            "kernels": {"CPUWNA16LinearKernel": ["CompressedTensorsWNA16"]}, "served_token_ids": [[1] * 8] * 4,
            "matching_prefix": [8, 8, 8, 3], "agreement": 0.75, "error": None}
    base.update(result)
    return ServableReport(model=ModelInfo(spec="x", content_hash="c" * 64, size_bytes=1), settings={},
                          result=base, created="", duration_s=1.0)


def test_servable_passes_on_enough_agreement_and_names_the_kernel():
    gate = evaluate(GateSpec(servable="vllm"), None, None, None, _report())
    (check,) = gate.checks
    assert gate.verdict == "PASS" and check.metric == "servable:vllm" and check.shown == "3/4 prompts agree"
    assert "CPUWNA16LinearKernel" in check.note and gate.candidate_hash == "c" * 64


def test_servable_fails_on_too_little_agreement_or_a_refusal():
    strict = GateSpec(servable={"engine": "vllm", "min_agreement": 1.0})
    assert evaluate(strict, None, None, None, _report()).verdict == "FAIL"
    refused = _report(ok=False, served_token_ids=[], matching_prefix=[], agreement=0.0,
                      error="ValidationError: 1 validation error for ModelConfig: Unknown quantization method: "
                            "bitsandbytes")
    gate = evaluate(GateSpec(servable="vllm"), None, None, None, refused)
    (check,) = gate.checks
    assert gate.verdict == "FAIL" and check.shown == "not served" and "bitsandbytes" in check.note


def test_servable_needs_its_report_and_reads_from_a_recipe():
    from compress.core.errors import UsageError

    with pytest.raises(UsageError, match="servable report"):
        evaluate(GateSpec(servable="vllm"), None, None, None, None)
    doc = {"name": "x", "model": {"id": "builtin:tiny-llama"}, "method": {"kind": "int4"},
           "gate": {"servable": "vllm"}}
    assert validate_document(doc, "x.yaml").gate.servable == ServableSpec()
    with pytest.raises(RecipeError, match="gate.servable"):
        validate_document({**doc, "gate": {"servable": "tgi"}}, "x.yaml")


def test_a_policy_recorded_before_a_field_was_added_is_still_the_recipes_own():
    """A decision recorded by an older compress lacks fields added since (`servable`, `at`):
    export and verify must still recognise the artifact's own policy and its hash."""
    import hashlib
    import json

    from compress.ship.export import own_policy
    from compress.decide.gate import GateResult, policy_hash

    spec = GateSpec(checks=[{"metric": "size_ratio", "max": 0.5}])
    old = spec.model_dump(mode="json")
    old.pop("servable")
    for check in old["checks"]:
        check.pop("at")
    digest = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    gate = GateResult(verdict="PASS", exit_code=0, confidence=0.95, test="bootstrap", checks=[], candidate_hash="c",
                      baseline_hash="b", created="", policy=old, policy_hash=digest)
    assert own_policy(gate, policy_hash(spec))
    assert not own_policy(gate, policy_hash(GateSpec(checks=[{"metric": "size_ratio", "max": 0.6}])))
