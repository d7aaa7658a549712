"""KEDA: one ScaledObject per worker group, on exactly the queues that group consumes.

By default each group scales on the queue metrics in Prometheus (its queued jobs and busy
workers, k8s/base/keda.yaml; the arithmetic is evaluated by a real Prometheus in
test_monitoring.py); with k8s/components/keda-redis-fallback on the lengths of its Redis lists.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from kandinsky_batch.keys import queue_lists
from kandinsky_batch.schema import Mode

from .kube import K8S, Doc, Manifests, parse_keda_query, render_variant, scaler, settings_from, worker_env

PROMETHEUS_RENDERS = ("gpu", "dev-prometheus")
REDIS_RENDERS = ("dev", "gpu+redis-fallback")


@pytest.fixture(params=PROMETHEUS_RENDERS)
def prom(request: pytest.FixtureRequest, variants: dict[str, Manifests]) -> Manifests:
    """A render whose ScaledObjects use the Prometheus scaler (the default)."""
    return variants[request.param]


@pytest.fixture(params=REDIS_RENDERS)
def lists(request: pytest.FixtureRequest, variants: dict[str, Manifests]) -> Manifests:
    """A render with k8s/components/keda-redis-fallback."""
    return variants[request.param]


def scaled_objects_by_target(m: Manifests) -> dict[str, Doc]:
    by_target: dict[str, list[Doc]] = {}
    for scaled in m.of("ScaledObject"):
        by_target.setdefault(scaled["spec"]["scaleTargetRef"]["name"], []).append(scaled)
    assert all(len(v) == 1 for v in by_target.values()), "two ScaledObjects fight over one Deployment"
    return {name: v[0] for name, v in by_target.items()}


def all_queues(m: Manifests) -> list[str]:
    settings = settings_from(worker_env(m, m.workers()[0]))
    return [settings.queue_for(mode) for mode in Mode]


def test_every_worker_group_scales_from_zero(any_render: Manifests) -> None:
    by_target = scaled_objects_by_target(any_render)
    for worker in any_render.workers():
        name = worker["metadata"]["name"]
        assert name in by_target, f"{name} has no ScaledObject"
        spec = by_target[name]["spec"]
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert spec["minReplicaCount"] == 0
        assert spec["maxReplicaCount"] >= 1


def test_the_dev_overlay_needs_no_prometheus_and_the_gpu_overlay_uses_it(
    rendered: dict[str, Manifests],
) -> None:
    assert {scaler(s) for s in rendered["dev"].of("ScaledObject")} == {"redis"}
    assert {scaler(s) for s in rendered["gpu"].of("ScaledObject")} == {"prometheus"}


def test_the_scaler_annotation_names_the_triggers_a_scaled_object_carries(any_render: Manifests) -> None:
    """The overlays' replacements select ScaledObjects by this annotation: a wrong one would
    leave a trigger without its address."""
    for scaled in any_render.of("ScaledObject"):
        kind = scaler(scaled)
        assert kind in ("prometheus", "redis"), scaled["metadata"]["name"]
        assert {t["type"] for t in scaled["spec"]["triggers"]} == {kind}, scaled["metadata"]["name"]


# --- The Prometheus scaler (default) ------------------------------------------------------------


def test_each_group_has_one_query_on_exactly_its_own_queues(prom: Manifests) -> None:
    """Both selectors of the query match every queue the group serves and no other group's."""
    by_target = scaled_objects_by_target(prom)
    queues = all_queues(prom)
    for worker in prom.workers():
        name = worker["metadata"]["name"]
        settings = settings_from(worker_env(prom, worker))
        (trigger,) = by_target[name]["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        query = parse_keda_query(trigger["metadata"]["query"])
        assert len(query.queue_patterns) == 2, "the queued-jobs and the busy-workers selector"
        for pattern in query.queue_patterns:
            matched = sorted(q for q in queues if re.fullmatch(pattern, q))
            assert matched == sorted(settings.queue_for(Mode(m)) for m in settings.modes), (name, pattern)
        # Each queue's count already covers both priority lists; a priority matcher would drop
        # the low-priority backlog.
        assert "priority" not in trigger["metadata"]["query"]


def test_queries_read_this_overlays_namespace_only(prom: Manifests) -> None:
    """A Prometheus that scrapes several deployments must not scale one on another's queues;
    dev-prometheus shows the overlay's rewrite (gpu's namespace is the one the base carries)."""
    for scaled in prom.of("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert parse_keda_query(trigger["metadata"]["query"]).namespaces == [prom.namespace] * 2


def test_one_pod_per_busy_worker_plus_one_per_chunk_of_queued_jobs(prom: Manifests) -> None:
    """threshold 1 on an AverageValue metric: the HPA asks for ceil(value) pods, so the query's
    value is the replica count, and its divisor is the jobs one message carries (CHUNK_SIZE)."""
    by_target = scaled_objects_by_target(prom)
    for worker in prom.workers():
        scaled = by_target[worker["metadata"]["name"]]
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["metadata"]["threshold"] == "1"
        assert trigger.get("metricType", "AverageValue") == "AverageValue"
        query = parse_keda_query(trigger["metadata"]["query"])
        assert query.jobs_per_replica == settings_from(worker_env(prom, worker)).chunk_size
        assert "scalingModifiers" not in scaled["spec"].get("advanced", {}), (
            "a formula would replace the value"
        )


def test_missing_queue_metrics_are_an_error_not_zero(prom: Manifests) -> None:
    """An empty result read as 0 would scale busy groups to zero while the API or Prometheus is
    down; as an error, KEDA keeps the replica count (test_monitoring evaluates the empty case)."""
    for scaled in prom.of("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["metadata"]["ignoreNullValues"] == "false"


def prometheus_address(m: Manifests) -> str:
    return str(m.get("ConfigMap", "kandinsky-batch-prometheus")["data"]["serverAddress"])


def test_the_prometheus_address_comes_from_one_configmap(prom: Manifests) -> None:
    address = prometheus_address(prom)
    assert urlsplit(address).scheme in ("http", "https") and urlsplit(address).port
    for scaled in prom.of("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["metadata"]["serverAddress"] == address


def test_changing_the_address_in_the_overlay_moves_every_trigger(tmp_path: Path) -> None:
    new = "http://prometheus.observability.svc.cluster.local:9090"

    def merge_address(kustomization: Doc) -> None:
        kustomization.setdefault("configMapGenerator", []).append(
            {"name": "kandinsky-batch-prometheus", "behavior": "merge", "literals": [f"serverAddress={new}"]}
        )

    m = Manifests("gpu", render_variant("gpu", tmp_path, edit=merge_address))
    addresses = {t["metadata"]["serverAddress"] for s in m.of("ScaledObject") for t in s["spec"]["triggers"]}
    assert addresses == {new}


def test_overlays_wire_both_kinds_of_trigger(m: Manifests) -> None:
    """The gpu overlay's namespace is the one written in the base, so its render cannot show a
    rewrite that misses triggers: read the replacements themselves. Each selects by the scaler
    annotation and all triggers (`*`), never one by index (groups gain queues, and each queue
    has a redis trigger per priority list)."""
    kustomization = yaml.safe_load((K8S / "overlays" / m.overlay / "kustomization.yaml").read_text())
    wired: dict[str, set[str]] = {}
    for replacement in kustomization.get("replacements", []):
        for target in replacement["targets"]:
            if target["select"].get("kind") != "ScaledObject":
                continue
            selector = target["select"].get("annotationSelector", "")
            for path in target["fieldPaths"]:
                wired.setdefault(selector, set()).add(path)
    assert wired.get("kandinsky-batch/scaler=prometheus") == {
        "spec.triggers.*.metadata.serverAddress",
        "spec.triggers.*.metadata.query",
    }, m.overlay
    assert wired.get("kandinsky-batch/scaler=redis") == {"spec.triggers.*.metadata.address"}, m.overlay


# --- The Redis-list fallback (k8s/components/keda-redis-fallback) -------------------------------


def test_list_names_are_exactly_the_queues_the_group_serves(lists: Manifests) -> None:
    """With Celery's Redis transport each queue is one Redis list per kombu priority step: one
    trigger per list, for every list of every queue the group serves, and nothing else."""
    by_target = scaled_objects_by_target(lists)
    for worker in lists.workers():
        name = worker["metadata"]["name"]
        settings = settings_from(worker_env(lists, worker))
        expected = [lst for mode in settings.modes for lst in queue_lists(settings.queue_for(Mode(mode)))]
        triggers = by_target[name]["spec"]["triggers"]
        assert all(t["type"] == "redis" for t in triggers)
        assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(expected), name


def test_keda_reads_the_redis_and_database_the_workers_use(lists: Manifests) -> None:
    """KEDA runs in its own namespace: it needs the Service's full DNS name, the same
    database index as the broker URL, and the Redis password."""
    by_target = scaled_objects_by_target(lists)
    auths = {a["metadata"]["name"]: a for a in lists.of("TriggerAuthentication")}
    for worker in lists.workers():
        broker = urlsplit(settings_from(worker_env(lists, worker)).redis_url)
        database = broker.path.lstrip("/") or "0"
        for trigger in by_target[worker["metadata"]["name"]]["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert meta["address"] == f"{broker.hostname}.{lists.namespace}.svc.cluster.local:{broker.port}"
            assert meta.get("databaseIndex", "0") == database
            auth = auths[trigger["authenticationRef"]["name"]]
            assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"password"}


def test_a_group_with_several_lists_scales_on_their_sum(lists: Manifests) -> None:
    """Every group reads at least two lists (a queue's priority lists), and KEDA
    would otherwise size it for the longest list: the formula must add every trigger."""
    for scaled in lists.of("ScaledObject"):
        triggers = scaled["spec"]["triggers"]
        names = [t["name"] for t in triggers]
        assert len(triggers) >= 2, f"{scaled['metadata']['name']}: one list cannot cover both priorities"
        assert len(set(names)) == len(names), f"{scaled['metadata']['name']}: duplicate trigger names {names}"
        modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
        terms = re.split(r"\s*\+\s*", modifiers["formula"].strip())
        assert sorted(terms) == sorted(names), "the formula must add every list"
        assert modifiers["metricType"] == "AverageValue"


def test_the_fallback_keeps_the_scale_down_behaviour_of_the_base(variants: dict[str, Manifests]) -> None:
    """The component swaps the triggers only: limits and scale-down stay as in the base."""
    for name in scaled_objects_by_target(variants["gpu"]):
        ours = scaled_objects_by_target(variants["gpu"])[name]["spec"]
        theirs = scaled_objects_by_target(variants["gpu+redis-fallback"])[name]["spec"]
        for key in ("minReplicaCount", "maxReplicaCount", "cooldownPeriod", "pollingInterval"):
            assert ours[key] == theirs[key], (name, key)
        hpa = "horizontalPodAutoscalerConfig"
        assert ours["advanced"][hpa] == theirs["advanced"][hpa], name


# --- Both ---------------------------------------------------------------------------------------


def test_activation_starts_a_worker_for_any_work(any_render: Manifests) -> None:
    for scaled in any_render.of("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            key = "activationThreshold" if trigger["type"] == "prometheus" else "activationListLength"
            assert trigger["metadata"].get(key, "0") == "0"
        modifiers = scaled["spec"].get("advanced", {}).get("scalingModifiers")
        if modifiers:
            assert modifiers.get("activationTarget", "0") == "0"


def test_scale_down_is_slow_and_the_last_pod_waits(any_render: Manifests) -> None:
    """Pods reload the models when they come back, so a lull keeps them; with the Redis lists,
    which ignore messages being run, the delays also give the last messages time to finish."""
    for worker in any_render.workers():
        grace = settings_from(worker_env(any_render, worker)).shutdown_grace_s
        scaled = scaled_objects_by_target(any_render)[worker["metadata"]["name"]]["spec"]
        assert scaled["cooldownPeriod"] >= max(300, 2 * grace)
        scale_down = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert scale_down["stabilizationWindowSeconds"] >= 300
        assert scale_down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]
