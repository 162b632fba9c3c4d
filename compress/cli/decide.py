"""Decide: gate (a verdict from stored reports) and report (every run side by side)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from compress.core import console
from compress.cli.common import DECIDE, command, examples, load_optional, print_gate, run_recipe, traffic_overrides
from compress.cli.options import Force, JsonOut, RecipeFile, Rerun, SetOverrides
from compress.core.errors import UsageError


@command("gate", panel=DECIDE, epilog=examples(
    "compress gate runs/tiny-llama-int4-gptq",
    "compress gate runs/tiny-llama-int4-gptq/KEY --recipe stricter.yaml --json",
    "compress gate runs/tiny-llama-int4-gptq --set gate.checks='[{metric: tiny_facts_mc/acc, max_regression: 0.01}]'"))
def gate(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A run directory (runs/NAME/KEY, or runs/NAME for its newest) with stored reports.")],
    recipe: Annotated[Optional[Path], typer.Option("--recipe", "-r", metavar="FILE", help="Take the gate policy from this recipe instead.  \\[default: the run's own recipe]")] = None,
    set_: SetOverrides = None,
    json_: JsonOut = False,
) -> None:
    """Decide PASS / FAIL / INCONCLUSIVE from a run's stored reports; exit 0, 1 or 3."""
    from compress.core.models import newest_run
    from compress.pipeline import gate_run

    run_dir = newest_run(run_dir)
    if not (run_dir / "reports").is_dir():
        raise UsageError(f"{run_dir} has no reports/", hint="run `compress run RECIPE` first")
    policy = run_recipe(run_dir, recipe, set_)
    source = str(recipe) if recipe else "recipe"
    result = gate_run(run_dir, policy, policy_source=source + (f" with --set {' '.join(set_)}" if set_ else ""))
    if json_:
        console.print_json(result.model_dump(mode="json"))
    else:
        print_gate(result)
    raise typer.Exit(result.exit_code)


@command("report", panel=DECIDE, epilog=examples(
    "compress report runs", "compress report runs --plot runs.png --json", "compress report runs -o runs.json"))
def report(
    runs_dir: Annotated[Path, typer.Argument(metavar="DIR", help="Directory of runs.")] = Path("runs"),
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="PNG", help="Plot accuracy against size and cost, with "
                                                 "intervals (Pareto front marked).")] = None,
    out: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="FILE",
                                                help="Also write the rows as JSON to this file.")] = None,
    json_: JsonOut = False,
) -> None:
    """One table of every run: method, size, accuracy, latency, $/1M tokens, verdict; optional Pareto plot."""
    from compress.ship.report import collect_runs, pareto_plot, runs_table

    if not runs_dir.is_dir():
        raise UsageError(f"no runs directory {runs_dir}", hint="run a recipe first: compress run RECIPE")
    rows = collect_runs(runs_dir)
    if out:
        from compress.core.artifact import write_json

        write_json(out, rows)
    if not rows:
        if json_:
            console.print_json([])  # a script reading the JSON gets an empty list, not nothing
        else:
            console.out.print(f"No gated runs under {escape(str(runs_dir))} yet (compress run RECIPE makes one).")
        return
    if plot:
        pareto_plot(rows, plot)
    if json_:
        console.print_json(rows)
        return
    console.out.print(runs_table(rows, plot=plot))



@command("cascade", panel=DECIDE, capture=True, epilog=examples(
    "compress cascade dist/tiny-llama-int4-gptq builtin:tiny-llama --recipe recipes/tiny-llama-int4-gptq.yaml",
    "compress cascade run:tiny-llama-distill builtin:tiny-llama --recipe recipes/tiny-llama-distill.yaml "
    "--min-share 0.5 -o dist/cascade --plot runs/cascade",
    "compress cascade SMALL LARGE --recipe R --set gate.checks='[{metric: tiny_facts_mc/acc, max_regression: 0.01}]' "
    "--no-bench --json",
    "compress cascade SMALL LARGE --recipe R --traffic prod-sample.jsonl "
    "--set gate.checks='[{metric: traffic/greedy_match, min: 0.95}]'")
    + "\nExit codes: 0 PASS (router exported with -o), 1 FAIL, 2 bad usage, 3 INCONCLUSIVE, 4 runtime failure.\n")
def cascade(
    small: Annotated[str, typer.Argument(metavar="SMALL", help="The cheap model: builtin:NAME, a model or artifact "
                                         "directory, run:NAME or a hub id.")],
    large: Annotated[str, typer.Argument(metavar="LARGE", help="The model it escalates to.")],
    recipe: RecipeFile = None,
    set_: SetOverrides = None,
    min_share: Annotated[Optional[float], typer.Option(
        "--min-share", help="The least share of requests the small model must serve (gate.cascade.min_share).  "
        "\\[default: the recipe's, else 0]")] = None,
    no_bench: Annotated[bool, typer.Option("--no-bench",
                                           help="Leave out cost (no benchmark of the two models).")] = False,
    traffic: Annotated[Optional[Path], typer.Option(
        "--traffic", metavar="FILE", help="Route your own requests instead of a labeled task: SMALL keeps a "
        "request when it is confident, and the cascade is held to traffic/greedy_match (the share of answers that "
        "stay LARGE's).  \\[default: the recipe's evals.traffic when its gate checks traffic/greedy_match]")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="DIR",
        help="On PASS, export the router (router.json), the analysis and a card here.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="DIR", help="Write cascade-calibration.png and "
                                                 "cascade-curve.png here.")] = None,
    rerun: Rerun = False,
    force: Force = False,
    json_: JsonOut = False,
) -> None:
    """Serve with SMALL, escalate to LARGE when unsure: threshold chosen on half the documents, verified on the rest."""
    from compress.decide import cascade as cs
    from compress.core.artifact import atomic_dir, write_bytes_atomic, write_json
    from compress.measure.compare import efficiency_metrics, level_word
    from compress.measure.accuracy import run_eval
    from compress.measure.bench import run_speed
    from compress.decide.gate import EXIT_CODES
    from compress.core.stats import PASS

    if recipe is None:
        raise UsageError("a cascade is held to a gate's quality checks, and no --recipe was given",
                         hint="pass --recipe FILE (its evals, bench and gate.checks apply)")
    r = load_optional(recipe, traffic_overrides(set_, traffic))
    if out is not None and out.exists() and not force:
        raise UsageError(f"{out} exists", hint="pass another -o, or --force to replace it")
    share = min_share if min_share is not None else (r.gate.cascade.min_share if r.gate.cascade else 0.0)
    if not 0 <= share <= 1:
        raise UsageError(f"--min-share {share} is not a fraction", hint="give a number from 0 to 1, e.g. 0.5")
    small, large = _model_in(small), _model_in(large)
    common = dict(dtype=r.model.dtype, trust_remote_code=r.model.trust_remote_code, rerun=rerun)

    def timed(stages, name, fn):
        t = time.time()
        stages.start(name)
        value, reused = fn()
        stages.end(name, time.time() - t, reused)
        return value

    costs = None
    spec = r.evals.traffic
    on_traffic = spec is not None and (traffic is not None or any(
        c.metric == f"{cs.TRAFFIC_TASK}/greedy_match" for c in r.gate.checks))
    policy = cs.traffic_policy(r.gate) if on_traffic else r.gate
    with console.Stages(3 - no_bench - on_traffic, "cascade") as stages:
        if on_traffic:
            from compress.measure.fidelity import run_traffic

            report = timed(stages, "traffic both", lambda: run_traffic(
                large, small, spec, dtype=r.model.dtype, rerun=rerun, log=console.detail))
            small_report, large_report = cs.traffic_reports(report)
        else:
            small_report = timed(stages, "eval small", lambda: run_eval(small, r.evals, **common))
            large_report = timed(stages, "eval large", lambda: run_eval(large, r.evals, **common))
        if not no_bench:
            # Both models in the same time window, alternating rounds (large = baseline).
            speed = timed(stages, "bench both", lambda: run_speed(large, small, r.bench, log=console.detail, **common))
            figures = efficiency_metrics(speed, confidence=r.gate.confidence)
            ratio = figures["cost_ratio"]
            small_cost = figures["cost_per_mtok"].estimate
            costs = {"cost_ratio": {"estimate": ratio.estimate, "lower": ratio.lower, "upper": ratio.upper},
                     "small_per_mtok": small_cost, "large_per_mtok": small_cost / ratio.estimate,
                     "level": max(b.batch_size for b in speed.candidate.batches), "level_word": level_word(speed),
                     "price_per_hour": float(speed.settings.get("price_per_hour", 1.0))}
    analysis = cs.analyse(small_report, large_report, policy, min_share=share, costs=costs)
    if plot:
        cs.plots(analysis, plot)
    exported = None
    if out is not None and analysis.verdict == PASS:
        with atomic_dir(out, overwrite=force) as tmp:
            write_json(tmp / "router.json", cs.router(analysis, small_report.model.content_hash,
                                                      large_report.model.content_hash))
            write_json(tmp / "cascade.json", summary_data(analysis))
            write_bytes_atomic(tmp / "README.md", cs.card(analysis).encode())
            cs.plots(analysis, tmp)
        exported = out
    if json_:
        console.print_json({**summary_data(analysis), "exported_to": str(exported) if exported else None})
    else:
        print_cascade(analysis, exported)
    raise typer.Exit(EXIT_CODES[analysis.verdict])


def _model_in(spec: str) -> str:
    """A run directory (runs/NAME/KEY, or runs/NAME for its newest) stands for its artifact."""
    from compress.core.models import newest_run

    path = newest_run(Path(spec))
    return str(path / "model") if (path / "model" / "config.json").exists() else spec


def summary_data(analysis) -> dict:
    """The analysis as JSON: the verdict, the chosen and verified points, the curve, calibration."""
    return {"verdict": analysis.verdict, "metric": analysis.metric, "score": analysis.score,
            "small": analysis.small, "large": analysis.large, "small_value": analysis.small_value,
            "large_value": analysis.large_value, "min_share": analysis.min_share,
            "chosen_on_documents": analysis.chosen_on, "verified_on_documents": analysis.verified_on,
            "chosen": analysis.chosen.as_dict() if analysis.chosen else None,
            "verified": analysis.verified.as_dict() if analysis.verified else None,
            "costs": analysis.costs, "notes": analysis.notes, "calibration": analysis.calibration,
            "curve": [p.as_dict() for p in analysis.curve]}


def print_cascade(analysis, exported) -> None:
    from compress.decide.cascade import blended_per_mtok

    rows = []
    step = max(1, len(analysis.curve) // 10)
    for p in analysis.curve[::step] + ([analysis.curve[-1]] if (len(analysis.curve) - 1) % step else []):
        rows.append([f"{p.threshold:.4g}", f"{p.share:.1%}", f"{p.value:.4g}",
                     next((c.shown for c in p.checks), ""), p.verdict,
                     f"{p.cost_ratio['estimate']:.3f}x" if p.cost_ratio else "-"])
    console.out.print(console.table(f"Cascade {analysis.small} -> {analysis.large} (all documents; "
                                    f"{analysis.score})", ["threshold", "small serves", analysis.metric,
                                                           "vs large", "verdict", "cost vs large"], rows))
    v = analysis.verified
    if analysis.chosen is not None:
        cost = (f"; cost {v.cost_ratio['estimate']:.3f}x the large model's "
                f"(${blended_per_mtok(analysis.costs, v.share):.4g} per 1M tokens)" if analysis.costs else "")
        console.out.print(f"chosen threshold {v.threshold:.4g} on {analysis.chosen_on} documents "
                          f"(small serves {analysis.chosen.share:.1%} there); verified on the other "
                          f"{analysis.verified_on}: small serves {v.share:.1%}, "
                          f"{', '.join(f'{c.metric} {c.shown} {c.verdict}' for c in v.checks)}{cost}")
    for note in analysis.notes:
        console.out.print(f"note: {note}")
    colour = {"PASS": "green", "FAIL": "red", "INCONCLUSIVE": "yellow"}[analysis.verdict]
    console.out.print(f"[{colour}]{analysis.verdict}[/{colour}]"
                      + (f" · router exported to {exported}" if exported else ""))


def _waterfall(paths: list[Path], load, settings, *, concurrency: int | None, cold_start: float | None,
               out: Optional[Path], json_: bool) -> None:
    """``compress plan RUN RUN ...``: the top-down waterfall, printed (or as JSON) and written with -o."""
    from compress.decide import waterfall as wf

    layers = wf.read_layers(paths, concurrency=concurrency)
    if cold_start is not None:
        for layer in layers:
            layer.service.cold_start_s = cold_start
    result = wf.waterfall(layers, load, settings, log=console.step, fit=concurrency is None)
    if out is not None:
        from compress.core.artifact import write_json

        write_json(out, result)
        result["written"] = [str(out)]
    if json_:
        console.print_json(result)
        return
    console.out.print(wf.waterfall_table(result))
    for row in result["rows"]:
        if not row["counted"]:
            console.out.print(f"not counted: {escape(row['layer'])}: {escape(row['why_not'])}")
    for note in result["notes"]:
        console.out.print(f"note: {escape(note)}")
    if out is not None:
        console.out.print(f"wrote {escape(str(out))}")


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not comma-separated numbers", hint=f"e.g. {flag} 0.5,1") from None


@command("plan", panel=DECIDE, epilog=examples(
    "compress plan runs/llama-1b-int4-rtn --traffic day.csv --plot plan.png",
    "compress plan dist/llama-1b-int4-rtn --traffic day.csv --spot 0.45 --preemption-rate 0.05 --emit-k8s k8s/",
    "compress plan runs/llama-1b-int4-rtn --rate 5 --replicas 3 --slo-wait-p99 2 --json",
    "compress plan runs/llama-1b-int4-system-prompt runs/llama-1b-int4-prefix-caching --traffic day.csv",
    "compress plan --service-time exp:0.5 --concurrency-per-replica 4 --rate 20 --json")
    + "\nA traffic file has one `time,requests per second` line per step (time in seconds or HH:MM; each rate "
    "holds until the next line), or one arrival time per line (a trace).\n")
def plan(
    evidence: Annotated[Optional[list[Path]], typer.Argument(metavar="[EVIDENCE]...", help="What one replica can "
                        "take: a run directory (runs/NAME/KEY, or runs/NAME for its newest), an export, or a "
                        "speed.json of a served benchmark. Several: the top-down waterfall, each run's cost at the "
                        "same traffic and SLO, from the first run's base.")] = None,
    service_time: Annotated[Optional[str], typer.Option("--service-time", metavar="DIST", help="Instead of "
                            "EVIDENCE, a synthetic replica: exp:MEAN_S, lognormal:MEAN_S,SIGMA or const:S (needs "
                            "--concurrency-per-replica).")] = None,
    concurrency: Annotated[Optional[int], typer.Option("--concurrency-per-replica", metavar="N", help="Requests a "
                           "replica serves at once.  \\[default: EVIDENCE's largest measured level whose requests kept "
                           "its SLO]")] = None,
    output_tokens: Annotated[int, typer.Option("--output-tokens", metavar="N", help="Synthetic replica: output "
                             "tokens per request (for $ per 1M tokens).")] = 256,
    side: Annotated[str, typer.Option("--side", metavar="SIDE", help="Which model of EVIDENCE's benchmark: "
                    "candidate or baseline.")] = "candidate",
    cold_start: Annotated[Optional[float], typer.Option("--cold-start", metavar="SECONDS", help="From a replica's "
                          "start to its first request.  \\[default: EVIDENCE's measured server start, else "
                          "120]")] = None,
    traffic: Annotated[Optional[Path], typer.Option("--traffic", metavar="FILE", help="A traffic profile "
                       "(time,rate lines) or a trace (arrival times).")] = None,
    rate: Annotated[Optional[float], typer.Option("--rate", metavar="RPS", help="A steady Poisson load instead of "
                    "--traffic, in requests per second.")] = None,
    duration: Annotated[Optional[float], typer.Option("--duration", metavar="SECONDS", help="How long to simulate "
                        "(--rate; cuts a --traffic file).  \\[default: 3600 for --rate, the file's length]")] = None,
    replicas: Annotated[Optional[int], typer.Option("--replicas", metavar="N", help="A fixed fleet of N "
                        "(static only, no autoscaling).  \\[default: enough for the peak]")] = None,
    policy: Annotated[Optional[str], typer.Option("--policy", metavar="P1,P2", help="static, utilization, "
                      "queue-depth.  \\[default: all three; static alone with --replicas]")] = None,
    slo_wait: Annotated[Optional[float], typer.Option("--slo-wait-p99", metavar="SECONDS", help="A request "
                        "attains when it waited at most this long (and kept the run's own SLO).")] = None,
    attainment: Annotated[float, typer.Option("--attainment", metavar="SHARE", help="The share of requests that "
                          "must attain; sizes the static fleet and picks the queue-depth target.")] = 0.99,
    target_utilization: Annotated[str, typer.Option("--target-utilization", metavar="F1,F2", help="utilization: "
                                  "target busy fractions (one policy each).")] = "0.7",
    target_waiting: Annotated[Optional[str], typer.Option("--target-waiting", metavar="W1,W2", help="queue-depth: "
                              "target waiting requests per replica beyond a full batch (negative keeps slots "
                              "free); one policy each.  \\[default: -N/4, -N/8, 0 for concurrency N]")] = None,
    queue_metric: Annotated[str, typer.Option("--queue-metric", metavar="METRIC", help="queue-depth reads "
                            "in-system (waiting + running) or waiting alone.")] = "in-system",
    interval: Annotated[float, typer.Option("--interval", metavar="SECONDS", help="How often the autoscaler "
                        "reads its metric (KEDA pollingInterval).")] = 15.0,
    scale_up_delay: Annotated[float, typer.Option("--scale-up-delay", metavar="SECONDS", help="Scale-up "
                              "stabilisation window.")] = 0.0,
    scale_down_delay: Annotated[float, typer.Option("--scale-down-delay", metavar="SECONDS", help="Scale-down "
                                "stabilisation window.")] = 300.0,
    min_replicas: Annotated[int, typer.Option("--min-replicas", metavar="N", help="Autoscaled fleets' "
                            "least size.")] = 1,
    max_replicas: Annotated[Optional[int], typer.Option("--max-replicas", metavar="N", help="Autoscaled fleets' "
                            "largest size.  \\[default: twice the static fleet]")] = None,
    price: Annotated[Optional[float], typer.Option("--price", metavar="USD", help="Price of a replica-hour.  "
                     "\\[default: EVIDENCE's bench.price_per_hour, else 1]")] = None,
    spot: Annotated[Optional[float], typer.Option("--spot", metavar="USD", help="Move --spot-share of the fleet to "
                    "spot capacity at this price per replica-hour.")] = None,
    preemption_rate: Annotated[float, typer.Option("--preemption-rate", metavar="PER_HOUR", help="Spot "
                               "preemptions per replica-hour (the requests in flight are served again).")] = 0.0,
    spot_share: Annotated[float, typer.Option("--spot-share", metavar="SHARE", help="The share of replicas on "
                          "spot.")] = 0.5,
    repeats: Annotated[int, typer.Option("--repeats", metavar="N", help="Seeded runs per policy (the intervals "
                       "come from them).")] = 3,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="The first run's seed.")] = 0,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="PNG", help="Plot load, replicas and p99 "
                    "latency over time.")] = None,
    emit_k8s: Annotated[Optional[Path], typer.Option("--emit-k8s", metavar="DIR", help="Write a Deployment (vllm "
                        "serve) and a KEDA ScaledObject with the chosen queue-depth target, validated.")] = None,
    image: Annotated[Optional[str], typer.Option("--image", metavar="IMAGE", help="--emit-k8s: the vLLM image.  "
                     "\\[default: vllm/vllm-openai:v0.32.0]")] = None,
    prometheus: Annotated[Optional[str], typer.Option("--prometheus", metavar="URL", help="--emit-k8s: the "
                          "Prometheus KEDA queries.  \\[default: "
                          "http://prometheus-operated.monitoring.svc:9090]")] = None,
    gpus: Annotated[Optional[int], typer.Option("--gpus", metavar="N", help="--emit-k8s: GPUs per replica.  "
                    "\\[default: the benchmark's tensor parallel size]")] = None,
    out: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="FILE",
                                                help="Also write the plan as JSON to this file.")] = None,
    json_: JsonOut = False,
) -> None:
    """The fleet bill: replicas serving a day of traffic under static, utilization and queue-depth scaling, with
    replica-hours, $ per day and per 1M tokens, SLO attainment and tail latency (a seeded simulation). Given
    several runs: the top-down waterfall, each layer's cost on the same traffic beside the gate it passed."""
    from compress.decide import plan as pl
    from compress.decide.fleet_spec import POLICIES, Scaling, Spot
    from compress.decide.service import fit_concurrency, service_from_evidence, synthetic

    evidence = evidence or None
    several = evidence is not None and len(evidence) > 1
    if several:
        given = [flag for flag, value in (("--service-time", service_time), ("--replicas", replicas),
                                          ("--policy", policy), ("--emit-k8s", emit_k8s), ("--plot", plot))
                 if value is not None] + (["--side"] if side != "candidate" else [])
        if given:
            raise UsageError(f"{given[0]} does not apply to a waterfall of several runs",
                             hint="give one run for a fleet plan with it, or leave it out")
    if (evidence is None) == (service_time is None):
        raise UsageError("give one replica: EVIDENCE (a run, an export or a speed.json) or --service-time",
                         hint="e.g. compress plan runs/NAME --rate 5, or --service-time exp:0.5 "
                         "--concurrency-per-replica 4")
    if (traffic is None) == (rate is None):
        raise UsageError("give one load: --traffic FILE or --rate RPS", hint="e.g. --rate 5, or --traffic day.csv "
                         "with time,rate lines")
    for flag, value in (("--concurrency-per-replica", concurrency), ("--replicas", replicas),
                        ("--repeats", repeats), ("--min-replicas", min_replicas), ("--max-replicas", max_replicas),
                        ("--output-tokens", output_tokens)):
        if value is not None and value < (0 if flag == "--min-replicas" else 1):
            raise UsageError(f"{flag} {value} is not a positive count", hint=f"e.g. {flag} 4")
    for flag, value in (("--cold-start", cold_start), ("--interval", interval), ("--scale-up-delay", scale_up_delay),
                        ("--scale-down-delay", scale_down_delay), ("--price", price), ("--spot", spot),
                        ("--preemption-rate", preemption_rate), ("--slo-wait-p99", slo_wait)):
        if value is not None and (not 0 <= value < float("inf") or (flag == "--interval" and value == 0)):
            raise UsageError(f"{flag} {value} is not a {'positive' if flag == '--interval' else 'non-negative'} "
                             "number", hint=f"e.g. {flag} 1")
    if not 0 < attainment < 1 or not 0 <= spot_share <= 1:
        bad = ("--attainment", attainment) if not 0 < attainment < 1 else ("--spot-share", spot_share)
        raise UsageError(f"{bad[0]} {bad[1]} is not a share", hint=f"give one between 0 and 1, e.g. {bad[0]} 0.9")
    if side not in ("candidate", "baseline") or queue_metric not in ("in-system", "waiting"):
        raise UsageError(f"--side {side} / --queue-metric {queue_metric}: not known",
                         hint="--side candidate|baseline, --queue-metric in-system|waiting")
    kinds = tuple(p.strip() for p in (policy or ("static" if replicas else ",".join(POLICIES))).split(",") if p.strip())
    unknown = [k for k in kinds if k not in POLICIES]
    if unknown or not kinds:
        raise UsageError(f"unknown policy {unknown[0] if unknown else policy!r}",
                         hint=f"available: {', '.join(POLICIES)}")
    if replicas and kinds != ("static",):
        raise UsageError("--replicas fixes the fleet, and autoscaling policies change it",
                         hint="leave out --policy (or give --policy static), or leave out --replicas")
    if service_time is not None:
        if concurrency is None:
            raise UsageError("--service-time needs --concurrency-per-replica", hint="e.g. --concurrency-per-replica 4")
        service = synthetic(service_time, concurrency=concurrency, output_tokens=output_tokens, cold_start_s=cold_start)
    elif len(evidence) == 1:
        service = service_from_evidence(evidence[0], side=side, concurrency=concurrency)
        if concurrency is None:
            service = fit_concurrency(service, attainment)
        if cold_start is not None:
            service.cold_start_s = cold_start
    load = pl.steady_traffic(rate, duration or 3600.0) if rate is not None else pl.read_traffic(traffic, duration)
    settings = pl.PlanSettings(
        policies=kinds, target_utilization=_floats(target_utilization, "--target-utilization"),
        target_waiting=_floats(target_waiting, "--target-waiting"), queue_metric=queue_metric, replicas=replicas,
        scaling=Scaling(interval_s=interval, scale_up_delay_s=scale_up_delay, scale_down_delay_s=scale_down_delay,
                        min_replicas=min_replicas),
        max_replicas=max_replicas, slo_wait_s=slo_wait, attainment=attainment, price_per_hour=price,
        spot=Spot(spot, preemption_rate, spot_share) if spot is not None else None, repeats=repeats, seed=seed)
    if several:
        _waterfall(evidence, load, settings, concurrency=concurrency, cold_start=cold_start, out=out, json_=json_)
        return
    result = pl.plan(service, load, settings, log=console.step)
    written = []
    if emit_k8s is not None:
        from compress.ship import k8s

        docs = k8s.manifests(service, result, image=image or k8s.DEFAULT_IMAGE,
                             prometheus=prometheus or k8s.DEFAULT_PROMETHEUS, gpus=gpus)
        written += [str(p) for p in k8s.write_manifests(emit_k8s, docs)]
    if plot is not None:
        pl.plot(result, plot)
        written.append(str(plot))
    if out is not None:
        from compress.core.artifact import write_json

        write_json(out, result)
        written.append(str(out))
    result["written"] = written
    if json_:
        console.print_json(result)
        return
    console.out.print(pl.plan_table(result))
    for note in result["notes"]:
        console.out.print(f"note: {escape(note)}")
    if result.get("erlang_c"):
        e = result["erlang_c"]
        fleet = f"{e['replicas']} replica{'s' if e['replicas'] != 1 else ''}"
        console.out.print(f"steady load on {fleet}: simulated P(wait) {result['wait_probability']:.3g}, "
                          f"mean wait {result['wait_mean_s']:.3g} s; M/M/c (Erlang C, "
                          f"{e['servers']} servers at {e['utilisation']:.0%}): {e['wait_probability']:.3g}, "
                          f"{e['wait_mean_s']:.3g} s")
    if result["chosen"]:
        c = result["chosen"]
        what = "waiting requests" if c["metric"] == "waiting" else "waiting + running requests"
        console.out.print(f"chosen for the autoscaler: {c['label']}: a KEDA threshold of {c['threshold']:g} {what} "
                          f"per replica, {c['min_replicas']}-{c['max_replicas']} replicas"
                          + ("" if emit_k8s else " (--emit-k8s DIR writes the manifests)"))
    for path in written:
        console.out.print(f"wrote {escape(path)}")
