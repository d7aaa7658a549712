"""KEDA: one ScaledObject per worker group, on exactly the Redis lists that group consumes."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import yaml

from kandinsky_batch.keys import queue_lists
from kandinsky_batch.schema import Mode

from .kube import K8S, Manifests, settings_from, worker_env


def scaled_objects_by_target(m: Manifests) -> dict[str, dict]:
    by_target: dict[str, list[dict]] = {}
    for scaled in m.of("ScaledObject"):
        by_target.setdefault(scaled["spec"]["scaleTargetRef"]["name"], []).append(scaled)
    assert all(len(v) == 1 for v in by_target.values()), "two ScaledObjects fight over one Deployment"
    return {name: v[0] for name, v in by_target.items()}


def test_every_worker_group_scales_from_zero(m: Manifests) -> None:
    by_target = scaled_objects_by_target(m)
    for worker in m.workers():
        name = worker["metadata"]["name"]
        assert name in by_target, f"{name} has no ScaledObject"
        spec = by_target[name]["spec"]
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert spec["minReplicaCount"] == 0
        assert spec["maxReplicaCount"] >= 1


def test_list_names_are_exactly_the_queues_the_group_serves(m: Manifests) -> None:
    """With Celery's Redis transport each queue is two Redis lists (normal and low priority):
    one trigger per list, for every list of every queue the group serves, and nothing else."""
    by_target = scaled_objects_by_target(m)
    for worker in m.workers():
        name = worker["metadata"]["name"]
        settings = settings_from(worker_env(m, worker))
        lists = [lst for mode in settings.modes for lst in queue_lists(settings.queue_for(Mode(mode)))]
        triggers = by_target[name]["spec"]["triggers"]
        assert all(t["type"] == "redis" for t in triggers)
        assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(lists), name


def test_keda_reads_the_redis_and_database_the_workers_use(m: Manifests) -> None:
    """KEDA runs in its own namespace: it needs the Service's full DNS name, the same
    database index as the broker URL, and the Redis password."""
    by_target = scaled_objects_by_target(m)
    auths = {a["metadata"]["name"]: a for a in m.of("TriggerAuthentication")}
    for worker in m.workers():
        broker = urlsplit(settings_from(worker_env(m, worker)).redis_url)
        database = broker.path.lstrip("/") or "0"
        for trigger in by_target[worker["metadata"]["name"]]["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert meta["address"] == f"{broker.hostname}.{m.namespace}.svc.cluster.local:{broker.port}"
            assert meta.get("databaseIndex", "0") == database
            auth = auths[trigger["authenticationRef"]["name"]]
            assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"password"}


def test_overlays_rewrite_the_address_of_every_trigger(m: Manifests) -> None:
    """The gpu overlay's namespace is the one written in the base, so its render cannot show a
    rewrite that misses triggers: select them all (`*`), never by index, since each queue has
    two triggers (its normal and its low-priority list) and groups gain queues."""
    kustomization = yaml.safe_load((K8S / "overlays" / m.overlay / "kustomization.yaml").read_text())
    paths = [
        path
        for replacement in kustomization.get("replacements", [])
        for target in replacement["targets"]
        if target["select"].get("kind") == "ScaledObject"
        for path in target["fieldPaths"]
    ]
    assert "spec.triggers.*.metadata.address" in paths, f"{m.overlay}: no namespace rewrite for the triggers"
    by_index = [p for p in paths if p.startswith("spec.triggers.") and not p.startswith("spec.triggers.*.")]
    assert not by_index, f"{m.overlay}: triggers selected by index: {by_index}"


def test_a_group_with_several_queues_scales_on_their_sum(m: Manifests) -> None:
    """Every group reads at least two lists (a queue's normal and low-priority ones), and KEDA
    would otherwise size it for the longest list: the formula must add every trigger."""
    for scaled in m.of("ScaledObject"):
        triggers = scaled["spec"]["triggers"]
        names = [t["name"] for t in triggers]
        assert len(triggers) >= 2, f"{scaled['metadata']['name']}: one list cannot cover both priorities"
        assert len(set(names)) == len(names), f"{scaled['metadata']['name']}: duplicate trigger names {names}"
        modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
        terms = re.split(r"\s*\+\s*", modifiers["formula"].strip())
        assert sorted(terms) == sorted(names), "the formula must add every list"
        assert modifiers["metricType"] == "AverageValue"


def test_activation_starts_a_worker_for_a_single_waiting_message(m: Manifests) -> None:
    for scaled in m.of("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["metadata"].get("activationListLength", "0") == "0"
        modifiers = scaled["spec"].get("advanced", {}).get("scalingModifiers")
        if modifiers:
            assert modifiers.get("activationTarget", "0") == "0"


def test_scale_down_waits_longer_than_a_message_takes(m: Manifests) -> None:
    """LLEN ignores messages being run, so after the lists empty the last messages are still
    running: cooldown and the HPA's scale-down window give them time to finish."""
    for worker in m.workers():
        grace = settings_from(worker_env(m, worker)).shutdown_grace_s
        scaled = scaled_objects_by_target(m)[worker["metadata"]["name"]]["spec"]
        assert scaled["cooldownPeriod"] >= max(300, 2 * grace)
        scale_down = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert scale_down["stabilizationWindowSeconds"] >= 300
