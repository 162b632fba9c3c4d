"""Cascades: each request goes to the small model first and is escalated to the large one only
when the small one is unsure.

Both models' per-document results on the same documents say what a cascade would have done:
for a threshold on the small model's confidence, the documents scored at or above it keep the
small model's answer and the rest take the large model's. That *cascade report* is compared with
the large model alone by the gate's own paired quality checks, so "the cascade is not worse than
the large model" means what a gate PASS means.

Confidence (``SCORES``): for multiple choice, the softmax margin between the two likeliest
choices (from the small model's log-likelihoods of every choice); for generated answers, the
mean log-probability per token of the answer the small model generated (recorded at evaluation).

Choosing the threshold on the documents it is then judged on would flatter it (the largest share
that happens to pass on these documents). The documents are split in two halves at random
(seeded): the threshold is chosen on the first (the largest small-model share whose cascade
passes every quality check there) and verified on the second, whose verdict is the cascade's.

Cost: the small model runs on every request; an escalated request pays the large one too. With
both models benchmarked together (the speed report's baseline the large model, candidate the
small one), the blended cost per 1M tokens against the large model alone is
``cost_ratio + (1 - share)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compress.core.errors import UsageError
from compress.core.recipe import metric_family
from compress.core.reports import AccuracyReport
from compress.core.stats import FAIL, INCONCLUSIVE, PASS

SCORES = {
    "margin": "softmax margin between the small model's two likeliest choices (multiple choice)",
    "mean_logprob": "mean log-probability per token of the small model's generated answer",
}
FORMAT = "compress-router/1"


def margin(loglikelihoods: list[float]) -> float:
    """p(first) - p(second) of the softmax over the choices' log-likelihoods (1 with one choice)."""
    x = np.asarray(loglikelihoods, dtype=float)
    if len(x) < 2:
        return 1.0
    p = np.exp(x - x.max())
    p /= p.sum()
    top = np.sort(p)[::-1]
    return float(top[0] - top[1])


def document_scores(small: AccuracyReport, tasks: list[str]) -> tuple[dict[tuple[str, int], float], str]:
    """The small model's confidence for each (task, document), and which score it is."""
    out: dict[tuple[str, int], float] = {}
    kinds = set()
    for task in tasks:
        result = small.tasks.get(task)
        if result is None:
            raise UsageError(f"the small model's report has no task {task}", hint="evaluate both with the same tasks")
        for s in result.samples:
            if s.loglikelihoods is not None:
                out[(task, s.doc_id)] = margin(s.loglikelihoods)
                kinds.add("margin")
            elif s.answer_logprob is not None:
                out[(task, s.doc_id)] = float(s.answer_logprob)
                kinds.add("mean_logprob")
            else:
                raise UsageError(f"{task}: the small model's results carry no confidence for document {s.doc_id}",
                                 hint="cascades need multiple-choice tasks (choice log-likelihoods) or generative "
                                      "ones evaluated by compress with the transformers back end (answer log-probs)")
    if len(kinds) > 1:
        raise UsageError("the metric's tasks mix multiple-choice and generative documents",
                         hint="gate the cascade on one kind of task")
    return out, kinds.pop()


def cascade_report(small: AccuracyReport, large: AccuracyReport, tasks: list[str],
                   scores: dict[tuple[str, int], float], threshold: float,
                   keep: dict[str, set[int]] | None = None) -> tuple[AccuracyReport, AccuracyReport, float]:
    """(the cascade's report, the large model's, the small model's share) on the documents of
    ``tasks`` (only those in ``keep`` when given): the small model's results where its score is
    at least ``threshold``, the large model's elsewhere. Metric values recomputed."""
    from compress.measure.scoring import only

    keep = keep or {t: {s.doc_id for s in large.tasks[t].samples} for t in tasks}
    big = only(large, keep)
    out = big.model_copy(deep=True)
    served = total = 0
    for task in tasks:
        mine = {(s.doc_id, s.filter): s for s in small.tasks[task].samples}
        samples = []
        for theirs in out.tasks[task].samples:
            s = mine.get((theirs.doc_id, theirs.filter))
            if s is None:
                raise UsageError(f"{task}: document {theirs.doc_id} is missing from the small model's results",
                                 hint="evaluate both with the same tasks and limit")
            if s.doc_hash and theirs.doc_hash and s.doc_hash != theirs.doc_hash:
                raise UsageError(f"{task}: document {theirs.doc_id} differs between the two reports",
                                 hint="the eval data changed: evaluate both models again")
            small_serves = scores[(task, theirs.doc_id)] >= threshold
            # Each model is asked in its own way (its own chat template): the pairing is by document.
            samples.append(s.model_copy(update={"prompt_hash": None}) if small_serves else
                           theirs.model_copy(update={"prompt_hash": None}))
        out.tasks[task].samples = samples
        docs = {s.doc_id for s in samples}
        served += sum(1 for d in docs if scores[(task, d)] >= threshold)
        total += len(docs)
    from compress.measure.scoring import recompute_values

    recompute_values(out)
    big = big.model_copy(update={"tasks": {t: r.model_copy(update={"samples": [
        s.model_copy(update={"prompt_hash": None}) for s in r.samples]}) for t, r in big.tasks.items()}})
    return out, big, served / total if total else 0.0


@dataclass
class Point:
    threshold: float
    share: float
    value: float                     # the cascade's headline metric
    checks: list[Any]                # gate CheckResults, cascade against the large model
    verdict: str
    cost_ratio: dict[str, float] | None = None  # blended cost / large alone, with interval

    def as_dict(self) -> dict[str, Any]:
        return {"threshold": json_number(self.threshold), "share": self.share, "value": self.value, "verdict": self.verdict,
                "checks": [c.model_dump(mode="json") for c in self.checks], "cost_ratio": self.cost_ratio}


@dataclass
class Analysis:
    metric: str
    score: str
    small: str
    large: str
    small_value: float
    large_value: float
    curve: list[Point]
    chosen_on: int                   # documents the threshold was chosen on
    verified_on: int
    chosen: Point | None             # on the choosing half
    verified: Point | None           # the same threshold on the other half: the verdict
    min_share: float
    verdict: str
    costs: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    calibration: list[dict[str, float]] = field(default_factory=list)


def halves(report: AccuracyReport, tasks: list[str], seed: int = 0) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """Each task's documents split at random (seeded) into two halves."""
    a, b = {}, {}
    rng = np.random.default_rng(seed)
    for task in tasks:
        docs = sorted({s.doc_id for s in report.tasks[task].samples})
        order = rng.permutation(len(docs))
        cut = len(docs) // 2
        a[task] = {docs[i] for i in order[:cut]}
        b[task] = {docs[i] for i in order[cut:]}
    return a, b


def thresholds(scores: dict[tuple[str, int], float], steps: int = 40) -> list[float]:
    """Candidate thresholds: the scores' quantiles (from serving everything with the small model
    to serving nothing with it)."""
    values = np.asarray(sorted(scores.values()))
    qs = sorted({float(v) for v in np.quantile(values, np.linspace(0, 1, steps + 1))})
    return [-math.inf, *qs[1:], math.inf]


def evaluate_point(policy: Any, checks: list[Any], small: AccuracyReport, large: AccuracyReport, tasks: list[str],
                   scores: dict, threshold: float, keep: dict[str, set[int]] | None,
                   costs: dict[str, Any] | None) -> Point:
    from compress.decide.gate import quality_check

    cascade, big, share = cascade_report(small, large, tasks, scores, threshold, keep)
    results = [quality_check(c, policy, big, cascade) for c in checks]
    verdicts = {r.verdict for r in results}
    verdict = FAIL if FAIL in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else PASS
    value = cascade.metric(checks[0].metric).value
    blended = None
    if costs is not None:
        r = costs["cost_ratio"]
        blended = {"estimate": r["estimate"] + 1 - share, "lower": r["lower"] + 1 - share,
                   "upper": r["upper"] + 1 - share}
    return Point(threshold, share, value, results, verdict, blended)


def analyse(small: AccuracyReport, large: AccuracyReport, policy: Any, *, min_share: float = 0.0,
            costs: dict[str, Any] | None = None, seed: int = 0, steps: int = 40) -> Analysis:
    """Sweep the threshold, choose it on one half of the documents, verify it on the other.

    Args:
        policy: the gate (``GateSpec``): its quality checks are the cascade's, against the large model.
        min_share: the least share of requests the small model must serve on the verifying half.
        costs: ``{"cost_ratio": {estimate, lower, upper}, "small_per_mtok", "large_per_mtok"}`` from
            a speed report of both models, or None.
    """
    from compress.measure.scoring import parts

    checks, skipped = [], []
    # Quality checks over documents (a traffic cascade's greedy match comes as one, see traffic_policy).
    for c in (c for c in policy.checks if c.max_regression is not None
              and metric_family(c.metric) in ("quality", "fidelity")):
        # A perplexity has no answer to route on: only checks over answered documents apply.
        answered = all(large.tasks[p.task].output_type in ("multiple_choice", "generate_until")
                       for p in parts(large, c.metric)[3])
        (checks if answered else skipped).append(c)
    if not checks:
        raise UsageError("the gate has no quality check over answered documents to hold the cascade to",
                         hint="add a check on a multiple-choice or generative task, such as "
                              "{metric: tiny_facts_mc/acc, max_regression: 0.01}")
    tasks = sorted({p.task for c in checks for p in parts(large, c.metric)[3]})
    scores, kind = document_scores(small, tasks)
    grid = thresholds(scores, steps)
    curve = [evaluate_point(policy, checks, small, large, tasks, scores, t, None, costs) for t in grid]
    first, second = halves(large, tasks, seed)
    on_first = [evaluate_point(policy, checks, small, large, tasks, scores, t, first, costs) for t in grid]
    passing = [p for p in on_first if p.verdict == PASS]
    chosen = max(passing, key=lambda p: (p.share, -p.threshold)) if passing else None
    verified = (evaluate_point(policy, checks, small, large, tasks, scores, chosen.threshold, second, costs)
                if chosen else None)
    notes = [f"{c.metric} left out: a cascade routes answers, and this task has none" for c in skipped]
    notes += [f"threshold chosen on half the documents ({sum(map(len, first.values()))}), verified on the other "
             f"half ({sum(map(len, second.values()))}): the verdict is the held-out half's, free of the selection"]
    if verified is None:
        verdict = FAIL
        notes.append("no threshold passed on the choosing half, not even sending every request to the large model "
                     "(the gate's bound is tighter than the noise of half the documents)")
    elif verified.verdict != PASS:
        verdict = verified.verdict
    elif verified.share == 0:
        verdict = FAIL
        notes.append("within the bound the small model serves no request: there is nothing to route")
    elif verified.share < min_share:
        verdict = FAIL
        notes.append(f"the small model serves {verified.share:.1%} of the held-out requests, under the "
                     f"required {min_share:.0%}")
    else:
        verdict = PASS
    metric = checks[0].metric
    return Analysis(metric=metric, score=kind, small=small.model.spec, large=large.model.spec,
                    small_value=small.metric(metric).value, large_value=large.metric(metric).value,
                    curve=curve, chosen_on=sum(map(len, first.values())), verified_on=sum(map(len, second.values())),
                    chosen=chosen, verified=verified, min_share=min_share, verdict=verdict, costs=costs,
                    notes=notes, calibration=calibration(small, tasks, scores))


def calibration(small: AccuracyReport, tasks: list[str], scores: dict, bins: int = 10) -> list[dict[str, float]]:
    """The small model's accuracy in each decile of its confidence (documents with a right/wrong outcome)."""
    pairs = [(scores[(t, s.doc_id)], float(s.correct)) for t in tasks for s in small.tasks[t].samples
             if s.correct is not None and s.filter == small.tasks[t].samples[0].filter]
    if not pairs:
        return []
    pairs.sort()
    out = []
    for chunk in np.array_split(np.asarray(pairs), min(bins, len(pairs))):
        out.append({"confidence": float(chunk[:, 0].mean()), "accuracy": float(chunk[:, 1].mean()),
                    "documents": int(len(chunk))})
    return out


def json_number(x: float) -> float | str:
    """A threshold as standard JSON: the number, or "-inf" / "inf" (every request / none)."""
    return x if math.isfinite(x) else ("-inf" if x < 0 else "inf")


def blended_per_mtok(costs: dict[str, Any], share: float) -> float:
    """Cost per 1M tokens of the cascade: the small model on every request, the large one on the
    escalated share."""
    return costs["small_per_mtok"] + (1 - share) * costs["large_per_mtok"]


def router(analysis: Analysis, small_hash: str, large_hash: str) -> dict[str, Any]:
    """The small JSON a serving gateway applies: both models, the score, the threshold, what to expect."""
    v = analysis.verified
    return {
        "format": FORMAT,
        "small": {"model": analysis.small, "content_hash": small_hash},
        "large": {"model": analysis.large, "content_hash": large_hash},
        "score": {"name": analysis.score, "definition": SCORES[analysis.score]},
        "threshold": json_number(v.threshold),
        "rule": ("serve the small model's answer when score >= threshold; otherwise ask the large model"
                 if math.isfinite(v.threshold) else "serve the small model's answer for every request"),
        "expected": {"small_share": v.share, "metric": analysis.metric, "cascade_value": v.value,
                     "blended_cost_vs_large": v.cost_ratio,
                     **({"cost_per_mtok": blended_per_mtok(analysis.costs, v.share)} if analysis.costs else {})},
        "verified_on_documents": analysis.verified_on,
    }


def plots(analysis: Analysis, out_dir: Any) -> list[Any]:
    """Two PNGs: the small model's accuracy against its confidence (calibration), and the share,
    the cascade's metric and its blended cost against the threshold. Returns their paths."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if analysis.calibration:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        xs = [b["confidence"] for b in analysis.calibration]
        ys = [b["accuracy"] for b in analysis.calibration]
        ax.plot(xs, ys, "o-", color="tab:blue", label="small model, by confidence decile")
        ax.axhline(analysis.large_value, color="tab:gray", linestyle="--", label=f"large model ({analysis.metric})")
        if analysis.verified is not None and math.isfinite(analysis.verified.threshold):
            ax.axvline(analysis.verified.threshold, color="black", linewidth=1, label="chosen threshold")
        ax.set_xlabel(f"small model's confidence ({analysis.score})")
        ax.set_ylabel("accuracy")
        ax.set_title("Calibration: does confidence track being right?")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out_dir / "cascade-calibration.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curve = [p for p in analysis.curve]
    shares = [p.share for p in curve]
    ax.plot(shares, [p.value for p in curve], "o-", color="tab:blue", markersize=3, label=f"cascade {analysis.metric}")
    ax.axhline(analysis.large_value, color="tab:gray", linestyle="--", label="large model alone")
    ax.set_xlabel("share of requests the small model serves")
    ax.set_ylabel(analysis.metric)
    if curve and curve[0].cost_ratio is not None:
        ax2 = ax.twinx()
        ax2.plot(shares, [p.cost_ratio["estimate"] for p in curve], color="tab:green", label="blended cost / large")
        ax2.fill_between(shares, [p.cost_ratio["lower"] for p in curve], [p.cost_ratio["upper"] for p in curve],
                         color="tab:green", alpha=0.15)
        ax2.set_ylabel("cost per 1M tokens / large alone", color="tab:green")
    if analysis.verified is not None:
        ax.axvline(analysis.verified.share, color="black", linewidth=1, label="chosen (verified share)")
    ax.set_title("Cascade: share, quality and cost by threshold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    paths.append(out_dir / "cascade-curve.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def card(analysis: Analysis) -> str:
    """README.md of an exported cascade: what it routes, what to expect, how it was verified."""
    v = analysis.verified
    cost = ""
    if analysis.costs:
        c = analysis.costs
        cost = (f"- Cost per 1M output tokens: ${blended_per_mtok(c, v.share):.4g} blended, against "
                f"${c['large_per_mtok']:.4g} for the large model alone "
                f"({v.cost_ratio['estimate']:.3f}x, 95% interval [{v.cost_ratio['lower']:.3f}, "
                f"{v.cost_ratio['upper']:.3f}]; both models benchmarked together at "
                f"{c['level_word']} {c['level']}, ${c['price_per_hour']}/hour)\n")
    checks = "\n".join(f"- {c.metric}: {c.shown} ({c.threshold}), {c.verdict}; {c.note}" for c in v.checks)
    return f"""# Cascade: {analysis.small} first, {analysis.large} when unsure

`router.json` holds the rule a serving gateway applies: ask the small model; when its confidence
({SCORES[analysis.score]}) is at least **{v.threshold:.6g}**, serve its answer, otherwise ask the
large model.

## What to expect
- Share of requests the small model serves: **{v.share:.1%}** (on the held-out documents)
- {analysis.metric}: cascade {v.value:.4g}, large model alone {analysis.large_value:.4g}, small model alone \
{analysis.small_value:.4g}
{cost}
## How it was decided
The threshold was chosen on half of the documents ({analysis.chosen_on}) as the largest share whose cascade
passed the gate's quality checks against the large model there, and verified on the other half
({analysis.verified_on} documents), whose paired checks are these:

{checks}

Verdict: **{analysis.verdict}**. A cascade changes which model answers, not either model: re-verify when
either model or the traffic changes.
"""


# ------------------------------------------------------------------------------------ on the user's traffic

TRAFFIC_TASK = "traffic"


def traffic_reports(traffic: Any) -> tuple[AccuracyReport, AccuracyReport]:
    """A traffic report of LARGE (its base) and SMALL (its candidate) as the two accuracy reports a cascade is
    analysed on: one generative task, ``traffic``, whose score per request is ``greedy_match`` (the large model
    always matches itself; the small one where its answer is the large one's), and the small model's confidence
    its mean log-probability per token of its own answer."""
    from compress.core.reports import Metric, Sample, TaskResult

    if traffic.candidate is None or any(r.candidate_logprob is None for r in traffic.requests):
        raise UsageError("the traffic report has no small-model answers with their confidence",
                         hint="measure the traffic again with --rerun (older reports lack it)")

    def report(model: Any, small: bool) -> AccuracyReport:
        samples = [Sample(doc_id=r.index, doc_hash=r.sha256, answer_logprob=r.candidate_logprob if small else 0.0,
                          correct=bool(r.greedy_match) if small else True,
                          values={"greedy_match": float(r.greedy_match) if small else 1.0}) for r in traffic.requests]
        value = sum(s.values["greedy_match"] for s in samples) / len(samples)
        task = TaskResult(task=TRAFFIC_TASK, output_type="generate_until", n_samples=len(samples),
                          metrics={"greedy_match,none": Metric(value=value, higher_is_better=True, unit="fraction")},
                          samples=samples)
        return AccuracyReport(model=model, settings=traffic.settings, tasks={TRAFFIC_TASK: task},
                              environment=traffic.environment, created=traffic.created, duration_s=traffic.seconds,
                              cache_key=traffic.cache_key)

    return report(traffic.candidate, True), report(traffic.baseline, False)


def traffic_policy(policy: Any) -> Any:
    """The gate a traffic cascade is held to: ``traffic/greedy_match`` with ``min: m`` becomes the cascade's
    greedy match against the large model's (always 1) with at most ``1 - m`` regression, decided on the same
    paired intervals as a cascade on a labeled task."""
    from compress.core.recipe import GateCheck

    bounds = [c for c in policy.checks if c.metric == f"{TRAFFIC_TASK}/greedy_match" and c.min is not None]
    if not bounds:
        raise UsageError("a cascade on traffic is held to the share of answers that stay the large model's",
                         hint="add {metric: traffic/greedy_match, min: 0.95} to gate.checks")
    checks = [GateCheck.model_construct(metric=c.metric, max_regression=1.0 - c.min, relative=False, min=None,
                                        max=None, at=None) for c in bounds]
    return policy.model_copy(update={"checks": checks})
