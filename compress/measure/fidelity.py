"""Fidelity of a candidate to its base on the user's own requests, without labels.

For each request the base answers greedily; then both models read the base's answer (teacher forcing), and at
every answer position their next-token distributions p (base) and q (candidate) are compared:

- ``kl``: KL(p || q) in nats, the mean over the answer's positions;
- ``top1``: the share of positions where both models' likeliest token is the same;
- ``nll_increase``: how much less likely the candidate finds the base's answer, nats per token;
- ``acceptance``: sum over tokens of min(p, q) per position, the expected acceptance of the candidate as a
  speculative draft for the base (Leviathan et al., 2023);

and the candidate's own greedy answer gives ``greedy_match`` (the two answers are the same tokens) and the first
position where they part. Behaviour checks (JSON, patterns, stopping, length) are applied to both answers.

This module computes all of it in transformers with the full distributions (the ``hf`` engine). The ``vllm``
engine (:mod:`compress.measure.engines.fidelity_served`) computes the same from a server's top-k log-probabilities.
Both models are held in memory at once.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from compress.measure.answers import (FIDELITY, Answer, Positions, answer_text, check_passes, eos_ids,
                                      summarize_request)
from compress.measure.traffic import Rendered

__all__ = ["FIDELITY", "HfFidelity", "measure", "run_traffic", "traffic_settings"]


class HfFidelity:
    """Both models in transformers (float32 on the CPU by default), greedy answers and full distributions."""

    engine = "hf"
    kl_method = "full distribution"

    def __init__(self, base_path, cand_path, *, dtype: str = "float32", device: str = "cpu",
                 trust_remote_code: bool = False):
        from compress.core.models import load_model, load_tokenizer

        self.tokenizer = load_tokenizer(base_path, trust_remote_code)
        self.base = load_model(base_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        self.cand = load_model(cand_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code) \
            if cand_path is not None else None
        self.device = device
        self.eos = eos_ids(self.base, self.tokenizer)

    def _greedy(self, model, prompt: list[int], n: int) -> list[int]:
        import torch

        ids = torch.tensor([prompt], device=self.device)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                 eos_token_id=sorted(self.eos) or None,
                                 pad_token_id=self.tokenizer.pad_token_id or 0)
        return out[0, len(prompt):].tolist()

    def _logprobs(self, model, prompt: list[int], answer: list[int]):
        """log-softmax at each answer position (row t predicts answer[t]), float64."""
        import torch

        ids = torch.tensor([prompt + answer], device=self.device)
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1: len(prompt) + len(answer) - 1]
        return torch.log_softmax(logits.double(), dim=-1)

    def request(self, r: Rendered, stop: Sequence[str]) -> tuple[Answer, Answer | None, Positions | None]:
        import torch

        base_tokens = self._greedy(self.base, r.prompt_ids, r.max_new_tokens)
        base = answer_text(self.tokenizer, base_tokens, r.max_new_tokens, stop, self.eos)
        if self.cand is None:
            return base, None, None
        lp, lq = self._logprobs(self.base, r.prompt_ids, base_tokens), self._logprobs(self.cand, r.prompt_ids,
                                                                                      base_tokens)
        p = lp.exp()
        target = torch.tensor(base_tokens, device=lp.device)[:, None]
        pos = Positions(kl=(p * (lp - lq)).sum(-1).clamp_min(0).tolist(),
                        top1=(lp.argmax(-1) == lq.argmax(-1)).tolist(),
                        base_logprob=lp.gather(-1, target)[:, 0].tolist(),
                        cand_logprob=lq.gather(-1, target)[:, 0].tolist(),
                        overlap=torch.minimum(p, lq.exp()).sum(-1).tolist())
        cand_tokens = self._greedy(self.cand, r.prompt_ids, r.max_new_tokens)
        cand = answer_text(self.tokenizer, cand_tokens, r.max_new_tokens, stop, self.eos)
        own = self._logprobs(self.cand, r.prompt_ids, cand_tokens)  # the candidate's confidence in its answer
        cand.logprob = float(own.gather(-1, torch.tensor(cand_tokens)[:, None])[:, 0].mean())
        return base, cand, pos

    def info(self) -> dict[str, Any]:
        from compress.core.env import package_version

        return {"name": "hf", "version": package_version("transformers"), "kl": self.kl_method}

    def close(self) -> None:
        pass


def measure(runner: Any, rendered: list[Rendered], *, checks: Sequence[Any], stop: Sequence[str],
            keep_text: bool, progress: Callable[[int, int], None] | None = None) -> tuple[list[dict[str, Any]], float]:
    """Every request through ``runner`` (:class:`HfFidelity`, or the served one, which takes ``concurrency``
    requests at a time). Returns the per-request records (no text unless ``keep_text``) and the seconds it took."""
    from concurrent.futures import ThreadPoolExecutor

    began = time.perf_counter()
    done = [0]

    def one(i: int) -> dict[str, Any]:
        r = rendered[i]
        base, cand, pos = runner.request(r, stop)
        rec: dict[str, Any] = {"index": i, "line": r.request.line, "sha256": r.request.sha256,
                               "prompt_tokens": len(r.prompt_ids), "max_new_tokens": r.max_new_tokens}
        if pos is not None:
            rec.update(summarize_request(pos, base, cand))
        else:
            rec["base_tokens"] = len(base.tokens)
        rec["checks"] = {c.name: [check_passes(c.kind, a, pattern=c.pattern, max_tokens=c.max_tokens)
                                  for a in ((base, cand) if cand is not None else (base,))] for c in checks}
        if keep_text:
            rec["text"] = {"prompt": r.request.prompt if r.request.kind == "prompt" else None,
                           "messages": [list(m) for m in r.request.messages] or None,
                           "base": base.text, "candidate": cand.text if cand is not None else None}
        done[0] += 1
        if progress is not None:
            progress(done[0], len(rendered))
        return rec

    workers = getattr(runner, "concurrency", 1)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            records = list(pool.map(one, range(len(rendered))))
    else:
        records = [one(i) for i in range(len(rendered))]
    return records, time.perf_counter() - began


def traffic_settings(spec: Any, dtype: str) -> dict[str, Any]:
    """What changes a traffic report's figures (its cache key): the settings, the file's content, the dtype."""
    from compress.measure.traffic import file_sha256

    s = spec.model_dump(mode="json", exclude={"path"})
    s["file_sha256"] = file_sha256(spec.path)
    s["dtype"] = dtype
    return s


def run_traffic(base_spec: str, cand_spec: str | None, spec: Any, *, dtype: str = "float32", rerun: bool = False,
                log_path: Any = None, log: Callable[[str], None] | None = None) -> tuple[Any, bool]:
    """The candidate's fidelity to the base (or one model's answers, ``cand_spec`` None) on the traffic file of
    ``spec`` (an ``evals.traffic`` section); a cached report for the same bytes and settings is reused.

    Returns:
        (TrafficReport, whether it came from the cache)

    Raises:
        InputError: the traffic file is missing or malformed (its line named), or a request does not fit.
    """
    from datetime import datetime, timezone

    from compress.core import cache
    from compress.core.env import environment
    from compress.core.models import load_tokenizer, resolve_model
    from compress.core.traffic_reports import TrafficReport, TrafficRequest
    from compress.measure.accuracy import model_info
    from compress.measure.engines.vllm import max_positions
    from compress.measure.traffic import length_summary, load_requests, render

    requests = load_requests(spec.path, limit=spec.limit, sample=spec.sample, seed=spec.seed)  # bad input: first
    base_ref = resolve_model(base_spec)
    cand_ref = resolve_model(cand_spec) if cand_spec is not None else None
    tokenizer = load_tokenizer(base_ref.path)
    rendered = render(requests, tokenizer, path=spec.path, max_new_tokens=spec.max_new_tokens,
                      context=max_positions(base_ref.path))
    base_info = model_info(base_ref.path, base_spec)
    cand_info = model_info(cand_ref.path, cand_spec) if cand_ref is not None else None
    settings = traffic_settings(spec, dtype)
    pair = base_info.content_hash + (":" + cand_info.content_hash if cand_info else "")
    key = cache.report_key("traffic", pair, settings)
    if not rerun and (hit := cache.load_cached("traffic", key, TrafficReport)) is not None:
        return hit, True
    if spec.engine == "vllm":
        from compress.measure.engines.fidelity_served import ServedFidelity

        runner = ServedFidelity(base_ref.path, cand_ref.path if cand_ref else None, spec=spec, dtype=dtype,
                                log_path=log_path)
    else:
        runner = HfFidelity(base_ref.path, cand_ref.path if cand_ref else None, dtype=dtype)

    def progress(done: int, total: int) -> None:
        if log is not None and (done == total or done % max(1, total // 4) == 0):
            log(f"traffic: {done}/{total} requests")

    try:
        records, seconds = measure(runner, rendered, checks=spec.checks, stop=spec.stop, keep_text=spec.keep_text,
                                   progress=progress)
        engine = {**runner.info(), "dtype": dtype}
    finally:
        runner.close()
    report = TrafficReport(baseline=base_info, candidate=cand_info, settings=settings,
                           traffic={"sha256": settings["file_sha256"], **length_summary(rendered)},
                           engine=engine, requests=[TrafficRequest.model_validate(r) for r in records],
                           seconds=round(seconds, 3), environment=environment(),
                           created=datetime.now(timezone.utc).isoformat(timespec="seconds"), cache_key=key)
    cache.store("traffic", key, report)
    return report, False
