"""Recipes: the YAML files that say what to compress, how, and what it must still do.

A recipe is validated by the pydantic models below. Unknown keys are errors, the method is
chosen by its ``kind`` discriminator, and every problem is reported at once with its path
and line in the YAML file. Command-line overrides (``--set method.group_size=64``) are
applied to the raw document before validation, and the effective recipe is what every
artifact records.

This module imports no torch: ``compress recipes validate`` must stay fast.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import (BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, field_validator,
                      model_serializer, model_validator)

from compress.core.errors import RecipeError, UsageError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False)


PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


# ----------------------------------------------------------------------------- model

class ModelSpec(Strict):
    """Which model to start from.

    ``id`` is ``builtin:NAME`` (shipped with compress), a local directory, ``run:NAME``
    (the model produced by another recipe's run) or a Hugging Face hub id.
    """

    id: str = Field(min_length=1, description="builtin:NAME, a local directory, run:NAME or a hub id")
    revision: str | None = Field(
        default=None, description="a hub revision (branch, tag or commit); ignored for local directories")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        default="auto", description="the dtype to load and compute in; auto: the checkpoint's own (unquantized "
        "layers are saved in it)")
    trust_remote_code: bool = Field(
        default=False, description="run the model's own Python code (a hub download fetches its *.py files "
        "only when set)")
    allow_pickle: bool = Field(
        default=False,
        description="load pickled .bin weights when a model has no safetensors (unsafe)",
    )
    offload: Literal["auto", "memory", "disk"] = Field(
        default="auto", description="where calibrated quantization (GPTQ, AWQ, SmoothQuant, static FP8) keeps the "
        "weights: memory; disk (each layer read from the checkpoint when its turn comes, updated layers written to "
        "the work directory next to -o/--output); auto: disk when the weights take more than a quarter of the memory "
        "available. The artifact is the same either way")


class CalibrationSpec(Strict):
    """Text used to calibrate quantizers (and as the default distillation data)."""

    dataset: str = Field(
        default="builtin:tiny-calibration", description="builtin:NAME, a local .jsonl/.json/.txt file or "
        "directory, or a hub dataset id")
    split: str = Field(default="train", description="the split of a hub dataset")
    config_name: str | None = Field(default=None, description="the configuration of a hub dataset")
    text_field: str = Field(default="text", description="the field of each record that holds the text")
    num_samples: PositiveInt = Field(default=64, description="calibration texts taken (chosen with seed)")
    max_seq_length: PositiveInt = Field(default=128, description="tokens per calibration text, at most")
    seed: int = 0


# --------------------------------------------------------------------------- methods

DEFAULT_IGNORE = ["lm_head"]


class Fp8Method(Strict):
    """FP8 W8A8 through llm-compressor into compressed-tensors.

    ``dynamic``: per-channel weights, per-token activation scales computed at run time (no
    calibration). ``static``: per-tensor activation scales measured on calibration data.
    """

    kind: Literal["fp8"]
    scheme: Literal["dynamic", "static"] = "dynamic"
    ignore: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE),
                              description="layers left unquantized")
    kv_cache: Literal["fp8"] | None = Field(
        default=None, description="fp8: also quantize the KV cache to FP8, with per-tensor key and value scales "
        "calibrated on calibration text and stored in the artifact (llm-compressor's kv_cache_scheme); "
        "engines use them with --kv-cache-dtype fp8")


class Int8Method(Strict):
    """INT8: W8A8 (SmoothQuant + GPTQ, compressed-tensors) or LLM.int8 (bitsandbytes)."""

    kind: Literal["int8"]
    scheme: Literal["w8a8", "llm-int8"] = Field(
        default="w8a8", description="w8a8: SmoothQuant + GPTQ (compressed-tensors); llm-int8: bitsandbytes "
        "LLM.int8")
    smoothing_strength: Fraction = Field(default=0.8, description="w8a8: SmoothQuant's smoothing strength")
    dampening_frac: Fraction = Field(default=0.01, description="w8a8: GPTQ's dampening fraction")
    llm_int8_threshold: Annotated[float, Field(gt=0)] = Field(
        default=6.0, description="llm-int8: the outlier threshold of LLM.int8")
    ignore: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE),
                              description="layers left unquantized")
    kv_cache: Literal["fp8"] | None = Field(
        default=None, description="fp8: also quantize the KV cache to FP8, with per-tensor key and value scales "
        "calibrated on calibration text and stored in the artifact (llm-compressor's kv_cache_scheme); "
        "engines use them with --kv-cache-dtype fp8")

    @model_validator(mode="after")
    def _kv_cache_scheme(self) -> "Int8Method":
        if self.kv_cache is not None and self.scheme == "llm-int8":
            raise ValueError("kv_cache works only with the llm-compressor scheme w8a8; llm-int8 (bitsandbytes) "
                             "cannot quantize the KV cache: remove kv_cache or use scheme: w8a8")
        return self


class Int4Method(Strict):
    """Low-bit weight-only quantization (W4A16 by default).

    ``gptq``, ``awq``, ``rtn``: llm-compressor into compressed-tensors. ``gptq-hf``: GPTQModel
    into the Hugging Face GPTQ format. ``nf4``: bitsandbytes NF4. ``bits`` below 4 exists to
    measure how a method degrades; serving engines expect 4.
    """

    kind: Literal["int4"]
    algorithm: Literal["gptq", "awq", "rtn", "gptq-hf", "nf4"] = "gptq"
    bits: Literal[2, 3, 4, 8] = 4
    group_size: int | None = Field(
        default=128, description="columns per quantization group; null or -1 for per-channel"
    )
    symmetric: bool = True
    dampening_frac: Fraction = Field(default=0.01, description="gptq, gptq-hf: GPTQ's dampening fraction")
    act_order: bool = Field(
        default=False, description="gptq, gptq-hf: GPTQ's activation order (llm-compressor actorder=group, "
        "GPTQModel desc_act)")
    double_quant: bool | None = Field(
        default=None, description="nf4 only: quantize the block scales too (bitsandbytes' double quantization; "
        "on by default for nf4; ignored by the other algorithms)")
    ignore: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE),
                              description="layers left unquantized")
    int8_layers: list[str] = Field(
        default_factory=list, description="layers quantized to 8 bits (weights only, one scale per output channel) "
        "instead of `bits`: a mixed-precision artifact (compressed-tensors config groups, which vLLM and "
        "transformers read). Exact module names or 're:PATTERN'. `compress search` fills it in")
    kv_cache: Literal["fp8"] | None = Field(
        default=None, description="fp8: also quantize the KV cache to FP8, with per-tensor key and value scales "
        "calibrated on calibration text and stored in the artifact (llm-compressor's kv_cache_scheme); "
        "engines use them with --kv-cache-dtype fp8")

    @model_serializer(mode="wrap")
    def _stable_dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Without 8-bit layers the key is left out, so every recipe written before it existed
        # keeps its content hash (and its cached artifacts and reports).
        data = handler(self)
        if not data.get("int8_layers"):
            data.pop("int8_layers", None)
        return data

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, v: int | None) -> int | None:
        if v is None or v == -1:
            return None
        if v <= 0:
            raise ValueError("must be a positive number of columns, or null/-1 for per-channel")
        return v

    @model_validator(mode="after")
    def _algorithm_limits(self) -> "Int4Method":
        if self.algorithm == "nf4" and self.bits != 4:
            raise ValueError("nf4 is a 4-bit format: leave bits at 4")
        if self.algorithm == "nf4" and not self.symmetric:
            raise ValueError("nf4 has no asymmetric variant: leave symmetric at true")
        if self.algorithm == "nf4" and self.double_quant is None:
            self.double_quant = True
        if self.algorithm != "nf4":
            # Recipes written before this field was nf4's alone carry its old default (true);
            # refusing them would strand their runs, so it is dropped where it means nothing.
            self.double_quant = None
        if self.int8_layers and self.algorithm in ("nf4", "gptq-hf"):
            # GPTQModel can write 8-bit layers into the HF GPTQ format (its per-module `dynamic`
            # config), but transformers' GPTQ loader ignores that config and reads them as `bits`.
            why = ("has one format for every layer" if self.algorithm == "nf4" else
                   "artifacts with per-layer bits load wrongly in transformers (its GPTQ loader ignores "
                   "GPTQModel's per-module config)")
            raise ValueError(f"{self.algorithm} {why}: remove int8_layers, or use algorithm gptq, awq or rtn "
                             f"(compressed-tensors) for mixed precision")
        if self.int8_layers and self.bits == 8:
            raise ValueError("int8_layers means nothing at bits 8: remove it")
        if self.kv_cache is not None and self.algorithm in ("gptq-hf", "nf4"):
            raise ValueError(f"kv_cache works only with the llm-compressor algorithms gptq, awq and rtn; "
                             f"{self.algorithm} cannot quantize the KV cache: remove kv_cache or pick one of those")
        return self


class StudentSpec(Strict):
    """Where the student comes from: a pruned copy of the teacher, or a given model."""

    from_teacher: bool = Field(default=True, description="prune the teacher to make the student")
    keep_layers: list[NonNegInt] | None = Field(
        default=None, description="explicit decoder layers to keep (0-based); else chosen by importance"
    )
    depth_ratio: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.5, description="the fraction of the teacher's decoder layers kept (unless keep_layers)")
    importance: Literal["cosine", "first", "last"] = Field(
        default="cosine", description="how the kept layers are chosen: cosine (by importance measured on "
        "calibration text), the first or the last")
    mlp_width_ratio: Annotated[float, Field(gt=0, le=1)] = Field(
        default=1.0, description="the fraction of each MLP's width kept; 1.0: depth pruning only")
    model: str | None = Field(default=None, description="a student model id/dir sharing the tokenizer")
    config: dict[str, Any] | None = Field(
        default=None, description="config overrides for a freshly initialised student"
    )

    @model_validator(mode="after")
    def _one_source(self) -> "StudentSpec":
        if not self.from_teacher and self.model is None and self.config is None:
            raise ValueError("with from_teacher: false, give a student `model` or `config`")
        if self.model is not None and self.config is not None:
            raise ValueError("give a student `model` or a `config`, not both")
        return self


class LossSpec(Strict):
    kind: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        default="forward_kl", description="forward_kl: KL(teacher || student); reverse_kl: KL(student || "
        "teacher); jsd: generalized Jensen-Shannon with beta")
    beta: Fraction = Field(
        default=0.5, description="jsd: the teacher's weight in the mixture (0.5: the Jensen-Shannon "
        "divergence)")
    temperature: Annotated[float, Field(gt=0)] = Field(
        default=2.0, description="softens both distributions; the loss is scaled by its square")
    ce_weight: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.0, description="the weight of the student's cross-entropy on the text (the distillation "
        "loss gets 1 - ce_weight)")
    hidden_weight: Annotated[float, Field(ge=0)] = Field(
        default=0.0, description="the weight of a loss between matched student and teacher hidden states; "
        "0: none")
    hidden_loss: Literal["mse", "cosine"] = Field(default="mse", description="that hidden-state loss")


class TrainingSpec(Strict):
    dataset: str = Field(
        default="builtin:tiny-train", description="builtin:NAME, a local .jsonl/.json/.txt file or "
        "directory, or a hub dataset id")
    split: str = Field(default="train", description="the split of a hub dataset")
    text_field: str = Field(default="text", description="the field of each record that holds the text")
    max_seq_length: PositiveInt = Field(default=128, description="tokens per packed training block")
    max_steps: PositiveInt = Field(default=300, description="optimizer steps")
    learning_rate: Annotated[float, Field(gt=0)] = 1e-3
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.05
    batch_size: PositiveInt = Field(default=16, description="sequences per step on each device")
    gradient_accumulation: PositiveInt = Field(
        default=1, description="steps accumulated per optimizer update")
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    save_steps: PositiveInt = Field(
        default=100, description="a checkpoint every this many steps (a run resumes from the last)")
    logging_steps: PositiveInt = Field(default=25, description="the loss is logged every this many steps")
    seed: int = 0


class DistillMethod(Strict):
    """Train a smaller student on the teacher's (the recipe model's) output distribution."""

    kind: Literal["distill"]
    student: StudentSpec = Field(default_factory=StudentSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)


Method = Annotated[Union[Fp8Method, Int8Method, Int4Method, DistillMethod], Field(discriminator="kind")]
METHOD_KINDS = ["fp8", "int8", "int4", "distill"]


# ------------------------------------------------------------------- evals and bench

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
    backend: Literal["hf", "vllm"] = Field(
        default="hf", description="hf: transformers; vllm: lm-eval against a vLLM server from `make engine`")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    device_map: Literal["auto"] | None = Field(
        default=None, description="hf: auto spreads the weights over the GPUs, CPU memory and disk as they fit "
        "(accelerate), for a model larger than one device")
    tensor_parallel: PositiveInt = Field(default=1, description="vllm: GPUs each copy of the model is split over")
    data_parallel: PositiveInt = Field(default=1, description="vllm: copies of the model serving side by side")

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
    """A service-level objective: the tail latencies a serving setup must keep, in milliseconds."""

    ttft_p99_ms: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="time to first token, p99")
    itl_p99_ms: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="inter-token latency, p99")

    @model_validator(mode="after")
    def _something(self) -> "SloSpec":
        if self.ttft_p99_ms is None and self.itl_p99_ms is None:
            raise ValueError("give ttft_p99_ms and/or itl_p99_ms")
        return self


class BenchSpec(Strict):
    """Generation benchmark settings.

    ``engine``: ``hf`` times transformers ``generate`` in a worker process (``batch_sizes`` are
    sequences per call); ``vllm`` serves the model with vLLM from the engine environment
    (`make engine`) and drives it through the OpenAI-compatible streaming API (``batch_sizes``
    are concurrency levels: requests in flight). Baseline and candidate are measured in the
    same time window, in ``rounds`` alternating rounds.
    """

    engine: Literal["hf", "vllm"] = "hf"
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

    @model_serializer(mode="wrap")
    def _stable_dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # How long a start may take changes no figure: left out when unset, so every recipe's hash
        # and every cached report stay what they were.
        data = handler(self)
        if data.get("start_timeout_s") is None:
            data.pop("start_timeout_s", None)
        return data

    @model_validator(mode="after")
    def _parallel_is_vllms(self) -> "BenchSpec":
        if self.engine == "hf" and (self.tensor_parallel > 1 or self.data_parallel > 1):
            raise ValueError("tensor_parallel and data_parallel are vLLM's: set engine: vllm")
        return self


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
    "draft_speedup": ("speculative decoding: the baseline generating with the candidate as its draft / alone "
                      "(transformers, batch 1; FAIL when greedy outputs differ)", "higher"),
}


# Efficiency metrics measured once per model rather than per load level.
MEASURED_ONCE = {"size_ratio", "peak_memory_ratio", "peak_memory_mb", "slo_throughput_speedup", "draft_speedup"}


class GateCheck(Strict):
    """One threshold.

    Quality metrics are named ``TASK/METRIC`` as in the accuracy report (for example
    ``tiny_facts_mc/acc``), ``TASK/METRIC,FILTER`` for a task that reads its answers out with
    several filters (``tiny_facts_gen/exact_match,strict-match``), or ``GROUP/METRIC`` for a
    group's aggregate (``tiny_world/acc``), and take ``max_regression``: how much worse the candidate may be,
    in the metric's own bad direction (lm-eval's ``higher_is_better``), absolute or, with
    ``relative: true``, as a fraction of the baseline. Efficiency metrics (``size_ratio``,
    ``throughput_speedup``, ...) take ``min`` and/or ``max``.
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
        if "/" in self.metric:
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

    engine: Literal["vllm"] = "vllm"
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
        description="path of an Ed25519 private key (compress keygen) to sign the export with; "
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
        default=None, description="a built-in list of candidates: 'default' is 2, 3 and 4 bits (RTN, GPTQ, AWQ), "
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
        if any(c.kind == "distill" for c in self.candidates):
            raise ValueError("candidates are quantization methods (fp8, int8, int4); distill with `compress run`")
        return self


# ---------------------------------------------------------------------------- recipe

class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100,
                      description="runs go under runs/NAME/, exports to dist/NAME; default: the file's name "
                      "without .yaml")
    description: str = Field(default="", description="free text about the recipe")
    model: ModelSpec
    method: Method
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    evals: EvalSpec = Field(default_factory=EvalSpec)
    bench: BenchSpec = Field(default_factory=BenchSpec)
    gate: GateSpec = Field(default_factory=GateSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    search: SearchSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _search_needs_no_method(cls, data: Any) -> Any:
        # A search recipe's candidates are its methods: the first stands in as `method`.
        if isinstance(data, dict) and "method" not in data and isinstance(data.get("search"), dict):
            search = data["search"]
            first = (search.get("candidates") or [None])[0] if not search.get("ladder") else None
            if first is None and search.get("ladder") in (None, "default"):
                first = {"kind": "int4", "algorithm": "rtn"}
            if isinstance(first, dict):
                data = {**data, "method": first}
        return data

    def effective(self) -> dict[str, Any]:
        """The recipe with every default filled in, as plain JSON data (no search section when
        there is none: the recipes of artifacts never have one)."""
        return self.model_dump(mode="json", exclude={"search"} if self.search is None else None)

    def section_hash(self, *sections: str) -> str:
        """sha256 of the canonical JSON of the named sections (all of them when none given)."""
        data = self.effective()
        if sections:
            data = {s: data[s] for s in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------ loading

class _LineLoader(yaml.SafeLoader):
    """A safe loader; lines are read from the composed node tree, not from the data."""


def _line_index(text: str) -> dict[tuple, int]:
    """Map each path in a YAML document, as a tuple of keys and indexes, to its 1-based line."""
    try:
        root = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                k = key.value
                lines[path + (k,)] = key.start_mark.line + 1
                walk(value, path + (k,))
                lines[path + (k,)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    if root is not None:
        walk(root, ())
    return lines


_METHOD_CLASSES = {"fp8": Fp8Method, "int8": Int8Method, "int4": Int4Method, "distill": DistillMethod}


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _known_fields(loc: tuple) -> list[str]:
    """Field names that the section at ``loc`` accepts (for 'did you mean' on unknown keys)."""
    model: Any = Recipe
    for i, part in enumerate(loc):
        if isinstance(part, int):
            continue
        if i == 1 and loc[0] == "method":  # the discriminator tag pydantic puts in the location
            model = _METHOD_CLASSES.get(part)
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return []
        model = None if (i == 0 and part == "method") else _first_model(field.annotation)
    return list(model.model_fields) if model is not None else []


def _format_errors(err: ValidationError, lines: dict[tuple, int]) -> list[str]:
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        # The discriminated union adds the tag ("int4") to the location; it is not a YAML key.
        path = tuple(p for i, p in enumerate(loc) if not (i == 1 and loc[0] == "method" and p in METHOD_KINDS))
        dotted = ".".join(str(p) for p in path) or "(top level)"
        line = None
        for cut in range(len(path), -1, -1):
            if path[:cut] in lines:
                line = lines[path[:cut]]
                break
        where = f"{dotted} (line {line})" if line else dotted
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            known = _known_fields(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            msg = "unknown key" + (f"; did you mean '{close[0]}'?" if close else "")
            if known:
                msg += f" (allowed: {', '.join(known)})"
        elif e["type"] == "union_tag_invalid":
            msg = f"unknown method kind {e['input'].get('kind')!r}; available: {', '.join(METHOD_KINDS)}" \
                if isinstance(e.get("input"), dict) else msg
        elif e["type"] == "union_tag_not_found":
            msg = f"missing 'kind' (one of: {', '.join(METHOD_KINDS)})"
        elif e["type"] == "string_pattern_mismatch" and path == ("name",):
            msg = "must start with a letter or digit and use only letters, digits, '.', '_' and '-'"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        problems.append(f"{where}: {msg}")
    return problems


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` into (["a", "b", "c"], value); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w.-]*", key):
        raise UsageError(f"override '{text}' is not KEY=VALUE", hint="for example --set method.group_size=64")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise UsageError(f"override '{text}': value is not valid YAML ({e.problem})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a raw recipe document (command line > recipe > defaults)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k, {}), dict):
                raise UsageError(f"override '{text}': '{k}' is not a section")
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return data


def read_document(path: Path) -> tuple[dict[str, Any], str]:
    """Read a recipe file into a raw mapping and its text."""
    if not path.exists():
        raise UsageError(f"recipe file not found: {path}", hint="check the path; recipes live in recipes/")
    if path.is_dir():
        raise UsageError(f"{path} is a directory, not a recipe file",
                         hint=f"pass one of its .yaml files, e.g. {path}/NAME.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(str(path), ["not a text file (not UTF-8): a recipe is a YAML file"]) from None
    try:
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise RecipeError(str(path), [f"not valid YAML{where}: {getattr(e, 'problem', e)}"]) from None
    if data is None:
        raise RecipeError(str(path), ["the file is empty"])
    if not isinstance(data, dict):
        raise RecipeError(str(path), ["the top level must be a mapping of sections"])
    return data, text


def validate_document(data: dict[str, Any], source: str, text: str = "") -> Recipe:
    """Validate a raw recipe mapping; raise one RecipeError listing every problem."""
    data = dict(data)
    if "name" not in data and source.endswith((".yaml", ".yml")):
        data["name"] = Path(source).stem
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(source, _format_errors(err, _line_index(text))) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe file.

    Args:
        path: the YAML file.
        overrides: ``KEY=VALUE`` strings applied before validation.

    Returns:
        The validated recipe, defaults filled in.

    Raises:
        RecipeError: with every problem found, each with its path and line.
    """
    path = Path(path)
    data, text = read_document(path)
    data = apply_overrides(data, overrides or [])
    return validate_document(data, str(path), text)


def dump_recipe(recipe: Recipe) -> str:
    """The effective recipe as YAML."""
    return yaml.safe_dump(recipe.effective(), sort_keys=False)


def _slug(text: str) -> str:
    text = text.rstrip("/").split("/")[-1].split(":")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def build_recipe(path: Path | None, *, model: str | None = None, scheme: str | None = None,
                 overrides: list[str] | None = None) -> Recipe:
    """The effective recipe from a file and/or command-line flags.

    Precedence: ``--set`` overrides > ``--model``/``--scheme`` flags > the recipe file > defaults.
    Without a file, ``model`` and ``scheme`` are required.
    """
    from compress.core.schemes import scheme_method

    if path is not None:
        data, text = read_document(Path(path))
        source = str(path)
    else:
        if not model or not scheme:
            raise UsageError("give a RECIPE file, or both --model and --scheme",
                             hint="e.g. compress quantize --model builtin:tiny-llama --scheme int4-gptq")
        data, text, source = {}, "", "<command line>"
        data["name"] = f"{_slug(model)}-{scheme}"
    if model:
        section = data.get("model") if isinstance(data.get("model"), dict) else {}
        data["model"] = {**section, "id": model}
    if scheme:
        data["method"] = scheme_method(scheme)
    data = apply_overrides(data, overrides or [])
    return validate_document(data, source, text)
