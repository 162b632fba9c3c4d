"""The recipe's model, calibration and method sections (fp8, fp4, int8, int4, gguf, distill, none)."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from compress.core.recipe.base import Fraction, NonNegInt, PositiveInt, Strict

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


def ignore_field() -> Any:
    """The ``ignore`` key every quantization method has."""
    return Field(default_factory=lambda: list(DEFAULT_IGNORE), description="layers left unquantized")


def kv_cache_field() -> Any:
    """The ``kv_cache`` key of the methods that run through llm-compressor."""
    return Field(default=None, description="fp8: also quantize the KV cache to FP8, with per-tensor key and value "
                 "scales calibrated on calibration text and stored in the artifact (llm-compressor's "
                 "kv_cache_scheme); engines use them with --kv-cache-dtype fp8")


class Fp8Method(Strict):
    """FP8 W8A8 through llm-compressor into compressed-tensors.

    ``dynamic``: per-channel weights, per-token activation scales computed at run time (no
    calibration). ``static``: per-tensor activation scales measured on calibration data.
    ``block``: one weight scale per 128x128 block, activation scales per group of 128 computed
    at run time (no calibration; DeepSeek-V3's layout).
    """

    kind: Literal["fp8"]
    scheme: Literal["dynamic", "static", "block"] = "dynamic"
    ignore: list[str] = ignore_field()
    kv_cache: Literal["fp8"] | None = kv_cache_field()


class Fp4Method(Strict):
    """4-bit floating point (E2M1) microscaling formats through llm-compressor into compressed-tensors.

    A kind of its own, not an ``int4`` algorithm: the group size, scale format and symmetry are
    fixed by each format, so none of ``int4``'s knobs (bits, group_size, symmetric, algorithm)
    would mean anything here. ``nvfp4``: groups of 16 with an FP8 (E4M3) scale each and one
    FP32 global scale per tensor; W4A4 measures the activations' global scales on calibration
    text. ``mxfp4``: the OCP MX format, groups of 32 with a power-of-two (E8M0) scale, no
    calibration. ``weights_only`` keeps activations in 16 bits (W4A16: NVFP4A16, MXFP4A16).
    """

    kind: Literal["fp4"]
    format: Literal["nvfp4", "mxfp4"] = Field(
        default="nvfp4", description="nvfp4: groups of 16, FP8 scales and a per-tensor global scale (NVIDIA "
        "Blackwell); mxfp4: groups of 32, power-of-two scales (OCP MX)")
    weights_only: bool = Field(
        default=False, description="quantize weights only and keep activations in 16 bits (W4A16); false: W4A4 "
        "(nvfp4 then calibrates the activations' global scales)")
    ignore: list[str] = ignore_field()
    kv_cache: Literal["fp8"] | None = kv_cache_field()


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
    ignore: list[str] = ignore_field()
    kv_cache: Literal["fp8"] | None = kv_cache_field()

    @model_validator(mode="after")
    def _kv_cache_scheme(self) -> "Int8Method":
        if self.kv_cache is not None and self.scheme == "llm-int8":
            raise ValueError("kv_cache works only with the llm-compressor scheme w8a8; llm-int8 (bitsandbytes) "
                             "cannot quantize the KV cache: remove kv_cache or use scheme: w8a8")
        return self


class Int4Method(Strict):
    """Low-bit weight-only quantization (W4A16 by default).

    ``gptq``, ``awq``, ``rtn``, ``autoround``: llm-compressor into compressed-tensors. ``gptq-hf``:
    GPTQModel into the Hugging Face GPTQ format. ``nf4``: bitsandbytes NF4. ``bits`` below 4
    exists to measure how a method degrades; serving engines expect 4.
    """

    kind: Literal["int4"]
    algorithm: Literal["gptq", "awq", "rtn", "autoround", "gptq-hf", "nf4"] = "gptq"
    bits: Literal[2, 3, 4, 8] = 4
    group_size: int | None = Field(
        default=128, description="columns per quantization group; null or -1 for per-channel"
    )
    symmetric: bool = True
    dampening_frac: Fraction = Field(default=0.01, description="gptq, gptq-hf: GPTQ's dampening fraction")
    act_order: bool = Field(
        default=False, description="gptq, gptq-hf: GPTQ's activation order (llm-compressor actorder=group, "
        "GPTQModel desc_act)")
    iterations: PositiveInt | None = Field(
        default=None, description="autoround only: sign-gradient steps per decoder layer that tune the rounding "
        "and clipping (AutoRound's iters; 200 by default; ignored by the other algorithms)")
    double_quant: bool | None = Field(
        default=None, description="nf4 only: quantize the block scales too (bitsandbytes' double quantization; "
        "on by default for nf4; ignored by the other algorithms)")
    ignore: list[str] = ignore_field()
    int8_layers: list[str] = Field(
        default_factory=list, description="layers quantized to 8 bits (weights only, one scale per output channel) "
        "instead of `bits`: a mixed-precision artifact (compressed-tensors config groups, which vLLM and "
        "transformers read). Exact module names or 're:PATTERN'. `compress search` fills it in")
    kv_cache: Literal["fp8"] | None = kv_cache_field()

    @model_serializer(mode="wrap")
    def _stable_dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Without 8-bit layers the key is left out, so every recipe written before it existed
        # keeps its content hash (and its cached artifacts and reports).
        data = handler(self)
        if not data.get("int8_layers"):
            data.pop("int8_layers", None)
        if data.get("iterations") is None:  # autoround's alone, likewise
            data.pop("iterations", None)
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
        if self.algorithm == "autoround":
            if self.bits == 8:
                raise ValueError("autoround here takes bits 2, 3 or 4: for 8 bits use algorithm gptq or rtn")
            if self.iterations is None:
                self.iterations = 200
        elif self.iterations is not None:
            raise ValueError(f"iterations is autoround's setting; {self.algorithm} has none: remove it or use "
                             f"algorithm: autoround")
        if self.int8_layers and self.algorithm in ("nf4", "gptq-hf"):
            # GPTQModel can write 8-bit layers into the HF GPTQ format (its per-module `dynamic`
            # config), but transformers' GPTQ loader ignores that config and reads them as `bits`.
            why = ("has one format for every layer" if self.algorithm == "nf4" else
                   "artifacts with per-layer bits load wrongly in transformers (its GPTQ loader ignores "
                   "GPTQModel's per-module config)")
            raise ValueError(f"{self.algorithm} {why}: remove int8_layers, or use algorithm gptq, awq, rtn or "
                             f"autoround (compressed-tensors) for mixed precision")
        if self.int8_layers and self.bits == 8:
            raise ValueError("int8_layers means nothing at bits 8: remove it")
        if self.kv_cache is not None and self.algorithm in ("gptq-hf", "nf4"):
            raise ValueError(f"kv_cache works only with the llm-compressor algorithms gptq, awq, rtn and autoround; "
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


class GgufMethod(Strict):
    """GGUF for llama.cpp: the checkpoint converted by llama.cpp's converter and quantized by llama.cpp's own
    quantizer (`make llamacpp` installs both), k-quants with an importance matrix from the calibration text; or,
    with `algorithm: autoround`, the k-quants' rounding tuned by AutoRound and written by auto-round's own GGUF
    export. Served and evaluated by llama.cpp's server (engine: llamacpp)."""

    kind: Literal["gguf"]
    type: Literal["q4_k_m", "q5_k_m", "q8_0", "f16"] = Field(
        default="q4_k_m", description="llama.cpp's type: q4_k_m and q5_k_m (k-quants, a few tensors at 6 bits), "
        "q8_0 (8-bit), f16 (no quantization)")
    algorithm: Literal["llamacpp", "autoround"] = Field(
        default="llamacpp", description="who rounds the weights: llamacpp (llama-quantize, with the importance "
        "matrix); autoround (q4_k_m and q5_k_m only: AutoRound tunes the rounding per decoder layer on the "
        "calibration text, auto-round writes the GGUF)")
    imatrix: bool | None = Field(
        default=None, description="llamacpp k-quants: weight the rounding by an importance matrix llama-imatrix "
        "computes on the calibration text (true by default; q8_0 and f16 take none; autoround has none)")
    iterations: PositiveInt | None = Field(
        default=None, description="autoround only: sign-gradient steps per decoder layer that tune the rounding "
        "(AutoRound's iters; 200 by default)")

    @model_serializer(mode="wrap")
    def _stable_dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # llama.cpp's path leaves out the keys it has no use for, so every recipe written before they existed
        # keeps its content hash (and its cached artifacts and reports); autoround's leaves out imatrix.
        data = handler(self)
        for key in ("algorithm", "iterations") if self.algorithm == "llamacpp" else ("imatrix",):
            data.pop(key, None)
        return data

    @model_validator(mode="after")
    def _algorithm_limits(self) -> "GgufMethod":
        if self.algorithm == "autoround":
            if self.type not in ("q4_k_m", "q5_k_m"):
                raise ValueError(f"autoround here makes the k-quants q4_k_m and q5_k_m: for {self.type} use "
                                 f"algorithm: llamacpp")
            if self.imatrix is not None:
                raise ValueError("imatrix is llama.cpp's importance matrix; autoround tunes on the calibration "
                                 "text itself: remove imatrix, or use algorithm: llamacpp")
            if self.iterations is None:
                self.iterations = 200
        else:
            if self.iterations is not None:
                raise ValueError("iterations is autoround's setting; llamacpp has none: remove it or use "
                                 "algorithm: autoround")
            if self.imatrix is None:
                self.imatrix = True
        return self


class NoneMethod(Strict):
    """No change to the weights: the candidate is the base model itself, served with the recipe's `serve`
    settings (against the baseline's `baseline_serve`), so that a runtime change (prefix caching, a larger batch
    budget, a draft model) is built, measured, gated and exported like a model change. The artifact holds the
    base model's files unchanged (hard links where the file system allows, else copies)."""

    kind: Literal["none"]


Method = Annotated[Union[Fp8Method, Fp4Method, Int8Method, Int4Method, GgufMethod, DistillMethod, NoneMethod],
                   Field(discriminator="kind")]
METHOD_KINDS = ["fp8", "fp4", "int8", "int4", "gguf", "distill", "none"]


