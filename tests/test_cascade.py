"""Cascades (`compress cascade SMALL LARGE`): the small model serves what it is sure of, the large
one the rest; the threshold is chosen on half the documents and verified on the other half."""
import json
import math

import numpy as np
import pytest
import yaml

from compress.decide import cascade as cs
from compress.core.reports import AccuracyReport, Metric, ModelInfo, Sample, TaskResult
from compress.core.recipe import GateSpec
from compress.core.stats import FAIL, PASS
from conftest import run_cli


def test_margin_is_the_gap_between_the_two_likeliest_choices():
    assert cs.margin([0.0, 0.0]) == pytest.approx(0.0)
    assert cs.margin([math.log(0.7), math.log(0.2), math.log(0.1)]) == pytest.approx(0.5)
    assert cs.margin([-1.0]) == 1.0


def _report(name: str, correct: list[bool], confidence: list[float]) -> AccuracyReport:
    """A multiple-choice report: each document's right/wrong, and log-likelihoods of two choices
    whose softmax margin is the given confidence (the first choice is the model's answer)."""
    samples = []
    for i, (ok, c) in enumerate(zip(correct, confidence)):
        p = (1 + c) / 2
        samples.append(Sample(doc_id=i, doc_hash=f"d{i}", target=0 if ok else 1, answer=0,
                              loglikelihoods=[math.log(p), math.log(1 - p)], correct=ok, values={"acc": float(ok)}))
    task = TaskResult(task="t", output_type="multiple_choice", n_samples=len(samples),
                      metrics={"acc,none": Metric(value=float(np.mean(correct)), higher_is_better=True)},
                      samples=samples)
    return AccuracyReport(model=ModelInfo(spec=name, content_hash=name * 8, size_bytes=1), settings={},
                          tasks={"t": task}, environment={}, created="2026-11-29", duration_s=1.0, cache_key=name)


def test_a_threshold_chosen_on_every_document_would_pass_where_the_held_out_half_fails():
    """The small model's confident answers are all right on the half that chooses and often wrong
    on the other half: judged on all documents at once, serving everything with it passes the
    10-point bound (7.5 points lost); the held-out half loses 15 and fails."""
    n = 2000
    large = _report("large", [True] * n, [0.9] * n)
    first, second = cs.halves(large, ["t"], seed=0)
    wrong = sorted(second["t"])[: int(0.15 * len(second["t"]))]
    small_correct = [i not in set(wrong) for i in range(n)]
    small = _report("small", small_correct, [0.95] * n)
    policy = GateSpec(checks=[{"metric": "t/acc", "max_regression": 0.10}], test="mcnemar")

    analysis = cs.analyse(small, large, policy, seed=0)
    # Chosen on the first half: everything to the small model (nothing lost there).
    assert analysis.chosen.share == 1.0 and analysis.chosen.verdict == PASS
    # Judged on all documents, that threshold passes: the selection bias the split removes.
    everything = cs.evaluate_point(policy, policy.checks, small, large, ["t"],
                                   {("t", i): 0.95 for i in range(n)}, analysis.chosen.threshold, None, None)
    assert everything.verdict == PASS and everything.checks[0].measured == pytest.approx(0.075)
    # The held-out half decides: FAIL.
    assert analysis.verified.checks[0].measured == pytest.approx(0.15, abs=0.002)
    assert analysis.verified.verdict == FAIL and analysis.verdict == FAIL
    assert any("verified on the other half" in note for note in analysis.notes)


def test_the_largest_share_that_passes_is_chosen_and_verified():
    """Confidence that tracks correctness: the small model is wrong only below 0.5, so the
    cascade keeps its sure answers and escalates the rest."""
    rng = np.random.default_rng(1)
    n = 2000
    conf = rng.random(n)
    small = _report("small", list(conf >= 0.5), list(conf))
    large = _report("large", [True] * n, [0.9] * n)
    policy = GateSpec(checks=[{"metric": "t/acc", "max_regression": 0.02}], test="mcnemar", cascade={"min_share": 0.3})
    analysis = cs.analyse(small, large, policy, min_share=0.3)
    assert analysis.verdict == PASS and 0.35 <= analysis.verified.share <= 0.5, analysis.verified.share
    assert analysis.verified.threshold >= 0.45
    # Serving everything with the small model loses about half the answers: FAIL at that end of the curve.
    assert analysis.curve[0].share == 1.0 and analysis.curve[0].verdict == FAIL
    assert analysis.curve[-1].share == 0.0 and analysis.curve[-1].verdict == PASS
    # Calibration: accuracy rises with confidence.
    acc = [b["accuracy"] for b in analysis.calibration]
    assert acc[0] == 0.0 and acc[-1] == 1.0
    # Blended cost: the small model on every request, the large one on the escalated share.
    costs = {"cost_ratio": {"estimate": 0.4, "lower": 0.35, "upper": 0.45}, "small_per_mtok": 4.0,
             "large_per_mtok": 10.0, "level": 1, "level_word": "batch", "price_per_hour": 1.0}
    priced = cs.analyse(small, large, policy, min_share=0.3, costs=costs)
    share = priced.verified.share
    assert priced.verified.cost_ratio["estimate"] == pytest.approx(0.4 + 1 - share)
    assert cs.blended_per_mtok(costs, share) == pytest.approx(4.0 + (1 - share) * 10.0)
    route = cs.router(priced, "s" * 64, "l" * 64)
    assert route["threshold"] == priced.verified.threshold and route["score"]["name"] == "margin"
    assert route["expected"]["small_share"] == share and route["large"]["content_hash"] == "l" * 64


def test_a_cascade_the_small_model_never_serves_fails():
    """A small model wrong wherever it is sure: only the all-large end passes, and routing
    nothing to the small model is no cascade."""
    n = 400
    small = _report("small", [False] * n, [0.99] * n)
    large = _report("large", [True] * n, [0.9] * n)
    policy = GateSpec(checks=[{"metric": "t/acc", "max_regression": 0.01}], test="mcnemar")
    analysis = cs.analyse(small, large, policy)
    assert analysis.verified.share == 0 and analysis.verdict == FAIL
    assert any("serves no request" in note for note in analysis.notes)
    assert analysis.curve[-1].as_dict()["threshold"] == "inf"  # standard JSON, not Infinity


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    env = {"COMPRESS_RUNS_DIR": str(root / "runs"), "COMPRESS_CACHE_DIR": str(root / "cache")}
    recipe = {"name": "int2", "model": {"id": "builtin:tiny-llama", "dtype": "float32"},
              "method": {"kind": "int4", "algorithm": "rtn", "bits": 2, "group_size": 64}}
    (root / "int2.yaml").write_text(yaml.safe_dump(recipe))
    p = run_cli("quantize", str(root / "int2.yaml"), "-q", env=env, cwd=root)
    assert p.returncode == 0, p.stderr[-2000:]
    out = root / "runs" / "int2"  # a recipe's runs folder stands for its newest artifact
    recipe = {"name": "cascade", "model": {"id": "builtin:tiny-llama", "dtype": "float32"},
              "method": {"kind": "int4"}, "evals": {"tasks": ["tiny_facts_mc", "tiny_bios_ppl"], "limit": 400},
              "gate": {"checks": [{"metric": "tiny_facts_mc/acc", "max_regression": 0.03},
                                  {"metric": "tiny_bios_ppl/word_perplexity", "max_regression": 0.1,
                                   "relative": True}]}}
    (root / "cascade.yaml").write_text(yaml.safe_dump(recipe))
    return {"root": root, "env": env, "small": out, "recipe": root / "cascade.yaml"}


def test_cascade_of_a_2_bit_model_before_its_base_exports_a_router(artifacts):
    root, env = artifacts["root"], artifacts["env"]
    p = run_cli("cascade", str(artifacts["small"]), "builtin:tiny-llama", "--recipe", str(artifacts["recipe"]),
                "--no-bench", "-o", str(root / "router"), "--plot", str(root / "plots"), "--json", env=env, cwd=root)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["verdict"] == "PASS" and out["score"] == "margin"
    assert out["chosen_on_documents"] == 200 and out["verified_on_documents"] == 200
    # The 2-bit model alone loses several points; the cascade keeps part of the traffic on it.
    assert out["small_value"] < out["large_value"] - 0.03
    share = out["verified"]["share"]
    assert 0 < share < 1, share
    assert any("word_perplexity left out" in n for n in out["notes"])
    route = json.loads((root / "router" / "router.json").read_text())
    assert route["format"] == "compress-router/1" and route["threshold"] == out["verified"]["threshold"]
    assert route["expected"]["small_share"] == share
    card = (root / "router" / "README.md").read_text()
    assert f"{share:.1%}" in card and "verified on the other half" in card
    for png in ("cascade-calibration.png", "cascade-curve.png"):
        assert (root / "plots" / png).read_bytes()[:4] == b"\x89PNG"


def test_a_cascade_below_its_required_share_fails_and_exports_nothing(artifacts):
    root, env = artifacts["root"], artifacts["env"]
    p = run_cli("cascade", str(artifacts["small"]), "builtin:tiny-llama", "--recipe", str(artifacts["recipe"]),
                "--no-bench", "--min-share", "0.95", "-o", str(root / "none"), env=env, cwd=root)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "FAIL" in p.stdout and "under the required 95%" in p.stdout
    assert not (root / "none").exists()
    p = run_cli("cascade", str(artifacts["small"]), "builtin:tiny-llama", "--no-bench", env=env, cwd=root)
    assert p.returncode == 2 and "--recipe" in p.stderr


def test_generated_answers_carry_their_mean_token_log_probability(artifacts):
    from compress.measure.accuracy import run_eval
    from compress.core.recipe import EvalSpec

    report, _ = run_eval("builtin:tiny-llama", EvalSpec(tasks=["tiny_facts_gen"], limit=8))
    samples = report.tasks["tiny_facts_gen"].samples
    assert samples and all(s.answer_logprob is not None and s.answer_logprob <= 0 for s in samples)
    scores, kind = cs.document_scores(report, ["tiny_facts_gen"])
    assert kind == "mean_logprob" and len(scores) == 8
