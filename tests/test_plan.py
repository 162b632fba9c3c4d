"""compress plan: the fleet simulation against queueing theory, the policies on a day of traffic, spot
preemptions, the service model read from a served benchmark, bad inputs, and the Kubernetes manifests."""
import copy
import json
import math
import statistics

import pytest
import yaml

from compress.core.errors import UsageError
from compress.decide.fleet import simulate
from compress.decide.fleet_spec import Policy, Slo, Spot, Traffic
from compress.decide.plan import PlanSettings, diurnal_traffic, plan, read_traffic, steady_traffic
from compress.decide.queueing import erlang_c, erlang_wait
from compress.decide.service import level_for, service_from_evidence, synthetic
from tests.conftest import run_cli


def textbook_erlang_c(c: int, a: float) -> float:
    """Erlang C from its closed form: (a^c/c! · c/(c-a)) / (sum_{k<c} a^k/k! + a^c/c! · c/(c-a))."""
    top = a ** c / math.factorial(c) * c / (c - a)
    return top / (sum(a ** k / math.factorial(k) for k in range(c)) + top)


def test_erlang_c_matches_the_closed_form():
    for c, a in [(1, 0.5), (2, 1.4), (4, 3.4), (16, 12.0), (64, 60.0)]:
        assert erlang_c(c, a) == pytest.approx(textbook_erlang_c(c, a), rel=1e-9)
    assert erlang_c(4, 4.0) == 1.0 and erlang_c(4, 0.0) == 0.0
    mm1 = erlang_wait(1, 0.85, 1.0)  # M/M/1: P(wait) = rho, mean wait = rho / (mu - lambda)
    assert mm1["wait_probability"] == pytest.approx(0.85) and mm1["wait_mean_s"] == pytest.approx(0.85 / 0.15)


# (replicas, slots per replica, utilisation, requests over all runs). A request's wait is compared with Erlang C
# at the load the run realised (its arrivals over its length, the mean of the service times it drew), which
# takes out the largest part of the run-to-run noise (at 0.85 a 0.3% busier run waits 2% longer); the realised
# load is held to within 1% of the nominal one separately. The sizes give a standard error of about 1.5% of
# the mean wait (seeded, so the same every time), a third of the 5% allowed.
ERLANG_CASES = [(1, 1, 0.5, 160_000), (1, 1, 0.7, 200_000), (2, 1, 0.7, 200_000), (2, 2, 0.85, 900_000)]
RUNS = 4


def _against_erlang(replicas: int, slots: int, rho: float, total: int, service: str = "exp:1"):
    c = replicas * slots
    rate = rho * c
    traffic = Traffic(steps=((0.0, rate),), horizon_s=total / RUNS / rate)
    svc = synthetic(service, concurrency=slots)
    runs = [simulate(svc, traffic, Policy("static", replicas=replicas), seed=s) for s in range(RUNS)]
    errors = {"wait_probability": [], "wait_mean_s": []}
    for r in runs:
        assert r.lost == 0 and r.served == r.requests
        realised = erlang_wait(c, r.requests / traffic.horizon_s, r.service_mean_s)
        # the share of the fleet's request slots in service is the offered load (the busy fraction of M/M/c)
        assert r.utilization == pytest.approx(r.requests / traffic.horizon_s * r.service_mean_s / c, rel=0.01)
        for key in errors:
            errors[key].append(getattr(r, key) / realised[key] - 1)
    load = statistics.fmean(r.requests / traffic.horizon_s * r.service_mean_s for r in runs) / c
    return errors, load


@pytest.mark.parametrize("replicas,slots,rho,total", ERLANG_CASES)
def test_simulation_agrees_with_erlang_c(replicas, slots, rho, total):
    errors, load = _against_erlang(replicas, slots, rho, total)
    assert load == pytest.approx(rho, rel=0.01)
    for key, values in errors.items():
        mean, se = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
        assert abs(mean) <= 0.05, f"{key}: {mean:+.1%} from Erlang C (runs: {values})"
        assert se <= 0.03, f"{key}: the runs disagree ({se:.1%} standard error): the check would mean little"


def test_the_erlang_check_can_fail():
    """Constant service (M/D/c) waits about half as long as exponential: the same check rejects it."""
    errors, _ = _against_erlang(2, 1, 0.7, 40_000, service="const:1")
    assert statistics.fmean(errors["wait_mean_s"]) < -0.3


def test_queue_depth_beats_static_on_a_day_and_utilization_overprovisions():
    """A diurnal day: queue-depth scaling uses fewer replica-hours than a static fleet for the peak, at an
    attainment at most 2 points lower; scaling on busy fraction (what GPU utilisation reports) keeps more
    replicas than either, since one request makes a batching replica look busy."""
    svc = synthetic("exp:40", concurrency=4, cold_start_s=120)
    day = diurnal_traffic(2.0, 0.25, step_s=3600)
    result = plan(svc, day, PlanSettings(repeats=1, slo_wait_s=10.0))
    by = {p["policy"]: p for p in result["policies"] if p["policy"] != "queue-depth"}
    chosen = next(p for p in result["policies"] if p["policy"] == "queue-depth"
                  and p["target"] == result["chosen"]["target"])
    static, util = by["static"], by["utilization"]
    assert static["replicas"] == result["settings"]["static_replicas"] >= 10
    assert chosen["replica_hours"] < 0.85 * static["replica_hours"]
    assert chosen["attainment"] >= static["attainment"] - 0.02 and chosen["meets_goal"]
    assert util["replica_hours"] > static["replica_hours"] > chosen["replica_hours"]
    for p in result["policies"]:
        assert p["lost"] == 0 and p["usd_per_day"] == pytest.approx(p["replica_hours"] * 1.0)
        assert len(result["timeline"][p["label"]]) == 288


def test_spot_preemptions_are_served_again_and_cost_less():
    svc = synthetic("exp:2", concurrency=4, cold_start_s=60)
    load = steady_traffic(3.0, 7200)
    base = PlanSettings(policies=("static",), repeats=2, price_per_hour=2.0)
    on_demand = plan(svc, load, base)["policies"][0]
    spot = plan(svc, load, PlanSettings(policies=("static",), repeats=2, price_per_hour=2.0,
                                        spot=Spot(0.5, preemption_per_hour=3.0, share=0.5)))["policies"][0]
    assert spot["preemptions"] > 5 and spot["requeued"] > 0
    assert spot["lost"] == 0 and spot["served"] == spot["requests"]  # every request served, none dropped
    assert 0 < spot["spot_replica_hours"] < spot["replica_hours"]
    assert spot["usd_per_day"] < on_demand["usd_per_day"]
    assert spot["latency_p99_s"] >= on_demand["latency_p99_s"] * 0.9


def test_traffic_files(tmp_path):
    profile = tmp_path / "day.csv"
    profile.write_text("time,rps\n06:00,2\n07:00,4.5  # morning\n\n08:00,3\n")
    t = read_traffic(profile)
    assert t.steps == ((0.0, 2.0), (3600.0, 4.5), (7200.0, 3.0)) and t.horizon_s == 3 * 3600
    assert t.peak_rps == 4.5 and t.requests_expected == pytest.approx((2 + 4.5 + 3) * 3600)
    trace = tmp_path / "trace.csv"
    trace.write_text("\n".join(str(10 + 0.5 * i) for i in range(1200)) + "\n")
    t = read_traffic(trace)
    assert t.trace is not None and len(t.trace) == 1199 and t.trace[0] == 0.0
    assert t.peak_rps == pytest.approx(2.0, rel=0.05)
    bad = tmp_path / "bad.csv"
    for text, where in [("0,1\n60,-2\n", ":2:"), ("time,rps\n0,1\n60,x\n", ":3:"), ("0,1\n0,2\n", ":2:"),
                        ("0,1,2\n", ":1:")]:
        bad.write_text(text)
        with pytest.raises(UsageError, match=where):
            read_traffic(bad)


def test_service_model_from_a_served_benchmark(tmp_path):
    run = _run_dir(tmp_path)
    svc = service_from_evidence(run.parent)  # runs/NAME stands for its newest run
    assert svc.concurrency == 8 and svc.cold_start_s == 95.0 and svc.price_per_hour == 2.5
    assert svc.slo == Slo(ttft_s=2.0, tpot_s=0.1) and svc.origin == run
    assert [level_for(k, [1, 4, 8]) for k in (1, 2, 4, 5, 8, 9)] == [1, 4, 4, 8, 8, 8]
    # between measured levels, interpolated: at 3 in flight, level 4's times two times in three, level 1's otherwise
    assert svc.mean_service_s(1) == pytest.approx(1.0) and svc.mean_service_s(3) == pytest.approx(1 / 3 + 4 / 3)
    import random

    rng = random.Random(0)
    draws = [svc.draw(3, rng)[0] for _ in range(6000)]
    assert sum(d > 1.5 for d in draws) / len(draws) == pytest.approx(2 / 3, abs=0.02)
    assert svc.mean_service_s(8) == pytest.approx(4.0)
    baseline = service_from_evidence(run / "reports" / "speed.json", side="baseline")
    assert baseline.mean_service_s(8) == pytest.approx(8.0) and baseline.origin is None
    with pytest.raises(UsageError, match="holds no speed report"):
        service_from_evidence(tmp_path)


def test_a_closed_loop_level_is_read_in_its_steady_part(tmp_path):
    """At k in flight, a round's first k requests started together (each prefill behind the others') and its last
    k ran as the level drained: the service model takes the requests between, and says when a round is too short."""
    from compress.core.reports import LevelRun, Measured, ModelInfo, Runtime, ServedRequest, SpeedReport

    def request(i, e2e, started):
        return ServedRequest(index=i, concurrency=4, prompt_tokens=8, output_tokens=10, started_s=started,
                             ttft_s=0.1, e2e_s=e2e, token_times_s=[0.1] * 10, chunks=10)

    # 12 requests at 4 in flight: the burst (3 s), the steady middle (1 s), the drain (0.5 s), listed out of order
    steady = [request(i, {0: 3.0, 1: 1.0, 2: 0.5}[i // 4], started=float(i)) for i in range(12)]
    short = [request(i, 3.0, started=0.0) for i in range(4)]
    for requests, mean, note in ((steady[::-1], 1.0, False), (short, 3.0, True)):
        m = Measured(model=ModelInfo(spec="x", content_hash="0" * 64, size_bytes=1), runtime=Runtime(engine="vllm"),
                     device="cpu", size_bytes=1, peak_memory_bytes=1, memory_kind="rss", batches=[],
                     runs=[LevelRun(round=0, level=4, wall_s=1.0, requests=requests)])
        path = tmp_path / f"speed-{len(requests)}.json"
        SpeedReport(settings={}, baseline=m, candidate=m, environment={}, created="2026-12-01T00:00:00",
                    duration_s=1.0, cache_key="k").save(path)
        svc = service_from_evidence(path)
        assert svc.mean_service_s(4) == pytest.approx(mean)
        assert any("too few requests per round" in n for n in svc.notes) == note


def test_open_loop_requests_join_the_occupancy_they_were_admitted_at(tmp_path):
    """An open-loop request (inside its run's window) is drawn at 1 + the requests in flight when it was sent; a
    run that went past a replica's slots is not drawn from (its times hold the server's queue), an occupancy no
    closed-loop level measured needs MIN_OPEN_POOL requests, and a left-out rate is not drawn from."""
    from compress.core.reports import LevelRun, Measured, ModelInfo, Runtime, ServedRequest, SpeedReport
    from compress.decide.service import MIN_OPEN_POOL

    def request(i, started, e2e):
        return ServedRequest(index=i, concurrency=0, prompt_tokens=8, output_tokens=10, started_s=started,
                             ttft_s=0.1, e2e_s=e2e, token_times_s=[0.1] * 10, chunks=10)

    closed = [LevelRun(round=0, level=k, wall_s=1.0, requests=[request(i, float(i), float(k)) for i in range(12)])
              for k in (1, 2, 4)]
    # 2/s: alone (1), beside one (2), beside two (3: no closed level, too few), alone but outside the window
    calm = LevelRun(round=0, level=0, wall_s=10.0, rate=2.0, arrival="poisson", measured=[0, 1, 2],
                    requests=[request(0, 0.0, 1.5), request(1, 0.5, 2.5), request(2, 0.8, 3.5), request(3, 9.0, 9.0)])
    # 9/s: four in flight at once on a replica of four slots (the fifth waited in the server)
    busy = LevelRun(round=0, level=0, wall_s=1.0, rate=9.0, arrival="poisson", measured=list(range(5)),
                    requests=[request(i, 0.1 * i, 5.0) for i in range(5)])
    m = Measured(model=ModelInfo(spec="x", content_hash="0" * 64, size_bytes=1), runtime=Runtime(engine="vllm"),
                 device="cpu", size_bytes=1, peak_memory_bytes=1, memory_kind="rss", batches=[],
                 runs=closed, rate_runs=[calm, busy])
    path = tmp_path / "speed.json"
    SpeedReport(settings={}, baseline=m, candidate=m, environment={}, created="2026-12-01T00:00:00",
                duration_s=1.0, cache_key="k").save(path)
    svc = service_from_evidence(path)
    assert svc.open_loop == {1: 1, 2: 1} and sorted(svc.levels) == [1, 2, 4]
    assert svc.mean_service_s(1) == pytest.approx((12 * 1.0 + 1.5) / 13)  # the 9 s request was outside the window
    assert svc.mean_service_s(2) == pytest.approx((8 * 2.0 + 2.5) / 9)  # the closed level's steady middle, and one
    assert any("9/s went past 4 requests in flight" in n for n in svc.notes)
    assert svc.describe()["levels"]["2"]["open_loop_requests"] == 1
    alone = service_from_evidence(path, leave_out_rates=[2.0, 9.0])
    assert alone.open_loop == {} and alone.mean_service_s(1) == pytest.approx(1.0)
    assert not any("open-loop" in n for n in alone.notes)
    # enough requests admitted beside two others stand for an occupancy no closed level measured
    calm.requests = [request(i, 10.0 * i + d, 3.0) for i in range(MIN_OPEN_POOL) for d in (0.0, 0.1, 0.2)]
    calm.measured = list(range(len(calm.requests)))
    SpeedReport(settings={}, baseline=m, candidate=m, environment={}, created="2026-12-01T00:00:00",
                duration_s=1.0, cache_key="k").save(path)
    assert service_from_evidence(path).open_loop == {1: MIN_OPEN_POOL, 2: MIN_OPEN_POOL, 3: MIN_OPEN_POOL}


def test_manifests_validate_and_a_broken_one_does_not(tmp_path):
    from compress.ship import k8s

    run = _run_dir(tmp_path)
    svc = service_from_evidence(run)
    result = plan(svc, steady_traffic(1.0, 1800), PlanSettings(policies=("queue-depth",), repeats=1))
    deployment, scaled = k8s.manifests(svc, result, image="vllm/vllm-openai:v0.32.0")
    assert k8s.validate(deployment) == [] and k8s.validate(scaled) == []
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-num-seqs") + 1] == "8" and "--enable-prefix-caching" in args
    trigger = scaled["spec"]["triggers"][0]
    assert "vllm:num_requests_waiting" in trigger["metadata"]["query"]
    assert float(trigger["metadata"]["threshold"]) == 8 + result["chosen"]["target"] == result["chosen"]["threshold"]
    assert scaled["spec"]["maxReplicaCount"] == result["chosen"]["max_replicas"]

    def broken(doc, change):
        doc = copy.deepcopy(doc)
        change(doc)
        return doc

    cases = [
        broken(deployment, lambda d: d["spec"].update(replica=3)),  # a typo: unknown field
        broken(deployment, lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name")),
        broken(deployment, lambda d: d["spec"].update(replicas="three")),
        broken(scaled, lambda d: d["spec"].update(minReplicas=1)),
        broken(scaled, lambda d: d["spec"].update(minReplicaCount=9, maxReplicaCount=2)),
        broken(scaled, lambda d: d["spec"].update(triggers=[])),
        broken(scaled, lambda d: d["spec"]["triggers"][0]["metadata"].update(threshold="lots")),
        broken(scaled, lambda d: d["spec"]["triggers"][0]["metadata"].pop("serverAddress")),
    ]
    for doc in cases:
        assert k8s.validate(doc), doc
    with pytest.raises(UsageError, match="do not validate"):
        k8s.write_manifests(tmp_path / "k8s", [cases[0]])


def test_cli_json_for_a_steady_load():
    r = run_cli("plan", "--rate", "4", "--service-time", "exp:0.5", "--concurrency-per-replica", "4",
                "--duration", "900", "--repeats", "2", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert {"policies", "wait_probability", "wait_mean_s", "erlang_c", "chosen", "service", "traffic"} <= set(data)
    assert [p["policy"] for p in data["policies"]][:2] == ["static", "utilization"]
    for p in data["policies"]:
        assert {"policy", "replica_hours", "attainment", "usd_per_day", "usd_per_mtok", "latency_p99_s"} <= set(p)
    assert data["wait_probability"] == pytest.approx(data["erlang_c"]["wait_probability"], abs=0.05)


def test_cli_emits_manifests_and_a_plot(tmp_path):
    run = _run_dir(tmp_path)
    out = tmp_path / "k8s"
    r = run_cli("plan", str(run), "--rate", "1", "--duration", "1200", "--repeats", "1", "--policy",
                "static,queue-depth", "--emit-k8s", str(out), "--plot", str(tmp_path / "plan.png"))
    assert r.returncode == 0, r.stderr
    scaled = yaml.safe_load((out / "scaledobject.yaml").read_text())
    assert scaled["kind"] == "ScaledObject" and (out / "deployment.yaml").is_file()
    assert (tmp_path / "plan.png").stat().st_size > 10_000 and "chosen for the autoscaler" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--rate", "-2", "--service-time", "exp:0.5", "--concurrency-per-replica", "4"], "--rate -2"),
    (["--traffic", "no-such.csv", "--service-time", "exp:0.5", "--concurrency-per-replica", "4"], "no-such.csv"),
    (["--traffic", "BAD", "--service-time", "exp:0.5", "--concurrency-per-replica", "4"], "bad.csv:3:"),
    (["--rate", "2", "--service-time", "gamma:1", "--concurrency-per-replica", "4"], "gamma:1"),
    (["--rate", "2", "--service-time", "exp:0.5"], "--concurrency-per-replica"),
    (["no-such-run", "--rate", "2"], "no-such-run"),
    (["--rate", "2", "--service-time", "exp:0.5", "--concurrency-per-replica", "4", "--replicas", "2",
      "--policy", "queue-depth"], "--replicas"),
    (["--rate", "2", "--service-time", "exp:0.5", "--concurrency-per-replica", "4", "--policy", "hpa"], "hpa"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    bad = tmp_path / "bad.csv"
    bad.write_text("time,rps\n0,1\n60,lots\n")
    r = run_cli("plan", *[str(bad) if a == "BAD" else a for a in args], cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_the_waterfall_counts_only_the_layers_whose_guard_held(tmp_path):
    """Base, a quantized model (PASS), a runtime lever on it (PASS), a cheaper model whose gate FAILed, a benchmark
    whose gate decided on another artifact, and a bare speed.json: each priced on the same traffic; only the
    passing layers' savings add up, and the autoscaled row builds on the last of them."""
    from compress.decide.waterfall import read_layers, waterfall, waterfall_markdown

    h = {name: name[0] * 64 for name in ("base", "int4", "cached", "2bit", "swapped", "other")}
    runs = [_run_dir(tmp_path, "int4", candidate=1.0, gate="PASS", hashes=(h["base"], h["int4"])),
            _run_dir(tmp_path, "int4-cached", candidate=0.6, baseline=1.0, gate="PASS", method="none",
                     hashes=(h["int4"], h["cached"])),
            _run_dir(tmp_path, "int2", candidate=0.3, baseline=1.0, gate="FAIL", hashes=(h["cached"], h["2bit"])),
            _run_dir(tmp_path, "swapped", candidate=0.3, baseline=1.0, gate="PASS", gate_hash=h["other"],
                     hashes=(h["cached"], h["swapped"])),
            _run_dir(tmp_path, "bare", candidate=0.3, baseline=1.0, hashes=(h["cached"], h["other"]))
            / "reports" / "speed.json",
            _run_dir(tmp_path, "unlinked", candidate=0.3, baseline=1.0, gate="PASS", hashes=(h["base"], h["other"]))]
    layers = read_layers(runs)
    assert [(x.kind, x.verdict) for x in layers] == [("base", "reference"), ("model", "PASS"), ("runtime", "PASS"),
                                                     ("model", "FAIL"), ("model", "PASS"), ("model", None),
                                                     ("model", "PASS")]
    assert [x.baseline_hash[0] for x in layers] == ["b", "b", "i", "c", "c", "c", "b"]
    result = waterfall(layers, steady_traffic(3.0, 3600), PlanSettings(repeats=2, slo_wait_s=2.0))
    rows = result["rows"]
    assert [r["kind"] for r in rows] == ["base", "model", "runtime", "model", "model", "model", "model",
                                         "infrastructure"]
    assert [r["counted"] for r in rows] == [True, True, True, False, False, False, False, rows[-1]["counted"]]
    assert "FAIL" in rows[3]["why_not"] and "another artifact" in rows[4]["why_not"] and "no gate" in rows[5]["why_not"]
    assert "its baseline is not the model of the last counted row" in rows[6]["why_not"]  # gated against the base
    assert all(r["saving_share"] is None for r in rows[3:7])
    cost = [r["usd_per_mtok"] for r in rows]
    assert cost[0] > cost[1] > cost[2] and cost[3] < cost[2]  # the FAILed layer was cheaper, and is not taken
    assert rows[1]["saving_usd_per_mtok"] == pytest.approx(cost[0] - cost[1])
    assert rows[2]["saving_usd_per_mtok"] == pytest.approx(cost[1] - cost[2])
    assert rows[1]["guard"] == "size_ratio 1x (PASS)"
    assert rows[-1]["policy"].startswith("queue-depth") and rows[-1]["concurrency"] == rows[2]["concurrency"]
    last = next(r for r in reversed(rows) if r["counted"])
    assert result["total"]["to_usd_per_mtok"] == last["usd_per_mtok"]
    assert result["total"]["saving_share"] == pytest.approx(1 - last["usd_per_mtok"] / cost[0])
    table = waterfall_markdown(result)
    assert table.count("not counted") == 4 + (not rows[-1]["counted"]) and "its gate said FAIL" in table


def test_a_hand_edited_pass_does_not_count_and_a_quality_check_is_the_headline(tmp_path):
    """A FAIL turned into PASS in gate.json by hand: the decision no longer follows from its reports (the
    project's own evidence check, as for export), so the layer does not count."""
    import json as _json

    from compress.decide.gate import CheckResult, GateResult
    from compress.decide.waterfall import _headline, read_layers

    run = _run_dir(tmp_path, "edited", candidate=0.5, gate="FAIL", hashes=("a" * 64, "b" * 64))
    doc = _json.loads((run / "gate.json").read_text())
    doc["verdict"], doc["exit_code"] = "PASS", 0
    (run / "gate.json").write_text(_json.dumps(doc))
    edited = read_layers([run])[1]
    assert edited.verdict == "PASS" and "does not follow from its reports" in edited.why_not

    checks = [CheckResult(metric="size_ratio", kind="efficiency", verdict="PASS", measured=0.3, shown="0.3x",
                          threshold="<= 0.5x"),
              CheckResult(metric="tiny_facts_mc/acc", kind="quality", verdict="PASS", measured=-0.5,
                          shown="-0.5 pts", threshold=">= -3 pts")]
    gate = GateResult(verdict="PASS", exit_code=0, confidence=0.95, test="bootstrap", checks=checks,
                      candidate_hash="b" * 64, baseline_hash="a" * 64, created="2026-12-01T00:00:00")
    assert _headline(gate) == "tiny_facts_mc/acc -0.5 pts (PASS)"  # the quality check is the headline


def test_a_layer_built_on_one_whose_fleet_missed_the_slo_does_not_count(tmp_path):
    """A PASSed model whose requests miss the run's SLO on their own (its fleet cannot keep it), and a runtime
    lever gated on that model: neither counts, and the autoscaled row is the base's."""
    from compress.decide.waterfall import read_layers, waterfall

    slow = _run_dir(tmp_path, "slow", candidate=2.2, baseline=1.0, gate="PASS", hashes=("a" * 64, "b" * 64))
    lever = _run_dir(tmp_path, "lever", candidate=0.6, baseline=2.2, gate="PASS", method="none",
                     hashes=("b" * 64, "c" * 64))
    rows = waterfall(read_layers([slow, lever]), steady_traffic(1.0, 1800), PlanSettings(repeats=1))["rows"]
    assert [r["kind"] for r in rows] == ["base", "model", "runtime", "infrastructure"]
    assert [r["counted"] for r in rows[:3]] == [True, False, False]
    assert "under the 99% goal" in rows[1]["why_not"] and "its baseline is not" in rows[2]["why_not"]
    assert rows[3]["concurrency"] == rows[0]["concurrency"]  # the autoscaled fleet serves the base: the last counted


def test_the_waterfall_from_the_command_line(tmp_path):
    a = _run_dir(tmp_path, "int4", candidate=1.0, gate="PASS", hashes=("a" * 64, "b" * 64))
    b = _run_dir(tmp_path, "cached", candidate=0.6, baseline=1.0, gate="PASS", method="none", hashes=("b" * 64,) * 2)
    r = run_cli("plan", str(a), str(b), "--rate", "2", "--duration", "1800", "--repeats", "1", "--json",
                "-o", str(tmp_path / "waterfall.json"))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [row["kind"] for row in data["rows"]] == ["base", "model", "runtime", "infrastructure"]
    assert json.loads((tmp_path / "waterfall.json").read_text())["rows"] == data["rows"]
    r = run_cli("plan", str(a), str(b), "--rate", "2", "--duration", "1800", "--repeats", "1", "--json",
                "--concurrency-per-replica", "2")
    assert r.returncode == 0 and {row["concurrency"] for row in json.loads(r.stdout)["rows"]} == {2}, r.stderr
    r = run_cli("plan", str(a), str(b), "--rate", "2", "--emit-k8s", str(tmp_path / "k8s"))
    assert r.returncode == 2 and "--emit-k8s does not apply to a waterfall" in r.stderr
    assert not (tmp_path / "k8s").exists()


# ------------------------------------------------------------------------------------------------ helpers

def _run_dir(tmp_path, name="demo", candidate=1.0, baseline=2.0, gate=None, method="int4", gate_hash=None,
             hashes=("0" * 64, "0" * 64)):
    """runs/NAME/KEY with a speed report: the candidate's requests take 1 s alone, 2 s at 4 in flight, 4 s at 8
    (times ``candidate``); the baseline's twice as long (``baseline``); bench.slo, a measured start and the
    serving settings it passed with; ``hashes``: the baseline's and the candidate's content hashes. With ``gate``
    (PASS or FAIL), the run's gate.json is that decision made on the report (a size check), recorded as
    `compress run` records it, on ``gate_hash`` (default: the candidate's), and its artifact's manifest names
    the method."""
    from compress.core.recipe import BenchSpec, GateSpec
    from compress.core.reports import LevelRun, Measured, ModelInfo, Runtime, ServedRequest, SpeedReport
    from compress.decide.evidence import decide_reports, report_hashes
    from compress.measure.bench import summarize_level

    def side(scale: float, content_hash: str) -> Measured:
        runs = []
        for level, e2e in ((1, 1.0), (4, 2.0), (8, 4.0)):
            requests = [ServedRequest(index=i, concurrency=level, prompt_tokens=64, output_tokens=20, started_s=0.0,
                                      ttft_s=0.1 * scale, e2e_s=e2e * scale * (0.9 if i % 2 else 1.1),
                                      token_times_s=[0.1] * 20, chunks=20) for i in range(2 * level)]
            runs.append(LevelRun(round=0, level=level, wall_s=10.0, requests=requests))
        return Measured(model=ModelInfo(spec="demo", content_hash=content_hash, size_bytes=1),
                        runtime=Runtime(engine="vllm", start_s=95.0), device="cuda", size_bytes=1,
                        peak_memory_bytes=1, memory_kind="rss", runs=runs,
                        batches=[summarize_level(runs, level, BenchSpec()) for level in (1, 4, 8)])

    run = tmp_path / "runs" / name / "abc123"
    (run / "reports").mkdir(parents=True)
    (run.parent / "LATEST").write_text("abc123")
    SpeedReport(settings={"price_per_hour": 2.5, "slo": {"ttft_p99_ms": 2000, "itl_p99_ms": 100},
                          "serve": {"candidate": {"enable_prefix_caching": True}}},
                baseline=side(baseline, hashes[0]), candidate=side(candidate, hashes[1]), environment={}, created="2026-12-01T00:00:00",
                duration_s=1.0, cache_key="k").save(run / "reports" / "speed.json")
    if gate is not None:
        (run / "model").mkdir()
        (run / "model" / "manifest.json").write_text(json.dumps({"name": name, "method": {"kind": method}}))
        report = SpeedReport.load(run / "reports" / "speed.json")
        policy = GateSpec.model_validate({"checks": [{"metric": "size_ratio", "max": 2.0 if gate == "PASS" else 0.5}]})
        decided = decide_reports(policy, {("both", "speed"): report})
        assert decided.verdict == gate
        decided.reports = report_hashes(run / "reports")
        if gate_hash is not None:
            decided.candidate_hash = gate_hash
        decided.save(run / "gate.json")
    return run
