"""Measure: eval (accuracy), bench (speed, memory, cost), compare (both models side by side)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from compress.core import console
from compress.cli.common import (MEASURE, command, default, emit, examples, load_optional, model_dtype, plain,
                                 serving_flags, settings_from, traffic_spec)
from compress.cli.options import (Arrival, DataParallel, GoodputTarget, JsonOut, ModelDtype, Rates, RecipeFile,
                                  ReportOut, Rerun, SetOverrides, SloE2e, SloTpot, SloTtft, StartTimeout,
                                  TensorParallel, Traffic, WorkloadFile)
from compress.core.errors import UsageError
from compress.core.recipe import BenchSpec, EvalSpec


@command("eval", panel=MEASURE, capture=True, epilog=examples(
    "compress eval builtin:tiny-llama",
    "compress eval runs/tiny-llama-int4-gptq/KEY/model --tasks tiny_facts_mc --limit 200",
    "compress eval ./my-model --tasks hellaswag,arc_easy --num-fewshot 0 --batch-size 8 -o acc.json",
    "compress eval dist/tiny-llama-int4-rtn --engine vllm --dtype bfloat16",
    "compress eval builtin:tiny-llama --tasks tiny_facts_gen_3shot,tiny_world --apply-chat-template --limit 0.2",
    "compress eval ./my-model --tasks my_task --include-path ./my-tasks --gen-kwargs max_gen_toks=256",
    "compress eval ./my-model --recipe recipes/tiny-llama-int4-gptq.yaml --set evals.limit=100",
    "compress eval ./my-model --traffic prod-sample.jsonl --recipe my-recipe.yaml --json"))
def eval_(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="builtin:NAME, an artifact or model directory, run:NAME or a hub id.")],
    tasks: Annotated[Optional[str], typer.Option("--tasks", "-t", help="Comma-separated lm-eval task names."
                                                 + default(EvalSpec, "tasks"))] = None,
    num_fewshot: Annotated[Optional[int], typer.Option("--num-fewshot", help="Few-shot examples.  \\[default: the task's own]")] = None,
    limit: Annotated[Optional[float], typer.Option(
        "--limit", help="Documents per task: a count, or a fraction such as 0.25.  \\[default: all]")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Batch size (also of generation)."
                                                      + default(EvalSpec, "batch_size"))] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for sampling and few-shot choice."
                                                + default(EvalSpec, "seed"))] = None,
    apply_chat_template: Annotated[bool, typer.Option(
        "--apply-chat-template", help="Format prompts with the model's chat template.")] = False,
    chat_template: Annotated[Optional[str], typer.Option(
        "--chat-template", metavar="NAME", help="Which of the tokenizer's named chat templates (implies --apply-chat-template).")] = None,
    fewshot_as_multiturn: Annotated[Optional[bool], typer.Option(
        "--fewshot-as-multiturn/--fewshot-in-one-turn",
        help="With a chat template: few-shot examples as separate turns or in the user's message.  "
        "\\[default: --fewshot-as-multiturn]",
        show_default=False)] = None,
    system_instruction: Annotated[Optional[str], typer.Option(
        "--system-instruction", help="A system message before every prompt.  \\[default: none]")] = None,
    gen_kwargs: Annotated[Optional[str], typer.Option(
        "--gen-kwargs", metavar="KEY=VALUE,...", help="Generation settings for generative tasks, e.g. max_gen_toks=64.  \\[default: the task's own]")] = None,
    include_path: Annotated[Optional[list[Path]], typer.Option(
        "--include-path", metavar="DIR", help="A folder of extra lm-eval task YAML files (repeatable).  \\[default: none; the bundled tasks are always there]")] = None,
    backend: Annotated[Optional[str], typer.Option(
        "--engine", "--backend", help="hf (transformers), vllm (lm-eval against a vLLM server from `make engine`; "
        "int4 needs --dtype bfloat16) or llamacpp (lm-eval's gguf model against llama.cpp's server from "
        "`make llamacpp`, for GGUF artifacts)." + default(EvalSpec, "backend"))] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N."
                                                  + default(EvalSpec, "device"))] = None,
    device_map: Annotated[Optional[str], typer.Option(
        "--device-map", help="hf: 'auto' spreads a model too large for one device over GPUs, CPU memory and disk.  "
        "\\[default: one device]")] = None,
    tensor_parallel: TensorParallel = None,
    data_parallel: DataParallel = None,
    dtype: ModelDtype = None,
    traffic: Traffic = None,
    recipe: RecipeFile = None,
    set_: SetOverrides = None,
    rerun: Rerun = False,
    out: ReportOut = None,
    json_: JsonOut = False,
) -> None:
    """Accuracy with lm-evaluation-harness, per-sample results kept; cached by model bytes and settings.
    With --traffic, the model's answers to your own requests instead: their lengths and the recipe's behaviour
    checks (evals.traffic.checks)."""
    from compress.measure.accuracy import check_eval_settings, run_eval
    from compress.inputs import check_model
    from compress.core.recipe import EvalSpec

    flags = {"tasks": [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None, "num_fewshot": num_fewshot,
             "limit": _limit(limit), "batch_size": batch_size, "seed": seed, "backend": backend, "device": device,
             "apply_chat_template": chat_template or (True if apply_chat_template else None), "fewshot_as_multiturn": fewshot_as_multiturn,
             "system_instruction": system_instruction, "gen_kwargs": _gen_kwargs(gen_kwargs),
             "include_path": [str(p) for p in include_path] if include_path else None, "device_map": device_map,
             "tensor_parallel": tensor_parallel, "data_parallel": data_parallel}
    r = load_optional(recipe, set_)
    if traffic is not None:
        check_model(model)
        spec = traffic_spec(r, traffic)
        if backend is not None:  # --engine vllm: the answers come from the served model
            if backend not in ("hf", "vllm"):
                raise UsageError(f"--engine: '{backend}' is not hf or vllm", hint="e.g. --engine vllm")
            spec = spec.model_copy(update={"engine": backend})
        return _traffic_only(model, spec, model_dtype(r, dtype), rerun, out, json_)
    settings = settings_from(EvalSpec, r, "evals", flags)
    check_eval_settings(settings)  # bad inputs fail here, before any compute or write
    check_model(model)
    with console.err.status(f"Evaluating {model} on {', '.join(settings.tasks)}"), console.stdout_to_stderr():
        report, cached = run_eval(model, settings, dtype=model_dtype(r, dtype), rerun=rerun)
    from compress.ship.report import accuracy_table

    if emit(report, cached, out, json_, accuracy_table):
        console.out.print(f"{model}: {sum(t.n_samples for t in report.tasks.values())} per-document results kept")


def _traffic_only(model: str, spec, dtype: str, rerun: bool, out: Optional[Path], json_: bool) -> None:
    """`compress eval MODEL --traffic FILE`: one model's answers to the requests (no pair, so no fidelity)."""
    from compress.measure.compare import traffic_rows
    from compress.measure.fidelity import run_traffic
    from compress.measure.traffic import load_requests
    from compress.ship.report.tables import traffic_table

    load_requests(spec.path, limit=spec.limit, sample=spec.sample, seed=spec.seed)  # a bad file: before any model
    with console.err.status(f"{model} answering {spec.path}"), console.stdout_to_stderr():
        report, cached = run_traffic(model, None, spec, dtype=dtype if dtype != "auto" else "float32", rerun=rerun)
    if out:
        report.save(out)
    if json_:
        console.print_json(report.model_dump(mode="json"))
        return
    lengths = sorted(r.base_tokens for r in report.requests)
    console.out.print(traffic_table(traffic_rows(report), f"{model}, {len(report.requests)} requests"
                                    + (" (cached)" if cached else "")))
    console.out.print(f"{model}: answers of {lengths[0]}-{lengths[-1]} tokens (median {lengths[len(lengths) // 2]}) "
                      f"to {len(lengths)} requests; per-request figures kept, no request text"
                      + ("" if not spec.keep_text else " (keep_text: the texts too)"))


def _limit(value: Optional[float]) -> int | float | None:
    """--limit 200 is a count, --limit 0.25 a fraction of each task."""
    return int(value) if value is not None and value >= 1 and value == int(value) else value


def _gen_kwargs(text: Optional[str]) -> dict[str, Any] | None:
    """``max_gen_toks=64,temperature=0`` -> {"max_gen_toks": 64, "temperature": 0} (values read as YAML)."""
    if text is None:
        return None
    import yaml

    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--gen-kwargs: '{item}' is not KEY=VALUE", hint="e.g. --gen-kwargs max_gen_toks=64,do_sample=false")
        out[key.strip()] = yaml.safe_load(value)
    return out


@command("bench", panel=MEASURE, capture=True, epilog=examples(
    "compress bench builtin:tiny-llama",
    "compress bench runs/tiny-llama-int4-gptq/KEY/model --batch-sizes 1,8 --prompt-tokens 128 --output-tokens 64",
    "compress bench ./my-model --price-per-hour 2.50 -o bench.json",
    "compress bench dist/tiny-llama-int4-rtn --engine vllm --concurrency 1,4,16 --rounds 3",
    "compress bench ./my-model --endpoint http://127.0.0.1:8000 --concurrency 1,8",
    "compress bench dist/my-int4 --engine vllm --workload prod-sample.jsonl --arrival poisson --rates 1,2,4 "
    "--slo-ttft-ms 2000 --slo-tpot-ms 200 --goodput 0.95   # attainment per rate, and goodput",
    "compress bench ./my-model --recipe recipes/tiny-llama-int4-gptq.yaml --set bench.rounds=8",
    "compress bench builtin:tiny-llama --draft run:tiny-llama-distill --repeats 4   # speculative decoding"))
def bench(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="builtin:NAME, an artifact or model directory, run:NAME or a hub id.")],
    engine: Annotated[Optional[str], typer.Option(
        "--engine", help="hf (transformers generate), vllm (a vLLM server from `make engine`) or llamacpp "
        "(llama.cpp's server from `make llamacpp`: GGUF as it is, any other model as its F16 conversion)."
        + default(BenchSpec, "engine"))] = None,
    endpoint: Annotated[Optional[str], typer.Option(
        "--endpoint", metavar="URL", help="Benchmark an OpenAI-compatible server already running at this URL "
        "(MODEL gives the tokenizer and the hash recorded).")] = None,
    draft: Annotated[Optional[str], typer.Option(
        "--draft", metavar="SMALL", help="Speculative decoding: MODEL generating with SMALL as its draft "
        "(transformers assisted generation, batch size 1) against MODEL alone, in alternating rounds: speedup, "
        "acceptance rate, tokens per target forward pass, and whether greedy outputs are identical.")] = None,
    batch_sizes: Annotated[Optional[str], typer.Option(
        "--batch-sizes", "--concurrency", help="Comma-separated batch sizes (hf) or concurrency levels (vllm)."
        + default(BenchSpec, "batch_sizes"))] = None,
    rounds: Annotated[Optional[int], typer.Option("--rounds", help="Rounds; figures carry their spread over them."
                                                  + default(BenchSpec, "rounds"))] = None,
    prompt_tokens: Annotated[Optional[int], typer.Option("--prompt-tokens", help="Prompt length in tokens."
                                                         + default(BenchSpec, "prompt_tokens"))] = None,
    output_tokens: Annotated[Optional[int], typer.Option("--output-tokens", help="Tokens generated per request."
                                                         + default(BenchSpec, "output_tokens"))] = None,
    warmup: Annotated[Optional[int], typer.Option("--warmup", help="Untimed calls per batch size."
                                                  + default(BenchSpec, "warmup"))] = None,
    repeats: Annotated[Optional[int], typer.Option(
        "--repeats", help="Timed calls per batch size (hf), requests per level (vllm), per round."
        + default(BenchSpec, "repeats"))] = None,
    price_per_hour: Annotated[Optional[float], typer.Option(
        "--price-per-hour", help="USD per hour of this machine, for $/1M tokens (set it: the default is a placeholder)."
        + default(BenchSpec, "price_per_hour"))] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N."
                                                  + default(BenchSpec, "device"))] = None,
    tensor_parallel: TensorParallel = None,
    data_parallel: DataParallel = None,
    start_timeout: StartTimeout = None,
    dtype: ModelDtype = None,
    workload: WorkloadFile = None,
    arrival: Arrival = None,
    rates: Rates = None,
    goodput: GoodputTarget = None,
    slo_ttft_ms: SloTtft = None,
    slo_tpot_ms: SloTpot = None,
    slo_e2e_ms: SloE2e = None,
    traffic: Annotated[Optional[Path], typer.Option(
        "--traffic", metavar="FILE", help="With --draft: also the draft's expected acceptance on your own requests "
        "(traffic/acceptance), beside the acceptance measured.  \\[default: the recipe's evals.traffic, else none]")
    ] = None,
    recipe: RecipeFile = None,
    set_: SetOverrides = None,
    rerun: Rerun = False,
    out: ReportOut = None,
    json_: JsonOut = False,
) -> None:
    """Generation benchmark: TTFT, inter-token and end-to-end latency (p50/p90/p99), tok/s, memory, $/1M tokens."""
    from compress.measure.bench import run_bench
    from compress.inputs import check_model
    from compress.core.recipe import BenchSpec

    sizes = None
    if batch_sizes:
        try:
            sizes = [int(x) for x in batch_sizes.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--batch-sizes: '{batch_sizes}' is not a list of integers",
                             hint="e.g. --batch-sizes 1,4,8") from None
    flags = {"engine": engine, "batch_sizes": sizes, "rounds": rounds, "prompt_tokens": prompt_tokens,
             "output_tokens": output_tokens, "warmup": warmup, "repeats": repeats, "price_per_hour": price_per_hour,
             "device": device, "tensor_parallel": tensor_parallel, "data_parallel": data_parallel,
             "start_timeout_s": start_timeout}
    r = load_optional(recipe, set_)
    flags.update(serving_flags(r, workload=workload, arrival=arrival, rates=rates, goodput=goodput,
                               slo_ttft_ms=slo_ttft_ms, slo_tpot_ms=slo_tpot_ms, slo_e2e_ms=slo_e2e_ms))
    if endpoint and (flags.get("workload") or flags.get("arrival", "closed") != "closed") and not engine:
        flags["engine"] = "vllm"  # served either way: an endpoint is a server
    settings = settings_from(BenchSpec, r, "bench", flags)
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise UsageError(f"--endpoint: '{endpoint}' is not an http(s) URL", hint="e.g. --endpoint http://127.0.0.1:8000")
    check_model(model)  # a bad model fails here, before any compute or write
    if draft is not None and settings.engine == "vllm" and not endpoint:
        # vLLM's draft-model speculative decoding: MODEL served alone and with the draft, in
        # alternating rounds, at every concurrency level.
        check_model(draft)
        from compress.measure.bench import run_speed
        from compress.ship.report import served_draft_table

        with console.err.status(f"Serving {model} alone and with draft {draft} ({settings.rounds} rounds)"), \
                console.stdout_to_stderr():
            report, cached = run_speed(model, model, settings, dtype=model_dtype(r, dtype), rerun=rerun,
                                       log=console.detail, draft=draft)
        emit(report, cached, out, json_, served_draft_table)
        return
    if draft is not None:
        check_model(draft)
        if endpoint or settings.batch_sizes != [1]:
            raise UsageError("--draft measures transformers assisted generation one sequence at a time",
                             hint="drop --endpoint and --batch-sizes, or use --engine vllm for concurrency levels")
        from compress.measure.speculative import run_draft
        from compress.ship.report import draft_table

        spec = traffic_spec(r, traffic)
        if spec is not None:
            from compress.measure.traffic import load_requests

            load_requests(spec.path, limit=spec.limit, sample=spec.sample, seed=spec.seed)  # a bad file: first
        with console.err.status(f"Benchmarking {model} with draft {draft} ({settings.rounds} rounds)"), \
                console.stdout_to_stderr():
            report, cached = run_draft(model, draft, settings, dtype=model_dtype(r, dtype), rerun=rerun,
                                       log=console.detail)
        if spec is None:
            emit(report, cached, out, json_, draft_table)
            return
        _draft_with_traffic(model, draft, report, cached, spec, model_dtype(r, dtype), rerun, out, json_)
        return
    where = f"at {endpoint}" if endpoint else f"with {settings.engine}"
    with console.err.status(f"Benchmarking {model} {where} (levels {', '.join(map(str, settings.batch_sizes))}, "
                            f"{settings.rounds} rounds)"), console.stdout_to_stderr():
        report, cached = run_bench(model, settings, dtype=model_dtype(r, dtype), rerun=rerun, endpoint=endpoint)
    from compress.ship.report import bench_table

    if emit(report, cached, out, json_, bench_table):
        m = report.measured
        console.out.print(f"{model}: peak memory {console.fmt_bytes(m.peak_memory_bytes)} ({m.memory_kind}), "
                          f"size {console.fmt_bytes(m.size_bytes)}, device {m.device}"
                          + (f", kernels {', '.join(m.runtime.kernels)}" if m.runtime.kernels else ""))


def _draft_with_traffic(model: str, draft: str, report, cached: bool, spec, dtype: str, rerun: bool,
                        out: Optional[Path], json_: bool) -> None:
    """The acceptance speculative decoding measured, beside what the user's traffic predicts for this draft:
    sum(min(p, q)) per position of MODEL's answers (traffic/acceptance)."""
    from compress.core.stats import mean_bootstrap
    from compress.measure.fidelity import run_traffic
    from compress.ship.report import draft_table

    with console.err.status(f"{model} and {draft} answering {spec.path}"), console.stdout_to_stderr():
        traffic, _ = run_traffic(model, draft, spec, dtype=dtype if dtype != "auto" else "float32", rerun=rerun)
    expected = mean_bootstrap(traffic.values("acceptance"))
    measured = report.figures()["acceptance_rate"]
    if out:
        report.save(out)
    if json_:
        console.print_json({"draft": report.model_dump(mode="json"), "traffic": traffic.model_dump(mode="json"),
                            "acceptance": {"measured": measured.as_dict(), "expected_from_traffic": expected.as_dict()}})
        return
    console.out.print(draft_table(report))
    console.out.print(f"acceptance: {measured.estimate:.1%} [{measured.lower:.1%}, {measured.upper:.1%}] measured in "
                      f"assisted generation; traffic/acceptance {expected.estimate:.1%} [{expected.lower:.1%}, "
                      f"{expected.upper:.1%}] expected per token from {len(traffic.requests)} of your requests "
                      f"(sum of min(p, q) over {model}'s answers)")
    console.out.print("from the cache (--rerun to measure again)" if cached else f"measured in {report.duration_s:.1f} s")


@command("compare", panel=MEASURE, capture=True, epilog=examples(
    "compress compare builtin:tiny-llama runs/tiny-llama-int4-gptq/KEY/model",
    "compress compare ./base ./candidate --recipe recipes/tiny-llama-int4-gptq.yaml --no-bench -o compare.json",
    "compress compare ./base ./candidate --traffic prod-sample.jsonl --no-eval --no-bench"))
def compare(
    baseline: Annotated[str, typer.Argument(metavar="BASELINE", help="The reference model.")],
    candidate: Annotated[str, typer.Argument(metavar="CANDIDATE", help="The model to compare against it.")],
    recipe: RecipeFile = None,
    set_: SetOverrides = None,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip accuracy.")] = False,
    no_bench: Annotated[bool, typer.Option("--no-bench", help="Skip the benchmark.")] = False,
    workload: WorkloadFile = None,
    arrival: Arrival = None,
    rates: Rates = None,
    goodput: GoodputTarget = None,
    slo_ttft_ms: SloTtft = None,
    slo_tpot_ms: SloTpot = None,
    slo_e2e_ms: SloE2e = None,
    traffic: Traffic = None,
    rerun: Rerun = False,
    out: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="FILE",
                                                help="Also write the comparison as JSON to this file.")] = None,
    json_: JsonOut = False,
) -> None:
    """Baseline and candidate side by side, with deltas, for accuracy and speed (reports cached)."""
    from compress.measure.compare import accuracy_rows, speed_rows
    from compress.measure.accuracy import run_eval
    from compress.measure.bench import run_speed
    from compress.inputs import check_model
    from compress.core.recipe import BenchSpec, EvalSpec

    r = load_optional(recipe, set_)
    check_model(baseline)  # bad models fail here, before any compute or write
    check_model(candidate)
    dtype = model_dtype(r, None)
    spec = traffic_spec(r, traffic)
    if spec is not None:
        from compress.measure.traffic import load_requests

        load_requests(spec.path, limit=spec.limit, sample=spec.sample, seed=spec.seed)  # a bad file: before any work
    result: dict = {}
    if not no_eval:
        settings = settings_from(EvalSpec, r, "evals", {})
        with console.err.status("Evaluating both models"), console.stdout_to_stderr():
            a, _ = run_eval(baseline, settings, dtype=dtype, rerun=rerun)
            b, _ = run_eval(candidate, settings, dtype=dtype, rerun=rerun)
        result["accuracy"] = accuracy_rows(a, b)
    if not no_bench:
        settings = settings_from(BenchSpec, r, "bench", serving_flags(
            r, workload=workload, arrival=arrival, rates=rates, goodput=goodput, slo_ttft_ms=slo_ttft_ms,
            slo_tpot_ms=slo_tpot_ms, slo_e2e_ms=slo_e2e_ms))
        with console.err.status(f"Benchmarking both models together ({settings.engine}, {settings.rounds} "
                                "alternating rounds)"), console.stdout_to_stderr():
            speed, _ = run_speed(baseline, candidate, settings, dtype=dtype, rerun=rerun)
        from compress.measure.compare import level_intervals

        result["speed"] = speed_rows(speed, level_intervals(speed))
        from compress.ship.report import speed_heading

        result["speed_measured_with"] = speed_heading(speed)
    if spec is not None:
        from compress.measure.compare import traffic_rows
        from compress.measure.fidelity import run_traffic

        with console.err.status(f"Both models answering {spec.path}"), console.stdout_to_stderr():
            report, _ = run_traffic(baseline, candidate, spec, dtype=dtype if dtype != "auto" else "float32",
                                    rerun=rerun)
        result["traffic"] = traffic_rows(report)
        result["traffic_measured_with"] = (f"{len(report.requests)} requests, {report.engine['name']} "
                                           f"({report.engine['kl']}), {report.seconds:.1f} s")
    if out:
        from compress.core.artifact import write_json

        write_json(out, plain(result))
    if json_:
        console.print_json(plain(result))
        return
    from compress.ship.report import compare_tables

    for t in compare_tables(result):
        console.out.print(t)
