#!/usr/bin/env python3
"""The sample traffic file shipped for the embedded model (evals/traffic/tiny-llama-sample.jsonl): requests a
product built on it might receive, in the three shapes compress reads. Questions from the second half of the
bundled question set (as plain prompts, OpenAI chat messages and ShareGPT conversations, some with their own
max_tokens) and the first sentence of a biography to continue.

    python scripts/make_traffic_sample.py        # rewrites the file (seeded: the same bytes every time)
"""
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "evals" / "traffic" / "tiny-llama-sample.jsonl"


def main() -> None:
    rng = random.Random(0)
    questions = [json.loads(x)["question"] for x in (ROOT / "evals" / "data" / "tiny_facts_mc.jsonl").read_text()
                 .splitlines()[500:]]
    bios = [json.loads(x)["text"] for x in (ROOT / "evals" / "data" / "tiny_bios_ppl.jsonl").read_text().splitlines()]
    lines = []
    for i in range(200):
        kind = rng.choice(["prompt", "messages", "conversations", "bio"])
        if kind == "bio":
            lines.append({"prompt": rng.choice(bios).split(". ")[0] + "."})
            continue
        q = rng.choice(questions)
        if kind == "prompt":
            lines.append({"prompt": q})
        elif kind == "messages":
            lines.append({"messages": [{"role": "user", "content": q}]})
        else:
            lines.append({"conversations": [{"from": "human", "value": q}], "max_tokens": 12})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(x) + "\n" for x in lines))
    print(f"wrote {OUT.relative_to(ROOT)}: {len(lines)} requests")


if __name__ == "__main__":
    main()
