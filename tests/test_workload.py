"""Workloads: what a served benchmark sends (synthetic lengths, a traffic file, a shared prefix), seeded and
described without content; and the command-line flags that set them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compress.core.errors import InputError
from compress.core.recipe import BenchSpec
from compress.measure.workload import Workload

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "compress" / "assets" / "tiny-llama"
SAMPLE = ROOT / "evals" / "traffic" / "tiny-llama-sample.jsonl"


def workload(context: int = 256, **spec) -> Workload:
    return Workload(BenchSpec(engine="vllm", output_tokens=16, prompt_tokens=32, workload=spec), TINY, context=context)


def test_synthetic_lengths_follow_their_distributions_and_are_seeded():
    w = workload(4096, prompt_tokens={"lognormal": {"mean": 60, "sigma": 0.5}}, output_tokens={"uniform": [4, 9]})
    items = w.items(3000, seed=1)
    lengths = np.array([len(i.prompt) for i in items])
    assert lengths.mean() == pytest.approx(60, rel=0.05)
    assert np.log(lengths).std() == pytest.approx(0.5, rel=0.1)
    outs = {i.output_tokens for i in items}
    assert outs == set(range(4, 10))
    again = w.items(3000, seed=1)
    assert [i.prompt for i in again] == [i.prompt for i in items]
    assert [i.prompt for i in w.items(5, seed=2)] != [i.prompt for i in items[:5]]
    special = set(w.banned)
    assert not special & {t for i in items[:50] for t in i.prompt}


def test_a_shared_prefix_goes_before_the_share_asked_and_is_the_same_every_round():
    w = workload(shared_prefix_tokens=100, prefix_share=0.5, prompt_tokens=20, output_tokens=8)
    a, b = w.items(400, seed=0), w.items(400, seed=7)
    carried = [i for i in a + b if i.prefixed]
    assert 0.4 < len(carried) / 800 < 0.6
    assert all(i.prompt[:100] == w.prefix for i in carried) and all(len(i.prompt) == 120 for i in carried)
    assert all(len(i.prompt) == 20 for i in a + b if not i.prefixed)


def test_requests_are_clipped_to_the_context_and_a_prefix_that_leaves_no_room_is_refused():
    w = workload(context=64, prompt_tokens={"uniform": [10, 200]}, output_tokens=16)
    assert max(len(i.prompt) + i.output_tokens for i in w.items(200, seed=0)) <= 64
    with pytest.raises(InputError, match="no room for a prompt"):
        workload(context=64, shared_prefix_tokens=60, output_tokens=16)


def test_a_traffic_file_is_rendered_and_each_request_keeps_its_own_max_tokens(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "The capital of France is", "max_tokens": 5}\n'
                    '{"messages": [{"role": "user", "content": "Name a colour."}]}\n')
    w = workload(path=str(path))
    items = w.items(10, seed=0)
    assert {i.output_tokens for i in items} == {5, 16}  # its own max_tokens, else bench.output_tokens
    described = w.describe()
    assert described["source"] == "file" and described["sample"] == 2 and "path" not in described["spec"]
    assert "France" not in json.dumps(described) and described["file_sha256"]
    assert described == workload(path=str(path)).describe()  # the hash is stable
    path.write_text('{"prompt": "' + "word " * 400 + '"}\n')
    with pytest.raises(InputError, match=r"t.jsonl:1: .*does not fit"):
        workload(path=str(path))


def test_without_a_workload_prompts_are_the_earlier_fixed_length_ones():
    from compress.measure.engines.client import make_prompts

    w = Workload(BenchSpec(engine="vllm", prompt_tokens=12), TINY, context=256)
    assert w.describe() is None
    assert [i.prompt for i in w.items(3, seed=5)] == make_prompts(w.vocab_size, w.banned, 3, 12, 5)


@pytest.mark.parametrize("args, words", [
    (["--rates", "1,x"], "--rates: '1,x' is not a list of numbers"),
    (["--rates", "1,-2"], "not positive"),
    (["--arrival", "bursty"], "--arrival: 'bursty' is not closed, poisson or constant"),
    (["--workload", "nowhere.jsonl"], "--workload: nowhere.jsonl is not a file"),
    (["--engine", "vllm", "--rates", "1", "--goodput", "0.9"], "add slo"),
    (["--arrival", "poisson", "--engine", "vllm"], "needs rates"),
])
def test_bad_serving_flags_are_one_line_errors(args, words):
    from conftest import run_cli

    result = run_cli("bench", "builtin:tiny-llama", *args)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and not result.stdout
