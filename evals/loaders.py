"""Load the bundled eval data from files beside this one (lm-eval `custom_dataset` hooks).

lm-eval resolves `!function loaders.NAME` relative to the task YAML, so the tasks work from
any working directory, with no network and no datasets cache.
"""
import json
from pathlib import Path

import datasets

DATA = Path(__file__).resolve().parent / "data"


def _jsonl(name: str) -> datasets.DatasetDict:
    with (DATA / name).open() as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def tiny_facts_mc(**_kwargs) -> datasets.DatasetDict:
    return _jsonl("tiny_facts_mc.jsonl")


def tiny_bios_ppl(**_kwargs) -> datasets.DatasetDict:
    return _jsonl("tiny_bios_ppl.jsonl")
