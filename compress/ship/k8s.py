"""Manifests for the engine that scales the fleet ``compress plan`` simulated: a Deployment that runs
``vllm serve`` on the export with the serving settings it passed its gate with, and a KEDA ScaledObject that
scales it on vLLM's queue (``vllm:num_requests_waiting`` and ``vllm:num_requests_running``, a Prometheus
trigger) with the target, bounds and delays the simulation chose.

Both are checked against schemas shipped as package data (``compress/assets/k8s/``, written by
``scripts/k8s_schemas.py``): the apps/v1 Deployment schema of kubernetes-json-schema in its strict form
(unknown fields are errors, as ``kubectl apply --validate=strict`` makes them), and the openAPIV3Schema of
KEDA's ScaledObject CRD, made strict the same way when it is loaded, with the two rules its schema cannot say:
the CRD's own CEL rule (minReplicaCount <= maxReplicaCount) and the fields KEDA's Prometheus scaler requires
(serverAddress, query and a numeric threshold).
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import yaml

from compress.core.errors import UsageError

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "k8s"
SCHEMA_FILES = {"Deployment": "deployment-apps-v1.json", "ScaledObject": "keda-scaledobject-v1alpha1.json"}
DEFAULT_IMAGE = "vllm/vllm-openai:v0.32.0"  # the vLLM release compress measures with (Makefile VLLM_VERSION)
DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"
PORT = 8000


def _strict(node: Any) -> Any:
    """An OpenAPI structural schema as JSON Schema that rejects unknown fields: every object that lists its
    properties, and neither allows more nor preserves unknown fields, gets ``additionalProperties: false``."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out and \
            not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def schema(kind: str) -> dict[str, Any]:
    """The shipped schema of ``Deployment`` or ``ScaledObject`` (the latter made strict)."""
    data = json.loads((ASSETS / SCHEMA_FILES[kind]).read_text())
    return _strict(data) if kind == "ScaledObject" else data


def validate(doc: dict[str, Any]) -> list[str]:
    """What is wrong with one manifest against its shipped schema ([] when it validates), each as
    ``KIND path: message``."""
    from jsonschema import Draft202012Validator

    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind not in SCHEMA_FILES:
        return [f"kind {kind!r}: not one of {', '.join(SCHEMA_FILES)}"]
    validator = Draft202012Validator(schema(kind))
    problems = [f"{kind} {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]
    if kind == "ScaledObject" and not problems:
        problems += _keda_rules(doc)
    return problems


def _keda_rules(doc: dict[str, Any]) -> list[str]:
    spec = doc["spec"]
    problems = []
    low, high = spec.get("minReplicaCount"), spec.get("maxReplicaCount", 100)
    if low is not None and low > high:
        problems.append("ScaledObject spec: minReplicaCount must be less than or equal to maxReplicaCount")
    for i, trigger in enumerate(spec["triggers"]):
        if trigger["type"] != "prometheus":
            continue
        meta = trigger["metadata"]
        for key in ("serverAddress", "query", "threshold"):
            if not meta.get(key):
                problems.append(f"ScaledObject spec/triggers/{i}/metadata: the prometheus scaler needs {key}")
        try:
            float(meta.get("threshold", "0"))
        except ValueError:
            problems.append(f"ScaledObject spec/triggers/{i}/metadata/threshold: {meta['threshold']!r} is not a number")
    return problems


def _origin(service: Any) -> tuple[str, list[str], dict[str, Any]]:
    """The served model's name, the vLLM flags it passed with and the benchmark's settings."""
    import re

    from compress.core.artifact import MANIFEST, read_json
    from compress.core.recipe import ServeSpec
    from compress.ship.export import served_with

    report, origin = getattr(service, "report", None), getattr(service, "origin", None)
    if report is None or origin is None:
        raise UsageError("--emit-k8s needs the model it serves: give a run directory or an export, not a synthetic "
                         "service or a bare report", hint="e.g. compress plan dist/NAME --rate 5 --emit-k8s k8s/")
    manifest = read_json(origin / MANIFEST) if (origin / MANIFEST).is_file() else {}
    settings = manifest.get("serve") or (served_with(None, report) if hasattr(report, "baseline") else {})
    side = getattr(service, "side", "candidate")
    flags = ServeSpec.model_validate(settings[side]).engine_args() if settings.get(side) else []
    name = manifest.get("name") or (origin.parent.name if (origin / "reports").is_dir() else origin.name)
    # A Kubernetes name (a DNS-1123 label); it names objects and a path inside the container, never a local file.
    label = re.sub(r"[^a-z0-9-]+", "-", str(name).lower()).strip("-")[:63].strip("-") or "model"
    return label, flags, dict(report.settings)


def manifests(service: Any, result: dict[str, Any], *, image: str = DEFAULT_IMAGE,
              prometheus: str = DEFAULT_PROMETHEUS, gpus: int | None = None) -> list[dict[str, Any]]:
    """The Deployment and the ScaledObject for a plan's chosen queue-depth policy.

    Raises:
        UsageError: a plan without a queue-depth policy, or a service with no model behind it.
    """
    chosen = result.get("chosen")
    if not chosen:
        raise UsageError("--emit-k8s writes a queue-depth autoscaler, and no queue-depth policy was simulated",
                         hint="add queue-depth to --policy")
    name, flags, settings = _origin(service)
    n = service.concurrency
    tp = int(settings.get("tensor_parallel") or 1)
    args = [f"/models/{name}", "--served-model-name", name, "--port", str(PORT)]
    if "--max-num-seqs" not in flags:
        args += ["--max-num-seqs", str(n)]  # the simulated replica serves at most this many at once
    if tp > 1:
        args += ["--tensor-parallel-size", str(tp)]
    args += flags
    gpu = tp if gpus is None else gpus
    st = result["settings"]
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "compress"}
    # A replica that scales down finishes what it serves (the simulation's draining): the grace period covers
    # the slowest measured request at full occupancy, twice over.
    slowest = max((lv["p99_s"] for lv in result["service"].get("levels", {}).values()), default=60.0)
    container = {
        "name": "vllm", "image": image, "command": ["vllm", "serve"], "args": args,
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5},
        "startupProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10,
                         "failureThreshold": max(30, math.ceil(3 * st["cold_start_s"] / 10))},
        "resources": {"limits": {"nvidia.com/gpu": str(gpu)}} if gpu else {},
        "volumeMounts": [{"name": "model", "mountPath": f"/models/{name}", "readOnly": True}]}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": chosen["min_replicas"], "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                 "template": {"metadata": {"labels": dict(labels), "annotations": {
                "prometheus.io/scrape": "true", "prometheus.io/port": str(PORT), "prometheus.io/path": "/metrics"}},
            "spec": {"terminationGracePeriodSeconds": max(30, math.ceil(2 * slowest)), "containers": [container],
                     "volumes": [{"name": "model", "persistentVolumeClaim": {"claimName": f"{name}-model",
                                                                               "readOnly": True}}]}}}}
    window = f"{int(st['interval_s'])}s"
    selector = f'{{model_name="{name}"}}'
    waiting = f"sum(avg_over_time(vllm:num_requests_waiting{selector}[{window}]))"
    # In-system: a full batch per replica plus the target waiting (the threshold the simulation used).
    query = waiting if chosen["metric"] == "waiting" else \
        f"{waiting} + sum(avg_over_time(vllm:num_requests_running{selector}[{window}]))"
    threshold = chosen["threshold"]
    down: dict[str, Any] = {"stabilizationWindowSeconds": int(st["scale_down_delay_s"])}
    if st.get("scale_down_pods"):
        down["policies"] = [{"type": "Pods", "value": int(st["scale_down_pods"]),
                             "periodSeconds": int(st["scale_down_period_s"])}]
    scaled = {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "scaleTargetRef": {"name": name}, "pollingInterval": int(st["interval_s"]),
            "minReplicaCount": chosen["min_replicas"], "maxReplicaCount": chosen["max_replicas"],
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                "scaleUp": {"stabilizationWindowSeconds": int(st["scale_up_delay_s"])}, "scaleDown": down}}},
            "triggers": [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
                "serverAddress": prometheus, "query": query, "threshold": f"{threshold:g}"}}]}}
    return [deployment, scaled]


def write_manifests(folder: Path, docs: list[dict[str, Any]]) -> list[Path]:
    """Validate the manifests, then write each as YAML (``deployment.yaml``, ``scaledobject.yaml``).

    Raises:
        UsageError: a manifest that does not validate (every problem listed).
    """
    problems = [p for doc in docs for p in validate(doc)]
    if problems:
        raise UsageError("the manifests do not validate: " + "; ".join(problems),
                         hint="report this as a bug in compress plan --emit-k8s")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for doc in docs:
        path = folder / f"{doc['kind'].lower()}.yaml"
        path.write_text("# Written by compress plan --emit-k8s.\n" + yaml.safe_dump(doc, sort_keys=False))
        paths.append(path)
    return paths
