"""Text data for calibration and distillation: built-in sets, local files, hub datasets.

Local files: ``.jsonl`` / ``.json`` (a list of objects, or ``{"data": [...]}``) read the
``text_field`` of each record; ``.txt`` files hold one document per paragraph (blank-line
separated). A hub dataset id goes through ``datasets.load_dataset`` when the hub is reachable.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from compress.core.errors import InputError, UsageError
from compress.core.models import BUILTIN_DATASETS
from compress.core.registry import suggest


DATA_HINT = "give a UTF-8 text file: .jsonl (one JSON object per line), .json (a list) or .txt (paragraphs)"


def read_text_file(path: Path) -> str:
    """The text of a data file; an empty, binary or non-UTF-8 file is a one-line InputError."""
    data = path.read_bytes()
    if not data.strip():
        raise InputError(f"{path} is empty: it holds no text", hint=DATA_HINT)
    if b"\0" in data:
        raise InputError(f"{path} is a binary file (it holds NUL bytes), not text", hint=DATA_HINT)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (invalid byte at offset {e.start})",
                         hint="convert it to UTF-8, e.g. iconv -t utf-8") from None


def _records(path: Path) -> list[Any]:
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(read_text_file(path).splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}, line {n}: not valid JSON ({e.msg})",
                                     hint="a .jsonl file holds one JSON object per line") from None
        return rows
    if path.suffix == ".json":
        try:
            data = json.loads(read_text_file(path))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})",
                             hint="a .json file holds a list of records, or {\"data\": [...]}") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a list of records (or {{\"data\": [...]}})", hint=DATA_HINT)
        return data
    if path.suffix in (".txt", ".md", ""):
        return [p.strip() for p in read_text_file(path).split("\n\n") if p.strip()]
    raise UsageError(f"{path}: unsupported data file type '{path.suffix}'", hint="use .jsonl, .json or .txt")


def _texts_from_records(records: list[Any], field: str, source: str) -> list[str]:
    texts = []
    for i, r in enumerate(records):
        if isinstance(r, str):
            texts.append(r)
        elif isinstance(r, dict):
            if field not in r:
                keys = ", ".join(sorted(r)) or "none"
                raise UsageError(f"{source}: record {i} has no field '{field}' (it has: {keys})",
                                 hint="set text_field to the field that holds the text")
            texts.append(str(r[field]))
        else:
            raise InputError(f"{source}: record {i} is neither text nor an object",
                             hint="each record is a string or an object with the text field")
    return [t for t in texts if t.strip()]


def _hub_texts(dataset: str, split: str, config_name: str | None, field: str) -> list[str]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - a core dependency
        raise UsageError("hub datasets need the 'datasets' package") from None
    try:
        ds = datasets.load_dataset(dataset, config_name, split=split)
    except Exception as e:  # datasets raises many types for an unreachable or unknown dataset
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"cannot load dataset '{dataset}' (split {split}): {first}",
                         hint="give a local .jsonl/.txt file, or builtin:tiny-calibration, when offline") from None
    if field not in ds.column_names:
        raise UsageError(f"dataset '{dataset}' has no column '{field}' (it has: {', '.join(ds.column_names)})",
                         hint="set text_field")
    return [t for t in ds[field] if isinstance(t, str) and t.strip()]


def is_local(dataset: str) -> bool:
    """Whether ``load_texts`` reads this reference from this machine (built-in set or a path),
    rather than from the hub."""
    path = Path(dataset).expanduser()
    return (dataset.startswith(("builtin:", ".", "/", "~")) or path.exists()
            or path.suffix in (".jsonl", ".json", ".txt"))


def load_texts(dataset: str, *, split: str = "train", config_name: str | None = None,
               text_field: str = "text", num_samples: int | None = None, seed: int = 0) -> list[str]:
    """Read texts from a built-in set, a local file or directory, or a hub dataset.

    Args:
        dataset: ``builtin:NAME``, a path, or a hub dataset id.
        num_samples: take this many texts, chosen with ``seed`` (all of them when None).

    Raises:
        UsageError: unknown built-in, missing, empty, binary or malformed file, missing field,
            no texts (``InputError`` for a bad file).
    """
    if dataset.startswith("builtin:"):
        name = dataset.split(":", 1)[1]
        if name not in BUILTIN_DATASETS:
            raise suggest(name, list(BUILTIN_DATASETS), "built-in dataset")
        texts = _texts_from_records(_records(BUILTIN_DATASETS[name]), "text", dataset)
    else:
        path = Path(dataset).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".txt"))
            if not files:
                raise InputError(f"{path} holds no .jsonl, .json or .txt files", hint=DATA_HINT)
            texts = [t for f in files for t in _texts_from_records(_records(f), text_field, str(f))]
        elif path.is_file():
            texts = _texts_from_records(_records(path), text_field, str(path))
        elif path.suffix in (".jsonl", ".json", ".txt") or dataset.startswith((".", "/", "~")):
            raise InputError(f"data file not found: {dataset}",
                             hint="check the path (relative to the working directory), or use builtin:tiny-calibration")
        else:
            texts = _hub_texts(dataset, split, config_name, text_field)
    if not texts:
        raise InputError(f"{dataset}: no texts found (every record is empty)",
                         hint="check text_field, or give a file that holds text")
    if num_samples is not None and num_samples < len(texts):
        rng = random.Random(seed)
        texts = rng.sample(texts, num_samples)
    return texts


def tokenize(texts: list[str], tokenizer: Any, max_seq_length: int):
    """A ``datasets.Dataset`` of input_ids/attention_mask, truncated to ``max_seq_length``."""
    import datasets

    enc = tokenizer(texts, truncation=True, max_length=max_seq_length, padding=False)
    return datasets.Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
