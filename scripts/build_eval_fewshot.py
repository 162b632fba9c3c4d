"""Write ``evals/data/tiny_facts_fewshot.jsonl``: few-shot examples for the generative tasks.

They are question-and-answer pairs about the *QA people*, whose questions the embedded model
was trained on (``compress/assets/data/train.jsonl``): demonstrations of the answer format,
never the held-out people the eval questions ask about. Deterministic: rerunning writes the
same bytes.

    python scripts/build_eval_fewshot.py
"""
from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COUNT = 40


def main() -> None:
    rows = [json.loads(line)["text"] for line in (ROOT / "compress/assets/data/train.jsonl").open()]
    pairs = sorted({t for t in rows if t.startswith("Question:")})
    random.Random(0).shuffle(pairs)
    held_out = {json.loads(line)["question"] for line in (ROOT / "evals/data/tiny_facts_mc.jsonl").open()}
    out = []
    for text in pairs:
        question, answer = text.rsplit("\nAnswer: ", 1)
        question += "\nAnswer:"
        assert question not in held_out, "a few-shot example asks an eval question"
        out.append({"id": len(out), "question": question, "answer": answer})
        if len(out) == COUNT:
            break
    path = ROOT / "evals/data/tiny_facts_fewshot.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    print(f"wrote {len(out)} examples to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
