"""lm-eval on the bundled tasks: offline, per-sample, cached, deterministic, with clear errors."""
import json

import pytest

from compress.core.errors import UsageError
from compress.measure.accuracy import run_eval
from compress.measure.tasks import check_tasks
from compress.measure.scoring import recompute
from compress.core.reports import AccuracyReport
from compress.core.recipe import EvalSpec
from conftest import run_cli


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    import os

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("COMPRESS_CACHE_DIR")
    os.environ["COMPRESS_CACHE_DIR"] = str(cache)
    try:
        yield run_eval("builtin:tiny-llama", EvalSpec())
    finally:
        if old is None:
            os.environ.pop("COMPRESS_CACHE_DIR")
        else:
            os.environ["COMPRESS_CACHE_DIR"] = old


def test_embedded_model_accuracy_on_bundled_tasks(baseline):
    report, cached = baseline
    assert not cached
    mc = report.tasks["tiny_facts_mc"]
    acc = report.metric("tiny_facts_mc/acc")
    assert mc.n_samples == 1000 and acc.higher_is_better and mc.filters == ["none"]
    assert acc.value >= 0.75  # the bar for the embedded model
    ppl = report.metric("tiny_bios_ppl/word_perplexity")
    assert not ppl.higher_is_better and 1 < ppl.value < 20
    assert report.duration_s < 300


def test_per_sample_results_recompute_the_metrics(baseline):
    report, _ = baseline
    mc = report.tasks["tiny_facts_mc"]
    s = mc.samples[0]
    assert s.doc_id == 0 and s.doc_hash and len(s.loglikelihoods) == 4
    assert s.answer == max(range(4), key=lambda i: s.loglikelihoods[i])
    assert s.correct == (s.answer == s.target)
    for name in report.metric_names():
        assert recompute(report, name) == pytest.approx(report.metric(name).value, rel=1e-9, abs=1e-12), name


def test_report_round_trip_and_cache(baseline, tmp_path, monkeypatch):
    report, _ = baseline
    path = tmp_path / "acc.json"
    report.save(path)
    assert AccuracyReport.load(path) == report
    assert json.loads(path.read_text())["environment"]["libraries"]["lm-eval"]
    # Same settings: served from the cache. Other settings: measured again.
    import os

    monkeypatch.setenv("COMPRESS_CACHE_DIR", os.environ["COMPRESS_CACHE_DIR"])
    again, cached = run_eval("builtin:tiny-llama", EvalSpec())
    assert cached and again == report
    small, cached = run_eval("builtin:tiny-llama", EvalSpec(tasks=["tiny_facts_mc"], limit=40))
    assert not cached and small.tasks["tiny_facts_mc"].n_samples == 40


def test_same_settings_same_results(baseline):
    report, _ = baseline
    fresh, cached = run_eval("builtin:tiny-llama", EvalSpec(), rerun=True)
    assert not cached
    for task in report.tasks:
        assert [s.values for s in fresh.tasks[task].samples] == [s.values for s in report.tasks[task].samples]


def test_unknown_task_suggests_close_names():
    with pytest.raises(UsageError, match="did you mean: tiny_facts_mc"):
        check_tasks(["tiny_facts_mcq"])


def test_lm_evals_own_tasks_are_indexed_only_for_a_task_the_bundled_ones_lack():
    """Indexing lm-eval's own tasks reads some 14,000 YAML files (seconds): an eval of bundled tasks skips it."""
    from compress.measure.tasks import task_manager

    bundled = task_manager((), ["tiny_facts_mc", "tiny_world"])
    assert {"tiny_facts_mc", "tiny_world", "tiny_world_places"} <= set(bundled.all_tasks)
    assert "hellaswag" not in bundled.all_tasks and len(bundled.all_tasks) < 50
    everything = task_manager((), ["tiny_facts_mc", "hellaswag"])
    assert {"tiny_facts_mc", "hellaswag"} <= set(everything.all_tasks)
    assert task_manager() is everything and task_manager((), ["tiny_bios_ppl"]) is bundled  # one of each per process


@pytest.mark.parametrize("args,code,text", [
    (["eval", "builtin:tiny-llama", "--limit", "0"], 2, "--limit"),
    (["eval", "builtin:tiny-llama", "--batch-size", "-3"], 2, "--batch-size"),
    (["eval", "builtin:tiny-llama", "--tasks", "tiny_facts_mcx", "--limit", "5"], 2, "did you mean"),
    (["eval", "./no/such/model"], 2, "does not exist"),  # bad input, like a missing recipe
    (["eval", "builtin:tiny-llama", "--set", "evals.limit=5"], 2, "no --recipe was given"),
    (["bench", "builtin:tiny-llama", "--set", "bench.rounds=2"], 2, "no --recipe was given"),
    (["bench", "builtin:tiny-llama", "--batch-sizes", "1,x"], 2, "--batch-sizes"),
    (["bench", "builtin:tiny-llama", "--output-tokens", "0"], 2, "--output-tokens"),
    # A batch that cannot fit: one clear error, no retry loop, no report (70 s: make test-slow).
    pytest.param(["bench", "builtin:tiny-llama", "--batch-sizes", "20000", "--prompt-tokens", "8192",
                  "--output-tokens", "2", "--warmup", "0", "--repeats", "1"], 4, "out of memory while benchmarking",
                 marks=pytest.mark.slow),
])
def test_bad_input_is_one_clear_line_and_no_report(tmp_path, runs_dir, args, code, text):
    out = tmp_path / "report.json"
    p = run_cli(*args, "-o", str(out))
    assert p.returncode == code, p.stderr
    assert text in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()
    assert not list(runs_dir.parent.glob("cache/accuracy/*.json"))


def test_compare_two_models_side_by_side(tmp_path, runs_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {id: builtin:tiny-llama}\nmethod: {kind: int4, algorithm: rtn, bits: 2, group_size: null}\n"
                      "evals: {tasks: [tiny_facts_mc], limit: 200}\n"
                      "bench: {batch_sizes: [2], prompt_tokens: 16, output_tokens: 4, warmup: 0, repeats: 2}\n")
    built = run_cli("quantize", str(recipe), "--json")
    assert built.returncode == 0, built.stderr[-2000:]
    candidate = json.loads(built.stdout)["path"]
    p = run_cli("compare", "builtin:tiny-llama", candidate, "--recipe", str(recipe), "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads(p.stdout)
    acc = {r["metric"]: r for r in result["accuracy"]}
    row = acc["tiny_facts_mc/acc"]
    assert row["baseline"] > row["candidate"] and row["worse"] and row["delta"] < -0.05  # 2 bits per channel
    figures = {r["figure"] for r in result["speed"]}
    assert {"TTFT p99 (batch 2)", "output tok/s (batch 2)", "$ / 1M output tokens (batch 2)", "size on disk"} <= figures
    size = next(r for r in result["speed"] if r["figure"] == "size on disk")
    assert size["ratio"] < 0.25
    saved = tmp_path / "compare.json"
    table = run_cli("compare", "builtin:tiny-llama", candidate, "--recipe", str(recipe), "--no-bench", "-o", str(saved))
    assert table.returncode == 0 and "worse" in table.stdout and "tiny_facts_mc/acc" in table.stdout
    assert json.loads(saved.read_text())["accuracy"] == result["accuracy"]  # -o keeps what --json prints


def test_set_changes_the_recipe_eval_reads(tmp_path, runs_dir):
    from conftest import ROOT

    p = run_cli("eval", "builtin:tiny-llama", "--recipe", str(ROOT / "recipes" / "tiny-llama-int4-rtn.yaml"),
                "--set", "evals.limit=5", "--set", "evals.tasks=[tiny_facts_mc]", "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    assert {k: v["n_samples"] for k, v in json.loads(p.stdout)["tasks"].items()} == {"tiny_facts_mc": 5}
