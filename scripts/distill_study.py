#!/usr/bin/env python3
"""Distillation on the embedded model, measured: prune to half depth, then recover.

1. The teacher (builtin:tiny-llama, 4 layers) is evaluated on the bundled tasks.
2. A half-depth student is made exactly as `compress distill` makes it (layers chosen by
   block importance on calibration text) and evaluated *before any training*: what pruning
   alone loses.
3. The student is distilled with the recipe recipes/tiny-llama-distill.yaml (forward KL on
   the teacher's distribution and its hidden states) for --steps steps.
4. The same pruned student is fine-tuned for the same steps with plain next-token
   cross-entropy on the same text (loss.ce_weight = 1, no hidden-state term): the baseline
   that distillation must beat.
5. `compress bench` measures teacher and student with the recipe's bench settings.

    python scripts/distill_study.py               # about 15 minutes on 2 CPU cores
    python scripts/distill_study.py --steps 100   # a quick look

Writes scripts/results/distill_study.json and prints a Markdown table for docs/results.md.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from compress import runs
from compress.core.data import load_texts
from compress.measure.accuracy import evaluate_model, model_info, run_eval
from compress.measure.lm_results import to_report
from compress.measure.bench import run_bench
from compress.build.methods.distill import batches
from compress.core.models import load_model, load_tokenizer, resolve_model
from compress.build.prune import choose_layers, layer_importance, prune_depth
from compress.core.recipe import load_recipe
from compress.core.stats import paired_bootstrap

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny-llama-distill.yaml"
RESULTS = Path(__file__).resolve().parent / "results" / "distill_study.json"


def scores(report) -> dict:
    return {"acc": report.metric("tiny_facts_mc/acc").value,
            "word_perplexity": report.metric("tiny_bios_ppl/word_perplexity").value}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra recipe overrides")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    os.environ.setdefault("COMPRESS_RUNS_DIR", tempfile.mkdtemp(prefix="compress-distill-study-"))
    overrides = list(args.overrides) + ([f"method.training.max_steps={args.steps}"] if args.steps else [])
    recipe = load_recipe(RECIPE, overrides)
    rows: dict[str, dict] = {}

    teacher_report, _ = run_eval(recipe.model.id, recipe.evals)
    rows["teacher (4 layers)"] = scores(teacher_report)

    # Pruning alone: the student compress would start training from.
    path = resolve_model(recipe.model.id).path
    teacher, tok = load_model(path), load_tokenizer(path)
    cal = recipe.calibration
    held_out = batches(load_texts(cal.dataset, num_samples=cal.num_samples, seed=cal.seed), tok, cal.max_seq_length)
    importance = layer_importance(teacher, held_out)
    keep = choose_layers(importance, round(teacher.config.num_hidden_layers * recipe.method.student.depth_ratio),
                         recipe.method.student.importance)
    pruned = prune_depth(teacher, keep)
    info = model_info(path, "pruned")
    rows["pruned, no training"] = scores(to_report(evaluate_model(pruned, tok, recipe.evals), info, {}, "", 0.0))
    print(json.dumps({"kept_layers": keep, "importance": importance, **rows}), flush=True)

    built, reports = {}, {}
    for label, extra in [("distilled (forward KL)", []), ("fine-tuned (cross-entropy)", ["method.loss.ce_weight=1.0", "method.loss.hidden_weight=0"])]:
        r = load_recipe(RECIPE, overrides + extra)
        r = r.model_copy(update={"name": f"study-{'ce' if extra else 'kd'}"})
        start = time.time()
        manifest, _, out = runs.build(r, log=lambda m: print(m, flush=True), warn=print)
        seconds = time.time() - start
        report, _ = run_eval(str(out), recipe.evals)
        reports[label] = report
        rows[label] = {**scores(report), "train_minutes": round(manifest["timings"].get("train_s", seconds) / 60, 2),
                       "steps": manifest["method"]["details"]["training"]["steps"],
                       "heldout_kl_before": manifest["method"]["details"]["heldout_kl_before"],
                       "heldout_kl_after": manifest["method"]["details"]["heldout_kl_after"]}
        built[label] = out
        print(label, json.dumps(rows[label]), flush=True)

    # Measured back to back, now, so that both see the same machine.
    bench_teacher, _ = run_bench(recipe.model.id, recipe.bench, rerun=True)
    bench_student, _ = run_bench(str(built["distilled (forward KL)"]), recipe.bench, rerun=True)
    speed = {f"batch {t.batch_size}": {"teacher_decode_tok_s": round(t.decode_tokens_per_s, 1),
                                       "student_decode_tok_s": round(s.decode_tokens_per_s, 1),
                                       "speedup": round(s.decode_tokens_per_s / t.decode_tokens_per_s, 2),
                                       "teacher_e2e_p50_ms": round(1000 * t.e2e.p50, 1),
                                       "student_e2e_p50_ms": round(1000 * s.e2e.p50, 1)}
             for t, s in zip(bench_teacher.batches, bench_student.batches)}

    teacher_acc, pruned_acc = rows["teacher (4 layers)"]["acc"], rows["pruned, no training"]["acc"]
    lost = teacher_acc - pruned_acc
    kd_acc, ce_acc = rows["distilled (forward KL)"]["acc"], rows["fine-tuned (cross-entropy)"]["acc"]
    summary = {"pruning_lost_points": round(100 * lost, 1),
               "distillation_recovered_fraction": round((kd_acc - pruned_acc) / lost, 3) if lost > 0 else None,
               "cross_entropy_recovered_fraction": round((ce_acc - pruned_acc) / lost, 3) if lost > 0 else None,
               "distillation_minus_cross_entropy_points": round(100 * (kd_acc - ce_acc), 1)}
    # Distillation against fine-tuning, document by document (positive: distillation better).
    kd_s = [s.values["acc"] for s in reports["distilled (forward KL)"].tasks["tiny_facts_mc"].samples]
    ce_s = [s.values["acc"] for s in reports["fine-tuned (cross-entropy)"].tasks["tiny_facts_mc"].samples]
    iv = paired_bootstrap(kd_s, ce_s, higher_is_better=True)  # "regression" of CE against KD: KD - CE
    summary["distillation_minus_cross_entropy_95ci_points"] = [round(100 * iv.lower, 1), round(100 * iv.upper, 1)]
    result = {"recipe": str(RECIPE.relative_to(ROOT)), "overrides": overrides, "kept_layers": keep,
              "layer_importance": importance, "rows": rows, "speed": speed, "summary": summary,
              "environment": bench_student.environment}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print("\n| model | tiny_facts_mc | word perplexity | training |")
    print("|---|---|---|---|")
    for label, r in rows.items():
        train = f"{r['steps']} steps, {r['train_minutes']} min" if "steps" in r else "-"
        print(f"| {label} | {100 * r['acc']:.1f}% | {r['word_perplexity']:.2f} | {train} |")
    print("\n" + json.dumps(summary))
    print(json.dumps(speed))


if __name__ == "__main__":
    main()
