"""What a served benchmark sends: the requests of a workload, the same for both models.

Three sources (``bench.workload``):

- none: random prompts of exactly ``bench.prompt_tokens`` tokens, ``bench.output_tokens`` out (the model's own
  speed, nothing else);
- synthetic: random-token prompts whose lengths follow ``prompt_tokens`` (a number, ``lognormal: {mean, sigma}``
  or ``uniform: [a, b]``), with ``output_tokens`` likewise;
- a traffic file (the JSONL of ``evals.traffic``): the user's own prompts and chat requests, rendered by the
  model's tokenizer and chat template, each generating its own ``max_tokens`` (or ``output_tokens``).

Either way ``shared_prefix_tokens`` of one fixed system prompt go before the share ``prefix_share`` of requests:
the shape that prefix caching serves. Prompts travel as token ids, so no server-side tokenization moves a length.
Every draw is seeded by the workload's seed and the (level, round) seed the bench gives.

Example:
    w = Workload(settings, Path("dist/tiny-llama-int4"), context=256)
    items = w.items(count=16, seed=3)          # [Item(prompt=[...], output_tokens=32, prefixed=True), ...]
    w.describe()["prompt_tokens"]["p90"]
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import InputError
from compress.core.recipe import BenchSpec, Lengths, WorkloadSpec

DESCRIBE_SAMPLE = 256  # synthetic workloads are described by this many requests of seed 0
PREFIX_STREAM = 7_919  # the shared prefix's own random stream: the same whatever the level or round


@dataclass(frozen=True)
class Item:
    """One request: its prompt's token ids, the tokens it generates, whether it carries the shared prefix."""

    prompt: list[int]
    output_tokens: int
    prefixed: bool = False


def _draw(lengths: int | Lengths | None, default: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` token counts (at least 1) from a fixed number or a distribution."""
    if lengths is None or isinstance(lengths, int):
        return np.full(count, lengths or default, dtype=int)
    if lengths.uniform is not None:
        return rng.integers(lengths.uniform[0], lengths.uniform[1] + 1, size=count)
    sigma = lengths.lognormal.sigma
    mu = np.log(lengths.lognormal.mean) - sigma ** 2 / 2  # so that the lengths' mean is `mean`
    return np.maximum(1, np.rint(rng.lognormal(mu, sigma, size=count))).astype(int)


def _percentiles(values: list[int]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"min": int(a.min()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": int(a.max()), "mean": float(a.mean())}


class Workload:
    """The requests a served benchmark sends, from ``settings.workload`` (see the module docstring).

    Args:
        settings: the bench settings (``workload``, and ``prompt_tokens`` / ``output_tokens`` / ``seed`` as defaults).
        model_dir: the model whose tokenizer renders a traffic file and whose vocabulary random prompts draw from.
        context: the most tokens a request may take, prompt and generation together (the server's max_model_len).

    Raises:
        InputError: the traffic file is bad, or the shared prefix and generation leave no room for a prompt.
    """

    def __init__(self, settings: BenchSpec, model_dir: Path, *, context: int):
        from compress.core.models import load_tokenizer, vocab_size

        self.settings = settings
        self.spec: WorkloadSpec | None = settings.workload
        self.context = context
        self.seed = settings.seed if self.spec is None or self.spec.seed is None else self.spec.seed
        tokenizer = load_tokenizer(Path(model_dir))
        self.banned = set(tokenizer.all_special_ids or [])
        self.vocab_size = vocab_size(Path(model_dir)) or len(tokenizer)
        self.vocab = [i for i in range(self.vocab_size) if i not in self.banned]
        self.file: list[Any] | None = None
        self.file_sha256: str | None = None
        spec = self.spec
        prefix = spec.shared_prefix_tokens if spec else 0
        self.prefix = [int(t) for t in self._tokens(np.random.default_rng([self.seed, PREFIX_STREAM]), prefix)]
        if spec is not None and spec.path is not None:
            self._read_file(spec.path, tokenizer)
        longest_out = self._longest_output()
        if prefix + 1 + longest_out > context:
            raise InputError(f"bench.workload: a shared prefix of {prefix} tokens and up to {longest_out} generated "
                             f"leave no room for a prompt in the model's context of {context}",
                             hint="lower workload.shared_prefix_tokens or the output tokens")

    # ----------------------------------------------------------------- sources

    def _read_file(self, path: str, tokenizer: Any) -> None:
        from compress.measure.traffic import file_sha256, load_requests, render

        requests = load_requests(path)
        out = self.settings.output_tokens
        rendered = render(requests, tokenizer, path=path, max_new_tokens=max([out] + [r.max_tokens or 0 for r in requests]),
                          context=None)
        self.file = [(r.prompt_ids, r.request.max_tokens or out, r.request.line) for r in rendered]
        self.file_sha256 = file_sha256(path)
        room = self.context - len(self.prefix)
        for ids, new, line in self.file:
            new = new if self.spec.output_tokens is None else 1
            if len(ids) + new > room:
                raise InputError(f"{path}:{line}: the request is {len(ids)} tokens; with {new} to generate"
                                 + (f" and a shared prefix of {len(self.prefix)}" if self.prefix else "")
                                 + f" it does not fit the model's context of {self.context}",
                                 hint="shorten it, lower its max_tokens, or leave it out")

    def _longest_output(self) -> int:
        spec = self.spec
        if spec is not None and isinstance(spec.output_tokens, Lengths):
            if spec.output_tokens.uniform is not None:
                return spec.output_tokens.uniform[1]
            return 1  # log-normal draws are clipped to the room left, below
        if spec is not None and spec.output_tokens is not None:
            return spec.output_tokens
        if self.file is not None:
            return 1  # each file request was checked against the context on its own
        return self.settings.output_tokens

    def _tokens(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.asarray(self.vocab)[rng.integers(0, len(self.vocab), size=n)] if n else np.zeros(0, dtype=int)

    # ------------------------------------------------------------------- draws

    def items(self, count: int, seed: int) -> list[Item]:
        """``count`` requests for one level of one round (``seed``: the bench's prompt seed for it)."""
        spec, s = self.spec, self.settings
        if spec is None:  # the model's own speed: prompts of exactly prompt_tokens (as every earlier report)
            from compress.measure.engines.client import make_prompts

            return [Item(p, s.output_tokens) for p in make_prompts(self.vocab_size, self.banned, count,
                                                                   s.prompt_tokens, seed)]
        rng = np.random.default_rng([self.seed, seed])
        carries = rng.random(count) < spec.prefix_share
        outputs = _draw(spec.output_tokens, s.output_tokens, count, rng)
        items = []
        if self.file is not None:
            order = np.concatenate([rng.permutation(len(self.file)) for _ in range(-(-count // len(self.file)))])
            for k, i in enumerate(order[:count]):
                ids, new, _ = self.file[i]
                new = int(outputs[k]) if spec.output_tokens is not None else new
                pre = self.prefix if carries[k] else []
                new = max(1, min(new, self.context - len(pre) - len(ids)))
                items.append(Item(list(pre) + list(ids), new, bool(carries[k] and pre)))
            return items
        own = _draw(spec.prompt_tokens, s.prompt_tokens, count, rng)
        for k in range(count):
            pre = self.prefix if carries[k] else []
            new = int(max(1, min(outputs[k], self.context - len(pre) - 1)))
            n = int(max(1, min(own[k], self.context - len(pre) - new)))
            items.append(Item(list(pre) + [int(t) for t in self._tokens(rng, n)], new, bool(carries[k] and pre)))
        return items

    def describe(self) -> dict[str, Any] | None:
        """The workload as a report records it: its source, a sha256 of the requests it makes (seed 0 sample, or
        the whole file), and the percentiles of their lengths. No request text. None without a workload."""
        if self.spec is None:
            return None
        sample = self.items(len(self.file) if self.file is not None else DESCRIBE_SAMPLE, seed=0)
        digest = hashlib.sha256(json.dumps([[i.prompt, i.output_tokens] for i in sample]).encode()).hexdigest()
        out = {"source": "file" if self.file is not None else "synthetic", "sha256": digest,
               "spec": self.spec.model_dump(mode="json", exclude_defaults=True), "sample": len(sample),
               "prompt_tokens": _percentiles([len(i.prompt) for i in sample]),
               "output_tokens": _percentiles([i.output_tokens for i in sample]),
               "shared_prefix_tokens": len(self.prefix),
               "prefixed_share": sum(i.prefixed for i in sample) / len(sample)}
        if self.file_sha256:
            out["file_sha256"] = self.file_sha256
            out["spec"].pop("path", None)  # the file is known by its hash, not by a local path
        return out
