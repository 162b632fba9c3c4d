"""Load the bundled eval data from files beside this one (lm-eval `custom_dataset` hooks), and
the bundled tasks' own metric.

lm-eval resolves `!function loaders.NAME` relative to the task YAML, so the tasks work from
any working directory, with no network and no datasets cache.
"""
import json
import re
from collections import Counter
from pathlib import Path

import datasets

DATA = Path(__file__).resolve().parent / "data"
PLACES = {"town"}


def _rows(name: str) -> list[dict]:
    with (DATA / name).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _splits(**splits: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


def tiny_facts_mc(**_kwargs) -> datasets.DatasetDict:
    return _splits(test=_rows("tiny_facts_mc.jsonl"))


def tiny_bios_ppl(**_kwargs) -> datasets.DatasetDict:
    return _splits(test=_rows("tiny_bios_ppl.jsonl"))


def tiny_facts_gen(**_kwargs) -> datasets.DatasetDict:
    """The multiple-choice questions asked open-ended: the answer is the right choice's word.
    Few-shot examples come from their own split (questions about other people)."""
    test = [{"id": r["id"], "attribute": r["attribute"], "question": r["question"],
             "answer": r["choices"][r["label"]]} for r in _rows("tiny_facts_mc.jsonl")]
    return _splits(test=test, fewshot=_rows("tiny_facts_fewshot.jsonl"))


def tiny_world_places(**_kwargs) -> datasets.DatasetDict:
    """Subtask of the tiny_world group: where each person lives (250 questions)."""
    splits = tiny_facts_gen()
    return datasets.DatasetDict({"test": splits["test"].filter(lambda r: r["attribute"] in PLACES),
                                 "fewshot": splits["fewshot"]})


def tiny_world_traits(**_kwargs) -> datasets.DatasetDict:
    """Subtask of the tiny_world group: trade, pet and colour (750 questions)."""
    splits = tiny_facts_gen()
    return datasets.DatasetDict({"test": splits["test"].filter(lambda r: r["attribute"] not in PLACES),
                                 "fewshot": splits["fewshot"]})


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def token_f1(references: list[str], predictions: list[str]) -> float:
    """SQuAD-style F1 between the words of the (filtered) answer and of the reference, per
    document; the task averages it over documents."""
    pred, gold = _words(predictions[0]), _words(references[0])
    common = sum((Counter(pred) & Counter(gold)).values())
    if not pred or not gold or common == 0:
        return float(pred == gold)
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)
