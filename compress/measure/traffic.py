"""A user's own traffic: a JSONL file of requests, read, checked and rendered into prompt tokens.

One request a line, in any of three shapes:

    {"prompt": "Summarise: ..."}                                   plain text, sent as it is
    {"messages": [{"role": "user", "content": "..."}, ...]}        OpenAI chat, rendered with the model's chat template
    {"conversations": [{"from": "human", "value": "..."}, ...]}    ShareGPT: the conversation up to its last user turn

with an optional ``max_tokens`` (at most that many tokens are generated for it). A malformed line, an empty file, a
request longer than the model's context or bytes that are not UTF-8 are refused with the file and the line
number (exit 2). Nothing here logs a request's text: each request is known by the sha256 of its line's JSON.

Example:
    requests = load_requests(Path("prod-sample.jsonl"))
    rendered = render(requests, tokenizer, max_new_tokens=32, context=4096)
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.core.errors import InputError

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
         "bing": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}


@dataclass(frozen=True)
class Request:
    """One line of a traffic file: its number (1-based), its shape and content, and its hash."""

    line: int
    kind: str  # prompt | messages
    prompt: str | None
    messages: tuple[tuple[str, str], ...]
    max_tokens: int | None
    sha256: str


def _fail(path: Path, line: int, what: str, hint: str = "fix that line, or leave it out") -> InputError:
    return InputError(f"{path}:{line}: {what}", hint=hint)


def _turns(path: Path, n: int, raw: Any, field: str) -> tuple[tuple[str, str], ...]:
    """``messages`` (role/content) or ``conversations`` (from/value) as (role, text) pairs."""
    keys = ("role", "content") if field == "messages" else ("from", "value")
    if not isinstance(raw, list) or not raw:
        raise _fail(path, n, f"'{field}' must be a non-empty list of turns")
    turns = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict) or not isinstance(turn.get(keys[0]), str) or not isinstance(turn.get(keys[1]), str):
            raise _fail(path, n, f"turn {i + 1} of '{field}' needs string '{keys[0]}' and '{keys[1]}'")
        role = ROLES.get(turn[keys[0]].lower())
        if role is None:
            raise _fail(path, n, f"turn {i + 1} of '{field}' has an unknown role {turn[keys[0]]!r}",
                        hint=f"use one of {', '.join(sorted(set(ROLES)))}")
        turns.append((role, turn[keys[1]]))
    if field == "conversations":  # the request is the conversation up to and including its last user turn
        last = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=None)
        if last is None:
            raise _fail(path, n, "the conversation has no user turn to answer")
        turns = turns[: last + 1]
    elif turns[-1][0] != "user":
        raise _fail(path, n, "the last message must be the user's (the request to answer)")
    return tuple(turns)


def parse_line(path: Path, n: int, text: str) -> Request:
    """One line of the file as a :class:`Request`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(path, n, f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, dict):
        raise _fail(path, n, f"a request is a JSON object, not {type(data).__name__}")
    shapes = [k for k in ("prompt", "messages", "conversations") if k in data]
    if len(shapes) != 1:
        raise _fail(path, n, "a request has exactly one of 'prompt', 'messages' or 'conversations'"
                    + (f" (it has {', '.join(shapes)})" if shapes else ""))
    max_tokens = data.get("max_tokens", data.get("output_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise _fail(path, n, f"max_tokens must be a positive whole number, not {max_tokens!r}")
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    if shapes[0] == "prompt":
        if not isinstance(data["prompt"], str) or not data["prompt"]:
            raise _fail(path, n, "'prompt' must be a non-empty string")
        return Request(n, "prompt", data["prompt"], (), max_tokens, digest)
    return Request(n, "messages", None, _turns(path, n, data[shapes[0]], shapes[0]), max_tokens, digest)


def load_requests(path: Path | str, *, limit: int | None = None, sample: int | None = None,
                  seed: int = 0) -> list[Request]:
    """The requests of a traffic file: the first ``limit`` lines (all by default), then ``sample`` of them at
    random (seeded), in file order. Blank lines are skipped.

    Raises:
        InputError: the file is missing, empty, not UTF-8, or a line is malformed (its number is named).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"traffic file {path} does not exist", hint="give a JSONL file of requests") from None
    except OSError as e:
        raise InputError(f"cannot read traffic file {path}: {e.strerror}") from None
    requests: list[Request] = []
    for n, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise _fail(path, n, f"bytes that are not UTF-8 (at byte {e.start} of the line)",
                        hint="save the file as UTF-8") from None
        if not text:
            continue
        requests.append(parse_line(path, n, text))
        if limit is not None and len(requests) >= limit:
            break
    if not requests:
        raise InputError(f"traffic file {path} holds no request", hint="one JSON request a line")
    if sample is not None and sample < len(requests):
        keep = sorted(random.Random(seed).sample(range(len(requests)), sample))
        requests = [requests[i] for i in keep]
    return requests


def file_sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Rendered:
    """A request as the model sees it: prompt token ids and how many tokens to generate."""

    request: Request
    prompt_ids: list[int]
    max_new_tokens: int


def render(requests: list[Request], tokenizer: Any, *, path: Path | str, max_new_tokens: int,
           context: int | None) -> list[Rendered]:
    """Token ids of each request: plain prompts as they are (with the tokenizer's special tokens), chat requests
    through the model's chat template with the assistant's turn opened.

    Raises:
        InputError: a chat request for a model without a chat template, or a request whose prompt and
            generation do not fit the model's context (its line is named).
    """
    out = []
    for r in requests:
        new = min(max_new_tokens, r.max_tokens or max_new_tokens)
        if r.kind == "prompt":
            ids = list(tokenizer(r.prompt)["input_ids"])
        else:
            if not getattr(tokenizer, "chat_template", None):
                raise _fail(Path(path), r.line, "a chat request, but the model has no chat template",
                            hint="give plain {\"prompt\": ...} requests for this model")
            text = tokenizer.apply_chat_template([{"role": role, "content": t} for role, t in r.messages],
                                                 add_generation_prompt=True, tokenize=False)
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])  # the template writes its own
        if not ids:
            raise _fail(Path(path), r.line, "the request renders to no tokens")
        if context is not None and len(ids) + new > context:
            raise _fail(Path(path), r.line, f"the request is {len(ids)} tokens; with {new} to generate it does not fit "
                        f"the model's context of {context}", hint="shorten it, lower max_new_tokens, or leave it out")
        out.append(Rendered(r, ids, new))
    return out


def length_summary(rendered: list[Rendered]) -> dict[str, Any]:
    """The prompt-length distribution of a traffic sample (what a model card may say of it: no content)."""
    import numpy as np

    lengths = np.array([len(r.prompt_ids) for r in rendered])
    return {"requests": len(rendered), "prompt_tokens": {
        "min": int(lengths.min()), "p50": float(np.percentile(lengths, 50)), "p90": float(np.percentile(lengths, 90)),
        "max": int(lengths.max()), "mean": float(lengths.mean())},
        "chat_requests": sum(r.request.kind == "messages" for r in rendered)}
