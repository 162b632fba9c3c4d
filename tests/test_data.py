"""The embedded model's data: training, calibration and eval text are pairwise disjoint."""
import json
import re

from conftest import ROOT

DATA = ROOT / "compress" / "assets" / "data"
EVALS = ROOT / "evals" / "data"


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _sentences(texts):
    out = set()
    for t in texts:
        for s in re.split(r"(?<=\.)\s+", t):
            if s.strip():
                out.add(s.strip())
    return out


def _mc_texts():
    return [f"{r['question']} {r['choices'][r['label']]}" for r in _rows(EVALS / "tiny_facts_mc.jsonl")]


def test_sets_are_pairwise_disjoint_as_text():
    sets = {
        "train": [r["text"] for r in _rows(DATA / "train.jsonl")],
        "calibration": [r["text"] for r in _rows(DATA / "calibration.jsonl")],
        "mc_eval": _mc_texts(),
        "ppl_eval": [r["text"] for r in _rows(EVALS / "tiny_bios_ppl.jsonl")],
    }
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            docs_a, docs_b = set(sets[a]), set(sets[b])
            assert not docs_a & docs_b, f"{a} and {b} share documents"
            shared = _sentences(sets[a]) & _sentences(sets[b])
            assert not shared, f"{a} and {b} share sentences, e.g. {sorted(shared)[:3]}"
    # No eval question (the prompt alone) appears anywhere in training or calibration text.
    corpus = "\n".join(sets["train"] + sets["calibration"])
    for row in _rows(EVALS / "tiny_facts_mc.jsonl")[:600]:
        assert row["question"] not in corpus


def test_multiple_choice_task_shape():
    rows = _rows(EVALS / "tiny_facts_mc.jsonl")
    assert len(rows) >= 500
    assert all(len(r["choices"]) == 4 and len(set(r["choices"])) == 4 for r in rows)  # chance 25%
    assert all(0 <= r["label"] < 4 for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    # Labels are spread over the positions, so no position bias can score well.
    counts = [sum(r["label"] == k for r in rows) for k in range(4)]
    assert max(counts) < 0.35 * len(rows)


def test_perplexity_task_has_held_out_text():
    rows = _rows(EVALS / "tiny_bios_ppl.jsonl")
    assert len(rows) >= 100 and all(len(r["text"].split()) > 10 for r in rows)
