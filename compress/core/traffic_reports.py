"""Reports of the user's own traffic: per-request fidelity of a candidate to its base and behaviour checks,
known by hashes and lengths, never by text (unless asked)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from compress.core.reports import ModelInfo, ReportModel

class TrafficRequest(ReportModel):
    """One request of the user's traffic: which (its line and the sha256 of its JSON, never its text unless
    ``keep_text``), its lengths, the candidate's fidelity to the base on it, and each behaviour check's outcome
    for ``[base, candidate]`` (``[base]`` for one model)."""

    index: int
    line: int
    sha256: str
    prompt_tokens: int
    max_new_tokens: int
    base_tokens: int
    candidate_tokens: int | None = None
    kl: float | None = None
    top1: float | None = None
    nll_increase: float | None = None
    acceptance: float | None = None
    greedy_match: bool | None = None
    first_divergence: int | None = None
    candidate_logprob: float | None = None  # the candidate's confidence in its own answer (a cascade routes on it)
    checks: dict[str, list[bool]] = Field(default_factory=dict)
    text: dict[str, Any] | None = None


class TrafficReport(ReportModel):
    """Both models (or one) answering the user's requests: per-request figures, the traffic described by its
    hash, size and lengths (never its content), and how the figures were computed."""

    kind: Literal["traffic"] = "traffic"
    baseline: ModelInfo
    candidate: ModelInfo | None = None
    settings: dict[str, Any]
    traffic: dict[str, Any]  # sha256, requests, prompt-token percentiles
    engine: dict[str, Any]  # name, version, dtype, how KL was computed
    requests: list[TrafficRequest]
    seconds: float
    environment: dict[str, Any] = Field(default_factory=dict)
    created: str
    cache_key: str

    @property
    def model(self) -> ModelInfo:
        return self.candidate or self.baseline

    def values(self, name: str) -> list[float]:
        """A fidelity figure per request (greedy_match as 0/1)."""
        return [float(getattr(r, name)) for r in self.requests]

    def check_outcomes(self, name: str) -> tuple[list[bool], list[bool]]:
        """A behaviour check's pass or fail per request, for the base and the candidate."""
        if not self.requests or name not in self.requests[0].checks:
            raise KeyError(f"the traffic report has no behaviour check '{name}' (it has "
                           f"{', '.join(self.requests[0].checks) if self.requests else 'no requests'})")
        return [r.checks[name][0] for r in self.requests], [r.checks[name][-1] for r in self.requests]

    def summary(self) -> dict[str, Any]:
        """Means over requests of every fidelity figure and each check's pass rates (for tables and cards)."""
        out: dict[str, Any] = {"requests": len(self.requests),
                               "requests_per_s": len(self.requests) / self.seconds if self.seconds else None}
        if self.candidate is not None and self.requests:
            for name in ("kl", "top1", "nll_increase", "acceptance", "greedy_match"):
                vals = self.values(name)
                out[name] = sum(vals) / len(vals)
        for name in (self.requests[0].checks if self.requests else {}):
            base, cand = self.check_outcomes(name)
            out[f"check:{name}"] = {"baseline": sum(base) / len(base), "candidate": sum(cand) / len(cand)}
        return out
