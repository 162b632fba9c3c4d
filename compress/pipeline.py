"""`compress run`: recipe -> artifact -> reports -> gate -> export, each stage cached and resumable.

Every stage writes a file, so a rerun after a crash picks up where it stopped: the artifact
is reused when its content key matches, reports come from the content-addressed cache, the
gate is recomputed from stored reports (it is cheap), and an identical export is left alone.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress import runs
from compress.core.artifact import MANIFEST, read_json, write_json
from compress.core.errors import UsageError
from compress.decide.evidence import GATE_FILE, REPORT_FILES, decide_reports, report_hashes
from compress.decide.evidence import load_reports as _load_folder
from compress.ship.export import export_run
from compress.core.faults import fault_point
from compress.decide.gate import GateResult
from compress.core.locks import locked
from compress.core.recipe import Recipe, metric_family
from compress.core.stats import PASS


@dataclass
class RunResult:
    recipe: Recipe
    run_dir: Path
    manifest: dict[str, Any]
    gate: GateResult
    reports: dict[tuple[str, str], Any]
    exported_to: Path | None
    stages: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def needs(recipe: Recipe) -> tuple[bool, bool]:
    """Whether the recipe's gate needs accuracy reports, and whether it needs bench reports."""
    families = [(metric_family(c.metric), c.metric) for c in recipe.gate.checks]
    quality = any(f in ("quality", "flips") for f, _ in families)
    efficiency = any(f == "efficiency" and m != "draft_speedup" for f, m in families)
    return quality, efficiency


def needs_traffic(recipe: Recipe) -> bool:
    """Whether the run answers the user's own traffic: whenever the recipe names a file (evals.traffic), gated or
    not, its figures are measured and travel with the evidence."""
    return recipe.evals.traffic is not None


def needs_draft(recipe: Recipe) -> bool:
    """Whether the gate checks the candidate as a speculative-decoding draft for the baseline."""
    return any(c.metric == "draft_speedup" for c in recipe.gate.checks)


def plan(recipe: Recipe, export: bool = True) -> list[str]:
    """The stages `run` goes through for this recipe, in order (export only after a PASS)."""
    quality, efficiency = needs(recipe)
    names = ["artifact"] + (["eval baseline", "eval candidate"] if quality else []) \
        + (["traffic both"] if needs_traffic(recipe) else []) \
        + (["bench both"] if efficiency else []) + (["bench draft"] if needs_draft(recipe) else [])
    if recipe.gate.servable is not None:
        names.append(f"servable {recipe.gate.servable.engine}")
    return names + ["gate"] + (["export"] if export else [])


class LogStages:
    """Stage progress as log lines, for callers without a console (the default of `run`)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    def start(self, name: str) -> None:
        pass

    def end(self, name: str, seconds: float, reused: bool, note: str = "") -> None:
        self.log(f"{name}: {'reused' if reused else 'done'} ({seconds:.1f} s){f' ({note})' if note else ''}")

    def skip(self) -> None:
        pass


def load_reports(run_dir: Path) -> dict[tuple[str, str], Any]:
    """The reports stored in a run directory (missing ones left out)."""
    return _load_folder(run_dir / "reports")


def gate_run(run_dir: Path, recipe: Recipe, reports: dict[tuple[str, str], Any] | None = None,
             policy_source: str = "recipe", decided: GateResult | None = None) -> GateResult:
    """Evaluate the recipe's gate on a run's stored reports; write gate.json (with the policy and
    the sha256 of each report it was decided on) and record the decision in the manifest.

    Args:
        reports: the reports as already loaded (they must be the ones stored in the run).
        policy_source: "recipe" for the artifact's own recipe, else the file the policy came from.
        decided: a decision already made on those reports (a search's early stop), recorded as is.
    """
    with locked(run_dir.parent, f"runs of {recipe.name}"):
        reports = load_reports(run_dir) if reports is None else reports
        result = decided or decide_reports(recipe.gate, reports)
        hashes = report_hashes(run_dir / "reports")
        used = {REPORT_FILES[k] for k in reports}
        result.reports = {name: digest for name, digest in hashes.items() if name in used}
        result.policy_source = policy_source
        result.save(run_dir / GATE_FILE)
        fault_point("gate.before-manifest")
        manifest_path = run_dir / "model" / MANIFEST
        manifest = read_json(manifest_path)
        manifest["gate"] = result.model_dump(mode="json")
        write_json(manifest_path, manifest)
    return result


def servable_report(model_dir: Path, recipe: Recipe, run_dir: Path, *, log: Callable[[str], None],
                    rerun: bool = False) -> tuple[Any, bool]:
    """Serve the candidate with the engine the recipe names and compare its greedy tokens with
    transformers'; kept in the run's reports (reused when it measured these bytes with these settings)."""
    from compress.measure.engines.servable import check_servable, hf_reference, text_prompts, token_prompts
    from compress.measure.accuracy import model_info
    from compress.core.reports import ServableReport
    from compress.core.models import load_tokenizer

    spec = recipe.gate.servable
    path = run_dir / "reports" / REPORT_FILES[("candidate", "servable")]
    info = model_info(model_dir, str(model_dir))
    settings = spec.model_dump(mode="json")
    if path.exists() and not rerun:
        old = ServableReport.load(path)
        if old.model.content_hash == info.content_hash and old.settings == settings:
            return old, True
    start = time.time()
    tokenizer = load_tokenizer(model_dir, recipe.model.trust_remote_code)
    dtype = spec.dtype
    if spec.engine == "llamacpp":  # it takes text: prompts cut from the calibration text, compared in float32
        from compress.core.data import load_texts

        cal = recipe.calibration
        texts = load_texts(cal.dataset, split=cal.split, config_name=cal.config_name, text_field=cal.text_field)
        dtype, candidates = "float32", text_prompts(tokenizer, texts, 4 * spec.prompts, 16)
        # llama.cpp holds a request to its length by banning the end of text, where vLLM generates past it: the
        # prompts compared are those whose continuation in transformers has no end of text in it
        refs = hf_reference(model_dir, dtype, candidates, spec.tokens, trust_remote_code=recipe.model.trust_remote_code)
        kept = [(p, r) for p, r in zip(candidates, refs) if tokenizer.eos_token_id not in r][:spec.prompts]
        prompts, reference = [p for p, _ in kept], [r for _, r in kept]
    else:
        prompts = token_prompts(model_dir, tokenizer, spec.prompts)
        reference = hf_reference(model_dir, dtype, prompts, spec.tokens,
                                 trust_remote_code=recipe.model.trust_remote_code)
    result = check_servable(model_dir, dtype=dtype, prompts=prompts, reference=reference,
                            log_path=run_dir / "logs" / f"servable-{spec.engine}.log", tokens=spec.tokens,
                            min_agreement=spec.min_agreement, engine=spec.engine)
    data = result.model_dump(mode="json")
    data.pop("log_path", None)  # reports travel inside exports: no local paths
    report = ServableReport(model=info, settings=settings, result=data,
                            created=datetime.now(timezone.utc).isoformat(timespec="seconds"), duration_s=round(time.time() - start, 3))
    report.save(path)
    return report, False


def screen(recipe: Recipe, design: Any, *, force: bool = False, device: str = "auto",
           log: Callable[[str], None] = print, warn: Callable[[str], None] = print) -> RunResult | None:
    """`compress search`'s early stop: build the candidate, then evaluate it on growing shares of
    the documents (``design``: a ``compress.decide.sequential.Design``; lm-eval's request cache keeps
    each answer, so the documents of one look are not computed again at the next) and compare
    each share with the baseline's same documents at the look's error-spending confidence. At
    the first look where a quality check is certain to FAIL, the run is decided there: its
    reports (the candidate's share, the baseline restricted to it) and a FAIL gate are written,
    and the result returned. None when no look stops it: `run` then gates it on every document.
    """
    from compress.measure.accuracy import cached_eval, run_eval
    from compress.measure.scoring import restrict
    from compress.decide.gate import EXIT_CODES, policy_hash, quality_check
    from compress.decide.sequential import Design
    from compress.core.stats import FAIL

    quality = [c for c in recipe.gate.checks if metric_family(c.metric) == "quality"]
    if not quality or candidate_evals(recipe).backend != "hf" or not isinstance(design, Design) or design.looks < 2:
        return None
    start = time.time()
    with locked(runs.recipe_dir(recipe), f"runs of {recipe.name}", log=warn):
        _, _, model_dir = runs.build(recipe, force=force, device=device, log=log, warn=warn)
        spec = recipe.model
        if cached_eval(str(model_dir), recipe.evals, dtype=spec.dtype) is not None:
            return None  # every document is already evaluated: the full gate costs nothing more
        common = dict(dtype=spec.dtype, trust_remote_code=spec.trust_remote_code, allow_pickle=spec.allow_pickle)
        base, _ = run_eval(spec.id, recipe.evals, revision=spec.revision, **common)
        total = max(t.n_samples for t in base.tasks.values())
        counts = design.counts(total)
        fractions: list[float] = []
        for n in counts[:-1]:
            cand, _ = run_eval(str(model_dir), recipe.evals.model_copy(update={"limit": n}), requests_cache=True,
                               **common)
            share = restrict(base, cand)
            fractions.append(n / total)
            confidence = design.confidence(fractions, recipe.gate.confidence)
            policy = recipe.gate.model_copy(update={"confidence": confidence})
            checks = [quality_check(c, policy, share, cand) for c in quality]
            log(f"look at {n} of {total} documents per task ({confidence:.5f} confidence): "
                + ", ".join(f"{c.metric} {c.verdict}" for c in checks))
            if not any(c.verdict == FAIL for c in checks):
                continue
            for c in checks:
                c.note += (f"; stopped early: look {len(fractions)} of {len(counts)} at {n} of {total} documents, "
                           f"{design.spending} error spending, {confidence:.5f} confidence at this look")
            run_dir = model_dir.parent
            (run_dir / "reports").mkdir(exist_ok=True)
            reports = {("baseline", "accuracy"): share, ("candidate", "accuracy"): cand}
            for (who, kind), report in reports.items():
                report.save(run_dir / "reports" / REPORT_FILES[(who, kind)])
            # (reports of another measurement of these bytes, left by an earlier run)
            for stale in ("both", "speed"), ("candidate", "servable"), ("both", "draft"), ("both", "traffic"):
                (run_dir / "reports" / REPORT_FILES[stale]).unlink(missing_ok=True)
            decided = GateResult(verdict=FAIL, exit_code=EXIT_CODES[FAIL], confidence=recipe.gate.confidence,
                                 test=recipe.gate.test, checks=checks, candidate_hash=cand.model.content_hash,
                                 baseline_hash=base.model.content_hash,
                                 created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 policy=recipe.gate.model_dump(mode="json"), policy_hash=policy_hash(recipe.gate),
                                 stopped_early={"look": len(fractions), "looks": len(counts), "limit": n,
                                                "of": total, "spending": design.spending, "confidence": confidence,
                                                "documents": sum(t.n_samples for t in cand.tasks.values()),
                                                "saved": sum(t.n_samples for t in base.tasks.values())
                                                - sum(t.n_samples for t in cand.tasks.values())})
            gate = gate_run(run_dir, recipe, reports, decided=decided)
            stages = [{"stage": "screen", "seconds": round(time.time() - start, 2), "reused": False}]
            write_json(run_dir / "stages.json", {"recipe": recipe.name, "seconds": stages[0]["seconds"],
                                                 "stages": stages, "verdict": FAIL, "exported_to": None})
            return RunResult(recipe=recipe, run_dir=run_dir, manifest=read_json(model_dir / MANIFEST), gate=gate,
                             reports=reports, exported_to=None, stages=stages, seconds=stages[0]["seconds"])
    return None


def run(recipe: Recipe, *, force: bool = False, rerun_reports: bool = False, export: bool = True,
        export_to: Path | None = None, device: str = "auto", log: Callable[[str], None] = print,
        warn: Callable[[str], None] = print, model_card: Callable[..., str] | None = None,
        signer: Callable[[Path], None] | None = None, stages: Any = None, requests_cache: bool = False) -> RunResult:
    """The whole flow for one recipe. See the module docstring for what each stage reuses.

    The recipe's runs folder is locked for the whole run: a second `compress run` of the same
    recipe waits for this one (COMPRESS_LOCK_WAIT) instead of writing beside it.
    """
    if not recipe.gate.checks and recipe.gate.servable is None:
        raise UsageError(f"recipe {recipe.name} has no gate checks, so nothing could be exported",
                         hint="add gate.checks, e.g. - {metric: tiny_facts_mc/acc, max_regression: 0.02}")
    with locked(runs.recipe_dir(recipe), f"runs of {recipe.name}", log=warn):
        return _run(recipe, force=force, rerun_reports=rerun_reports, export=export, export_to=export_to,
                    device=device, log=log, warn=warn, model_card=model_card, signer=signer,
                    stages=stages or LogStages(log), requests_cache=requests_cache)


def candidate_evals(recipe: Recipe) -> Any:
    """The candidate's eval settings: the recipe's, except that a GGUF artifact is evaluated by llama.cpp
    (lm-eval's gguf model against its server), whatever evaluates the base."""
    if recipe.method.kind == "gguf" and recipe.evals.backend != "llamacpp":
        return recipe.evals.model_copy(update={"backend": "llamacpp"})
    return recipe.evals


def _run(recipe: Recipe, *, force: bool, rerun_reports: bool, export: bool, export_to: Path | None, device: str,
         log: Callable[[str], None], warn: Callable[[str], None], model_card: Callable[..., str] | None,
         signer: Callable[[Path], None] | None, stages: Any, requests_cache: bool = False) -> RunResult:
    from compress.measure.accuracy import run_eval
    from compress.measure.bench import run_speed

    start = time.time()
    done: list[dict[str, Any]] = []

    def stage(name: str, fn: Callable[[], Any], reused: Callable[[Any], bool],
              note: Callable[[Any], str] = lambda _: "") -> Any:
        t = time.time()
        stages.start(name)
        value = fn()
        entry = {"stage": name, "seconds": round(time.time() - t, 2), "reused": bool(reused(value))}
        done.append(entry)
        stages.end(name, entry["seconds"], entry["reused"], note(value))
        fault_point(f"run.after-{name.replace(' ', '-')}")
        return value

    _, _, model_dir = stage(
        "artifact", lambda: runs.build(recipe, force=force, device=device, log=log, warn=warn), lambda r: r[1])
    run_dir = model_dir.parent
    (run_dir / "reports").mkdir(exist_ok=True)
    want_acc, want_bench = needs(recipe)
    spec = recipe.model
    base_spec = spec.id
    common = dict(dtype=spec.dtype, rerun=rerun_reports, trust_remote_code=spec.trust_remote_code,
                  allow_pickle=spec.allow_pickle)
    reports: dict[tuple[str, str], Any] = {}
    if want_acc:
        for who, target in (("baseline", base_spec), ("candidate", str(model_dir))):
            settings = candidate_evals(recipe) if who == "candidate" else recipe.evals
            report, _ = stage(f"eval {who}", lambda t=target, w=who, s=settings: run_eval(
                t, s, revision=spec.revision if t == base_spec else None,
                requests_cache=requests_cache and w == "candidate", **common), lambda r: r[1])
            report.save(run_dir / "reports" / REPORT_FILES[(who, "accuracy")])
            reports[(who, "accuracy")] = report
    if needs_traffic(recipe):
        from compress.measure.fidelity import run_traffic

        # The user's own requests, answered by both: the candidate's fidelity to the base, no labels needed.
        report, _ = stage("traffic both", lambda: run_traffic(
            base_spec, str(model_dir), recipe.evals.traffic, dtype=spec.dtype, rerun=rerun_reports,
            log_path=run_dir / "logs" / "traffic-vllm.log", log=log), lambda r: r[1])
        report.save(run_dir / "reports" / REPORT_FILES[("both", "traffic")])
        reports[("both", "traffic")] = report
    if want_bench:
        # Both models in the same time window, alternating rounds: never a figure from another moment.
        log(f"bench: baseline and candidate together ({recipe.bench.engine}, {recipe.bench.rounds} rounds, "
            "alternating)")
        # Each side's server starts with its serving settings (recipe.serve, recipe.baseline_serve).
        serve = {"baseline": recipe.baseline_serve, "candidate": recipe.serve}
        report, _ = stage("bench both",
                          lambda: run_speed(base_spec, str(model_dir), recipe.bench, revision=spec.revision,
                                            log_dir=run_dir / "logs", log=log, serve=serve, **common),
                          lambda r: r[1])
        report.save(run_dir / "reports" / REPORT_FILES[("both", "speed")])
        reports[("both", "speed")] = report
    if needs_draft(recipe):
        from compress.measure.speculative import run_draft

        # The base model generating with this artifact as its draft, against the base alone.
        report, _ = stage("bench draft", lambda: run_draft(base_spec, str(model_dir), recipe.bench,
                                                           revision=spec.revision, log=log, **common),
                          lambda r: r[1])
        report.save(run_dir / "reports" / REPORT_FILES[("both", "draft")])
        reports[("both", "draft")] = report
    if recipe.gate.servable is not None:
        report, _ = stage(f"servable {recipe.gate.servable.engine}", lambda: servable_report(
            model_dir, recipe, run_dir, log=log, rerun=rerun_reports), lambda r: r[1])
        reports[("candidate", "servable")] = report
    gate = stage("gate", lambda: gate_run(run_dir, recipe, reports), lambda _: False, lambda g: g.verdict)
    manifest = read_json(model_dir / MANIFEST)
    exported = None
    if gate.verdict == PASS and export:
        to = export_to or Path(recipe.export.to or f"dist/{recipe.name}")
        from compress.ship.report import local_base

        card = (lambda m, g: model_card(recipe, m, g, reports, path=to, base_path=local_base(recipe))) \
            if (model_card and recipe.export.model_card) else None
        before = (to / MANIFEST).exists() and read_json(to / MANIFEST).get("content_hash")
        stage("export", lambda: export_run(run_dir, to, model_card=card, force=force, signer=signer),
              lambda m: before == m.get("content_hash"))
        exported = to
    elif export:
        stages.skip()  # nothing to export after a FAIL or INCONCLUSIVE
    result = RunResult(recipe=recipe, run_dir=run_dir, manifest=manifest, gate=gate, reports=reports,
                       exported_to=exported, stages=done, seconds=round(time.time() - start, 2))
    write_json(run_dir / "stages.json", {"recipe": recipe.name, "seconds": result.seconds, "stages": done,
                                         "verdict": gate.verdict, "exported_to": str(exported) if exported else None})
    return result
