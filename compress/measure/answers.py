"""Answers to the user's requests, and what fidelity compares in them (shared by the transformers and the served
measurements, :mod:`compress.measure.fidelity` and :mod:`compress.measure.engines.fidelity_served`)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

FIDELITY = {  # metric -> (what it is, whether higher is better)
    "kl": ("KL(base || candidate) of the next-token distributions on the base's answer, nats per token", False),
    "top1": ("share of the base answer's positions where both models' likeliest token agree", True),
    "nll_increase": ("extra negative log-likelihood of the base's answer under the candidate, nats per token", False),
    "acceptance": ("expected acceptance of the candidate as a speculative draft for the base (sum of min(p, q))",
                   True),
    "greedy_match": ("share of requests whose greedy answers are the same tokens", True),
}


@dataclass
class Answer:
    """One model's greedy answer to a request: its tokens, its text (up to a stop sequence) and whether it
    stopped on its own (EOS or a stop sequence) before the token budget ran out."""

    tokens: list[int]
    text: str
    stopped: bool
    logprob: float | None = None  # mean log-probability per token of the answer under its own model


@dataclass
class Positions:
    """Per answer position, what fidelity needs: both models' KL, whether their argmax agree, the answer
    token's log-probability under each, and the overlap sum(min(p, q))."""

    kl: list[float] = field(default_factory=list)
    top1: list[bool] = field(default_factory=list)
    base_logprob: list[float] = field(default_factory=list)
    cand_logprob: list[float] = field(default_factory=list)
    overlap: list[float] = field(default_factory=list)


def answer_text(tokenizer: Any, tokens: Sequence[int], max_new_tokens: int, stop: Sequence[str],
                eos: set[int]) -> Answer:
    """Decode an answer, cut at the first stop sequence; ``stopped`` when EOS or a stop sequence ended it."""
    ended = bool(tokens) and tokens[-1] in eos
    body = list(tokens[:-1]) if ended else list(tokens)
    text = tokenizer.decode(body, skip_special_tokens=True)
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    if cut >= 0:
        text, ended = text[:cut], True
    return Answer(list(tokens), text, ended or len(tokens) < max_new_tokens)


def check_passes(kind: str, answer: Answer, *, pattern: str | None = None, max_tokens: int | None = None) -> bool:
    """Whether one answer passes one behaviour check."""
    if kind == "json_valid":
        try:
            json.loads(answer.text.strip())
        except ValueError:
            return False
        return True
    if kind == "regex_present":
        return re.search(pattern or "", answer.text) is not None
    if kind == "regex_absent":
        return re.search(pattern or "", answer.text) is None
    if kind == "stops":
        return answer.stopped
    if kind == "max_length":
        return len(answer.tokens) <= (max_tokens or 0)
    raise ValueError(f"unknown behaviour check kind {kind!r}")


def summarize_request(pos: Positions, base: Answer, cand: Answer | None) -> dict[str, Any]:
    """The per-request fidelity figures from its positions and the two answers."""
    n = len(pos.kl)
    out: dict[str, Any] = {
        "kl": sum(pos.kl) / n, "top1": sum(pos.top1) / n,
        "nll_increase": sum(b - c for b, c in zip(pos.base_logprob, pos.cand_logprob)) / n,
        "acceptance": sum(pos.overlap) / n, "base_tokens": len(base.tokens)}
    if cand is not None:
        a, b = base.tokens, cand.tokens
        diverge = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if diverge is None and len(a) != len(b):
            diverge = min(len(a), len(b))
        out.update(greedy_match=a == b, first_divergence=diverge, candidate_tokens=len(b),
                   candidate_logprob=cand.logprob)
    return out


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """The token ids that end an answer: the generation config's EOS (one or several) and the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = ids if isinstance(ids, list) else [ids]
    return {i for i in [*ids, tokenizer.eos_token_id] if isinstance(i, int)}
