"""The recipe's evals section (lm-evaluation-harness settings) and bench section (load, engine, SLO)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from compress.core.recipe.base import NonNegInt, PositiveFloat, PositiveInt, Strict

# ------------------------------------------------------------------- evals and bench


TRAFFIC_CHECK_KINDS = ("json_valid", "regex_present", "regex_absent", "stops", "max_length")


class TrafficCheck(Strict):
    """A behaviour every answer should keep, checked on both models' greedy answers to the traffic; its pass
    rate is gateable as ``traffic/NAME`` (``max_regression``: how much lower the candidate's rate may be)."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", description="the check's name (traffic/NAME)")]
    kind: Literal["json_valid", "regex_present", "regex_absent", "stops", "max_length"] = Field(
        description="json_valid: the answer parses as JSON; regex_present / regex_absent: `pattern` is found / "
        "not found in it; stops: it ended (EOS or a stop sequence) before max_new_tokens; max_length: it is at "
        "most `max_tokens` tokens")
    pattern: str | None = Field(default=None, description="regex_present / regex_absent: a Python regular expression")
    max_tokens: PositiveInt | None = Field(default=None, description="max_length: the most tokens an answer may take")

    @model_validator(mode="after")
    def _arguments(self) -> "TrafficCheck":
        import re

        if self.kind.startswith("regex"):
            if not self.pattern:
                raise ValueError(f"check '{self.name}' ({self.kind}) needs a pattern")
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"check '{self.name}': pattern {self.pattern!r} is not a regular expression: {e}")
        elif self.pattern is not None:
            raise ValueError(f"check '{self.name}' ({self.kind}) takes no pattern")
        if self.kind == "max_length" and self.max_tokens is None:
            raise ValueError(f"check '{self.name}' (max_length) needs max_tokens")
        if self.kind != "max_length" and self.max_tokens is not None:
            raise ValueError(f"check '{self.name}' ({self.kind}) takes no max_tokens")
        return self


class TrafficSpec(Strict):
    """The user's own requests (a JSONL file: prompt, chat messages or ShareGPT conversations), answered by both
    models: fidelity of the candidate to the base without labels (traffic/kl, traffic/top1, ...) and behaviour
    checks on the answers. Reports keep per-request figures and a hash of each request, never its text (unless
    ``keep_text``)."""

    path: str = Field(description="the JSONL file of requests (relative to the current directory)")
    max_new_tokens: PositiveInt = Field(default=32, description="tokens each answer may take (a request's own "
                                        "max_tokens lowers it)")
    limit: PositiveInt | None = Field(default=None, description="the first N requests of the file")
    sample: PositiveInt | None = Field(default=None, description="N requests at random (seeded) of those")
    seed: int = Field(default=0, description="the seed of `sample`")
    stop: list[str] = Field(default_factory=list, description="stop sequences: an answer ends at the first")
    checks: list[TrafficCheck] = Field(default_factory=list, description="behaviour checks on both models' answers")
    keep_text: bool = Field(default=False, description="keep each request's text and both answers in the report "
                            "(off: only hashes and figures leave the machine)")
    engine: Literal["hf", "vllm"] = Field(
        default="hf", description="hf: transformers, full distributions; vllm: the served models, KL over their "
        "top_k log-probabilities with the rest lumped (a lower bound)")
    top_k: Annotated[int, Field(ge=1, le=100)] = Field(
        default=20, description="vllm: log-probabilities returned per position")
    engine_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="vllm: the dtype the engine computes in (auto: the recipe model's dtype)")

    @model_validator(mode="after")
    def _unique_checks(self) -> "TrafficSpec":
        names = [c.name for c in self.checks]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"behaviour check names must be unique: {', '.join(dup)}")
        from compress.core.recipe.gate import TRAFFIC_FIDELITY

        if clash := sorted(set(names) & set(TRAFFIC_FIDELITY)):
            raise ValueError(f"behaviour check names {', '.join(clash)} are fidelity metrics' names: choose others")
        return self


class EvalSpec(Strict):
    """lm-evaluation-harness settings. Bundled tasks live in ``evals/``.

    Every setting that changes what a model is asked is part of the report's cache key, and
    each document's full prompt is hashed into the report: a gate refuses to pair a baseline
    and a candidate that were asked differently.
    """

    tasks: list[str] = Field(default_factory=lambda: ["tiny_facts_mc", "tiny_bios_ppl"], min_length=1,
                             description="lm-eval task or group names")
    num_fewshot: NonNegInt | None = Field(default=None, description="few-shot examples (default: each task's own)")
    apply_chat_template: bool | str = Field(
        default=False, description="format prompts with the model's chat template (a name picks one of several)")
    fewshot_as_multiturn: bool = Field(
        default=True, description="with a chat template: few-shot examples as user/assistant turns")
    system_instruction: str | None = Field(default=None, description="a system message before every prompt")
    gen_kwargs: dict[str, str | int | float | bool | list[str]] | None = Field(
        default=None, description="generation settings for generative tasks, e.g. {max_gen_toks: 64}")
    limit: int | float | None = Field(
        default=None, description="documents per task: a count, or a fraction (0 < x < 1) of each task")
    include_path: list[str] = Field(
        default_factory=list, description="extra lm-eval task folders (relative to the current directory)")
    batch_size: PositiveInt = Field(default=16, description="batch size (also of generation)")
    seed: int = Field(default=1234, description="seed for sampling and few-shot choice")
    backend: Literal["hf", "vllm", "llamacpp"] = Field(
        default="hf", description="hf: transformers; vllm: lm-eval against a vLLM server from `make engine`; "
        "llamacpp: lm-eval's gguf model against llama.cpp's server from `make llamacpp` (GGUF artifacts; "
        "no perplexity tasks)")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    device_map: Literal["auto"] | None = Field(
        default=None, description="hf: auto spreads the weights over the GPUs, CPU memory and disk as they fit "
        "(accelerate), for a model larger than one device")
    tensor_parallel: PositiveInt = Field(default=1, description="vllm: GPUs each copy of the model is split over")
    data_parallel: PositiveInt = Field(default=1, description="vllm: copies of the model serving side by side")
    traffic: TrafficSpec | None = Field(
        default=None, description="the user's own requests, unlabeled: fidelity and behaviour checks (traffic/...)")

    @model_serializer(mode="wrap")
    def _stable_dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Without traffic the key is left out: every earlier recipe's hash and cached report stay what they were.
        data = handler(self)
        if data.get("traffic") is None:
            data.pop("traffic", None)
        return data

    @field_validator("limit", mode="before")
    @classmethod
    def _count_or_fraction(cls, value: Any) -> Any:
        if isinstance(value, str):  # "0.25" or "200", as a --set may give it
            try:
                value = float(value)
            except ValueError:
                return value
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        if 0 < value < 1:
            return float(value)
        if value >= 1 and value == int(value):
            return int(value)
        raise ValueError(f"{value} is neither a number of documents (1, 2, ...) nor a fraction between 0 and 1")

    @model_validator(mode="after")
    def _placement_fits_the_backend(self) -> "EvalSpec":
        if self.backend == "hf" and (self.tensor_parallel > 1 or self.data_parallel > 1):
            raise ValueError("tensor_parallel and data_parallel are vLLM's: set backend: vllm, or device_map: auto "
                             "to spread one model over several devices in hf")
        if self.backend == "vllm" and self.device_map is not None:
            raise ValueError("device_map is for the hf back end; vLLM splits a model with tensor_parallel")
        return self


class SloSpec(Strict):
    """A service-level objective, in milliseconds: tail latencies over a level (``*_p99_ms``, what
    ``slo_throughput_speedup`` holds to) and bounds every single request should meet (``ttft_ms``, ``tpot_ms``,
    ``e2e_ms``: a request meets the SLO when it keeps all that are set; the share that does is its attainment, what
    goodput holds to). Without request bounds, attainment holds each request to the p99 bounds."""

    ttft_p99_ms: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="time to first token, p99")
    itl_p99_ms: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="inter-token latency, p99")
    ttft_ms: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="each request: time to first token")
    tpot_ms: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="each request: mean time per output token after the first")
    e2e_ms: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="each request: end-to-end latency")

    @model_serializer(mode="wrap")
    def _stable_dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)  # request bounds left out when unset: earlier recipes keep their hash
        for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @model_validator(mode="after")
    def _something(self) -> "SloSpec":
        if all(v is None for v in (self.ttft_p99_ms, self.itl_p99_ms, self.ttft_ms, self.tpot_ms, self.e2e_ms)):
            raise ValueError("give ttft_p99_ms and/or itl_p99_ms (level tails), or ttft_ms, tpot_ms and/or e2e_ms "
                             "(each request)")
        return self

    def request_bounds(self) -> dict[str, float]:
        """The bounds each request is held to, in seconds: ``ttft``, ``tpot``, ``e2e`` (the p99 bounds where no
        request bound is set: a level whose p99 keeps X is one where 99% of requests keep X)."""
        bounds = {"ttft": self.ttft_ms, "tpot": self.tpot_ms, "e2e": self.e2e_ms}
        if all(v is None for v in bounds.values()):
            bounds = {"ttft": self.ttft_p99_ms, "tpot": self.itl_p99_ms}
        return {k: v / 1e3 for k, v in bounds.items() if v is not None}


class Lognormal(Strict):
    """Lengths drawn from a log-normal distribution with this mean (in tokens) and ``sigma`` of the log."""

    mean: PositiveFloat
    sigma: Annotated[float, Field(ge=0, le=3)]


class Lengths(Strict):
    """A distribution of token counts: ``lognormal: {mean, sigma}`` or ``uniform: [a, b]`` (both ends included)."""

    lognormal: Lognormal | None = None
    uniform: tuple[PositiveInt, PositiveInt] | None = None

    @model_validator(mode="after")
    def _one(self) -> "Lengths":
        if (self.lognormal is None) == (self.uniform is None):
            raise ValueError("give one of lognormal: {mean, sigma} or uniform: [a, b]")
        if self.uniform is not None and self.uniform[0] > self.uniform[1]:
            raise ValueError(f"uniform: [{self.uniform[0]}, {self.uniform[1]}] runs backwards")
        return self


class WorkloadSpec(Strict):
    """What the served benchmark sends: requests from a traffic file (the JSONL of evals.traffic: prompts, chat
    messages or ShareGPT conversations, each with an optional ``max_tokens`` / ``output_tokens``), or synthetic
    ones of random tokens with lengths from ``prompt_tokens`` and ``output_tokens`` (a number, or a distribution);
    either way, ``shared_prefix_tokens`` of a common system prompt before the share ``prefix_share`` of them.
    Seeded: both models get the same requests."""

    path: str | None = Field(default=None, description="a traffic file (JSONL); synthetic requests when unset")
    prompt_tokens: PositiveInt | Lengths | None = Field(
        default=None, description="synthetic: each request's own prompt length (default: bench.prompt_tokens)")
    output_tokens: PositiveInt | Lengths | None = Field(
        default=None, description="tokens each request generates (default: a file request's own max_tokens, else "
        "bench.output_tokens)")
    shared_prefix_tokens: NonNegInt = Field(default=0, description="a common system prompt of this many tokens")
    prefix_share: Annotated[float, Field(ge=0, le=1)] = Field(
        default=1.0, description="the share of requests that carry the shared prefix")
    seed: int | None = Field(default=None, description="the seed of lengths and prompts (default: bench.seed)")

    @model_validator(mode="before")
    @classmethod
    def _file_shorthand(cls, data: Any) -> Any:
        return {"path": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _file_or_synthetic(self) -> "WorkloadSpec":
        if self.path is not None and self.prompt_tokens is not None:
            raise ValueError("a traffic file's prompts have their own lengths: drop prompt_tokens, or the path")
        return self


class GoodputSpec(Strict):
    """Find the highest request rate whose SLO attainment stays at or above ``attainment``: double from
    ``start_rate`` until a level fails, then bisect, at most ``max_probes`` levels. A level whose attainment
    interval straddles the target is undecided, and counts as not within it."""

    attainment: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.95, description="the share of requests that must meet bench.slo")
    start_rate: PositiveFloat | None = Field(
        default=None, description="requests per second of the first probe (default: what one request at a time "
        "sustains at concurrency 1)")
    max_probes: Annotated[int, Field(ge=2, le=20)] = Field(default=6, description="the most levels probed")
    precision: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.25, description="stop bisecting once the bracket's upper end is within this fraction of its lower")
    rounds: Annotated[int, Field(ge=1)] = Field(default=2, description="runs per probe (alternating sides)")


class BenchSpec(Strict):
    """Generation benchmark settings.

    ``engine``: ``hf`` times transformers ``generate`` in a worker process (``batch_sizes`` are
    sequences per call); ``vllm`` serves the model with vLLM from the engine environment
    (`make engine`) and drives it through the OpenAI-compatible streaming API (``batch_sizes``
    are concurrency levels: requests in flight); ``llamacpp`` does the same with llama.cpp's server
    (`make llamacpp`), serving a GGUF artifact as it is and any other model as llama.cpp's F16
    conversion. Baseline and candidate are measured in the same time window, in ``rounds``
    alternating rounds.
    """

    engine: Literal["hf", "vllm", "llamacpp"] = "hf"
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1], min_length=1)
    prompt_tokens: PositiveInt = Field(default=64, description="prompt length in tokens")
    output_tokens: PositiveInt = Field(default=32, description="tokens generated per request")
    warmup: NonNegInt = Field(default=2, description="untimed calls per batch size")
    repeats: PositiveInt = Field(
        default=8, description="hf: timed generate calls per batch size and round; vllm: requests per "
        "concurrency level and round (at least the concurrency)")
    rounds: Annotated[int, Field(ge=2)] = Field(
        default=4, description="rounds of measurement; baseline and candidate alternate which goes first, so an "
        "even number balances the order")
    slo: SloSpec | None = Field(
        default=None, description="the latencies the slo_throughput_speedup metric holds to")
    engine_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="vllm: the dtype the engine computes in (its CPU kernels are bf16)")
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        default="auto", description="vllm: the KV cache's dtype (fp8 uses the artifact's calibrated scales)")
    kv_cache_gib: PositiveInt = Field(default=2, description="vllm on the CPU: KV cache size in GiB (whole GiB)")
    price_per_hour: Annotated[float, Field(ge=0)] = Field(
        default=1.0, description="what the machine costs per hour, in USD"
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    seed: int = 0
    tensor_parallel: PositiveInt = Field(default=1, description="vllm: GPUs each copy of the model is split over")
    data_parallel: PositiveInt = Field(default=1, description="vllm: copies of the model serving side by side")
    start_timeout_s: PositiveFloat | None = Field(
        default=None, description="vllm: the most seconds a server's start may take while it makes progress (its "
        "log grows or it uses CPU; one that stands still for 5 minutes fails at once); unset: "
        "$COMPRESS_ENGINE_START_TIMEOUT, else 3600")
    workload: WorkloadSpec | None = Field(
        default=None, description="served: what the requests look like (a traffic file, or lengths as numbers or "
        "distributions, and a shared system prompt); unset: random prompts of exactly prompt_tokens")
    arrival: Literal["closed", "poisson", "constant"] = Field(
        default="closed", description="closed: batch_sizes requests in flight; poisson / constant: requests arrive "
        "on their own schedule at each of `rates` (an open loop)")
    rates: list[PositiveFloat] = Field(default_factory=list, description="open loop: requests per second, per level")
    requests_per_rate: PositiveInt = Field(
        default=32, description="open loop: requests sent per rate level and round (before warm-up and cool-down "
        "are set aside)")
    duration_s: PositiveFloat | None = Field(
        default=None, description="open loop: run each level this long instead (rate x duration requests)")
    warmup_fraction: Annotated[float, Field(ge=0, lt=0.5)] = Field(
        default=0.1, description="open loop: the share of each level's first requests left out of its figures")
    cooldown_fraction: Annotated[float, Field(ge=0, lt=0.5)] = Field(
        default=0.1, description="open loop: the share of each level's last requests left out of its figures")
    goodput: GoodputSpec | None = Field(
        default=None, description="open loop: search the highest rate whose SLO attainment meets a target "
        "(needs slo)")

    @model_serializer(mode="wrap")
    def _stable_dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # How long a start may take changes no figure, and the production-shaped settings added later are left
        # out at their defaults: every earlier recipe's hash and cached report stay what they were.
        data = handler(self)
        if data.get("start_timeout_s") is None:
            data.pop("start_timeout_s", None)
        for key, unset in _LATER_DEFAULTS.items():
            if key in data and data[key] == unset:
                data.pop(key)
        return data

    @model_validator(mode="after")
    def _open_loop(self) -> "BenchSpec":
        if self.arrival == "closed" and (self.rates or self.goodput is not None):
            raise ValueError("rates and goodput are levels of an open loop: set arrival: poisson or constant")
        if self.arrival != "closed" and not self.rates and self.goodput is None:
            raise ValueError(f"arrival: {self.arrival} needs rates (requests per second) or goodput")
        if self.goodput is not None and self.slo is None:
            raise ValueError("goodput holds requests to bench.slo: add slo, e.g. {ttft_ms: 2000, tpot_ms: 200}")
        if self.engine == "hf" and (self.workload is not None or self.arrival != "closed"):
            raise ValueError("workloads and arrival processes are served: set engine: vllm (or give an endpoint)")
        return self

    @property
    def open_loop(self) -> bool:
        return self.arrival != "closed"

    @model_validator(mode="after")
    def _parallel_is_vllms(self) -> "BenchSpec":
        if self.engine == "hf" and (self.tensor_parallel > 1 or self.data_parallel > 1):
            raise ValueError("tensor_parallel and data_parallel are vLLM's: set engine: vllm")
        return self




# BenchSpec keys added after recipes were first hashed, at their defaults (left out of the dump).
_LATER_DEFAULTS: dict[str, Any] = {"workload": None, "arrival": "closed", "rates": [], "requests_per_rate": 32,
                                   "duration_s": None, "warmup_fraction": 0.1, "cooldown_fraction": 0.1,
                                   "goodput": None}
