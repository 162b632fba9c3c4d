"""Fidelity on the user's traffic through the engine the model will be served on (vLLM).

The same figures as :mod:`compress.measure.fidelity`, from the OpenAI-compatible completions API of two
servers: the base answers greedily (``return_token_ids``), both servers score the base's answer as a prompt
(``prompt_logprobs``: the top-k log-probabilities at every position, plus the answer token's own), and the
candidate answers greedily. A server returns only its top k tokens per position, so the full distributions
are not seen: KL is computed over the tokens both models ranked in their top k, with every other token lumped
into one bucket, which is a lower bound of the full KL (coarsening a distribution never raises KL); the
acceptance sum(min(p, q)) over the same partition is an upper bound. The top-1 agreement, the log-likelihood of
the answer and the greedy match are exact. Servers start as every vLLM server of compress does (own process
group, always stopped).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from compress.core.errors import EngineError
from compress.measure.answers import Positions, answer_text, eos_ids
from compress.measure.traffic import Rendered


def lumped(p: dict[int, float], q: dict[int, float]) -> tuple[float, float]:
    """KL(p || q) and sum(min(p, q)) over the tokens in both top-k lists (log-probabilities), every other
    token in one bucket."""
    common = p.keys() & q.keys()
    kl, overlap, ps, qs = 0.0, 0.0, 0.0, 0.0
    for t in common:
        a, b = math.exp(p[t]), math.exp(q[t])
        kl += a * (p[t] - q[t])
        overlap += min(a, b)
        ps, qs = ps + a, qs + b
    p_rest, q_rest = max(1.0 - ps, 0.0), max(1.0 - qs, 0.0)
    if p_rest > 1e-12:
        kl += p_rest * (math.log(p_rest) - math.log(max(q_rest, 1e-12)))
    return max(kl, 0.0), overlap + min(p_rest, q_rest)


class ServedFidelity:
    """Base and candidate each served by vLLM for the length of a traffic measurement."""

    engine = "vllm"
    concurrency = 8  # requests in flight: the server batches them

    def __init__(self, base_path: Path, cand_path: Path | None, *, spec: Any, dtype: str, log_path: Path | None):
        import tempfile

        from compress.core.models import load_tokenizer
        from compress.measure.engines.vllm import VllmServer

        self.k = spec.top_k
        self.tokenizer = load_tokenizer(base_path)
        self.eos = eos_ids(_GenerationConfig(base_path), self.tokenizer)
        log_dir = Path(log_path).parent if log_path else Path(tempfile.mkdtemp(prefix="compress-traffic-"))
        engine_dtype = spec.engine_dtype if spec.engine_dtype != "auto" else dtype
        extra = ["--max-logprobs", str(self.k), "--no-enable-prefix-caching"]
        self.servers = {who: VllmServer(path, dtype=engine_dtype, extra_args=extra, label=f"traffic {who}",
                                        log_path=log_dir / f"traffic-{who}-vllm.log")
                        for who, path in (("baseline", base_path), ("candidate", cand_path)) if path is not None}
        self._start_side_by_side()
        self.dtype = engine_dtype

    def _start_side_by_side(self) -> None:
        """Both servers start together (as a run's do); any failure stops both and is raised."""
        import threading

        from compress.core import procs

        procs.install_handlers()  # a signal stops them whichever thread started them
        errors: list[BaseException] = []

        def start(server: Any) -> None:
            try:
                server.start()
            except BaseException as e:  # noqa: BLE001 - raised below, after both ended
                errors.append(e)

        threads = [threading.Thread(target=start, args=(s,), daemon=True) for s in self.servers.values()]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            if errors or any(t.is_alive() for t in threads):
                self.close()
        if errors:
            raise errors[0]

    def _complete(self, who: str, body: dict[str, Any]) -> dict[str, Any]:
        from compress.measure.engines.client import request

        server = self.servers[who]
        r = request("POST", server.url + "/v1/completions",
                    {"model": server.served_model_name, "temperature": 0.0, "return_token_ids": True, **body},
                    timeout=600.0)
        if r.status_code != 200:
            raise EngineError(f"vLLM ({who}) refused a traffic request: {r.text[:300]}",
                              hint=f"its log: {server.log_path}")
        return r.json()["choices"][0]

    def _greedy(self, who: str, prompt: list[int], n: int) -> tuple[list[int], float | None]:
        """The greedy answer's tokens and its mean log-probability per token."""
        choice = self._complete(who, {"prompt": prompt, "max_tokens": n, "logprobs": 1})
        tokens = list(choice.get("token_ids") or [])
        logprobs = [x for x in ((choice.get("logprobs") or {}).get("token_logprobs") or []) if x is not None]
        # transformers keeps the EOS that ended an answer; vLLM leaves it out of the tokens: the same here.
        if choice.get("finish_reason") == "stop" and choice.get("stop_reason") is None and self.eos and \
                (not tokens or tokens[-1] not in self.eos):
            tokens.append(min(self.eos))
        return tokens, (sum(logprobs) / len(logprobs) if logprobs else None)

    def _scored(self, who: str, prompt: list[int], answer: list[int]) -> list[dict[int, tuple[float, int]]]:
        """Per answer position: {token: (log-probability, rank)} as the server returned them."""
        choice = self._complete(who, {"prompt": prompt + answer, "max_tokens": 1, "prompt_logprobs": self.k})
        rows = choice.get("prompt_logprobs") or []
        out = []
        for row in rows[len(prompt): len(prompt) + len(answer)]:
            out.append({int(t): (float(v["logprob"]), int(v.get("rank") or 0)) for t, v in (row or {}).items()})
        if len(out) != len(answer):
            raise EngineError(f"vLLM ({who}) scored {len(out)} of the answer's {len(answer)} positions")
        return out

    def request(self, r: Rendered, stop: Sequence[str]):
        base_tokens, _ = self._greedy("baseline", r.prompt_ids, r.max_new_tokens)
        base = answer_text(self.tokenizer, base_tokens, r.max_new_tokens, stop, self.eos)
        if "candidate" not in self.servers:
            return base, None, None
        rows_p = self._scored("baseline", r.prompt_ids, base_tokens)
        rows_q = self._scored("candidate", r.prompt_ids, base_tokens)
        pos = Positions()
        for t, (rp, rq) in enumerate(zip(rows_p, rows_q)):
            top_p = {tok: lp for tok, (lp, rank) in rp.items() if 1 <= rank <= self.k}
            top_q = {tok: lp for tok, (lp, rank) in rq.items() if 1 <= rank <= self.k}
            kl, overlap = lumped(top_p, top_q)
            first = lambda row: min(row.items(), key=lambda kv: kv[1][1] if kv[1][1] >= 1 else 1 << 30)[0]  # noqa
            pos.kl.append(kl)
            pos.overlap.append(overlap)
            pos.top1.append(first(rp) == first(rq))
            pos.base_logprob.append(rp[base_tokens[t]][0])
            pos.cand_logprob.append(rq[base_tokens[t]][0])
        cand_tokens, confidence = self._greedy("candidate", r.prompt_ids, r.max_new_tokens)
        cand = answer_text(self.tokenizer, cand_tokens, r.max_new_tokens, stop, self.eos)
        cand.logprob = confidence
        return base, cand, pos

    def info(self) -> dict[str, Any]:
        server = next(iter(self.servers.values()))
        return {"name": "vllm", "version": server.version, "engine_dtype": self.dtype,
                "kl": f"top-{self.k} log-probabilities of each model, tokens outside both lumped into one bucket "
                      f"(KL a lower bound, acceptance an upper bound of the full-distribution figures)"}

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()


class _GenerationConfig:
    """What :func:`eos_ids` reads of a model, from its generation_config.json (no weights loaded)."""

    def __init__(self, path: Path):
        import json

        try:
            self.generation_config = type("G", (), {"eos_token_id": json.loads(
                (Path(path) / "generation_config.json").read_text()).get("eos_token_id")})()
        except (OSError, ValueError):
            self.generation_config = None
