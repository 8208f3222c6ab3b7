"""The deployment files: every Kubernetes manifest validates against the Kubernetes schema (kubernetes-validate,
strict: no unknown fields), the probes and drain agree with the server's own paths and drain timeout, the grace
periods cover the worst shutdown, the containers run unprivileged, X-Forwarded-For is trusted only from the one
balancer, HAProxy routes on prompt_cache_key, the image that runs carries no toolchain, and the monitoring stack has
no default credentials and is not published. (No cluster and no Docker engine here.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from server.api_processes import STOP_MARGIN_S
from server.settings import Settings
from server.shutdown import worst_shutdown_s

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.37.0"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    manifests = documents(path)
    assert manifests, f"{path.name} holds no manifest"
    for document in manifests:
        assert kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True) == "1.37"
        # Strict: the same document with a field its kind does not have is refused.
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate({**document, "unknownField": 1}, KUBERNETES_VERSION, strict=True)


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


def deployment_pod() -> tuple[dict[str, Any], dict[str, Any], dict[str, str | None]]:
    (deployment,) = documents(DEPLOY / "k8s" / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container, {item["name"]: item.get("value") for item in container["env"]}


def settings_from(env: dict[str, Any]) -> Settings:
    return Settings(drain_timeout_s=float(env.get("DRAIN_TIMEOUT_S") or 30),
                    api_processes=int(env.get("API_PROCESSES") or 1))


def test_grace_periods_cover_the_worst_shutdown() -> None:
    pod, container, env = deployment_pod()
    pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + worst_shutdown_s(settings_from(env))
    (compose,) = documents(DEPLOY / "compose.yaml")
    for name, service in compose["services"].items():
        if name.startswith("codeface-"):
            grace_s = int(re.fullmatch(r"(\d+)s", service["stop_grace_period"]).group(1))  # type: ignore[union-attr]
            assert grace_s >= worst_shutdown_s(settings_from(service["environment"])), name
    stop_s = int(re.search(r"docker stop -t (\d+)", (ROOT / "Dockerfile.cuda").read_text()).group(1))  # type: ignore[union-attr]
    assert stop_s >= worst_shutdown_s(Settings(drain_timeout_s=30))


def test_the_container_runs_unprivileged() -> None:
    pod, container, _ = deployment_pod()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False and context.get("privileged", False) is False
    assert context["capabilities"]["drop"] == ["ALL"] and not context["capabilities"].get("add")


def test_forwarded_headers_are_trusted_from_the_balancer_alone() -> None:
    (compose,) = documents(DEPLOY / "compose.yaml")
    services = compose["services"]
    balancer_ip = services["balancer"]["networks"]["codeface"]["ipv4_address"]
    for name in (name for name in services if name.startswith("codeface-")):
        assert json.loads(services[name]["environment"]["FORWARDED_ALLOW_IPS"]) == [balancer_ip], name
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in nginx  # the edge: a client's own header dropped
    # Kubernetes: the pods trust the pod network, and the NetworkPolicy lets only named pods connect.
    _, _, env = deployment_pod()
    assert "*" not in json.loads(env["FORWARDED_ALLOW_IPS"] or "[]")
    (policy,) = documents(DEPLOY / "k8s" / "networkpolicy.yaml")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "codeface"}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = [source for rule in policy["spec"]["ingress"] for source in rule["from"]]
    assert sources and all("podSelector" in source and "namespaceSelector" in source for source in sources)


def test_the_image_that_runs_has_no_toolchain() -> None:
    dockerfile = (ROOT / "Dockerfile.cuda").read_text()
    final_stage = dockerfile[dockerfile.rindex("\nFROM "):]
    installed = " ".join(line for line in final_stage.splitlines() if "apt-get install" in line).split()
    assert installed and not {"build-essential", "g++", "make"} & set(installed), installed
    assert "USER codeface" in final_stage


def test_monitoring_has_no_default_credentials_and_is_not_published() -> None:
    (compose,) = documents(DEPLOY / "compose.yaml")
    services = compose["services"]
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${") and ":?" in grafana["GF_SECURITY_ADMIN_PASSWORD"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    for name, service in services.items():
        for port in service.get("ports", []):
            assert name == "balancer" or port.startswith("127.0.0.1:"), (name, port)


def test_metrics_are_scraped_with_the_metrics_token() -> None:
    _, container, _ = deployment_pod()
    sources = {item["name"]: item.get("valueFrom", {}).get("secretKeyRef", {}).get("key") for item in container["env"]}
    assert sources["METRICS_TOKEN"] == "metrics-token" and "METRICS_PUBLIC" not in sources
    (secret,) = documents(DEPLOY / "k8s" / "secrets.example.yaml")
    assert "metrics-token" in secret["stringData"]
    (compose,) = documents(DEPLOY / "compose.yaml")
    services = compose["services"]
    for name in (name for name in services if name.startswith("codeface-")):
        assert services[name]["environment"]["METRICS_TOKEN"].startswith("${METRICS_TOKEN:?"), name
    assert services["prometheus"]["secrets"] == ["metrics-token"]
    (prometheus,) = documents(DEPLOY / "prometheus.yml")
    (job,) = prometheus["scrape_configs"]
    assert job["authorization"]["credentials_file"] == "/run/secrets/metrics-token"


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


def test_haproxy_routes_on_prompt_cache_key_and_parses() -> None:
    """deploy/haproxy.cfg (served for real in tests/test_scale_out.py): consistent hashing on the key, the edge for
    X-Forwarded-For, the compose names by default, and a file that HAProxy itself accepts."""
    config = (DEPLOY / "haproxy.cfg").read_text()
    assert "req.body,json_query('$.prompt_cache_key')" in config and "option http-buffer-request" in config
    assert "balance hash var(txn.affinity)" in config and "hash-type consistent" in config
    assert "http-request del-header X-Forwarded-For" in config and "option forwardfor" in config
    (compose,) = documents(DEPLOY / "compose.yaml")
    assert all(f"{name}:8000" in config for name in compose["services"] if name.startswith("codeface-"))
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        # A developer's machine may lack it; in CI (which installs Debian's) a missing balancer fails the run.
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("no haproxy binary: .ci/run installs Debian's")
        pytest.skip("no haproxy binary (.ci/run installs Debian's)")
    env = {**os.environ, "CODEFACE_A": "127.0.0.1:1", "CODEFACE_B": "127.0.0.1:2"}
    checked = subprocess.run([binary, "-c", "-f", str(DEPLOY / "haproxy.cfg")], env=env, capture_output=True,
                             text=True, timeout=30, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
