"""The benchmark measures what it claims: known per-token costs, exact lengths, right percentiles."""
import json
import time

import numpy as np
import pytest

from compress.evals.bench import make_prompts, measure, summarize_batch
from compress.evals.reports import BenchReport, Request, percentile, summarize
from compress.recipe import BenchSpec
from conftest import BUILTIN


@pytest.fixture(scope="module")
def tiny():
    from compress.models import load_model, load_tokenizer

    return load_model(BUILTIN), load_tokenizer(BUILTIN)


def test_percentiles_on_known_data():
    xs = list(range(1, 101))  # 1..100
    assert percentile(xs, 50) == pytest.approx(50.5)
    assert percentile(xs, 90) == pytest.approx(90.1)
    assert percentile(xs, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    rng = np.random.default_rng(0)
    data = rng.exponential(size=997).tolist()
    for q in (50, 90, 99):
        assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)))
    s = summarize([3.0, 1.0, 2.0])
    assert (s.min, s.p50, s.max, s.mean, s.n) == (1.0, 2.0, 3.0, 2.0, 3)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_prompts_are_seeded_exact_length_and_not_special(tiny):
    _, tok = tiny
    a = make_prompts(tok, 1024, 3, 17, seed=5)
    b = make_prompts(tok, 1024, 3, 17, seed=5)
    assert a.shape == (3, 17) and bool((a == b).all())
    assert not set(a.flatten().tolist()) & set(tok.all_special_ids)
    assert not bool((make_prompts(tok, 1024, 3, 17, seed=6) == a).all())


def test_measured_latency_tracks_a_known_per_token_cost(tiny):
    """A forward pass slowed by a fixed sleep: TTFT and inter-token latency must follow it."""
    model, tok = tiny
    prefill_cost, decode_cost = 0.080, 0.030

    def slow(module, args, kwargs):
        ids = kwargs.get("input_ids")
        time.sleep(prefill_cost if ids is not None and ids.shape[1] > 1 else decode_cost)

    handle = model.register_forward_pre_hook(slow, with_kwargs=True)
    try:
        settings = BenchSpec(batch_sizes=[1, 2], prompt_tokens=16, output_tokens=6, warmup=1, repeats=3)
        batches, requests = measure(model, tok, settings, "cpu")
    finally:
        handle.remove()
    assert len(requests) == 6 and all(len(r.token_times_s) == 6 for r in requests)
    for b in batches:
        # The sleep is a floor; the tiny model's own compute adds a few milliseconds on top.
        assert prefill_cost <= b.ttft.p50 < prefill_cost + 0.05, b.ttft
        assert decode_cost <= b.itl.p50 < decode_cost + 0.03, b.itl
        expected_e2e = prefill_cost + 5 * decode_cost
        assert expected_e2e <= b.e2e.p50 < expected_e2e + 0.15
        assert b.decode_tokens_per_s == pytest.approx(b.batch_size * 5 / (b.e2e.mean - b.ttft.mean), rel=0.05)
    # Twice the batch in the same time: twice the throughput, half the cost per token.
    b1, b2 = batches
    assert b2.output_tokens_per_s == pytest.approx(2 * b1.output_tokens_per_s, rel=0.25)


def test_cost_per_million_tokens_from_price_and_throughput():
    reqs = [Request(batch_size=4, repeat=i, ttft_s=0.5, e2e_s=2.0, token_times_s=[0.5, 1.0, 1.5, 2.0])
            for i in range(3)]
    b = summarize_batch(reqs, 4, BenchSpec(batch_sizes=[4], output_tokens=4, price_per_hour=3.6))
    assert b.output_tokens_per_s == pytest.approx(8.0)  # 16 tokens in 2 s
    assert b.decode_tokens_per_s == pytest.approx(4 * 3 / 1.5)
    assert b.cost_per_mtok_usd == pytest.approx(3.6 / 3600 / 8.0 * 1e6)  # $125 per million
    assert b.itl.p50 == pytest.approx(0.5)


def test_bench_report_round_trips_through_json(tmp_path, runs_dir):
    from compress.evals.bench import run_bench

    settings = BenchSpec(batch_sizes=[1], prompt_tokens=8, output_tokens=4, warmup=0, repeats=2)
    report, cached = run_bench("builtin:tiny-llama", settings)
    assert not cached and report.memory_kind == "rss" and report.peak_memory_bytes > report.size_bytes
    assert len(report.requests) == 2 and report.environment["libraries"]["torch"]
    path = tmp_path / "bench.json"
    report.save(path)
    again = BenchReport.load(path)
    assert again == report
    assert json.loads(path.read_text())["batches"][0]["ttft"]["p99"] == report.batches[0].ttft.p99
    second, cached = run_bench("builtin:tiny-llama", settings)
    assert cached and second == report
