"""Extract one version's openAPIV3Schema from a CustomResourceDefinition YAML as compact JSON.

tests/test_helm.py validates the chart's RayService and ServiceMonitor against these
schemas offline (the core Kubernetes schemas of kubernetes-validate do not cover CRDs).
Descriptions are dropped: they are most of a CRD's bytes and validation ignores them.

    python helm/tools/crd_schema.py CRD.yaml VERSION SOURCE > helm/schemas/NAME.json

SOURCE is recorded in the output's "$comment" (repository, path, release).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _strip(value) for key, value in node.items() if key != "description"}
    if isinstance(node, list):
        return [_strip(value) for value in node]
    return node


def extract(crd: dict[str, Any], version: str, source: str) -> dict[str, Any]:
    names = crd["spec"]["names"]
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema = _strip(entry["schema"]["openAPIV3Schema"])
            comment = f"{crd['spec']['group']}/{version} {names['kind']} from {source}"
            return {"$comment": comment, **schema}
    raise SystemExit(f"{names['kind']} has no version {version!r}")


if __name__ == "__main__":
    path, version, source = sys.argv[1:4]
    with open(path) as file:
        crd = yaml.safe_load(file)
    json.dump(extract(crd, version, source), sys.stdout, sort_keys=True, separators=(",", ":"))
    sys.stdout.write("\n")
