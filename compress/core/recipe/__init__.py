"""Recipes: the YAML files that say what to compress, how, and what it must still do.

A recipe is validated by the pydantic models of this package, one module per group of sections
(``model``: model, calibration and method; ``evals``: evals and bench; ``gate``: gate, export and
search; ``serve``: the serving settings of each side; ``load``: the whole recipe, its loading and its
overrides). Unknown keys are errors, the method is chosen by its ``kind`` discriminator, and every
problem is reported at once with its path and line in the YAML file. Command-line overrides (``--set method.group_size=64``) are applied to the
raw document before validation, and the effective recipe is what every artifact records.

This package imports no torch: ``compress recipes validate`` must stay fast.
"""
from compress.core.errors import RecipeError
from compress.core.recipe.base import (
    Fraction,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    Strict,
)
from compress.core.recipe.evals import (
    TRAFFIC_CHECK_KINDS,
    BenchSpec,
    EvalSpec,
    GoodputSpec,
    Lengths,
    SloSpec,
    WorkloadSpec,
    TrafficCheck,
    TrafficSpec,
)
from compress.core.recipe.gate import (
    EFFICIENCY_METRICS,
    FLIPS,
    MEASURED_ONCE,
    TRAFFIC_FIDELITY,
    CascadeGate,
    ExportSpec,
    GateCheck,
    GateSpec,
    MixedSpec,
    SearchSpec,
    ServableSpec,
    metric_family,
)
from compress.core.recipe.load import (
    Recipe,
    apply_overrides,
    build_recipe,
    dump_recipe,
    load_recipe,
    parse_override,
    read_document,
    validate_document,
)
from compress.core.recipe.model import (
    DEFAULT_IGNORE,
    METHOD_KINDS,
    CalibrationSpec,
    DistillMethod,
    Fp4Method,
    Fp8Method,
    GgufMethod,
    Int4Method,
    Int8Method,
    LossSpec,
    Method,
    ModelSpec,
    NoneMethod,
    StudentSpec,
    TrainingSpec,
)
from compress.core.recipe.serve import SERVE_FLAGS, ServeSpec

__all__ = [
    "Fraction", "NonNegInt", "PositiveFloat", "PositiveInt", "Strict", "CalibrationSpec",
    "DEFAULT_IGNORE", "DistillMethod", "Fp4Method", "Fp8Method", "GgufMethod", "Int4Method", "Int8Method", "LossSpec",
    "METHOD_KINDS", "Method", "ModelSpec", "NoneMethod", "StudentSpec", "TrainingSpec", "BenchSpec", "EvalSpec",
    "SloSpec", "GoodputSpec", "Lengths", "WorkloadSpec", "TRAFFIC_CHECK_KINDS", "TrafficCheck", "TrafficSpec", "CascadeGate", "EFFICIENCY_METRICS",
    "FLIPS", "TRAFFIC_FIDELITY", "metric_family", "ExportSpec", "GateCheck", "GateSpec",
    "MEASURED_ONCE", "MixedSpec", "SearchSpec", "ServableSpec", "Recipe", "apply_overrides",
    "build_recipe", "dump_recipe", "load_recipe", "parse_override", "read_document",
    "validate_document", "RecipeError", "SERVE_FLAGS", "ServeSpec",
]
