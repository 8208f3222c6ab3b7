"""The deployment files: every Kubernetes manifest validates against the Kubernetes schema (kubernetes-validate,
strict: no unknown fields), the probes and drain agree with the server's own paths and drain timeout, and the
compose file's replicas and balancer refer to each other. (No cluster and no Docker engine here.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from server.api_processes import STOP_MARGIN_S
from server.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES_VERSION = "1.37.0"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    for document in documents(path):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_probes_and_drain_match_the_server() -> None:
    (deployment,) = documents(DEPLOY / "k8s" / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    env = {item["name"]: item.get("value") for item in container["env"]}
    drain_s = float(env.get("DRAIN_TIMEOUT_S") or Settings.model_fields["drain_timeout_s"].default)
    pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s + 15  # room for the final writes
    if int(env.get("API_PROCESSES") or 1) > 1:  # the launcher waits this long for its API processes to drain
        assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s + STOP_MARGIN_S


def test_compose_replicas_sit_behind_the_balancer() -> None:
    (compose,) = documents(DEPLOY / "compose.yaml")
    services = compose["services"]
    replicas = [name for name in services if name.startswith("codeface-")]
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert len(replicas) == 2 and all(f"server {name}:8000" in nginx for name in replicas)
    for name in replicas:
        assert services[name]["environment"]["RATE_LIMIT_STORAGE"].startswith("async+redis://redis:")
    assert set(services["balancer"]["depends_on"]) == set(replicas)


def test_deployments_answer_to_the_hosts_they_are_reached_by() -> None:
    """The Host allow-list (DNS rebinding) keeps every deployment reachable: Prometheus scrapes the compose replicas
    by service name, nginx forwards the browser's Host with its port (the Origin check compares the two), and the
    Kubernetes pods, reached through an ingress by names only the operator knows, run a profile that allows any."""
    from server.middleware.host_origin import HostAllowList
    from server.settings import load_settings

    (compose,) = documents(DEPLOY / "compose.yaml")
    services = compose["services"]
    scraped = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]["static_configs"][0]
    for name in (name for name in services if name.startswith("codeface-")):
        allowed = HostAllowList(yaml.safe_load(services[name]["environment"]["ALLOWED_HOSTS"]))
        assert all(allowed.allows(target.partition(":")[0]) for target in scraped["targets"])
        assert allowed.allows("localhost") and not allowed.allows("attacker.example")
    assert "proxy_set_header Host $http_host;" in (DEPLOY / "nginx.conf").read_text()
    (deployment,) = documents(DEPLOY / "k8s" / "deployment.yaml")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    profile = load_settings(DEPLOY.parent / args[args.index("--config") + 1])
    assert HostAllowList(profile.allowed_hosts).allows("codeface.example.com")
