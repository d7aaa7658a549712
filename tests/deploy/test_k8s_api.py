"""The HTTP API in Kubernetes: Deployment, probes, Service, HPA, disruption budget, network reach."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kandinsky_batch.settings import Settings
from producer.api.app import create_app

from .kube import (
    EXTERNAL_SECRETS,
    Endpoint,
    Manifests,
    container_env,
    main_container,
    pod_labels,
    selector_matches,
    settings_from,
    worker_env,
)
from .test_dockerfiles import PRODUCER, final_stage
from .test_k8s_security import INTERNET, STRANGER, allowed, endpoint

API = "kandinsky-api"
DNS = Endpoint("kube-system", {"k8s-app": "kube-dns"})


def api(m: Manifests) -> dict[str, Any]:
    return m.get("Deployment", API)


def api_settings(m: Manifests) -> Settings:
    return settings_from(container_env(m, main_container(api(m)), EXTERNAL_SECRETS.get(m.overlay, {})))


def producer_entrypoint() -> list[str]:
    (entrypoint,) = [json.loads(rest) for keyword, rest in final_stage(PRODUCER) if keyword == "ENTRYPOINT"]
    return list(entrypoint)


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by name or number, as the container's port number."""
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(found)


def secrets_used(container: dict[str, Any]) -> set[str]:
    from_env = {
        v["valueFrom"]["secretKeyRef"]["name"]
        for v in container.get("env", [])
        if "secretKeyRef" in v.get("valueFrom", {})
    }
    return from_env | {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}


def test_api_runs_kandinsky_batch_api_from_the_producer_image(m: Manifests) -> None:
    c = main_container(api(m))
    command = c.get("command") or producer_entrypoint()
    assert [*command, *c.get("args", [])] == ["kandinsky-batch", "api"]
    assert c["image"].split(":")[0].endswith("kandinsky-batch-producer"), "no torch in the API"
    assert c["image"] == main_container(m.get("Job", "kandinsky-submit"))["image"], "one image for both"


def test_api_listens_on_every_interface_on_its_container_port(m: Manifests) -> None:
    """The default host (127.0.0.1) would leave the Service and the probes nothing to reach."""
    settings = api_settings(m)
    assert settings.api_host == "0.0.0.0"
    assert container_port(main_container(api(m)), "http") == settings.api_port
    assert settings.api_workers == 1, "the HPA adds pods; CPU per pod must stay a fair signal"


def test_api_probes_hit_readyz_and_healthz_on_the_api_port(m: Manifests) -> None:
    c = main_container(api(m))
    port = api_settings(m).api_port
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(c, get["port"]) == port, probe
    liveness = c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"]
    assert liveness >= 120, f"a {liveness}s Redis outage (requests waiting on retries) would restart pods"


def test_probe_paths_are_served_by_the_app_and_liveness_needs_no_redis(tmp_path: Path) -> None:
    """/healthz answers with Redis unreachable; /readyz is a real route (it checks Redis and storage)."""
    # No webhook dispatcher: this checks the probe routes, nothing that would wait on Redis.
    settings = Settings(redis_url="redis://127.0.0.1:1/0", storage_url=tmp_path.as_uri(), webhooks=False)
    app = create_app(settings)
    assert {"/healthz", "/readyz"} <= set(app.openapi()["paths"])
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200


def test_api_uses_the_same_redis_keys_and_storage_as_the_workers(m: Manifests) -> None:
    ours = api_settings(m)
    for worker in m.workers():
        theirs = settings_from(worker_env(m, worker))
        for field in ("redis_url", "key_prefix", "queue_prefix", "storage_url", "s3_endpoint_url"):
            assert getattr(ours, field) == getattr(theirs, field), f"{worker['metadata']['name']}: {field}"


def test_api_credentials_come_from_the_producers_secrets(m: Manifests) -> None:
    c = main_container(api(m))
    producer = main_container(m.get("Job", "kandinsky-submit"))
    used = secrets_used(c)
    assert len(used) == 2 and used == secrets_used(producer), "the Redis password and the S3 keys"
    settings = api_settings(m)
    assert settings.s3_access_key_id and settings.s3_secret_access_key
    (url,) = [v["value"] for v in c["env"] if v["name"] == "KANDINSKY_BATCH_REDIS_URL"]
    assert "$(REDIS_PASSWORD)" in url, "the password comes from the Secret, not the manifest"


def test_api_pod_is_hardened_like_the_workers(m: Manifests) -> None:
    pod = api(m)["spec"]["template"]["spec"]
    worker = m.get("Deployment", "kandinsky-worker-base")
    worker_pod = worker["spec"]["template"]["spec"]
    for key in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile"):
        assert pod["securityContext"][key] == worker_pod["securityContext"][key], key
    assert pod["automountServiceAccountToken"] is False
    c = main_container(api(m))
    assert c["securityContext"] == main_container(worker)["securityContext"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    (tmp,) = [v for v in c["volumeMounts"] if v["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]], "a writable /tmp on a read-only root"


def test_api_service_selects_only_the_api_pods_and_targets_the_container_port(m: Manifests) -> None:
    service = m.get("Service", API)
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    selector = {"matchLabels": service["spec"]["selector"]}
    assert selector_matches(selector, pod_labels(api(m)))
    others = [w for w, _ in m.workloads() if w is not api(m) and "template" in w["spec"]]
    assert others
    for workload in others:
        assert not selector_matches(selector, pod_labels(workload)), workload["metadata"]["name"]
    (port,) = service["spec"]["ports"]
    assert container_port(main_container(api(m)), port["targetPort"]) == api_settings(m).api_port


def test_hpa_scales_the_api_deployment_on_cpu(m: Manifests) -> None:
    targeting = [h for h in m.of("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == API]
    assert len(targeting) == 1, f"{len(targeting)} autoscalers for {API}"
    spec = targeting[0]["spec"]
    assert targeting[0]["apiVersion"] == "autoscaling/v2"
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": API}
    (cpu,) = [
        x["resource"] for x in spec["metrics"] if x["type"] == "Resource" and x["resource"]["name"] == "cpu"
    ]
    assert cpu["target"]["type"] == "Utilization" and 0 < cpu["target"]["averageUtilization"] <= 100
    assert "cpu" in main_container(api(m))["resources"]["requests"], "utilization is relative to the request"
    assert 2 <= spec["minReplicas"] < spec["maxReplicas"]
    assert "replicas" not in api(m)["spec"], "kubectl apply would reset what the HPA scaled"


def test_api_has_a_budget_that_never_blocks_a_drain(m: Manifests) -> None:
    labels = pod_labels(api(m))
    matching = [b for b in m.of("PodDisruptionBudget") if selector_matches(b["spec"]["selector"], labels)]
    assert len(matching) == 1, f"{len(matching)} budgets"
    assert "minAvailable" not in matching[0]["spec"]
    assert matching[0]["spec"]["maxUnavailable"] == 1


def test_api_reaches_redis_storage_dns_and_public_https(m: Manifests) -> None:
    a = endpoint(m, "Deployment", API)
    assert allowed(m, a, endpoint(m, "StatefulSet", "kandinsky-redis"), 6379)
    assert allowed(m, a, INTERNET, 443), "S3 and webhook receivers"
    assert allowed(m, a, DNS, 53, "UDP")
    assert not allowed(m, a, INTERNET, 80), "webhooks are https only"
    assert not allowed(m, a, INTERNET, 6379)
    assert not allowed(m, a, endpoint(m, "Deployment", "kandinsky-worker-base"), 8080)
    if m.overlay == "dev":
        assert allowed(m, a, endpoint(m, "Deployment", "kandinsky-minio"), 9000)


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.1",  # RFC 1918 (pod and service ranges of most clusters)
        "172.16.5.4",
        "172.31.255.254",
        "192.168.1.1",
        "100.64.0.10",  # shared address space (CGNAT; some clusters' pod ranges)
        "169.254.169.254",  # cloud metadata service
        "127.0.0.1",
        "0.0.0.0",
    ],
)
def test_api_cannot_reach_private_link_local_or_loopback_on_443(m: Manifests, ip: str) -> None:
    """A webhook URL is chosen by a caller: it must not reach inside the cluster or the cloud network."""
    assert not allowed(m, endpoint(m, "Deployment", API), Endpoint(ip=ip), 443)


@pytest.mark.parametrize("ip", ["11.0.0.1", "172.32.0.1", "100.128.0.1", "192.169.0.1", "8.8.8.8"])
def test_api_reaches_public_addresses_next_to_the_private_ranges(m: Manifests, ip: str) -> None:
    """The cut-outs are exactly the private ranges, not wider ones that would break webhooks."""
    assert allowed(m, endpoint(m, "Deployment", API), Endpoint(ip=ip), 443)


def test_anyone_reaches_the_api_port_and_nothing_else_on_it(m: Manifests) -> None:
    a = endpoint(m, "Deployment", API)
    port = api_settings(m).api_port
    for caller in (
        STRANGER,
        INTERNET,
        Endpoint("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}),
    ):
        assert allowed(m, caller, a, port), caller
        assert not allowed(m, caller, a, 9090), caller
