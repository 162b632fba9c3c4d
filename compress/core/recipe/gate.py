"""The recipe's gate (thresholds and the statistics behind them), export and search sections."""
from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from compress.core.recipe.base import PositiveInt, Strict
from compress.core.recipe.model import DEFAULT_IGNORE, Int4Method, Method

# ----------------------------------------------------------------------------- gate

# Efficiency metrics computed from the bench reports: name -> (description, better direction).
EFFICIENCY_METRICS: dict[str, tuple[str, str]] = {
    "size_ratio": ("candidate / baseline bytes on disk", "lower"),
    "peak_memory_ratio": ("candidate / baseline peak memory", "lower"),
    "peak_memory_mb": ("candidate peak memory, MiB", "lower"),
    "throughput_speedup": ("candidate / baseline output tokens per second, at the largest load level", "higher"),
    "prefill_speedup": ("baseline / candidate mean time to first token", "higher"),
    "latency_p50_ratio": ("candidate / baseline end-to-end latency p50", "lower"),
    "latency_p99_ratio": ("candidate / baseline end-to-end latency p99", "lower"),
    "ttft_p99_ratio": ("candidate / baseline time to first token p99", "lower"),
    "cost_ratio": ("candidate / baseline USD per million output tokens, at the largest load level", "lower"),
    "cost_per_mtok": ("candidate USD per million output tokens, at the largest load level", "lower"),
    "slo_throughput_speedup": ("candidate / baseline highest output tokens per second within bench.slo", "higher"),
    "goodput_speedup": ("candidate / baseline goodput: the highest open-loop request rate whose SLO attainment "
                        "meets bench.goodput's target", "higher"),
    "cost_at_goodput": ("candidate USD per million output tokens when serving at its goodput", "lower"),
    "draft_speedup": ("speculative decoding: the baseline generating with the candidate as its draft / alone "
                      "(transformers, batch 1; FAIL when greedy outputs differ)", "higher"),
}


# Fidelity of the candidate to the base on the user's traffic (evals.traffic): name -> whether higher is better.
# They take min / max on the candidate's value (the base's own would be 0 or 1); behaviour checks,
# traffic/NAME for a check of evals.traffic.checks, take max_regression like accuracy.
TRAFFIC_FIDELITY: dict[str, bool] = {"kl": False, "top1": True, "nll_increase": False, "acceptance": True,
                                     "greedy_match": True}
FLIPS = "/flips"  # TASK/METRIC/flips: the share of documents whose correctness changed (takes max)


def metric_family(metric: str) -> str:
    """quality (TASK/METRIC), flips (TASK/METRIC/flips), fidelity (traffic/kl, ...), behaviour (traffic/NAME)
    or efficiency (the rest)."""
    if metric.startswith("traffic/"):
        return "fidelity" if metric.removeprefix("traffic/") in TRAFFIC_FIDELITY else "behaviour"
    if metric.endswith(FLIPS) and metric.count("/") == 2:
        return "flips"
    return "quality" if "/" in metric else "efficiency"


# Efficiency metrics measured once per model rather than per load level.
MEASURED_ONCE = {"size_ratio", "peak_memory_ratio", "peak_memory_mb", "slo_throughput_speedup", "draft_speedup",
                 "goodput_speedup", "cost_at_goodput"}


class GateCheck(Strict):
    """One threshold.

    Quality metrics are named ``TASK/METRIC`` as in the accuracy report (for example
    ``tiny_facts_mc/acc``), ``TASK/METRIC,FILTER`` for a task that reads its answers out with
    several filters (``tiny_facts_gen/exact_match,strict-match``), or ``GROUP/METRIC`` for a
    group's aggregate (``tiny_world/acc``), and take ``max_regression``: how much worse the candidate may be,
    in the metric's own bad direction (lm-eval's ``higher_is_better``), absolute or, with
    ``relative: true``, as a fraction of the baseline. Efficiency metrics (``size_ratio``,
    ``throughput_speedup``, ...) take ``min`` and/or ``max``.

    On the user's own traffic (``evals.traffic``): the candidate's fidelity to the base, ``traffic/kl``,
    ``traffic/top1``, ``traffic/nll_increase``, ``traffic/acceptance`` and ``traffic/greedy_match``, takes
    ``min`` and/or ``max`` (decided on a bootstrap interval over requests); a behaviour check,
    ``traffic/NAME``, takes ``max_regression`` on its pass rate, like accuracy. ``TASK/METRIC/flips``, the
    share of documents whose correctness changed, takes ``max``.
    """

    metric: str
    max_regression: Annotated[float, Field(ge=0)] | None = None
    relative: bool = Field(
        default=False, description="quality metrics: max_regression as a fraction of the baseline")
    min: float | None = Field(default=None, description="efficiency metrics: the lower bound")
    max: float | None = Field(default=None, description="efficiency metrics: the upper bound")
    at: PositiveInt | None = Field(
        default=None, description="speed and cost ratios: the load level (batch size, or concurrency when served) to "
        "read them at; the largest level both models ran by default")

    @model_validator(mode="after")
    def _bounds(self) -> "GateCheck":
        family = metric_family(self.metric)
        if family in ("fidelity", "flips"):
            if self.max_regression is not None or self.relative or self.at is not None:
                raise ValueError(f"'{self.metric}' is the candidate's own figure: it takes min and/or max")
            if self.min is None and self.max is None:
                raise ValueError(f"'{self.metric}' needs min or max")
            if family == "flips" and self.min is not None:
                raise ValueError(f"'{self.metric}' (a share of documents that changed) takes max only")
            return self
        if family in ("quality", "behaviour"):
            if self.max_regression is None:
                raise ValueError(f"quality metric '{self.metric}' needs max_regression")
            if self.min is not None or self.max is not None:
                raise ValueError(f"quality metric '{self.metric}' takes max_regression, not min/max")
            if self.at is not None:
                raise ValueError(f"quality metric '{self.metric}' takes no 'at' (a load level)")
        else:
            if self.metric not in EFFICIENCY_METRICS:
                close = difflib.get_close_matches(self.metric, list(EFFICIENCY_METRICS), n=2)
                hint = f"did you mean {', '.join(close)}? " if close else ""
                raise ValueError(
                    f"unknown metric '{self.metric}': {hint}quality metrics are TASK/METRIC, "
                    f"efficiency metrics are {', '.join(EFFICIENCY_METRICS)}"
                )
            if self.max_regression is not None or self.relative:
                raise ValueError(f"efficiency metric '{self.metric}' takes min/max, not max_regression")
            if self.min is None and self.max is None:
                raise ValueError(f"efficiency metric '{self.metric}' needs min or max")
            if self.at is not None and self.metric in MEASURED_ONCE:
                raise ValueError(f"'{self.metric}' is measured once, not per load level: remove 'at'")
        return self

    @property
    def key(self) -> str:
        """The check's name in a gate decision: the metric, and the level it is read at if given."""
        return self.metric if self.at is None else f"{self.metric}@{self.at}"


class ServableSpec(Strict):
    """The engine must load the artifact and say what transformers says: greedy continuations of
    seeded prompts, compared token by token (``servable: vllm`` is short for the defaults)."""

    engine: Literal["vllm", "llamacpp"] = Field(
        default="vllm", description="vllm; llamacpp for a GGUF artifact (text prompts cut from the calibration "
        "text, compared as text with transformers' float32 reading of the same GGUF file)")
    prompts: PositiveInt = Field(default=8, description="seeded prompts compared")
    tokens: PositiveInt = Field(default=8, description="greedy tokens compared per prompt")
    min_agreement: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.75, description="the fraction of prompts whose first `tokens` tokens must all match")
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="what both the engine and transformers compute in")


class CascadeGate(Strict):
    """`compress cascade SMALL LARGE`: the cascade must pass the quality checks against the large
    model on held-out documents, with the small model serving at least ``min_share``."""

    min_share: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.0, description="the least share of requests the small model must serve")


class GateSpec(Strict):
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = Field(
        default=0.95, description="the confidence level of the intervals checks are decided on")
    test: Literal["bootstrap", "mcnemar"] = Field(
        default="bootstrap", description="quality intervals: bootstrap (paired); mcnemar: McNemar's interval "
        "where the scores are 0/1 and the check absolute (else the bootstrap)")
    bootstrap_resamples: Annotated[int, Field(ge=200)] = Field(
        default=2000, description="bootstrap resamples per interval")
    checks: list[GateCheck] = Field(default_factory=list)
    servable: ServableSpec | None = None
    cascade: CascadeGate | None = Field(
        default=None, description="checked by `compress cascade` (ignored by `compress run`): the small model's "
        "least share of the requests, beside the quality checks")

    @model_serializer(mode="wrap")
    def _stable_dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Without a cascade check the key is left out: the policy hashes of every earlier gate stay.
        data = handler(self)
        if data.get("cascade") is None:
            data.pop("cascade", None)
        return data

    @field_validator("servable", mode="before")
    @classmethod
    def _engine_name(cls, v: Any) -> Any:
        return {"engine": v} if isinstance(v, str) else v


class ExportSpec(Strict):
    to: str | None = Field(default=None, description="export directory; default dist/<name>")
    model_card: bool = Field(default=True, description="write a model card with the export")
    license: str | None = Field(
        default=None, description="the license the model card states (a hub license id such as apache-2.0); "
        "default: the base model card's own, else 'other'")
    sign_key: str | None = Field(
        default=None,
        description="path of an EC or Ed25519 private key (compress keygen) to sign the export with (an EC key "
        "also writes model.sig); "
        "`--sign` overrides it, and COMPRESS_SIGN_KEY is used when neither is set",
    )

    @field_validator("sign_key")
    @classmethod
    def _a_path_not_a_key(cls, v: str | None) -> str | None:
        # The effective recipe is written into every artifact: key text here would be published.
        if v is not None and ("-----BEGIN" in v or "PRIVATE KEY" in v or "\n" in v):
            raise ValueError("holds key material, not a path; the recipe is copied into every artifact, so "
                             "give the path of a key file, or put the key in the COMPRESS_SIGN_KEY "
                             "environment variable (e.g. a CI secret)")
        return v or None


class MixedSpec(Strict):
    """A mixed-precision candidate: an int4-family method whose layers that suffer most from
    rounding (KL per extra byte, measured once per base model) are kept at 8 bits (or
    unquantized), within a budget."""

    method: Int4Method
    budget: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.1, description="extra weight bytes allowed, as a fraction of the uniform candidate's")
    keep: Literal["int8", "unquantized"] = Field(
        default="int8", description="int8: the kept layers at 8 bits per output channel (method.int8_layers); "
        "unquantized: in the checkpoint's dtype (method.ignore)")

    @model_validator(mode="after")
    def _mixable(self) -> "MixedSpec":
        if self.keep == "int8" and self.method.algorithm in ("nf4", "gptq-hf"):
            raise ValueError(f"{self.method.algorithm} cannot keep layers at 8 bits: use keep: unquantized, "
                             f"or algorithm gptq, awq or rtn")
        if self.method.bits == 8:
            raise ValueError("an 8-bit method has nothing to keep at higher precision: use bits 2, 3 or 4")
        return self


class SearchSpec(Strict):
    """`compress search`: candidate methods to try, smallest predicted weights first, until one
    passes the gate. Each candidate is this recipe with that method (named NAME-SLUG)."""

    ladder: Literal["default"] | None = Field(
        default=None, description="a built-in list of candidates: 'default' is 2, 3 and 4 bits (RTN, GPTQ, AWQ; AutoRound at 2), "
        "then int8 and fp8")
    candidates: list[Method] = Field(default_factory=list, description="methods to try (beside the ladder's)")
    mixed: list[MixedSpec] = Field(default_factory=list,
                                   description="mixed-precision candidates (beside the ladder's)")
    ignore: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE),
                              description="layers every candidate leaves unquantized (unless it sets its own)")
    looks: Annotated[int, Field(ge=1, le=10)] = Field(
        default=4, description="early stopping: look at a candidate's quality after each 1/LOOKS of the documents "
        "and stop it once it is certain to FAIL (group-sequential, error spending); 1 evaluates every document")
    spending: Literal["obrien-fleming", "pocock"] = Field(
        default="obrien-fleming", description="how the looks spend the gate's error: obrien-fleming (late stops, "
        "the last look almost the fixed-sample one) or pocock (earlier stops, a stricter last look)")

    @model_validator(mode="after")
    def _something_to_try(self) -> "SearchSpec":
        if not self.ladder and not self.candidates and not self.mixed:
            raise ValueError("give a ladder (ladder: default) or a list of candidates")
        if any(c.kind in ("distill", "none") for c in self.candidates):
            raise ValueError("candidates are quantization methods (fp8, fp4, int8, int4); distill, or serve the base "
                             "model with other settings (kind: none), with `compress run`")
        return self


