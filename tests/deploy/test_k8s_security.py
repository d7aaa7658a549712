"""Pod security (the "restricted" profile, enforced on the namespace) and network policy."""

from __future__ import annotations

import pytest

from .kube import Endpoint, Manifests, connection_allowed, containers, pod_labels

HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")


def test_namespace_enforces_the_restricted_pod_security_profile(m: Manifests) -> None:
    labels = m.get("Namespace", m.namespace)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_pod_runs_non_root_without_privileges_or_capabilities(m: Manifests) -> None:
    names = {workload["metadata"]["name"] for workload, _ in m.workloads()}
    assert {"kandinsky-worker-base", "kandinsky-worker-inpaint", "kandinsky-api", "kandinsky-submit"} <= names
    for workload, pod in m.workloads():
        where = f"{m.overlay}: {workload['kind']}/{workload['metadata']['name']}"
        pod_ctx = pod.get("securityContext", {})
        assert pod_ctx.get("runAsNonRoot") is True, where
        assert pod_ctx.get("runAsUser", 1) != 0, where
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, f"{where}: mounts an API token"
        assert not any(pod.get(key) for key in HOST_NAMESPACES), where
        assert not any("hostPath" in v for v in pod.get("volumes", [])), where
        for c in containers(pod):
            ctx = c.get("securityContext", {})
            at = f"{where} container {c['name']}"
            assert ctx.get("allowPrivilegeEscalation") is False, at
            assert ctx.get("readOnlyRootFilesystem") is True, at
            assert ctx.get("privileged") in (None, False), at
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], at
            assert not ctx.get("capabilities", {}).get("add"), at
            assert ctx.get("runAsUser", 1) != 0, at


def test_every_container_has_memory_limits_and_requests(m: Manifests) -> None:
    for workload, pod in m.workloads():
        for c in containers(pod):
            resources = c.get("resources", {})
            assert "memory" in resources.get("limits", {}), f"{workload['metadata']['name']}/{c['name']}"
            assert "cpu" in resources.get("requests", {}), f"{workload['metadata']['name']}/{c['name']}"


def endpoint(m: Manifests, kind: str, name: str) -> Endpoint:
    return Endpoint(m.namespace, pod_labels(m.get(kind, name)))


def allowed(m: Manifests, src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
    return connection_allowed(m.of("NetworkPolicy"), src, dst, port, protocol, namespace=m.namespace)


KEDA_OPERATOR = Endpoint("keda", {"app": "keda-operator"})
STRANGER = Endpoint("some-other-team", {"app": "curious"})
INTERNET = Endpoint(ip="93.184.216.34")


@pytest.mark.parametrize("worker", ["kandinsky-worker-base", "kandinsky-worker-inpaint"])
def test_workers_reach_redis_storage_and_dns_and_nothing_reaches_them(m: Manifests, worker: str) -> None:
    """Nothing but Prometheus on the metrics port (test_monitoring.py) may connect to a worker."""
    w = endpoint(m, "Deployment", worker)
    redis = endpoint(m, "StatefulSet", "kandinsky-redis")
    assert allowed(m, w, redis, 6379)
    assert allowed(m, w, INTERNET, 443), "S3 and the Hugging Face Hub"
    assert allowed(m, w, Endpoint("kube-system", {"k8s-app": "kube-dns"}), 53, "UDP")
    assert not allowed(m, w, INTERNET, 6379)
    assert not allowed(m, w, STRANGER, 8080)
    for other in (STRANGER, KEDA_OPERATOR, redis):
        assert not allowed(m, other, w, 8080), "workers serve nothing"
        assert not allowed(m, other, w, 9100), "only Prometheus reads the metrics port"
    if m.overlay == "dev":
        assert allowed(m, w, endpoint(m, "Deployment", "kandinsky-minio"), 9000)


def test_only_our_clients_reach_redis_and_keda_only_for_redis_triggers(any_render: Manifests) -> None:
    """With the Prometheus scaler KEDA reads Prometheus, so it gets no way into Redis; the
    Redis-list fallback brings the rule it needs."""
    m = any_render
    redis = endpoint(m, "StatefulSet", "kandinsky-redis")
    for kind, name in (
        ("Job", "kandinsky-submit"),
        ("Deployment", "kandinsky-api"),
        ("Deployment", "kandinsky-worker-base"),
        ("Deployment", "kandinsky-worker-inpaint"),
    ):
        assert allowed(m, endpoint(m, kind, name), redis, 6379), name
    reads_lists = any(t["type"] == "redis" for s in m.of("ScaledObject") for t in s["spec"]["triggers"])
    assert allowed(m, KEDA_OPERATOR, redis, 6379) is reads_lists, m.name
    assert not allowed(m, STRANGER, redis, 6379)
    assert not allowed(m, redis, INTERNET, 443), "Redis talks to no one"


@pytest.mark.parametrize(
    "labels",
    [
        {"app": "something-else"},
        {"app.kubernetes.io/component": "storage"},
        {"app.kubernetes.io/component": "storage-init"},
        {"app.kubernetes.io/component": "broker", "app.kubernetes.io/name": "other"},
    ],
)
def test_other_pods_of_the_namespace_do_not_reach_redis(m: Manifests, labels: dict[str, str]) -> None:
    redis = endpoint(m, "StatefulSet", "kandinsky-redis")
    assert not allowed(m, Endpoint(m.namespace, labels), redis, 6379)


def test_pods_labelled_as_our_clients_in_other_namespaces_do_not_reach_redis(m: Manifests) -> None:
    """The client rules pick pods of this namespace: a look-alike label elsewhere gets nothing."""
    redis = endpoint(m, "StatefulSet", "kandinsky-redis")
    for component in ("worker", "producer", "api"):
        impostor = Endpoint("some-other-team", {"app.kubernetes.io/component": component})
        assert not allowed(m, impostor, redis, 6379), component


def test_dev_storage_is_reachable_only_by_our_pods(rendered: dict[str, Manifests]) -> None:
    m = rendered["dev"]
    minio = endpoint(m, "Deployment", "kandinsky-minio")
    assert allowed(m, endpoint(m, "Job", "kandinsky-minio-bucket"), minio, 9000)
    assert allowed(m, endpoint(m, "Job", "kandinsky-submit"), minio, 9000)
    assert allowed(m, endpoint(m, "Deployment", "kandinsky-api"), minio, 9000)
    assert not allowed(m, STRANGER, minio, 9000)
