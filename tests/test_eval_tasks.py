"""Gating on the evaluations people use: filters paired on their own, groups resampled within
their subtasks, few-shot and chat-templated prompts proven identical for both models, and every
figure recomputed from per-document results equal to what lm-eval reports."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from compress.core.errors import UsageError
from compress.measure.accuracy import evaluate_model
from compress.measure.lm_results import prompt_hash, to_report
from compress.core.reports import AccuracyReport, GroupMetric, GroupResult, Metric, ModelInfo, Sample, TaskResult
from compress.measure.scoring import recompute
from compress.decide.gate import evaluate, paired_strata
from compress.core.recipe import EvalSpec, GateSpec
from conftest import ROOT, run_cli

BUNDLED = ["tiny_facts_mc", "tiny_bios_ppl", "tiny_facts_gen", "tiny_facts_gen_3shot", "tiny_world"]
GENERATIVE = ROOT / "recipes" / "tiny-llama-int4-rtn-generative.yaml"
INFO = ModelInfo(spec="test", content_hash="0" * 64, size_bytes=1)


def _lm_eval_figures(results: dict) -> dict[str, float]:
    """Every figure lm-eval reported, as ``TASK/METRIC,FILTER``: tasks and groups."""
    out = {}
    for owner, row in {**results["results"], **results.get("groups", {})}.items():
        for key, value in row.items():
            metric, _, filt = key.partition(",")
            if filt and not metric.endswith("_stderr") and isinstance(value, (int, float)):
                out[f"{owner}/{key}"] = float(value)
    return out


@pytest.fixture(scope="module")
def evaluated():
    """Every bundled task on the embedded model, in one lm-eval call: (lm-eval's dict, report)."""
    from compress.core.models import load_model, load_tokenizer

    path = ROOT / "compress" / "assets" / "tiny-llama"
    model, tokenizer = load_model(path, dtype="float32", device="cpu"), load_tokenizer(path)
    # A fraction: the group's subtasks get 50 and 150 documents, so size weighting matters.
    settings = EvalSpec(tasks=BUNDLED, limit=0.2, batch_size=32)
    results = evaluate_model(model, tokenizer, settings)
    return results, to_report(results, INFO, settings.model_dump(mode="json"), "k", 1.0), (model, tokenizer)


def test_every_figure_recomputed_from_documents_equals_lm_evals(evaluated):
    results, report, _ = evaluated
    figures = _lm_eval_figures(results)
    metrics = {name.split("/")[1].split(",")[0] for name in figures}
    # acc_norm, exact_match, an F1-style mean, perplexities and bits per byte, groups both ways
    assert {"acc", "acc_norm", "exact_match", "token_f1", "word_perplexity", "byte_perplexity",
            "bits_per_byte"} <= metrics
    assert {m.weight_by_size for m in report.groups["tiny_world"].metrics.values()} == {True, False}
    sizes = [report.tasks[t].n_samples for t in report.groups["tiny_world"].subtasks]
    assert sizes == [50, 150]
    for name, value in figures.items():
        assert abs(recompute(report, name) - value) <= 1e-9, name
    # and each figure is stored as lm-eval reported it, under the name a gate uses
    assert set(figures) == {f"{o}/{k}" for o, s in [*report.tasks.items(), *report.groups.items()] for k in s.metrics}


def test_filters_are_kept_apart(evaluated):
    _, report, _ = evaluated
    gen = report.tasks["tiny_facts_gen"]
    assert gen.filters == ["flexible-extract", "strict-match"] and gen.n_samples == 200
    for filt in gen.filters:  # one sample per document per filter, never merged
        assert sorted(s.doc_id for s in gen.by_filter(filt)) == list(range(200))
    assert "tiny_facts_gen/exact_match,strict-match" in report.metric_names()
    assert "tiny_facts_mc/acc" in report.metric_names()  # one filter: the bare name is the alias
    assert report.metric("tiny_facts_mc/acc") is report.metric("tiny_facts_mc/acc,none")
    with pytest.raises(KeyError, match="2 filters: name one"):
        report.metric("tiny_facts_gen/exact_match")
    strict = {s.doc_id: s for s in gen.by_filter("strict-match")}
    assert all(s.answer == "[invalid]" or s.answer.isalpha() for s in strict.values())


def test_prompts_are_hashed_and_differ_with_shots_and_chat_template(evaluated):
    _, report, (model, tokenizer) = evaluated
    zero = {s.doc_id: s.prompt_hash for s in report.tasks["tiny_facts_gen"].samples}
    three = {s.doc_id: s.prompt_hash for s in report.tasks["tiny_facts_gen_3shot"].samples}
    assert all(zero.values()) and all(zero[d] != three[d] for d in zero)
    chat = EvalSpec(tasks=["tiny_facts_gen_3shot"], limit=40, apply_chat_template=True,
                    system_instruction="Answer with one word.")
    results = evaluate_model(model, tokenizer, chat)
    raw = results["samples"]["tiny_facts_gen_3shot"][0]
    prompt = raw["arguments"][0][0]
    # the embedded tokenizer's template ran: system line, examples as turns, then the question
    assert prompt.startswith("Answer with one word.\n\nQuestion:") and prompt.count("\nAnswer: ") == 3
    chatted = to_report(results, INFO, {}, "k", 1.0).tasks["tiny_facts_gen_3shot"]
    assert {s.prompt_hash for s in chatted.samples} & set(three.values()) == set()
    assert chatted.samples[0].prompt_hash == prompt_hash(raw["arguments"])
    # the model still answers in its format under the template
    assert chatted.metrics["exact_match,strict-match"].value > 0.3


def test_generation_is_batched_without_changing_answers(evaluated):
    _, report, (model, tokenizer) = evaluated
    one = evaluate_model(model, tokenizer, EvalSpec(tasks=["tiny_facts_gen"], limit=48, batch_size=1))
    batched = report.tasks["tiny_facts_gen"].by_filter("strict-match")[:48]
    singly = {s["doc_id"]: s["filtered_resps"][0] for s in one["samples"]["tiny_facts_gen"] if s["filter"] == "strict-match"}
    assert [singly[s.doc_id] for s in batched] == [s.answer for s in batched]


def test_a_chat_template_the_tokenizer_lacks_is_refused(evaluated):
    _, _, (model, tokenizer) = evaluated
    import copy

    bare = copy.copy(tokenizer)
    bare.chat_template = None
    with pytest.raises(UsageError, match="no chat template"):
        evaluate_model(model, bare, EvalSpec(tasks=["tiny_facts_gen"], limit=2, apply_chat_template=True))


# ------------------------------------------------------------ constructed reports, no model

def _gen_report(strict: list[int], flexible: list[int], prompt: str = "p") -> AccuracyReport:
    """A generative task with two filters: per-document exact_match under each."""
    samples = [Sample(doc_id=i, filter=f, prompt_hash=f"{prompt}{i}", values={"exact_match": v})
               for f, vals in (("strict-match", strict), ("flexible-extract", flexible)) for i, v in enumerate(vals)]
    metrics = {f"exact_match,{f}": Metric(value=sum(v) / len(v), higher_is_better=True, unit="fraction")
               for f, v in (("strict-match", strict), ("flexible-extract", flexible))}
    task = TaskResult(task="gen", n_samples=len(strict), filters=["flexible-extract", "strict-match"],
                      metrics=metrics, samples=samples)
    return AccuracyReport(model=INFO, settings={}, tasks={"gen": task}, environment={}, created="", duration_s=1,
                          cache_key="k")


def _doc_id_only(report: AccuracyReport, metric: str) -> list:
    """The old pairing: samples keyed by document id alone, so one filter overwrites the other."""
    return [s.values[metric] for s in {s.doc_id: s for s in report.tasks["gen"].samples}.values()]


def test_pairing_per_filter_changes_the_verdict():
    n = 400
    base_strict = [1] * 300 + [0] * 100
    cand_strict = [1] * 240 + [0] * 160  # the candidate's replies stopped fitting the strict format
    same = [1] * 300 + [0] * 100  # read flexibly, no answer changed
    base, cand = _gen_report(base_strict, same), _gen_report(cand_strict, same)
    policy = GateSpec(checks=[{"metric": "gen/exact_match,strict-match", "max_regression": 0.05},
                              {"metric": "gen/exact_match,flexible-extract", "max_regression": 0.05}])
    result = evaluate(policy, base, cand, None)
    verdicts = {c.metric: c.verdict for c in result.checks}
    assert verdicts == {"gen/exact_match,strict-match": "FAIL", "gen/exact_match,flexible-extract": "PASS"}
    strict = next(c for c in result.checks if c.metric.endswith("strict-match"))
    assert strict.interval["n"] == n and strict.measured == pytest.approx(0.15)
    # Keyed by document id alone, the flexible samples overwrite the strict ones: no drop seen.
    old_b, old_c = _doc_id_only(base, "exact_match"), _doc_id_only(cand, "exact_match")
    assert len(old_b) == n and sum(old_b) == sum(old_c)
    with pytest.raises(UsageError, match="2 filters: name one"):
        evaluate(GateSpec(checks=[{"metric": "gen/exact_match", "max_regression": 0.05}]), base, cand, None)


def test_a_document_asked_differently_is_not_paired():
    base = _gen_report([1, 0, 1], [1, 0, 1])
    cand = _gen_report([1, 0, 1], [1, 0, 1], prompt="other few-shot draw ")
    with pytest.raises(UsageError, match="asked differently"):
        paired_strata(base, cand, "gen/exact_match,strict-match")


def _group_report(places: list[int], traits: list[int], by_size: bool) -> AccuracyReport:
    tasks = {}
    for name, vals in (("places", places), ("traits", traits)):
        tasks[name] = TaskResult(task=name, n_samples=len(vals), metrics={
            "acc,none": Metric(value=sum(vals) / len(vals), higher_is_better=True, unit="fraction")},
            samples=[Sample(doc_id=i, values={"acc": v}) for i, v in enumerate(vals)])
    a, b = tasks["places"].metrics["acc,none"].value, tasks["traits"].metrics["acc,none"].value
    value = (a * len(places) + b * len(traits)) / (len(places) + len(traits)) if by_size else (a + b) / 2
    group = GroupResult(group="world", subtasks=["places", "traits"], metrics={
        "acc,none": GroupMetric(value=value, higher_is_better=True, weight_by_size=by_size, unit="fraction")})
    return AccuracyReport(model=INFO, settings={}, tasks=tasks, groups={"world": group}, environment={}, created="",
                          duration_s=1, cache_key="k")


@pytest.mark.parametrize("by_size", [True, False])
def test_a_group_is_recomputed_and_resampled_within_its_subtasks(by_size):
    base = _group_report([1] * 45 + [0] * 5, [1] * 90 + [0] * 60, by_size)
    cand = _group_report([1] * 45 + [0] * 5, [1] * 75 + [0] * 75, by_size)
    for r in (base, cand):
        assert recompute(r, "world/acc") == pytest.approx(r.metric("world/acc").value, abs=1e-12)
    result = evaluate(GateSpec(checks=[{"metric": "world/acc", "max_regression": 0.2}]), base, cand, None)
    check = result.checks[0]
    # only traits lost 10 points: a quarter of that by size (150 of 200 documents), half unweighted
    assert check.measured == pytest.approx(0.075 if by_size else 0.05)
    assert check.interval["n"] == 200 and "within 2 subtasks" in check.interval["method"]
    # each subtask keeps its size in every resample: places never moves, so the interval
    # is narrower than the same drop resampled over the pooled documents would be
    assert check.verdict == "PASS"


def test_reports_from_before_filters_still_load(tmp_path):
    old = {"task": "t", "n_samples": 2, "metrics": {"acc": {"value": 0.5, "higher_is_better": True}},
           "samples": [{"doc_id": 0, "values": {"acc": 1}}, {"doc_id": 1, "values": {"acc": 0}}]}
    report = AccuracyReport(model=INFO, settings={}, tasks={"t": TaskResult.model_validate(old)}, environment={},
                            created="", duration_s=1, cache_key="k")
    assert report.metric("t/acc").value == 0.5 and recompute(report, "t/acc") == 0.5


def test_limit_as_a_fraction_and_bad_settings():
    assert EvalSpec(limit=0.25).limit == 0.25 and EvalSpec(limit=200).limit == 200
    assert EvalSpec(limit="0.25").limit == 0.25 and EvalSpec(limit="200").limit == 200  # as --set gives them
    for bad in (1.5, 0, -3, "0", "x"):
        with pytest.raises(ValueError):
            EvalSpec(limit=bad)


def test_include_path_tasks_and_their_content_in_the_cache_key(tmp_path, runs_dir):
    tasks = tmp_path / "my-tasks"
    shutil.copytree(ROOT / "evals", tasks, ignore=shutil.ignore_patterns("tiny_*.yaml", "__pycache__"))
    (tasks / "my_gen.yaml").write_text((ROOT / "evals" / "tiny_facts_gen.yaml").read_text()
                                       .replace("task: tiny_facts_gen", "task: my_gen"))
    args = ["eval", "builtin:tiny-llama", "--tasks", "my_gen", "--include-path", str(tasks), "--limit", "6",
            "--gen-kwargs", "max_gen_toks=4", "--json"]
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    report = json.loads(first.stdout)
    assert report["tasks"]["my_gen"]["n_samples"] == 6 and report["settings"]["gen_kwargs"] == {"max_gen_toks": 4}
    assert report["settings"]["include_path"] != [str(tasks)]  # by content, not by where it lies
    assert report["documents"] == 6 and report["documents_per_s"] > 0
    (tasks / "my_gen.yaml").write_text((tasks / "my_gen.yaml").read_text().replace("max_gen_toks: 8", "max_gen_toks: 6"))
    edited = json.loads(run_cli(*args, cwd=tmp_path).stdout)
    assert edited["cache_key"] != report["cache_key"]


# ---------------------------------------------- end to end, and lm-eval's own command line

@pytest.fixture(scope="module")
def generative_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("generative")
    env = {"COMPRESS_RUNS_DIR": str(root / "runs"), "COMPRESS_CACHE_DIR": str(root / "cache")}
    p = run_cli("run", str(GENERATIVE), "-o", str(root / "dist"), "--junit", str(root / "gate.xml"),
                "--json", env=env, cwd=root)
    return {"root": root, "env": env, "run": p}


def test_a_generative_grouped_few_shot_chat_gate_runs_end_to_end(generative_run):
    p, root = generative_run["run"], generative_run["root"]
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout)
    checks = {c["metric"]: c for c in result["gate"]["checks"]}
    assert set(checks) == {"tiny_facts_gen/exact_match,strict-match", "tiny_facts_gen/exact_match,flexible-extract",
                           "tiny_facts_gen_3shot/exact_match,strict-match", "tiny_world/exact_match,flexible-extract"}
    assert "within 2 subtasks" in checks["tiny_world/exact_match,flexible-extract"]["interval"]["method"]
    assert "exact_match,strict-match" in (root / "gate.xml").read_text()
    card = (root / "dist" / "README.md").read_text()
    assert "tiny_facts_gen/exact_match,strict-match" in card and "tiny_world/exact_match,flexible-extract" in card
    evidence = AccuracyReport.load(next((root / "dist" / "evidence").glob("candidate-accuracy.json")))
    assert evidence.settings["apply_chat_template"] is True and evidence.tasks["tiny_facts_gen_3shot"].num_fewshot == 3


def test_lm_eval_run_directly_on_the_export_gives_the_same_numbers(generative_run, tmp_path):
    assert generative_run["run"].returncode == 0
    export, env = generative_run["root"] / "dist", generative_run["env"]
    evals = yaml.safe_load(GENERATIVE.read_text())["evals"]
    ours = run_cli("eval", str(export), "--recipe", str(GENERATIVE), "--json", env=env)
    assert ours.returncode == 0, ours.stderr[-2000:]
    report = AccuracyReport.model_validate_json(ours.stdout)
    lm_eval = Path(sys.executable).parent / "lm_eval"
    cmd = [str(lm_eval), "run", "--model", "hf", "--model_args", f"pretrained={export},dtype=float32",
           "--device", "cpu", "--include_path", str(ROOT / "evals"), "--tasks", ",".join(evals["tasks"]),
           "--apply_chat_template", "--fewshot_as_multiturn", "--system_instruction", evals["system_instruction"],
           "--gen_kwargs", ",".join(f"{k}={v}" for k, v in evals["gen_kwargs"].items()),
           "--limit", str(evals["limit"]), "--batch_size", str(evals["batch_size"]), "--seed", "1234",
           "--output_path", str(tmp_path / "out")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    theirs = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    figures = _lm_eval_figures(theirs)
    assert len(figures) == 20  # 3 tasks, 2 subtasks and the group: 2 metrics x 2 filters each
    for name, value in figures.items():
        assert report.metric(name).value == pytest.approx(value, abs=1e-9), name
