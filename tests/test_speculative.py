"""Speculative decoding with a small model as the draft (`compress bench LARGE --draft SMALL`):
the target decides every token, so greedy outputs must be identical with and without the draft."""
import json

import pytest
import yaml

from compress.core.recipe import BenchSpec, GateSpec
from conftest import run_cli

SETTINGS = BenchSpec(repeats=3, rounds=2, warmup=1, prompt_tokens=32, output_tokens=16)


@pytest.fixture(scope="module")
def int2(tmp_path_factory):
    root = tmp_path_factory.mktemp("draft")
    recipe = {"name": "int2", "model": {"id": "builtin:tiny-llama", "dtype": "float32"},
              "method": {"kind": "int4", "algorithm": "rtn", "bits": 2, "group_size": 64}}
    (root / "int2.yaml").write_text(yaml.safe_dump(recipe))
    p = run_cli("quantize", str(root / "int2.yaml"), "-o", str(root / "int2"), "-q", cwd=root)
    assert p.returncode == 0, p.stderr[-2000:]
    return root / "int2"


def test_greedy_outputs_are_identical_with_a_draft_that_often_disagrees(int2, runs_dir):
    """A 2-bit copy proposes tokens the target often rejects; the target still decides them all."""
    from compress.measure.speculative import run_draft

    report, cached = run_draft("builtin:tiny-llama", str(int2), SETTINGS, dtype="float32")
    assert not cached and report.identical and report.mismatched_prompts == []
    f = report.figures(resamples=200)
    draft_runs = [r for r in report.runs if r.mode == "draft"]
    plain_runs = [r for r in report.runs if r.mode == "plain"]
    assert all(t == 16 for r in report.runs for t in r.tokens)
    # Plain decoding: one target forward per token, no draft. With the draft: fewer target forwards.
    assert all(tf == 16 for r in plain_runs for tf in r.target_forwards)
    assert all(df == 0 for r in plain_runs for df in r.draft_forwards)
    assert 1.0 < f["tokens_per_target_forward"].estimate <= 16
    assert 0.0 <= f["acceptance_rate"].estimate < 1.0
    assert sum(sum(r.draft_forwards) for r in draft_runs) > 0
    assert f["draft_speedup"].lower <= f["draft_speedup"].estimate <= f["draft_speedup"].upper
    # Alternating order: each round measures both, the first round plain first.
    assert [(r.round, r.mode) for r in report.runs] == [(0, "plain"), (0, "draft"), (1, "draft"), (1, "plain")]
    # Cached by both models' bytes and the settings.
    again, cached = run_draft("builtin:tiny-llama", str(int2), SETTINGS, dtype="float32")
    assert cached and again.cache_key == report.cache_key


def test_the_model_as_its_own_draft_is_accepted_almost_always(runs_dir):
    from compress.measure.speculative import run_draft

    report, _ = run_draft("builtin:tiny-llama", "builtin:tiny-llama", SETTINGS, dtype="float32")
    f = report.figures(resamples=100)
    assert report.identical and f["acceptance_rate"].estimate >= 0.95
    assert f["tokens_per_target_forward"].estimate >= 4


def test_the_gate_fails_a_draft_that_changes_the_output(int2, runs_dir):
    from compress.measure.speculative import run_draft
    from compress.decide.gate import draft_check
    from compress.core.recipe import GateCheck

    report, _ = run_draft("builtin:tiny-llama", str(int2), SETTINGS, dtype="float32")
    check = GateCheck(metric="draft_speedup", min=0.01)
    assert draft_check(check, report, GateSpec(checks=[check])).verdict == "PASS"
    changed = report.model_copy(update={"identical": False, "mismatched_prompts": [1]})
    result = draft_check(check, changed, GateSpec(checks=[check]))
    assert result.verdict == "FAIL" and "greedy outputs differ" in result.note


def test_bench_draft_from_the_command_line(int2, runs_dir, tmp_path):
    p = run_cli("bench", "builtin:tiny-llama", "--draft", str(int2), "--repeats", "2", "--rounds", "2",
                "--warmup", "1", "--prompt-tokens", "32", "--output-tokens", "8", "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["kind"] == "draft" and out["identical"] is True and out["draft"]["spec"] == str(int2)
    p = run_cli("bench", "builtin:tiny-llama", "--draft", str(int2), "--batch-sizes", "1,4")
    assert p.returncode == 2 and "one sequence at a time" in p.stderr


def test_a_recipe_gates_its_artifact_as_a_draft_and_the_export_carries_the_evidence(tmp_path, runs_dir):
    recipe = {"name": "draft-gate", "model": {"id": "builtin:tiny-llama", "dtype": "float32"},
              "method": {"kind": "int4", "algorithm": "rtn", "bits": 4, "group_size": 64},
              "bench": {"repeats": 2, "rounds": 2, "warmup": 1, "prompt_tokens": 32, "output_tokens": 8},
              "gate": {"checks": [{"metric": "draft_speedup", "min": 0.01}]}}
    path = tmp_path / "draft-gate.yaml"
    path.write_text(yaml.safe_dump(recipe))
    p = run_cli("run", str(path), "-o", str(tmp_path / "dist"), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert [s["stage"] for s in out["stages"]] == ["artifact", "bench draft", "gate", "export"]
    (check,) = out["gate"]["checks"]
    assert check["metric"] == "draft_speedup" and "acceptance" in check["note"]
    assert (tmp_path / "dist" / "evidence" / "draft.json").exists()
    card = (tmp_path / "dist" / "README.md").read_text()
    assert "## As a speculative-decoding draft" in card and "greedy outputs identical" in card
    # The export's evidence decides again to the same verdict (verify re-gates from the reports).
    v = run_cli("verify", str(tmp_path / "dist"))
    assert v.returncode == 0, v.stderr[-2000:]
