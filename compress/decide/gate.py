"""The gate: one declarative policy over quality, speed, size and cost -> PASS, FAIL or INCONCLUSIVE.

Quality checks compare the baseline's and the candidate's per-document results on the same
documents (paired bootstrap, or McNemar's table for right/wrong answers); efficiency checks
compare baseline and candidate measured together in alternating rounds, each ratio with a
bootstrap interval over rounds, decided like quality: PASS when the interval is within the
bound, FAIL when it is wholly outside, INCONCLUSIVE between. Any FAIL fails the gate; otherwise any INCONCLUSIVE makes
it inconclusive; otherwise it passes.
"""
from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel

from compress.measure.compare import efficiency_metrics, level_word
from compress.core.errors import EXIT_GATE_FAILED, EXIT_INCONCLUSIVE, EXIT_PASS, UsageError
from compress.core.reports import AccuracyReport, GroupMetric, Metric, ReportModel, ServableReport, SpeedReport
from compress.core.traffic_reports import TrafficReport
from compress.measure.scoring import parts
from compress.core.recipe import EFFICIENCY_METRICS, FLIPS, GateCheck, GateSpec, ServableSpec, metric_family
from compress.core.stats import (FAIL, INCONCLUSIVE, PASS, Interval, Stratum, decide, mcnemar_interval,
                                 mean_bootstrap, samples_to_decide, stratified_paired_bootstrap)

Verdict = Literal["PASS", "FAIL", "INCONCLUSIVE"]
EXIT_CODES = {PASS: EXIT_PASS, FAIL: EXIT_GATE_FAILED, INCONCLUSIVE: EXIT_INCONCLUSIVE}
# Efficiency metrics that are not candidate / baseline ratios, and how to show their values.
ABSOLUTE_EFFICIENCY = {"peak_memory_mb": "{:.1f} MiB", "cost_per_mtok": "${:.4g}", "cost_at_goodput": "${:.4g}"}


class CheckResult(BaseModel):
    metric: str
    kind: Literal["quality", "efficiency", "servable", "traffic"]
    verdict: Verdict
    measured: float | None  # None: the reports hold no evidence (the check is INCONCLUSIVE)
    shown: str = ""  # the measured value as people read it ("+0.90 pts", "0.25x")
    threshold: str
    baseline: float | None = None
    candidate: float | None = None
    interval: dict[str, Any] | None = None
    samples_needed: int | None = None
    note: str = ""


class GateResult(ReportModel):
    verdict: Verdict
    exit_code: int
    confidence: float
    test: str
    checks: list[CheckResult]
    candidate_hash: str
    baseline_hash: str
    created: str
    # The policy that was applied, so that export and verify can decide again from the reports,
    # and a policy other than the artifact's own recipe's is visible.
    policy: dict[str, Any] | None = None
    policy_hash: str | None = None
    policy_source: str | None = None  # "recipe" (the artifact's own) or the file given to `compress gate --recipe`
    # `compress search` stopped the candidate's evaluation at a look: which, on how many documents.
    stopped_early: dict[str, Any] | None = None
    reports: dict[str, str] = {}  # report file name -> sha256 of the file the decision was made on

    def summary(self) -> str:
        counts = {v: sum(c.verdict == v for c in self.checks) for v in (PASS, FAIL, INCONCLUSIVE)}
        return f"{self.verdict}: " + ", ".join(f"{n} {v.lower()}" for v, n in counts.items() if n)


def paired_strata(base: AccuracyReport, cand: AccuracyReport,
                  name: str) -> tuple[Metric | GroupMetric, Metric | GroupMetric, list[Stratum]]:
    """Both models' per-document values of a metric, paired by (task, filter, document), and the
    metric as each report states it: one
    stratum per task (a group's subtasks each), the documents and their prompts the same.

    Raises:
        UsageError: an unknown metric, different documents, or a document asked differently
            (another few-shot draw, chat template or generation setting).
    """
    try:
        _, key, metric, b_parts = parts(base, name)
        _, _, cmetric, c_parts = parts(cand, name)
    except KeyError as e:
        raise UsageError(str(e.args[0]), hint="check the gate's metric names against `compress eval` output") from None
    strata = []
    for bp, cp in zip(b_parts, c_parts, strict=True):
        where = f"{bp.task}/{key}"
        b_docs, c_docs = [s.doc_id for s in bp.samples], [s.doc_id for s in cp.samples]
        if b_docs != c_docs or len(set(b_docs)) != len(b_docs):
            raise UsageError(f"{where}: the two reports evaluated different documents "
                             f"({len(set(b_docs))} vs {len(set(c_docs))})", hint="evaluate both with the same settings")
        for b, c in zip(bp.samples, cp.samples):
            if b.doc_hash and c.doc_hash and b.doc_hash != c.doc_hash:
                raise UsageError(f"{where}: document {b.doc_id} differs between the two reports",
                                 hint="the eval data changed; evaluate both models again")
            if b.prompt_hash and c.prompt_hash and b.prompt_hash != c.prompt_hash:
                raise UsageError(f"{where}: document {b.doc_id} was asked differently of the two models",
                                 hint="few-shot, chat template, system instruction or generation settings differ: "
                                      "evaluate both with the same evals settings")
        strata.append(Stratum(bp.values(), cp.values(), bp.aggregation, bp.weight))
    return metric, cmetric, strata


def quality_check(check: GateCheck, policy: GateSpec, base: AccuracyReport, cand: AccuracyReport) -> CheckResult:
    m, cm, strata = paired_strata(base, cand, check.metric)
    bv = [v for st in strata for v in st.base]
    cv = [v for st in strata for v in st.cand]
    binary = all(v in (0, 1, 0.0, 1.0, True, False) for v in bv + cv)
    equal_weights = len(strata) == 1 or len({st.weight / len(st.base) for st in strata}) == 1
    if policy.test == "mcnemar" and binary and not check.relative and equal_weights and strata[0].aggregation == "mean":
        iv = mcnemar_interval([bool(v) for v in bv], [bool(v) for v in cv], confidence=policy.confidence)
    else:
        iv = stratified_paired_bootstrap(strata, higher_is_better=m.higher_is_better, relative=check.relative,
                                         confidence=policy.confidence, resamples=policy.bootstrap_resamples, seed=0)
    verdict = decide(iv, check.max_regression)
    direction = "drop" if m.higher_is_better else "increase"

    def fmt(x: float, sign: bool = True) -> str:
        return _fmt(x, check.relative, m.unit, sign)

    note = (f"{int(100 * policy.confidence)}% interval [{fmt(iv.lower)}, {fmt(iv.upper)}] over {iv.n} documents "
            f"({iv.method})")
    needed = samples_to_decide(iv, check.max_regression) if verdict == INCONCLUSIVE else None
    if needed:
        note += f"; about {needed} documents would decide"
    return CheckResult(metric=check.metric, kind="quality", verdict=verdict, measured=iv.estimate,
                       shown=f"{direction} {fmt(iv.estimate)}",
                       threshold=f"{direction} <= {fmt(check.max_regression, sign=False)}",
                       baseline=m.value, candidate=cm.value, interval=iv.as_dict(), samples_needed=needed, note=note)


def _fmt(x: float, relative: bool, unit: str, sign: bool = True) -> str:
    spec = "+.2f" if sign else ".2f"
    if relative:
        return f"{100 * x:{spec}}%"
    if unit == "fraction":
        return f"{100 * x:{spec}} pts"
    return f"{x:{'+' if sign else ''}.4g}"


def _paired_binary(check: GateCheck, policy: GateSpec, base: list[bool], cand: list[bool]) -> Interval:
    """The interval of the drop in a pass rate (base - candidate), McNemar's or the paired bootstrap's."""
    if policy.test == "mcnemar" and not check.relative:
        return mcnemar_interval(base, cand, confidence=policy.confidence)
    return stratified_paired_bootstrap([Stratum([float(v) for v in base], [float(v) for v in cand])],
                                       higher_is_better=True, relative=check.relative, confidence=policy.confidence,
                                       resamples=policy.bootstrap_resamples, seed=0)


def _bound_needed(iv: Interval, low: float | None, high: float | None) -> int | None:
    """Items that would decide an interval straddling one of its bounds, if the estimate and spread held."""
    for bound in (low, high):
        if bound is not None and iv.lower < bound < iv.upper:
            return samples_to_decide(iv, bound)
    return None


def _bounds_text(low: float | None, high: float | None, show) -> str:
    return " and ".join(b for b in [f">= {show(low)}" if low is not None else "",
                                    f"<= {show(high)}" if high is not None else ""] if b)


def traffic_check(check: GateCheck, policy: GateSpec, traffic: TrafficReport) -> CheckResult:
    """The user's traffic: a fidelity figure of the candidate (interval over requests, within min / max) or a
    behaviour check's pass rate (its drop from the base's, within max_regression, as accuracy is decided)."""
    from compress.measure.answers import FIDELITY

    name = check.metric.removeprefix("traffic/")
    n = len(traffic.requests)
    if traffic.candidate is None:
        raise UsageError(f"check {check.metric} needs a traffic report of both models")
    if metric_family(check.metric) == "behaviour":
        try:
            base, cand = traffic.check_outcomes(name)
        except KeyError as e:
            raise UsageError(str(e.args[0]), hint="measure the traffic again with the recipe's checks") from None
        iv = _paired_binary(check, policy, base, cand)
        verdict = decide(iv, check.max_regression)
        pts = (lambda x, sign=True: _fmt(x, check.relative, "fraction", sign))
        needed = samples_to_decide(iv, check.max_regression) if verdict == INCONCLUSIVE else None
        note = (f"share of answers passing '{name}': {sum(base) / n:.1%} for the base, {sum(cand) / n:.1%} for the "
                f"candidate; {int(100 * policy.confidence)}% interval [{pts(iv.lower)}, {pts(iv.upper)}] over {n} "
                f"requests ({iv.method})" + (f"; about {needed} requests would decide" if needed else ""))
        return CheckResult(metric=check.metric, kind="traffic", verdict=verdict, measured=iv.estimate,
                           shown=f"drop {pts(iv.estimate)}", threshold=f"drop <= {pts(check.max_regression, False)}",
                           baseline=sum(base) / n, candidate=sum(cand) / n, interval=iv.as_dict(),
                           samples_needed=needed, note=note)
    iv = mean_bootstrap(traffic.values(name), confidence=policy.confidence, resamples=policy.bootstrap_resamples)
    verdict = decide_bounds(iv, check.min, check.max)
    show = (lambda v: f"{v:.4f} nats") if name in ("kl", "nll_increase") else (lambda v: f"{100 * v:.1f}%")
    needed = _bound_needed(iv, check.min, check.max) if verdict == INCONCLUSIVE else None
    note = (f"{FIDELITY[name][0]}; {int(100 * iv.confidence)}% interval, bootstrap over {n} requests; "
            f"{traffic.engine.get('name')} ({traffic.engine.get('kl')})"
            + (f"; about {needed} requests would decide" if needed else ""))
    return CheckResult(metric=check.metric, kind="traffic", verdict=verdict, measured=iv.estimate,
                       shown=f"{show(iv.estimate)} [{show(iv.lower)}, {show(iv.upper)}]",
                       threshold=_bounds_text(check.min, check.max, show), candidate=iv.estimate,
                       interval=iv.as_dict(), samples_needed=needed, note=note)


def flips_check(check: GateCheck, policy: GateSpec, base: AccuracyReport, cand: AccuracyReport) -> CheckResult:
    """TASK/METRIC/flips: the share of documents whose right/wrong changed between the models (either way),
    which an unchanged accuracy can hide."""
    metric = check.metric.removesuffix(FLIPS)
    _, _, strata = paired_strata(base, cand, metric)
    bv = [v for st in strata for v in st.base]
    cv = [v for st in strata for v in st.cand]
    if not all(v in (0, 1, 0.0, 1.0, True, False) for v in bv + cv):
        raise UsageError(f"check {check.metric}: {metric} is not a right/wrong score per document",
                         hint="flips are counted on metrics such as acc or exact_match")
    flips = [float(bool(b) != bool(c)) for b, c in zip(bv, cv)]
    iv = mean_bootstrap(flips, confidence=policy.confidence, resamples=policy.bootstrap_resamples)
    verdict = decide_bounds(iv, None, check.max)
    show = (lambda v: f"{100 * v:.1f}%")
    broke = sum(bool(b) and not bool(c) for b, c in zip(bv, cv))
    needed = _bound_needed(iv, None, check.max) if verdict == INCONCLUSIVE else None
    note = (f"{int(sum(flips))} of {len(flips)} documents changed ({broke} right -> wrong, {int(sum(flips)) - broke} "
            f"wrong -> right); {int(100 * iv.confidence)}% interval, bootstrap over documents"
            + (f"; about {needed} documents would decide" if needed else ""))
    return CheckResult(metric=check.metric, kind="quality", verdict=verdict, measured=iv.estimate,
                       shown=f"{show(iv.estimate)} [{show(iv.lower)}, {show(iv.upper)}]",
                       threshold=_bounds_text(None, check.max, show), interval=iv.as_dict(), samples_needed=needed,
                       note=note)


def decide_bounds(iv: Interval, low: float | None, high: float | None) -> str:
    """A figure that must stay within [low, high]: PASS when its whole interval does, FAIL when its
    whole interval lies outside, INCONCLUSIVE when the interval straddles a bound."""
    if (low is not None and iv.upper < low) or (high is not None and iv.lower > high):
        return FAIL
    if (low is None or iv.lower >= low) and (high is None or iv.upper <= high):
        return PASS
    return INCONCLUSIVE


def efficiency_check(check: GateCheck, values: dict[str, Interval], word: str = "level") -> CheckResult:
    if check.metric not in values:
        raise UsageError(f"check {check.metric} needs bench.slo in the recipe",
                         hint="add bench.slo, e.g. {ttft_p99_ms: 2000, itl_p99_ms: 200}")
    iv = values[check.metric]
    bounds = " and ".join(b for b in [f">= {check.min:g}" if check.min is not None else "",
                                      f"<= {check.max:g}" if check.max is not None else ""] if b)
    absolute = ABSOLUTE_EFFICIENCY.get(check.metric)
    bounds += "" if absolute else "x"
    if math.isnan(iv.estimate):  # no evidence: never a verdict made up from a stand-in value
        return CheckResult(metric=check.key, kind="efficiency", verdict=INCONCLUSIVE, measured=None,
                           shown="n/a", threshold=bounds, interval=None,
                           note=f"{iv.method.removeprefix('not computable: ')}: the reports hold no evidence for "
                                f"this check")
    verdict = decide_bounds(iv, check.min, check.max)
    show = (lambda v: absolute.format(v)) if absolute else (lambda v: f"{v:.3g}x")
    spread = iv.n > 1
    shown = show(iv.estimate) + (f" [{show(iv.lower)}, {show(iv.upper)}]" if spread else "")
    note = EFFICIENCY_METRICS[check.metric][0]
    if check.at is not None:
        note = note.replace("at the largest load level", f"at {word} {check.at}")
        note += "" if f"{word} {check.at}" in note else f", at {word} {check.at}"
    if spread:
        note += f"; {int(100 * iv.confidence)}% interval, {iv.method}"
        if verdict == INCONCLUSIVE:
            note += "; more rounds (bench.rounds) or a quieter machine would narrow it"
    return CheckResult(metric=check.key, kind="efficiency", verdict=verdict, measured=iv.estimate, shown=shown,
                       threshold=bounds, interval=iv.as_dict() if spread else None, note=note)


def servable_check(spec: ServableSpec, report: ServableReport) -> CheckResult:
    """PASS when the engine loaded the candidate and enough greedy continuations match transformers'."""
    r = report.result
    agreement = float(r.get("agreement") or 0.0)
    loaded = r.get("error") is None or bool(r.get("served_token_ids"))
    ok = loaded and bool(r.get("served_token_ids")) and agreement >= spec.min_agreement
    n = len(r.get("matching_prefix") or [])
    where = f"{spec.engine} {r.get('engine_version') or ''}".strip()
    if not loaded or not r.get("served_token_ids"):
        shown, note = "not served", f"{where}: {r.get('error') or 'no answer'}"
    else:
        shown = f"{round(agreement * n)}/{n} prompts agree"
        kernels = ", ".join(r.get("kernels") or {}) or "no quantized kernel named in its log"
        note = (f"{where} ({r.get('dtype')}; {kernels}): the first {r.get('tokens')} greedy tokens of "
                f"{n} prompts against transformers")
    return CheckResult(metric=f"servable:{spec.engine}", kind="servable", verdict=PASS if ok else FAIL,
                       measured=agreement, shown=shown, threshold=f">= {spec.min_agreement:.0%} agree", note=note)


def draft_check(check: GateCheck, draft: Any, policy: GateSpec) -> CheckResult:
    """draft_speedup: the interval over rounds against the bound; greedy outputs that differ with
    and without the draft FAIL it whatever the speed (the draft must not change the output)."""
    figures = draft.figures(confidence=policy.confidence, resamples=policy.bootstrap_resamples)
    result = efficiency_check(check, {"draft_speedup": figures["draft_speedup"]}, "batch")
    accept = figures["acceptance_rate"].estimate
    result.note += (f"; acceptance {accept:.1%}, {figures['tokens_per_target_forward'].estimate:.2f} tokens per "
                    f"target forward")
    if not draft.identical:
        result.verdict = FAIL
        result.note += f"; greedy outputs differ with the draft on prompts {draft.mismatched_prompts}"
    return result


def evaluate(policy: GateSpec, base_acc: AccuracyReport | None, cand_acc: AccuracyReport | None,
             speed: SpeedReport | None, servable: ServableReport | None = None, draft: Any = None,
             traffic: TrafficReport | None = None) -> GateResult:
    """Apply every check of a gate policy to the stored reports (``draft``: a speculative-decoding
    report, the baseline generating with the candidate as its draft; ``traffic``: both models on the
    user's own requests)."""
    if not policy.checks and policy.servable is None:
        raise UsageError("the recipe's gate has no checks", hint="add gate.checks, e.g. a max_regression on accuracy")
    results = []
    efficiency: dict[int | None, dict[str, Interval]] = {}
    for check in policy.checks:
        family = metric_family(check.metric)
        if family in ("fidelity", "behaviour"):
            if traffic is None:
                raise UsageError(f"check {check.metric} needs a traffic report (both models on evals.traffic)")
            results.append(traffic_check(check, policy, traffic))
        elif family == "flips":
            if base_acc is None or cand_acc is None:
                raise UsageError(f"check {check.metric} needs accuracy reports for both models")
            results.append(flips_check(check, policy, base_acc, cand_acc))
        elif family == "quality":
            if base_acc is None or cand_acc is None:
                raise UsageError(f"check {check.metric} needs accuracy reports for both models")
            results.append(quality_check(check, policy, base_acc, cand_acc))
        elif check.metric == "draft_speedup":
            if draft is None:
                raise UsageError("check draft_speedup needs a speculative-decoding report (the baseline with the "
                                 "candidate as its draft)")
            results.append(draft_check(check, draft, policy))
        else:
            if speed is None:
                raise UsageError(f"check {check.metric} needs a speed report (both models benchmarked together)")
            if check.at not in efficiency:
                efficiency[check.at] = efficiency_metrics(speed, level=check.at, confidence=policy.confidence,
                                                          resamples=policy.bootstrap_resamples)
            results.append(efficiency_check(check, efficiency[check.at], level_word(speed)))
    if policy.servable is not None:
        if servable is None:
            raise UsageError(f"the servable check needs a servable report ({policy.servable.engine} on the candidate)")
        results.append(servable_check(policy.servable, servable))
    verdicts = {r.verdict for r in results}
    verdict = FAIL if FAIL in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else PASS
    cand_model = (cand_acc.model if cand_acc is not None else speed.candidate.model if speed else
                  traffic.candidate if traffic is not None and traffic.candidate is not None else
                  draft.draft if draft is not None else servable.model)
    base_model = (base_acc.model if base_acc is not None else speed.baseline.model if speed else
                  traffic.baseline if traffic is not None else draft.target if draft is not None else None)
    return GateResult(verdict=verdict, exit_code=EXIT_CODES[verdict], confidence=policy.confidence, test=policy.test,
                      checks=results, candidate_hash=cand_model.content_hash,
                      baseline_hash=base_model.content_hash if base_model else "",
                      created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      policy=policy.model_dump(mode="json"), policy_hash=policy_hash(policy))


def policy_hash(policy: GateSpec | dict[str, Any]) -> str:
    """sha256 of a gate policy's canonical JSON: a GateSpec with its defaults filled in, or a
    policy as a decision recorded it."""
    data = policy.model_dump(mode="json") if isinstance(policy, GateSpec) else policy
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
