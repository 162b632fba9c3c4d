"""The whole recipe, and how a file becomes one: YAML with lines, overrides, every problem at once."""
from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, ValidationError, model_serializer, model_validator

from compress.core.errors import RecipeError, UsageError
from compress.core.recipe.base import Strict
from compress.core.recipe.evals import BenchSpec, EvalSpec
from compress.core.recipe.gate import ExportSpec, GateSpec, SearchSpec
from compress.core.recipe.model import (
    METHOD_KINDS,
    CalibrationSpec,
    DistillMethod,
    Fp4Method,
    Fp8Method,
    GgufMethod,
    Int4Method,
    Int8Method,
    Method,
    ModelSpec,
    NoneMethod,
)
from compress.core.recipe.serve import ServeSpec

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
    serve: ServeSpec | None = Field(
        default=None, description="the candidate's serving settings (vLLM flags; needs bench.engine: vllm)")
    baseline_serve: ServeSpec | None = Field(
        default=None, description="the baseline's serving settings (vLLM flags; needs bench.engine: vllm)")

    @model_serializer(mode="wrap")
    def _stable_dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Without serving settings the keys are left out, so every recipe written before they existed keeps
        # its content hash (and its cached artifacts and reports).
        data = handler(self)
        for key in ("serve", "baseline_serve"):
            if key in data and data[key] is None:
                del data[key]
        return data

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

    @model_validator(mode="after")
    def _traffic_checks_have_traffic(self) -> "Recipe":
        from compress.core.recipe.gate import metric_family

        traffic = self.evals.traffic
        names = {c.name for c in traffic.checks} if traffic else set()
        for check in self.gate.checks:
            family = metric_family(check.metric)
            if family in ("fidelity", "behaviour") and traffic is None:
                raise ValueError(f"gate check '{check.metric}' needs evals.traffic (a file of requests)")
            if family == "behaviour" and check.metric.removeprefix("traffic/") not in names:
                known = ", ".join(f"traffic/{n}" for n in sorted(names)) or "none"
                raise ValueError(f"gate check '{check.metric}' names no check of evals.traffic.checks "
                                 f"(defined: {known}; fidelity: traffic/kl, traffic/top1, traffic/nll_increase, "
                                 f"traffic/acceptance, traffic/greedy_match)")
        return self

    @model_validator(mode="after")
    def _goodput_checks_have_a_search(self) -> "Recipe":
        for check in self.gate.checks:
            if check.metric in ("goodput_speedup", "cost_at_goodput") and self.bench.goodput is None:
                raise ValueError(f"gate check '{check.metric}' needs bench.goodput (with bench.arrival and bench.slo), "
                                 "e.g. bench: {arrival: poisson, slo: {ttft_ms: 2000}, goodput: {attainment: 0.95}}")
        return self

    @model_validator(mode="after")
    def _serving_settings(self) -> "Recipe":
        for key in ("serve", "baseline_serve"):
            spec = getattr(self, key)
            if spec is not None and spec.is_empty():
                setattr(self, key, None)  # an empty section is the defaults: the same recipe as none
        if (self.serve or self.baseline_serve) is not None and self.bench.engine != "vllm":
            raise ValueError("serving settings are vLLM's: set bench.engine: vllm (or remove serve and "
                             "baseline_serve)")
        if self.method.kind == "none":
            flags = [(s or ServeSpec()).engine_args() for s in (self.serve, self.baseline_serve)]
            if flags[0] == flags[1]:
                raise ValueError("method kind none makes the candidate the base model itself: give it serving "
                                 "settings (serve) that differ from the baseline's (baseline_serve)")
        return self

    @model_validator(mode="after")
    def _gguf_engine(self) -> "Recipe":
        from compress.core.recipe.gate import metric_family

        served = [c.metric for c in self.gate.checks
                  if metric_family(c.metric) == "efficiency" and c.metric != "size_ratio"]
        if self.method.kind == "gguf" and served and self.bench.engine != "llamacpp":
            raise ValueError(f"a GGUF artifact is served by llama.cpp: set bench.engine: llamacpp (for "
                             f"{', '.join(served)})")
        if self.method.kind == "gguf" and self.gate.servable is not None and self.gate.servable.engine != "llamacpp":
            raise ValueError("a GGUF artifact is served by llama.cpp: set gate.servable.engine: llamacpp")
        return self

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


_METHOD_CLASSES = {"fp8": Fp8Method, "fp4": Fp4Method, "int8": Int8Method, "int4": Int4Method, "gguf": GgufMethod,
                   "distill": DistillMethod, "none": NoneMethod}


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
