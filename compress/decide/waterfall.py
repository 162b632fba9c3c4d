"""The top-down waterfall (``compress plan RUN RUN ...``): what each layer of savings brings to the cost of serving
the same traffic at the same SLO, and the quality guard it passed.

Rows, in the order given: the base (the first run's baseline side), then each run's candidate (a model change,
or a runtime change when its method is ``none``), each priced as a static fleet sized for the traffic's peak;
then the infrastructure row: the last counted layer autoscaled on queue depth (with spot capacity when asked).
A row counts toward the total only with evidence that it kept quality: a run's gate said PASS on that very
artifact (the gate's candidate hash is the benchmark's), a PASS that follows from the reports it was made on
(``check_evidence``, as export and verify hold it to), against the model of the last counted row (its
baseline is that model: a runtime lever is gated on the quantized model it serves), and its fleet kept the
attainment goal (the base is the reference, whatever it keeps); the
autoscaled row counts when its simulated attainment meets the goal. A row that does not count is shown with
its reason and its saving is not taken: the next row is compared with the last row that counted.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from compress.core.artifact import read_json
from compress.core.errors import UsageError
from compress.decide.evidence import EVIDENCE_DIR, GATE_FILE, check_evidence
from compress.decide.fleet_spec import Traffic
from compress.decide.plan import PlanSettings, plan
from compress.decide.service import MeasuredService, fit_concurrency, service_from_evidence


@dataclass
class Layer:
    """One row's replica and the evidence that it kept quality."""

    name: str
    kind: str  # base | model | runtime
    service: MeasuredService
    source: str
    verdict: str | None  # the gate's, None when there is none; "reference" for the base
    headline: str | None  # the gate's first quality check (else its first check), as shown
    why_not: str | None = None  # why this row cannot count, when it cannot (from its gate)
    model_hash: str = ""  # the model this row serves
    baseline_hash: str = ""  # the model its run compared it with (the base's own for the base)


def _decision(origin: Path | None) -> tuple[Any, Path | None, str | None]:
    """The decision a run directory (gate.json beside reports/) or an export (evidence/gate.json) records, the
    folder of the reports it was made on, and why it does not read when it does not."""
    from pydantic import ValidationError

    from compress.decide.gate import GateResult

    if origin is None:
        return None, None, None
    for gate_file, folder in ((origin / GATE_FILE, origin / "reports"),
                              (origin / EVIDENCE_DIR / GATE_FILE, origin / EVIDENCE_DIR)):
        if gate_file.is_file():
            try:
                return GateResult.model_validate(read_json(gate_file)), folder, None
            except (OSError, ValueError, ValidationError):
                return None, None, f"{gate_file} is not a gate decision"
    return None, None, None


def _manifest_of(origin: Path | None) -> dict[str, Any]:
    for file in ((origin / "model" / "manifest.json", origin / "manifest.json") if origin else ()):
        if file.is_file():
            try:
                return json.loads(file.read_text())
            except (OSError, ValueError):
                return {}
    return {}


def _headline(gate: Any) -> str | None:
    """The gate's first quality check (else its first check), as shown."""
    pick = next((c for c in gate.checks if c.kind == "quality"), gate.checks[0] if gate.checks else None)
    if pick is None:
        return None
    return f"{pick.metric} {pick.shown or pick.measured} ({pick.verdict})"


def read_layers(paths: list[Path], *, concurrency: int | None = None) -> list[Layer]:
    """The base (the first path's baseline side) and one layer per path (its candidate side).

    Raises:
        UsageError: a path that holds no served benchmark (``service_from_evidence``).
    """
    layers: list[Layer] = []
    for n, path in enumerate(paths):
        service = service_from_evidence(path, side="candidate", concurrency=concurrency)
        file, origin = service.source, service.origin
        if n == 0:
            base = service_from_evidence(path, side="baseline", concurrency=concurrency)
            model = base.report.baseline.model
            layers.append(Layer(name=f"base ({model.spec})", kind="base", service=base, source=file,
                                verdict="reference", headline=None, model_hash=model.content_hash,
                                baseline_hash=model.content_hash))
        manifest = _manifest_of(origin)
        kind = "runtime" if manifest.get("method", {}).get("kind") == "none" else "model"
        gate, folder, unreadable = _decision(origin)
        candidate_hash = service.report.candidate.model.content_hash
        baseline_hash = service.report.baseline.model.content_hash
        why = None
        if gate is None:
            why = unreadable or ("no gate verdict with this benchmark (a speed.json alone, or a run that never "
                                 "reached its gate)")
        elif gate.candidate_hash != candidate_hash:
            why = "the gate decided on another artifact than the one benchmarked"
        elif gate.verdict != "PASS":
            why = f"its gate said {gate.verdict}"
        else:  # a PASS counts when it follows from the reports it was made on, as export and verify hold it to
            problems = check_evidence(folder, gate, candidate_hash, baseline_hash)
            if problems:
                why = "its PASS does not follow from its reports: " + "; ".join(problems)
        layers.append(Layer(name=manifest.get("name") or Path(origin or file).name, kind=kind, service=service,
                            source=str(origin or file), verdict=gate.verdict if gate else None,
                            headline=_headline(gate) if gate else None, why_not=why, model_hash=candidate_hash,
                            baseline_hash=baseline_hash))
    return layers


def waterfall(layers: list[Layer], traffic: Traffic, settings: PlanSettings,
              log: Callable[[str], None] | None = None, *, fit: bool = True) -> dict[str, Any]:
    """Price every layer on the same traffic, SLO and price; returns JSON-ready ``rows``, ``total`` and ``notes``.
    ``fit``: each replica serves at most the largest level that kept the SLO (``fit_concurrency``); False when
    the concurrency was given.

    The SLO is the first run's (bench.slo), with ``settings.slo_wait_s``; the price ``settings.price_per_hour``,
    else the first run's bench.price_per_hour, else 1.
    """
    if len(layers) < 2:
        raise UsageError("a waterfall needs at least one run beside its base", hint="compress plan BASE_RUN RUN ...")
    first = layers[0].service
    price = settings.price_per_hour if settings.price_per_hour is not None else (first.price_per_hour or 1.0)
    common = dict(slo=first.slo, price_per_hour=price)
    static = replace(settings, policies=("static",), spot=None, replicas=None)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    counted_service, counted_hash = None, layers[0].model_hash
    for layer in layers:
        service = replace(layer.service, **common)
        if fit:
            service = fit_concurrency(service, settings.attainment)
        result = plan(service, traffic, static, log=log)
        bill = result["policies"][0]
        why = layer.why_not
        missed = (f"its fleet kept the SLO for {bill['attainment']:.1%} of requests, under the "
                  f"{settings.attainment:.0%} goal")
        if layer.kind == "base" and not bill["meets_goal"]:  # the reference, whatever it keeps: said, not dropped
            notes.append(f"the base: {missed} (service times beyond the SLO, which no fleet size repairs)")
        elif why is None and not bill["meets_goal"]:
            why = missed
        elif why is None and layer.kind != "base" and layer.baseline_hash != counted_hash:
            why = ("its baseline is not the model of the last counted row above (each run's gate compared its "
                   "candidate with its own baseline: run each layer on the one before)")
        if why is None:
            counted_hash = layer.model_hash
        rows.append(_row(layer.name, layer.kind, layer.source, bill, layer.verdict, layer.headline, why,
                         service.concurrency))
        notes += [n for n in result["notes"] if n not in notes]
        if why is None:
            counted_service = service
    if counted_service is not None:
        autoscaled = replace(settings, policies=("queue-depth",))
        result = plan(counted_service, traffic, autoscaled, log=log)
        chosen = result["chosen"]
        bill = next(p for p in result["policies"] if chosen and p["label"] == chosen["label"])
        spot = " with spot" if settings.spot else ""
        why = None if bill["meets_goal"] else \
            f"no queue-depth target kept the SLO for {settings.attainment:.0%} of requests (best {bill['attainment']:.1%})"
        rows.append(_row(f"autoscaled on queue depth{spot} ({bill['label']})", "infrastructure", "simulation", bill,
                         None, f"attainment {bill['attainment']:.2%} (goal {settings.attainment:.0%})", why,
                         counted_service.concurrency))
    running = rows[0]["usd_per_mtok"]
    for row in rows[1:]:
        if row["counted"] and running and row["usd_per_mtok"] is not None:
            row["saving_usd_per_mtok"] = running - row["usd_per_mtok"]
            row["saving_share"] = row["saving_usd_per_mtok"] / running
            running = row["usd_per_mtok"]
    base = rows[0]["usd_per_mtok"]
    return {"rows": rows, "slo": result["slo"], "price_per_replica_hour": price,
            "traffic": result["traffic"], "attainment_goal": settings.attainment,
            "total": {"from_usd_per_mtok": base, "to_usd_per_mtok": running,
                      "saving_share": (base - running) / base if base else None},
            "notes": notes}


def _row(name, kind, source, bill, verdict, headline, why, concurrency) -> dict[str, Any]:
    return {"layer": name, "kind": kind, "source": source, "policy": bill["label"],
            "usd_per_mtok": bill["usd_per_mtok"], "usd_per_day": bill["usd_per_day"],
            "replica_hours": bill["replica_hours"], "attainment": bill["attainment"],
            "latency_p99_s": bill["latency_p99_s"], "concurrency": concurrency, "gate": verdict,
            "guard": headline, "counted": why is None, "why_not": why,
            "saving_usd_per_mtok": None, "saving_share": None}


def waterfall_table(result: dict[str, Any]):
    """The waterfall as a rich table."""
    from compress.core import console

    def money(v):
        return "-" if v is None else f"${v:.4g}"

    rows = []
    for r in result["rows"]:
        saving = "" if r["kind"] == "base" else (
            f"-{money(r['saving_usd_per_mtok'])} ({r['saving_share']:.0%})" if r["saving_share"] is not None
            else "not counted")
        rows.append([r["layer"], r["kind"], money(r["usd_per_mtok"]), saving, f"{r['replica_hours']:.1f}",
                     f"{r['attainment']:.2%}", " ".join(filter(None, [r["gate"], r["guard"]])) or "-"])
    t = result["total"]
    title = (f"Top-down waterfall: {result['traffic']['source']}, the same SLO and ${result['price_per_replica_hour']:g} "
             f"per replica-hour; {money(t['from_usd_per_mtok'])} -> {money(t['to_usd_per_mtok'])} per 1M output "
             f"tokens")
    return console.table(title, ["layer", "kind", "$/1M tok", "saving", "replica-h", "attainment", "quality guard"],
                         rows)


def waterfall_markdown(result: dict[str, Any]) -> str:
    """The waterfall as a Markdown table (docs), with each uncounted row's reason."""
    lines = ["| layer | kind | $/1M output tokens | saving over the row above | replica-hours | SLO attainment | "
             "quality guard |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        saving = "" if r["kind"] == "base" else (
            f"${r['saving_usd_per_mtok']:.4g} ({r['saving_share']:.0%})" if r["saving_share"] is not None
            else f"not counted: {r['why_not']}")
        guard = " ".join(filter(None, [r["gate"], r["guard"]])) or "-"
        lines.append(f"| {r['layer']} | {r['kind']} | ${r['usd_per_mtok']:.4g} | {saving} | "
                     f"{r['replica_hours']:.1f} | {r['attainment']:.2%} | {guard} |")
    t = result["total"]
    if t["saving_share"] is not None:
        lines.append(f"\nTotal: ${t['from_usd_per_mtok']:.4g} -> ${t['to_usd_per_mtok']:.4g} per 1M output tokens "
                     f"({t['saving_share']:.0%} less), counting only the rows whose guard held.")
    lines += [f"\nNote: {note}." for note in result["notes"]]
    return "\n".join(lines)
