"""The evidence behind a gate decision, and deciding again from it.

A run directory keeps its reports under ``reports/`` and the decision in ``gate.json``; an
export carries copies of both under ``evidence/``. ``compress export`` and ``compress verify``
never trust a stored verdict: they check that each report file is the one the decision was
made on (sha256), that the reports measured exactly the candidate's and the baseline's bytes,
that each report's figures agree with its own per-document results, and then apply the
recorded policy again. Any disagreement is named.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from compress.core.artifact import EVIDENCE_DIR, inside, safe_name, sha256_file
from compress.core.reports import AccuracyReport, ServableReport, SpeedReport
from compress.core.traffic_reports import TrafficReport
from compress.measure.speculative import DraftReport

REPORT_FILES = {
    ("baseline", "accuracy"): "baseline-accuracy.json",
    ("candidate", "accuracy"): "candidate-accuracy.json",
    ("both", "speed"): "speed.json",
    ("candidate", "servable"): "servable.json",
    ("both", "draft"): "draft.json",  # the baseline generating with the candidate as its draft
    ("both", "traffic"): "traffic.json",  # both models on the user's own requests
}
_CLASSES = {"accuracy": AccuracyReport, "speed": SpeedReport, "servable": ServableReport, "draft": DraftReport,
            "traffic": TrafficReport}
GATE_FILE = "gate.json"
__all__ = ["EVIDENCE_DIR", "GATE_FILE", "REPORT_FILES", "check_evidence", "decide_reports", "differences",
           "load_reports", "report_hashes"]
# Aggregations that compress can recompute from per-document values (compress.measure.accuracy).
_RECOMPUTABLE = {"mean", "weighted_perplexity", "bits_per_byte", "perplexity"}


def load_reports(folder: Path) -> dict[tuple[str, str], Any]:
    """The reports stored in a folder (missing ones left out)."""
    out: dict[tuple[str, str], Any] = {}
    for (who, kind), name in REPORT_FILES.items():
        path = Path(folder) / name
        if path.exists():
            out[(who, kind)] = _CLASSES[kind].load(path)
    return out


def decide_reports(policy: Any, reports: dict[tuple[str, str], Any]) -> Any:
    """The gate's decision on a set of stored reports (``compress.decide.gate.evaluate`` on each kind)."""
    from compress.decide.gate import evaluate

    return evaluate(policy, reports.get(("baseline", "accuracy")), reports.get(("candidate", "accuracy")),
                    reports.get(("both", "speed")), reports.get(("candidate", "servable")),
                    reports.get(("both", "draft")), reports.get(("both", "traffic")))


def report_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every report file present in ``folder``."""
    return {name: sha256_file(Path(folder) / name) for name in REPORT_FILES.values() if (Path(folder) / name).exists()}


def _self_consistency(report: AccuracyReport, name: str) -> list[str]:
    """Each figure of an accuracy report must be what its own per-document values give."""
    from compress.measure.scoring import recompute

    problems = []
    for task, result in report.tasks.items():
        for filt in result.filters:
            held = len({s.doc_id for s in result.by_filter(filt)})
            if held != result.n_samples:
                problems.append(f"{name}: {task} says {result.n_samples} documents but holds {held} under filter {filt}")
    for metric_name in report.metric_names():
        metric = report.metric(metric_name)
        if getattr(metric, "aggregation", "mean") not in _RECOMPUTABLE:
            continue
        try:
            again = recompute(report, metric_name)
        except KeyError as e:
            problems.append(f"{name}: {e.args[0]}")
            continue
        except (TypeError, ValueError, ZeroDivisionError, IndexError):
            problems.append(f"{name}: {metric_name} has per-document values it cannot be computed from")
            continue
        if not math.isclose(again, metric.value, rel_tol=1e-6, abs_tol=1e-9):
            problems.append(f"{name}: {metric_name} is {metric.value:.6g} but its documents give {again:.6g}")
    return problems


def check_evidence(folder: Path, gate: Any, candidate_hash: str, baseline_hash: str) -> list[str]:
    """Every reason the decision in ``gate`` (a GateResult) cannot be trusted; empty when sound.

    Args:
        folder: where the report files are.
        gate: the recorded decision, with the policy and the report hashes it was made on.
        candidate_hash, baseline_hash: content hashes of the bytes that were supposedly measured.
    """
    from compress.decide.gate import policy_hash
    from compress.core.recipe import GateSpec

    if not gate.policy or not gate.reports:
        return ["the decision records no policy or report hashes (made by an older compress); "
                "decide again with `compress gate RUN_DIR`"]
    problems = []
    # Names read from gate.json are data: only a known report file name becomes a path.
    where = str(Path(folder).parent / GATE_FILE if Path(folder).name == "reports" else Path(folder) / GATE_FILE)
    for name, digest in gate.reports.items():
        path = inside(folder, safe_name(name, where, allowed=set(REPORT_FILES.values())), where)
        if not path.exists():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{name}: differs from the report the decision was made on")
    if problems:
        return problems
    reports = {k: v for k, v in load_reports(folder).items() if REPORT_FILES[k] in gate.reports}
    for (who, kind), report in reports.items():
        measured = ([("baseline", report.baseline.model), ("candidate", report.candidate.model)] if kind == "speed"
                    else [("baseline", report.target), ("candidate", report.draft)] if kind == "draft"
                    else [("baseline", report.baseline), ("candidate", report.candidate)] if kind == "traffic"
                    else [(who, report.model)])
        for side, model in measured:
            expected = candidate_hash if side == "candidate" else baseline_hash
            if model.content_hash != expected:
                problems.append(f"{REPORT_FILES[(who, kind)]}: measured model {model.content_hash[:12]}, "
                                f"not the {side}'s bytes ({expected[:12]})")
        if kind == "accuracy":
            problems += _self_consistency(report, REPORT_FILES[(who, kind)])
    policy = GateSpec.model_validate(gate.policy)
    # The hash of the policy as recorded (a newer compress fills in fields added since).
    if policy_hash(gate.policy) != gate.policy_hash:
        problems.append("the recorded policy does not match its own hash")
    if problems:
        return problems
    try:
        fresh = decide_reports(policy, reports)
    except Exception as e:  # noqa: BLE001 - a malformed report is a reason, not a crash
        return [f"the reports cannot be gated again: {e}"]
    return differences(gate, fresh)


def differences(recorded: Any, fresh: Any) -> list[str]:
    """What a recorded decision says that deciding again from the same reports does not."""
    problems = []
    if recorded.verdict != fresh.verdict:
        problems.append(f"verdict: recorded {recorded.verdict}, the reports give {fresh.verdict}")
    for field in ("candidate_hash", "baseline_hash"):
        if getattr(recorded, field) != getattr(fresh, field):
            problems.append(f"{field}: recorded {getattr(recorded, field)[:12]}, the reports measured "
                            f"{getattr(fresh, field)[:12]}")
    old = {c.metric: c for c in recorded.checks}
    new = {c.metric: c for c in fresh.checks}
    if old.keys() != new.keys():
        problems.append(f"checks: recorded {sorted(old)}, the policy gives {sorted(new)}")
    for metric in old.keys() & new.keys():
        a, b = old[metric], new[metric]
        if a.verdict != b.verdict:
            problems.append(f"{metric}: recorded {a.verdict}, the reports give {b.verdict}")
        elif (a.measured is None) != (b.measured is None) or (
                a.measured is not None and not math.isclose(a.measured, b.measured, rel_tol=1e-9, abs_tol=1e-12)):
            shown = [f"{x:.6g}" if x is not None else "no value" for x in (a.measured, b.measured)]
            problems.append(f"{metric}: recorded {shown[0]}, the reports give {shown[1]}")
    return problems
