"""Speculative decoding with a small model as the draft: `compress bench LARGE --draft SMALL`.

The large (target) model generates greedily twice per prompt and round: alone, and with the
small model proposing tokens that the target verifies in one forward pass (transformers'
assisted generation). Plain and assisted runs alternate which goes first in each round, in the
same time window, and every request's time is kept. Forward hooks count the target's forward
passes and the draft's, so the report states:

- the speedup of assisted over plain decoding (total time, paired over rounds, with an interval),
- tokens per target forward pass (1.0 for plain decoding),
- the acceptance rate: draft tokens the target kept / draft tokens proposed,
- whether the greedy outputs are identical with and without the draft (they must be: the target
  decides every token; a difference means numerics, and the report names the prompts).

transformers' assisted generation runs one sequence at a time, so this measures batch size 1.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np

from compress.core.reports import ModelInfo, ReportModel
from compress.core.stats import Interval


class DraftRun(ReportModel):
    round: int
    mode: Literal["plain", "draft"]
    e2e_s: list[float]           # one per prompt
    tokens: list[int]            # new tokens per prompt
    target_forwards: list[int]
    draft_forwards: list[int]


class DraftReport(ReportModel):
    kind: Literal["draft"] = "draft"
    target: ModelInfo
    draft: ModelInfo
    settings: dict[str, Any]
    runs: list[DraftRun]
    identical: bool
    mismatched_prompts: list[int]
    batch_size: int = 1
    environment: dict[str, Any]
    created: str
    duration_s: float
    cache_key: str

    def figures(self, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict[str, Interval]:
        """draft_speedup (plain time / assisted time), tokens per target forward, acceptance
        rate, and both modes' per-request latency percentiles (ms), each with an interval over
        rounds (the rounds resampled in pairs)."""
        rounds = sorted({r.round for r in self.runs})
        by = {(r.round, r.mode): r for r in self.runs}

        def point(pick: list[int]) -> dict[str, float]:
            plain = [by[(i, "plain")] for i in pick]
            draft = [by[(i, "draft")] for i in pick]
            tokens = sum(sum(r.tokens) for r in draft)
            forwards = sum(sum(r.target_forwards) for r in draft)
            proposed = sum(sum(r.draft_forwards) for r in draft)
            p_e2e = np.concatenate([r.e2e_s for r in plain])
            d_e2e = np.concatenate([r.e2e_s for r in draft])
            return {"draft_speedup": float(p_e2e.sum() / d_e2e.sum()),
                    "tokens_per_target_forward": tokens / forwards if forwards else float("nan"),
                    "acceptance_rate": (tokens - forwards) / proposed if proposed else float("nan"),
                    **{f"{m}_p{q}_ms": float(np.percentile(e, q) * 1e3) for m, e in (("plain", p_e2e), ("draft", d_e2e))
                       for q in (50, 90, 99)}}

        est = point(rounds)
        rng = np.random.default_rng(seed)
        draws = [point([rounds[i] for i in rng.integers(0, len(rounds), len(rounds))]) for _ in range(resamples)]
        alpha = (1 - confidence) / 2
        out = {}
        for name, value in est.items():
            values = np.array([d[name] for d in draws])
            lo, hi = np.nanquantile(values, [alpha, 1 - alpha])
            out[name] = Interval(value, float(lo), float(hi), confidence,
                                 f"paired bootstrap over {len(rounds)} interleaved rounds", len(rounds))
        return out


def prompts(tokenizer: Any, settings: Any, count: int) -> list[list[int]]:
    """``count`` prompts of ``prompt_tokens`` tokens of real text (windows of the builtin
    calibration text, read as one stream): drafts are accepted by how predictable the text is,
    which random tokens would misstate."""
    from compress.core.data import load_texts
    from compress.core.errors import UsageError

    texts = load_texts("builtin:tiny-calibration", split="train", config_name=None, text_field="text",
                       seed=settings.seed)
    stream = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    n = settings.prompt_tokens
    if len(stream) < count * n:
        raise UsageError(f"the prompt text has {len(stream)} tokens, too few for {count} prompts of {n}",
                         hint="lower bench.prompt_tokens or bench.repeats")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + stream[i * n: (i + 1) * n - len(bos)] for i in range(count)]


def run_draft(target: str, draft: str, settings: Any, *, dtype: str = "auto", revision: str | None = None,
              rerun: bool = False, trust_remote_code: bool = False, allow_pickle: bool = False,
              log: Any = None) -> tuple[DraftReport, bool]:
    """Benchmark ``target`` alone and with ``draft`` as its assistant; cached by both models'
    bytes and the settings."""
    from compress.core import cache, env
    from compress.core.models import resolve_dtype, resolve_model
    from compress.measure.accuracy import model_info

    t_ref, d_ref = resolve_model(target, revision), resolve_model(draft, None)
    t_info, d_info = model_info(t_ref.path, target), model_info(d_ref.path, draft)
    dtype = resolve_dtype(t_ref.path, dtype)
    config = {"prompt_tokens": settings.prompt_tokens, "output_tokens": settings.output_tokens,
              "repeats": settings.repeats, "rounds": settings.rounds, "warmup": settings.warmup,
              "seed": settings.seed, "dtype": dtype, "price_per_hour": settings.price_per_hour}
    key = cache.report_key("draft", f"{t_info.content_hash}+{d_info.content_hash}", config)
    if not rerun and (hit := cache.load_cached("draft", key, DraftReport)) is not None:
        return hit, True
    start = time.time()
    runs, identical, mismatched = _measure(t_ref.path, d_ref.path, settings, dtype, trust_remote_code, allow_pickle,
                                           log or (lambda m: None))
    report = DraftReport(target=t_info, draft=d_info, settings=config, runs=runs, identical=identical,
                         mismatched_prompts=mismatched, environment=env.environment(),
                         created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         duration_s=round(time.time() - start, 3), cache_key=key)
    cache.store("draft", key, report)
    return report, False


def _measure(target_path, draft_path, settings, dtype, trust_remote_code, allow_pickle, log):
    import torch

    from compress.core.errors import UsageError
    from compress.core.models import load_model, load_tokenizer

    tok = load_tokenizer(target_path, trust_remote_code)
    d_tok = load_tokenizer(draft_path, trust_remote_code)
    if tok.get_vocab() != d_tok.get_vocab():
        raise UsageError("the draft's tokenizer differs from the target's",
                         hint="a draft must share the target's tokenizer (a student distilled from it, or a "
                              "quantized copy)")
    target = load_model(target_path, dtype, "cpu", trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    draft = load_model(draft_path, dtype, "cpu", trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    target.eval()
    draft.eval()
    counts = {"target": 0, "draft": 0}
    hooks = [target.register_forward_hook(lambda *a: counts.__setitem__("target", counts["target"] + 1)),
             draft.register_forward_hook(lambda *a: counts.__setitem__("draft", counts["draft"] + 1))]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    batch = prompts(tok, settings, settings.repeats)
    n = settings.output_tokens

    def generate(ids: list[int], assisted: bool) -> tuple[list[int], float, int, int]:
        x = torch.tensor([ids])
        counts.update(target=0, draft=0)
        kwargs = {"assistant_model": draft} if assisted else {}
        t = time.perf_counter()
        with torch.inference_mode():
            out = target.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                                  min_new_tokens=n, pad_token_id=pad, **kwargs)
        seconds = time.perf_counter() - t
        return out[0, len(ids):].tolist(), seconds, counts["target"], counts["draft"]

    try:
        for _ in range(settings.warmup):
            generate(batch[0], False)
            generate(batch[0], True)
        runs, outputs = [], {"plain": {}, "draft": {}}
        for r in range(settings.rounds):
            order = ("plain", "draft") if r % 2 == 0 else ("draft", "plain")
            for mode in order:
                e2e, tokens, tf, df = [], [], [], []
                for i, ids in enumerate(batch):
                    new, seconds, t_calls, d_calls = generate(ids, mode == "draft")
                    outputs[mode].setdefault(i, new)
                    e2e.append(seconds)
                    tokens.append(len(new))
                    tf.append(t_calls)
                    df.append(d_calls)
                runs.append(DraftRun(round=r, mode=mode, e2e_s=e2e, tokens=tokens, target_forwards=tf,
                                     draft_forwards=df))
            log(f"draft bench: round {r + 1}/{settings.rounds} done")
    finally:
        for h in hooks:
            h.remove()
    mismatched = [i for i in outputs["plain"] if outputs["plain"][i] != outputs["draft"][i]]
    return runs, not mismatched, mismatched
