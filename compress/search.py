"""`compress search`: the cheapest artifact of a model that still passes its gate.

A recipe's ``search:`` section lists candidate methods (or names a built-in ladder). Each is
given a predicted weight size from the base model's layer shapes (no build needed), and they are
tried from the smallest: each candidate is a normal recipe (the search recipe with that method
and its own name) built and gated exactly as `compress run` does, sharing the artifact and
report caches, so the baseline's accuracy is measured once and every speed figure is measured
beside the baseline in the same time window. The first PASS is the cheapest one; `--all` goes
on to draw the whole frontier.

The outcome is a file to commit: ``NAME.chosen.yaml``, a plain recipe that rebuilds the chosen
artifact byte for byte (same effective recipe, same content key), with a comment saying what
was tried and why it won.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.core.errors import UsageError
from compress.core.recipe import Recipe, validate_document
from compress.core.stats import FAIL, INCONCLUSIVE, PASS

# Built-in ladders: from the fewest bits up. RTN before GPTQ at the same size (no calibration to
# pay for when plain rounding already passes), 8-bit formats last. AutoRound only at 2 bits, after
# GPTQ: there it recovered more than GPTQ on the embedded model (at 3 and 4 bits it did not; see
# the quality table in docs/results.md), and its tuning costs the most.
LADDERS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "default": {
        "uniform": [
            {"kind": "int4", "algorithm": "rtn", "bits": 2, "group_size": 32},
            {"kind": "int4", "algorithm": "gptq", "bits": 2, "group_size": 32},
            {"kind": "int4", "algorithm": "autoround", "bits": 2, "group_size": 32},
            {"kind": "int4", "algorithm": "rtn", "bits": 3, "group_size": 64},
            {"kind": "int4", "algorithm": "gptq", "bits": 3, "group_size": 64},
            {"kind": "int4", "algorithm": "rtn", "bits": 4, "group_size": 128},
            {"kind": "int4", "algorithm": "gptq", "bits": 4, "group_size": 128},
            {"kind": "int4", "algorithm": "awq", "bits": 4, "group_size": 128},
            {"kind": "int8", "scheme": "w8a8"},
            {"kind": "fp8", "scheme": "dynamic"},
        ],
        # The most sensitive layers of a 2- or 3-bit model kept at 8 bits, for 5 to 25% more bytes.
        "mixed": [
            {"method": {"kind": "int4", "algorithm": "gptq", "bits": 2, "group_size": 32}, "budget": 0.10},
            {"method": {"kind": "int4", "algorithm": "gptq", "bits": 2, "group_size": 32}, "budget": 0.25},
            {"method": {"kind": "int4", "algorithm": "rtn", "bits": 3, "group_size": 64}, "budget": 0.05},
            {"method": {"kind": "int4", "algorithm": "rtn", "bits": 3, "group_size": 64}, "budget": 0.15},
        ],
    },
}
# Building effort, to order candidates of the same predicted size (the cheaper build first).
EFFORT = {"rtn": 0, "dynamic": 0, "block": 0, "mxfp4": 0, "nf4": 1, "awq": 2, "gptq": 3, "gptq-hf": 3, "static": 3,
          "w8a8": 3, "nvfp4": 3, "llm-int8": 1, "autoround": 4}
CHOSEN_HEADER = "# Chosen by `compress search`"


@dataclass
class Candidate:
    method: dict[str, Any]   # the method section, defaults filled in
    slug: str                # e.g. int4-gptq-b3-g64: the candidate's recipe is NAME-SLUG
    predicted_bytes: int


@dataclass
class Tried:
    candidate: Candidate
    recipe: Recipe
    run: Any                 # pipeline.RunResult
    seconds: float

    @property
    def verdict(self) -> str:
        return self.run.gate.verdict


@dataclass
class SearchResult:
    recipe: Recipe
    tried: list[Tried]
    skipped: list[Candidate]           # not tried: a cheaper candidate passed first
    chosen: Tried | None
    chosen_path: Path | None = None
    exported_to: Path | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def slug(method: dict[str, Any]) -> str:
    """A short name for a method: int4-gptq-b3-g64, int8-w8a8, fp8-dynamic."""
    if method["kind"] == "int4":
        group = f"-g{method['group_size']}" if method.get("group_size") else "-gch"
        return f"int4-{method['algorithm']}-b{method['bits']}{group}"
    if method["kind"] == "fp4":
        return f"fp4-{method['format']}{'-a16' if method.get('weights_only') else ''}"
    return f"{method['kind']}-{method['scheme']}"


def candidate_methods(recipe: Recipe) -> list[dict[str, Any]]:
    """The search's candidate methods, as validated method sections (ladder first, then the
    listed ones), without duplicates."""
    spec = recipe.search
    raw = list(LADDERS[spec.ladder]["uniform"]) if spec.ladder else []
    # Listed candidates as written (their unset keys take the defaults and the search's ignore).
    raw += [c.model_dump(mode="json", exclude_unset=True) for c in spec.candidates]
    seen, out = set(), []
    for method in raw:
        full = _with_method(recipe, method).effective()["method"]
        key = repr(sorted(full.items()))
        if key not in seen:
            seen.add(key)
            out.append(full)
    return out


def _with_method(recipe: Recipe, method: dict[str, Any], name: str | None = None) -> Recipe:
    """The recipe with this method (taking the search's `ignore` unless the candidate sets its
    own) and no search section."""
    data = recipe.model_dump(mode="json", exclude={"search"})
    data["method"] = {"ignore": list(recipe.search.ignore), **method} if recipe.search else dict(method)
    if name:
        data["name"] = name
    return validate_document(data, f"search candidate {method.get('kind')}")


def candidate_recipe(recipe: Recipe, candidate: Candidate) -> Recipe:
    """The candidate as a normal recipe: the search recipe's model, data, evals, bench, gate and
    export, with the candidate's method and the name NAME-SLUG (no search section)."""
    return _with_method(recipe, candidate.method, f"{recipe.name}-{candidate.slug}")


# ---------------------------------------------------------------------- predicted size

def layer_shapes(recipe: Recipe) -> tuple[list[tuple[str, int, int]], int, int]:
    """(name, out_features, in_features) of each Linear a method could quantize, the bytes of
    everything else, and the bytes per unquantized weight, from the base model's config and
    safetensors headers (nothing is loaded)."""
    from compress.build.methods.base import _meta_model, quantizable_linears
    from compress.core.models import resolve_model, weight_bytes_in

    base = resolve_model(recipe.model.id, recipe.model.revision)
    st = (Path(base.path) / "config.json").stat()
    model = _meta_model(str(base.path), recipe.model.trust_remote_code, st.st_mtime_ns, st.st_size)
    dtype = recipe.model.dtype if recipe.model.dtype != "auto" else "bfloat16"
    itemsize = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
    linears = [(name, m.out_features, m.in_features) for name, m in quantizable_linears(model, [])]
    total = weight_bytes_in(Path(base.path), dtype)
    return linears, total - itemsize * sum(o * i for _, o, i in linears), itemsize


def predicted_bytes(method: dict[str, Any], linears: list[tuple[str, int, int]], rest: int, itemsize: int,
                    ignore: set[str], int8: set[str] = frozenset()) -> int:
    """Weight bytes of the artifact a method would write: packed weights, their scales (16-bit,
    one per group or per output channel; a zero point per group when asymmetric), the ``int8``
    layers at a byte per weight, the ignored layers and every other tensor as they are."""
    total = rest
    for name, out, inp in linears:
        if name in ignore:
            total += itemsize * out * inp
        elif method["kind"] == "int4" and method["algorithm"] == "nf4":
            total += out * inp // 2 + 4 * math.ceil(out * inp / 64)
        elif method["kind"] == "fp4":  # half a byte per weight, a one-byte scale per group of 16 or 32
            total += out * inp // 2 + math.ceil(out * inp / (16 if method["format"] == "nvfp4" else 32))
        elif method["kind"] == "int4" and name not in int8:
            groups = math.ceil(inp / method["group_size"]) if method.get("group_size") else 1
            per_group = 2 + (0 if method.get("symmetric", True) else 1)
            total += math.ceil(out * inp * method["bits"] / 8) + out * groups * per_group
        else:  # 8-bit formats and int8 layers: one byte per weight, a scale per output channel
            total += out * inp + 4 * out
    return total


def plan(recipe: Recipe, log: Callable[[str], None] = lambda m: None) -> list[Candidate]:
    """The candidates in the order they are tried: smallest predicted weights first, then the
    cheaper build. Mixed-precision candidates need the layers' sensitivity (measured once per
    base model and cached)."""
    linears, rest, itemsize = layer_shapes(recipe)
    names = {n for n, _, _ in linears}
    out = []
    for method in candidate_methods(recipe):
        ignore = _ignored(names, method.get("ignore", []))
        int8 = _ignored(names, method.get("int8_layers", [])) - ignore
        out.append(Candidate(method, slug(method), predicted_bytes(method, linears, rest, itemsize, ignore, int8)))
    for method, budget, keep in mixed_specs(recipe):
        cand = mixed_candidate(recipe, method, budget, keep, linears, rest, itemsize, log)
        if cand is not None and all(c.method != cand.method for c in out):
            out.append(cand)
    return sorted(out, key=lambda c: (c.predicted_bytes,
                                      EFFORT.get(c.method.get("algorithm") or c.method.get("scheme")
                                                 or c.method.get("format"), 9)))


def mixed_specs(recipe: Recipe) -> list[tuple[dict[str, Any], float, str]]:
    """(method as validated, budget, keep) of each mixed-precision candidate: the ladder's, then
    the listed."""
    spec = recipe.search
    raw = list(LADDERS[spec.ladder]["mixed"]) if spec.ladder else []
    raw += [{"method": m.method.model_dump(mode="json", exclude_unset=True), "budget": m.budget, "keep": m.keep}
            for m in spec.mixed]
    return [(_with_method(recipe, m["method"]).effective()["method"], m["budget"], m.get("keep", "int8"))
            for m in raw]


def mixed_candidate(recipe: Recipe, method: dict[str, Any], budget: float, keep: str,
                    linears: list[tuple[str, int, int]], rest: int, itemsize: int,
                    log: Callable[[str], None]) -> Candidate | None:
    """The method with the layers that lose the most per extra byte kept at 8 bits (``keep``
    int8: the method's ``int8_layers``) or unquantized (``keep`` unquantized: its ignore list),
    within ``budget`` times the uniform candidate's bytes (None when no layer fits). Layers an
    engine fuses (q/k/v, gate/up) are kept or not together."""
    from compress.build.sensitivity import budget_for, keep_within_budget, layer_sensitivity

    names = {n for n, _, _ in linears}
    ignored = _ignored(names, method.get("ignore", []))
    uniform = predicted_bytes(method, linears, rest, itemsize, ignored)
    kl = layer_sensitivity(recipe, method["bits"], method.get("group_size"), log=log)
    shapes = {n: (o, i) for n, o, i in linears if n not in ignored}
    kept_bytes = 1 if keep == "int8" else itemsize
    kept = keep_within_budget(kl, shapes, method["bits"], kept_bytes, budget_for(uniform, budget))
    if not kept:
        return None
    if keep == "int8":
        mixed = {**method, "int8_layers": kept}
        size = predicted_bytes(mixed, linears, rest, itemsize, ignored, set(kept))
        return Candidate(mixed, f"{slug(method)}-int8x{len(kept)}", size)
    mixed = {**method, "ignore": sorted(set(method.get("ignore", [])) | set(kept))}
    return Candidate(mixed, f"{slug(method)}-keep{len(kept)}",
                     predicted_bytes(mixed, linears, rest, itemsize, ignored | set(kept)))


def _ignored(names: set[str], ignore: list[str]) -> set[str]:
    import re

    out = set()
    for entry in ignore:
        if entry.startswith("re:"):
            out |= {n for n in names if re.search(entry[3:], n)}
        else:
            out |= {n for n in names if n == entry or n.endswith("." + entry)}
    return out


# ------------------------------------------------------------------------------ search

def search(recipe: Recipe, *, all_candidates: bool = False, run: Callable[[Recipe], Any],
           log: Callable[[str], None], progress: Any = None) -> SearchResult:
    """Try the candidates from the smallest until one passes (or all, with ``all_candidates``).

    Args:
        run: builds and gates one candidate recipe (``pipeline.run`` without export).
        progress: ``start(name)`` / ``end(name, seconds, reused, note)`` / ``skip()`` per candidate
            (``console.Stages``), or None.
    """
    if recipe.search is None:
        raise UsageError(f"recipe {recipe.name} has no search section",
                         hint="add `search: {ladder: default}` or a list of candidates, or use `compress run`")
    start = time.time()
    ordered = plan(recipe)
    tried: list[Tried] = []
    chosen = None
    for cand in ordered:
        if chosen is not None and not all_candidates:
            if progress is not None:
                progress.skip()
            continue
        if progress is not None:
            progress.start(cand.slug)
        r = candidate_recipe(recipe, cand)
        t = time.time()
        result = run(r)
        tried.append(Tried(cand, r, result, round(time.time() - t, 2)))
        log(f"{cand.slug}: {result.gate.verdict} ({result.gate.summary()})")
        if progress is not None:
            size = result.manifest["size"]["weights_bytes"] / 1e6
            progress.end(cand.slug, tried[-1].seconds, False, f"{result.gate.verdict}, {size:.1f} MB")
        if result.gate.verdict == PASS and chosen is None:
            chosen = tried[-1]
    skipped = ordered[len(tried):]
    return SearchResult(recipe=recipe, tried=tried, skipped=skipped, chosen=chosen,
                        seconds=round(time.time() - start, 2))


# ----------------------------------------------------------------------- the outcome

def chosen_text(result: SearchResult) -> str:
    """NAME.chosen.yaml: the chosen candidate's recipe (the keys that differ from the defaults;
    the method in full), under a comment saying what was tried and why it won."""
    from compress.ship.report import recipe_excerpt

    c = result.chosen
    lines = [f"{CHOSEN_HEADER} from recipe {result.recipe.name} ({time.strftime('%Y-%m-%d')}).",
             f"# The cheapest candidate that passed the gate: {c.candidate.slug}, "
             f"{c.run.manifest['size']['weights_bytes'] / 1e6:.1f} MB of weights "
             f"({c.run.manifest['size']['ratio']:.3f}x the base), content sha256 {c.run.manifest['content_hash'][:16]}.",
             "# Tried, smallest predicted weights first:"]
    for t in result.tried:
        stop = t.run.gate.stopped_early
        lines.append(f"#   {t.candidate.slug:<22} {t.run.manifest['size']['weights_bytes'] / 1e6:8.1f} MB  "
                     f"{t.verdict:<12} {t.run.gate.summary()}"
                     + (f" (stopped early on {stop['documents']} documents)" if stop else ""))
    if result.skipped:
        lines.append(f"# Not tried (a smaller candidate passed): {', '.join(c.slug for c in result.skipped)}.")
    lines.append(f"# Rebuild and gate it: compress run {result.recipe.name}.chosen.yaml")
    return "\n".join(lines) + "\n" + recipe_excerpt(c.recipe)


def write_chosen(result: SearchResult, path: Path, force: bool = False) -> Path:
    """Write NAME.chosen.yaml; one written by an earlier search is replaced, any other file only
    with ``force``."""
    from compress.core.artifact import write_bytes_atomic

    if path.exists() and not force and not path.read_text(errors="replace").startswith(CHOSEN_HEADER):
        raise UsageError(f"{path} exists and was not written by compress search",
                         hint="pass --chosen PATH to write elsewhere, or --force to replace it")
    write_bytes_atomic(path, chosen_text(result).encode())
    return path


def frontier_rows(result: SearchResult) -> list[dict[str, Any]]:
    """One row per candidate tried: predicted and actual bytes, the headline quality change
    with its interval, cost where a bench ran, verdict, documents evaluated."""
    rows = []
    for t in result.tried:
        gate, manifest = t.run.gate, t.run.manifest
        quality = next((c for c in gate.checks if c.kind in ("quality", "traffic")), None)
        cost = next((c for c in gate.checks if c.metric.startswith("cost_ratio")), None)
        acc = t.run.reports.get(("candidate", "accuracy"))
        rows.append({
            "candidate": t.candidate.slug, "recipe": t.recipe.name, "method": t.candidate.method,
            "predicted_bytes": t.candidate.predicted_bytes, "weights_bytes": manifest["size"]["weights_bytes"],
            "size_ratio": manifest["size"]["ratio"],
            "quality_metric": quality.metric if quality else None,
            "quality_change": quality.shown if quality else None,
            "quality_interval": quality.interval if quality else None,
            "cost_ratio": cost.shown if cost else None,
            "verdict": gate.verdict, "checks": gate.summary(),
            "documents": sum(task.n_samples for task in acc.tasks.values()) if acc is not None else 0,
            "stopped_at_look": gate.stopped_early["look"] if gate.stopped_early else None,
            "documents_saved": gate.stopped_early["saved"] if gate.stopped_early else 0,
            "seconds": t.seconds, "run_dir": str(t.run.run_dir),
            "chosen": result.chosen is t,
        })
    return rows


def saved_line(rows: list[dict[str, Any]]) -> str:
    """What early stopping saved, in documents evaluated (empty when nothing stopped early)."""
    saved = sum(r["documents_saved"] for r in rows)
    if not saved:
        return ""
    full = sum(r["documents"] + r["documents_saved"] for r in rows)
    stopped = sum(1 for r in rows if r["stopped_at_look"])
    return (f"Early stopping: {stopped} candidate(s) stopped once certain to FAIL; {saved} of {full} candidate "
            f"documents not evaluated ({saved / full:.0%}).")


def exit_code(result: SearchResult) -> int:
    """0 when a candidate passed; 3 when none did and one was INCONCLUSIVE (more documents or
    rounds might decide); 1 when every candidate failed."""
    if result.chosen is not None:
        return 0
    return 3 if any(t.verdict == INCONCLUSIVE for t in result.tried) else 1


def summary_markdown(result: SearchResult) -> str:
    """The `--summary` of `compress search`: the frontier as a Markdown table."""
    icon = {PASS: "✅", FAIL: "❌", INCONCLUSIVE: "⚠️"}
    head = (f"## compress search {result.recipe.name}: " +
            (f"chose {result.chosen.candidate.slug}" if result.chosen else "no candidate passed"))
    lines = [head, "", "| candidate | weights | quality | verdict | documents |", "|---|---|---|---|---|"]
    for row in frontier_rows(result):
        lines.append(f"| {'**' + row['candidate'] + '**' if row['chosen'] else row['candidate']} | "
                     f"{row['weights_bytes'] / 1e6:.1f} MB ({row['size_ratio']:.3f}x) | "
                     f"{row['quality_metric'] or '-'} {row['quality_change'] or ''} | "
                     f"{icon[row['verdict']]} {row['verdict']} | {row['documents']} |")
    if line := saved_line(frontier_rows(result)):
        lines += ["", line]
    if result.skipped:
        lines += ["", f"Not tried (a smaller candidate passed): {', '.join(c.slug for c in result.skipped)}."]
    return "\n".join(lines) + "\n"


def junit_xml(result: SearchResult) -> str:
    """One test case per candidate tried; the search fails (one failure) when none passed."""
    from compress.ship.report import junit_document

    cases = [{"name": t.candidate.slug, "time": t.seconds, "out": t.verdict + ": " + t.run.gate.summary()}
             for t in result.tried]
    cases.append({"name": "a candidate passes",
                  "failure": None if result.chosen else ("FAIL", "no candidate passed the gate")})
    return junit_document(result.recipe.name, "search." + result.recipe.name, result.seconds, cases,
                          title="compress search")


def frontier_plot(result: SearchResult, path: Path) -> None:
    """PNG: each candidate's quality change (with its interval) against its weight bytes, coloured
    by verdict, the gate's bound dashed, the chosen one circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {PASS: "tab:green", FAIL: "tab:red", INCONCLUSIVE: "tab:orange"}
    fig, ax = plt.subplots(figsize=(8, 5))
    metric, bound = None, None
    stopped_any = False
    for i, t in enumerate(result.tried):
        check = next((c for c in t.run.gate.checks if c.kind in ("quality", "traffic")), None)
        if check is None or not check.interval:
            continue
        stopped = t.run.gate.stopped_early is not None
        stopped_any |= stopped
        metric = metric or check.metric
        scale = 100.0 if "pts" in (check.shown or "") else (100.0 if "%" in (check.shown or "") else 1.0)
        x = t.run.manifest["size"]["weights_bytes"] / 1e6
        y, lo, hi = (scale * check.interval[k] for k in ("estimate", "lower", "upper"))
        ax.errorbar(x, y, yerr=[[y - lo], [hi - y]], fmt="o", color=colours[t.verdict], capsize=3, zorder=3,
                    mfc="white" if stopped else colours[t.verdict])
        # Alternate the labels above and below: candidates of one size sit on top of each other.
        ax.annotate(t.candidate.slug, (x, y), fontsize=7, xytext=(5, 4 if i % 2 == 0 else -10),
                    textcoords="offset points")
        if result.chosen is t:
            ax.scatter([x], [y], s=220, facecolors="none", edgecolors="black", zorder=4)
        if bound is None and check.threshold:
            import re

            m = re.search(r"([-+]?\d+(?:\.\d+)?)", check.threshold)
            bound = float(m[1]) if m else None
    if bound is not None:
        ax.axhline(bound, color="black", linestyle="--", linewidth=1, label="gate bound")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("weights on disk (MB)")
    confidence = f"{result.recipe.gate.confidence:.0%}"
    ax.set_ylabel(f"{metric or 'quality'}: worse by ({confidence} interval)")
    ax.set_title(f"compress search {result.recipe.name}: the chosen candidate circled")
    ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=v) for v, c in colours.items()]
    if stopped_any:
        handles.append(plt.Line2D([], [], marker="o", linestyle="", color="tab:red", mfc="white",
                                  label="stopped early (the look's wider interval)"))
    ax.legend(handles=handles + ([plt.Line2D([], [], linestyle="--", color="black", label="gate bound")]
                                 if bound is not None else []), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
