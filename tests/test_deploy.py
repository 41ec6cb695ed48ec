"""The packaged container and the Kubernetes / KServe manifests, checked offline.

hadolint lints Dockerfile.gpu; `kubectl kustomize` renders each overlay and kubernetes-validate checks every
resource against the Kubernetes 1.37 schema (strict: unknown fields fail). KServe's CRDs have no published
schema in any package we can install, so their manifests are checked structurally: KServe's own field names
per object (from its v1alpha1/v1beta1 API types), and every embedded container through the Kubernetes
Container schema. The tools come with the test extra; the container build itself is deploy/build-and-smoke.sh.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from skewless.server.frontend.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.gpu"
K8S = ROOT / "deploy" / "kubernetes"
KSERVE = ROOT / "deploy" / "kserve"
OVERLAYS = ("cpu", "gpu", "cpu-s3")
K8S_VERSION = "1.37.0"
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: it comes with the test extra (pip install -e '.[cpu,test]')")
    return path


def _validate(doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# -- Dockerfile.gpu ------------------------------------------------------------------------------------------
def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _final_stage() -> list[tuple[str, str]]:
    ins = _instructions()
    starts = [i for i, (word, _) in enumerate(ins) if word == "FROM"]
    return ins[starts[-1]:]


def _entrypoint() -> list[str]:
    return json.loads(next(rest for word, rest in _final_stage() if word == "ENTRYPOINT"))


def test_dockerfile_final_stage_contract():
    final = _final_stage()
    words = {word: rest for word, rest in final}
    args = {rest.split("=", 1)[0] for word, rest in _instructions() if word == "ARG"}
    assert {"BASE_IMAGE", "VARIANT"} <= args
    # Exec form, so the server is PID 1 and gets SIGTERM itself (no shell in between to swallow it).
    assert _entrypoint() == ["skewless", "serve", "--host", "0.0.0.0", "--model-repository", "/models"]
    assert sorted(int(p) for p in words["EXPOSE"].split()) == sorted(PORTS.values())
    uid = words["USER"].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user, which runAsNonRoot can verify"
    assert "/v2/health/ready" in words["HEALTHCHECK"] and "8002" in words["HEALTHCHECK"]
    assert '"/models"' in words["VOLUME"]
    assert not any(word == "COPY" and "--from=builder" not in rest for word, rest in final), \
        "the final stage takes only the built environment from the builder"


# -- plain Kubernetes ----------------------------------------------------------------------------------------
def _render(overlay: str) -> list[dict[str, Any]]:
    proc = subprocess.run([_tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str = "skewless") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, _render(request.param)


def test_overlay_resources_validate_against_kubernetes_schema(rendered):
    _, docs = rendered
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for doc in docs:
        _validate(doc)


def test_monitoring_manifests_validate_and_name_a_real_metric():
    for path in sorted((K8S / "monitoring").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            _validate(doc)
    adapter = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-rules.yaml").read_text())
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    served = {r["name"]["as"] for r in rules}
    hpa = yaml.safe_load((K8S / "base" / "hpa.yaml").read_text())
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted and wanted <= served, "the HPA asks for a metric the adapter rules do not serve"
    source = (ROOT / "server" / "telemetry" / "metrics.py").read_text()
    for name in wanted:
        assert f'"{name}"' in source, f"{name} is not a metric the server exports"


def test_deployment_drains_within_the_termination_grace_period(rendered):
    _, docs = rendered
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = build_parser().parse_args(_entrypoint()[1:] + container["args"])  # the image's CLI accepts them
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    # preStop runs first, then SIGTERM gives in-flight requests --grace-period; models unload after that.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + args.grace_period + 5
    overlay, _ = rendered
    assert args.host == "0.0.0.0"
    assert args.model_repository == ("s3://models/skewless" if overlay == "cpu-s3" else "/models")


def test_deployment_ports_probes_and_selectors_agree(rendered):
    overlay, docs = rendered
    deploy = _one(docs, "Deployment")
    pod = deploy["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == PORTS
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live"),
                        ("startupProbe", "/v2/health/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}
    labels = pod["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert svc["spec"]["selector"].items() <= labels.items()
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports
            # Named for meshes: grpc-* / http-* and the standard appProtocol field.
            assert port["appProtocol"] == ("grpc" if port["targetPort"] == "grpc" else "http")
            assert port["name"].startswith(port["appProtocol"])
    assert _one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = _one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deploy["metadata"]["name"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["models"] == "/models"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    limits = container["resources"].get("limits", {})
    assert ("nvidia.com/gpu" in limits) == (overlay == "gpu")
    assert container["image"].endswith("-gpu" if overlay == "gpu" else "-cpu")


def test_models_from_registry_syncs_from_the_object_store():
    deploy = _one(_render("cpu-s3"), "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in deploy["volumes"]}
    assert "persistentVolumeClaim" not in volumes["models"] and "emptyDir" in volumes["registry-cache"]
    (container,) = deploy["containers"]
    args = build_parser().parse_args(_entrypoint()[1:] + container["args"])  # the last --model-repository wins
    assert args.model_repository.startswith("s3://") and args.model_control_mode == "poll"
    assert args.grace_period == 30 and args.registry_cache == "/cache"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["registry-cache"]["mountPath"] == "/cache" and not mounts["registry-cache"].get("readOnly")
    assert container["envFrom"] == [{"secretRef": {"name": "skewless-s3"}}]
    assert "initContainers" not in deploy


# -- KServe --------------------------------------------------------------------------------------------------
# Field names of KServe's API objects (serving.kserve.io v1alpha1 ServingRuntimeSpec and SupportedModelFormat,
# v1beta1 InferenceServiceSpec, PredictorSpec and ModelSpec), as its generated Python SDK lists them.
SERVING_RUNTIME_SPEC = {
    "affinity", "annotations", "builtInAdapter", "containers", "disabled", "grpcDataEndpoint", "grpcEndpoint",
    "hostIPC", "httpDataEndpoint", "imagePullSecrets", "labels", "multiModel", "nodeSelector",
    "protocolVersions", "replicas", "resourceClaims", "schedulerName", "storageHelper", "supportedModelFormats",
    "tolerations", "volumes", "workerSpec",
}
SUPPORTED_MODEL_FORMAT = {"autoSelect", "name", "priority", "version"}
INFERENCE_SERVICE_SPEC = {"canary", "explainer", "predictor", "tracing", "transformer"}
# PredictorSpec: a PodSpec plus KServe's component fields (only those checked here are listed separately).
PREDICTOR_OWN = {"model", "minReplicas", "maxReplicas", "scaleMetric", "scaleMetricType", "scaleTarget",
                 "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher", "labels",
                 "annotations", "deploymentStrategy", "workerSpec", "storageUris"}
# ModelSpec: a Container plus these.
MODEL_OWN = {"modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage"}
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}


def _validate_container(container: dict[str, Any]) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {"containers": [{"name": "check", **container}]}}
    _validate(pod)


def _kserve(name: str) -> dict[str, Any]:
    return yaml.safe_load((KSERVE / name).read_text())


@pytest.mark.parametrize("name", ["cluster-serving-runtime.yaml", "serving-runtime.yaml"])
def test_serving_runtime_is_structurally_valid(name):
    doc = _kserve(name)
    assert doc["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert doc["kind"] == ("ClusterServingRuntime" if name.startswith("cluster") else "ServingRuntime")
    spec = doc["spec"]
    assert set(spec) <= SERVING_RUNTIME_SPEC, set(spec) - SERVING_RUNTIME_SPEC
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"]) <= PROTOCOLS
    for fmt in spec["supportedModelFormats"]:
        assert set(fmt) <= SUPPORTED_MODEL_FORMAT
    assert "onnx" in {f["name"] for f in spec["supportedModelFormats"]}
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"  # the container KServe merges the model's fields into
    _validate_container(container)
    args = build_parser().parse_args(container["command"][1:] + container["args"])
    assert (args.model_repository, args.http_port, args.grpc_port) == ("/mnt/models", 8080, 9000)
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(args.metrics_port)
    # KServe's pods keep Kubernetes' default 30 s termination grace: the drain must end well within it.
    assert args.grace_period + 5 <= 30


def test_cluster_and_namespaced_runtimes_match():
    assert _kserve("cluster-serving-runtime.yaml")["spec"] == _kserve("serving-runtime.yaml")["spec"]


@pytest.mark.parametrize("name", ["inference-service.yaml", "inference-service-grpc-gpu.yaml"])
def test_inference_service_is_structurally_valid(name):
    doc = _kserve(name)
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert set(doc["spec"]) <= INFERENCE_SERVICE_SPEC
    predictor = dict(doc["spec"]["predictor"])
    model = predictor.pop("model")
    # What is not KServe's own is a PodSpec: check it with the Kubernetes schema.
    pod_spec = {k: v for k, v in predictor.items() if k not in PREDICTOR_OWN}
    _validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
               "spec": {"containers": [{"name": "check", "image": "check"}], **pod_spec}})
    assert model["runtime"] == _kserve("cluster-serving-runtime.yaml")["metadata"]["name"]
    assert model["modelFormat"]["name"] == "onnx"
    assert model["protocolVersion"] in PROTOCOLS
    assert re.match(r"^(s3|gs|https?|pvc|hf|oci)://", model["storageUri"])
    _validate_container({k: v for k, v in model.items() if k not in MODEL_OWN})
    if model["protocolVersion"].startswith("grpc"):
        assert {"name": "h2c", "containerPort": 9000, "protocol": "TCP"} in model["ports"]
