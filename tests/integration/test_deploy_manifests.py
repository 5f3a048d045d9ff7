"""deploy/: every Kustomize overlay renders, validates offline against a pinned Kubernetes, and
agrees with the gateway it deploys (settings, metrics, probes, ports, shutdown timing)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.grpc_server import STOP_GRACE_S
from service.repository.config import read_config
from service.routing.config import read_routing_file
from service.settings import Settings
from service.tokens import ADMIN, FEATURES_WRITE, Tokens
from tests.conftest import MODELS_DIR, GatewayProcess, start_gateway
from tests.integration.deploy_support import (
    DEPLOY,
    DOCKERFILE,
    KUBECTL,
    OVERLAYS,
    image,
    objects,
    one,
    rendered,
)

KUBERNETES_VERSION = "1.32.0"
SETTINGS = {f"MLGATE_{name.upper()}" for name in Settings.model_fields}
METRIC = re.compile(r"\bmlgate_[a-z_]+\b")

# The custom resources kubernetes-validate has no schema for: the required fields and the
# fields these manifests use, after the CRDs of prometheus-operator (monitoring.coreos.com/v1)
# and KEDA (keda.sh/v1alpha1); unknown fields are refused, as the API server's pruning would
# drop them silently.
DURATION = {"type": "string", "pattern": r"^(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$"}
LABEL_SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
    "additionalProperties": False,
}
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["selector"],
                "additionalProperties": False,
                "properties": {
                    "selector": LABEL_SELECTOR,
                    "endpoints": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": DURATION,
                            },
                        },
                    },
                },
            }
        },
    },
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}},
                        "additionalProperties": False,
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "additionalProperties": False,
                            "properties": {
                                "type": {"type": "string"},
                                "metadata": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            }
        },
    },
}


def containers(overlay: str) -> Iterator[dict[str, Any]]:
    """Every container and init container of every pod template the overlay renders."""
    for doc in rendered(overlay):
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        yield from pod.get("initContainers", [])
        yield from pod.get("containers", [])


def gateway_container(overlay: str) -> dict[str, Any]:
    (found,) = one(overlay, "Deployment", "mlgate")["spec"]["template"]["spec"]["containers"]
    return found


def gateway_env(overlay: str) -> dict[str, str]:
    """The gateway's MLGATE_* variables: the image's, then the Deployment's over them."""
    env = {k: v for k, v in image().env.items() if k.startswith("MLGATE_")}
    return env | {e["name"]: e["value"] for e in gateway_container(overlay)["env"]}


def autoscaling_metrics(overlay: str) -> set[str]:
    """The metric names the overlay's autoscaling config and the adapter rules name."""
    texts = [str(spec["metric"]["name"]) for spec in _pod_metrics(overlay)]
    for scaled in objects(overlay, "ScaledObject"):
        texts += [trigger["metadata"]["query"] for trigger in scaled["spec"]["triggers"]]
    texts.append((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    return {name for text in texts for name in METRIC.findall(text)}


def _pod_metrics(overlay: str) -> list[dict[str, Any]]:
    found = []
    for hpa in objects(overlay, "HorizontalPodAutoscaler"):
        found += [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_for_the_pinned_kubernetes(overlay: str) -> None:
    problems = []
    for doc in rendered(overlay):
        where = f"{overlay}: {doc['kind']} {doc['metadata']['name']}"
        schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        try:
            if schema is not None:
                jsonschema.validate(doc, schema)
            else:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            problems.append(f"{where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no schema for {doc['apiVersion']}")
    assert not problems, "\n".join(problems)


def test_every_overlay_is_rendered_and_each_has_one_autoscaler() -> None:
    assert {"cpu", "gpu", "keda"} <= set(OVERLAYS)
    for overlay in OVERLAYS:
        kinds = [doc["kind"] for doc in rendered(overlay)]
        assert kinds.count("HorizontalPodAutoscaler") + kinds.count("ScaledObject") == 1, overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_pinned_to_a_tag(overlay: str) -> None:
    images = [c["image"] for c in containers(overlay)]
    assert all(re.fullmatch(r"[^:]+:[\w.-]+", name) for name in images), images


def test_every_mlgate_variable_in_the_manifests_and_the_dockerfile_is_a_setting() -> None:
    named = {name for name in image().env if name.startswith("MLGATE_")}
    for overlay in OVERLAYS:
        for container in containers(overlay):
            named |= {e["name"] for e in container.get("env", []) if e["name"].startswith("MLGATE")}
    assert named, "no MLGATE_* variable found"
    assert named <= SETTINGS, sorted(named - SETTINGS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_environment_is_valid_settings(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in gateway_env(overlay).items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    # Policy shared through the feature store's Redis Cluster, named by its Service.
    assert settings.shared_policy_store == settings.feature_store
    host = urlsplit(settings.feature_store).hostname
    assert one(overlay, "Service", str(host))["spec"]["clusterIP"] == "None"
    ports = {p["name"]: p["containerPort"] for p in gateway_container(overlay)["ports"]}
    assert ports == {"http": settings.port, "grpc": settings.grpc_port}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_period_covers_pre_stop_drain_and_in_flight_requests(overlay: str) -> None:
    pod = one(overlay, "Deployment", "mlgate")["spec"]["template"]["spec"]
    pre_stop = gateway_container(overlay)["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(gateway_env(overlay)["MLGATE_DRAIN_DELAY_S"])
    # After the drain: in-flight calls (gRPC gives them STOP_GRACE_S; a Triton call is cut at
    # its timeout_s, 5 s in the gpu overlay), then the audit queue's flush.
    finishing = STOP_GRACE_S + 5.0 + 5.0
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + finishing


def test_the_config_maps_and_the_token_secret_are_what_the_gateway_reads(tmp_path: Path) -> None:
    routing = read_routing_file(DEPLOY / "base" / "gateway" / "routing.yaml")
    assert set(routing) <= {p.name for p in MODELS_DIR.iterdir() if (p / "config.yaml").exists()}
    tokens_file = DEPLOY / "base" / "gateway" / "tokens.example"
    tokens = Tokens.load(Settings(admin_token_file=tokens_file))
    assert tokens.any_with(ADMIN) and tokens.any_with(FEATURES_WRITE)


def test_the_gpu_overlay_serves_fraud_mlp_version_2_from_the_triton_service() -> None:
    path = DEPLOY / "overlays" / "gpu" / "fraud_mlp.config.yaml"
    config = read_config(path)
    assert config.version_backends == {"2": "triton"}
    assert config.triton is not None
    host, _, port = config.triton.endpoints[0].partition(":")
    triton_ports = {p["name"]: p["port"] for p in one("gpu", "Service", host)["spec"]["ports"]}
    assert triton_ports["grpc"] == int(port)
    # Apart from where version 2 runs, the model's own config.yaml.
    ours = yaml.safe_load(path.read_text())
    image_config = yaml.safe_load((MODELS_DIR / "fraud_mlp" / "config.yaml").read_text())
    assert {k: v for k, v in ours.items() if k not in ("version_backends", "triton")} == (
        image_config
    )


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = KUBECTL.parent / "hadolint"
    if not hadolint.exists():
        pytest.fail(f"{hadolint} is missing: install the dev extra (pip install -e '.[dev]')")
    done = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    # One process: the names exported do not depend on the workers (the metric's sum over
    # two workers is tests/integration/test_inflight_metric.py's).
    gw = start_gateway(tmp_path_factory.mktemp("deploy"), "--demo-entities", "100")
    try:
        yield gw
    finally:
        gw.stop()


def test_every_metric_the_autoscalers_name_is_exported_by_a_running_gateway(
    gateway: GatewayProcess,
) -> None:
    r = httpx.post(
        f"{gateway.url}/v1/models/fraud_mlp:predict", json={"entities": ["u1"]}, timeout=10
    )
    assert r.status_code == 200, r.text
    exported = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    named = set().union(*(autoscaling_metrics(overlay) for overlay in OVERLAYS))
    assert named, "no metric named"
    samples = {line.split("{")[0].split(" ")[0] for line in exported.splitlines()}
    assert named <= samples, sorted(named - samples)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_probes_answer_on_a_running_gateway(
    overlay: str, gateway: GatewayProcess
) -> None:
    container = gateway_container(overlay)
    probes = [container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")]
    for probe in probes:
        assert probe["httpGet"]["port"] == "http"
        r = httpx.get(f"{gateway.url}{probe['httpGet']['path']}", timeout=5)
        assert r.status_code == 200, (probe, r.text)
