"""Monitoring: scrape wiring, the alerts (promtool), and the KEDA queries and the Grafana
dashboard evaluated by a real Prometheus on synthetic series.

promtool and prometheus come from Debian's `prometheus` package (not the dev extra). Missing,
these tests skip locally and fail in CI, like the other deploy tools.
"""

from __future__ import annotations

import copy
import json
import math
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
import yaml

from .kube import (
    EXTERNAL_SECRETS,
    K8S,
    Endpoint,
    Manifests,
    container_env,
    main_container,
    parse_keda_query,
    pod_labels,
    selector_matches,
    settings_from,
    worker_env,
)
from .test_k8s_security import INTERNET, KEDA_OPERATOR, STRANGER, allowed, endpoint
from .tools import REPO, require_system_tool, run

MONITORING = K8S / "components" / "monitoring"
RULES = MONITORING / "rules.yaml"
DASHBOARD = MONITORING / "dashboard.json"
ALERT_TESTS = REPO / "tests/deploy/promtool/alerts_test.yaml"
SCHEMA = json.loads((REPO / "tests/deploy/schemas/monitoring-v1.schema.json").read_text())
INSTALL = "apt-get install prometheus"
PROMETHEUS = Endpoint("monitoring", {"app.kubernetes.io/name": "prometheus"})
MONITORING_RENDERS = ("gpu+monitoring", "dev+monitoring")

# The metrics the code exports (names fixed by the worker and the API) and prometheus-client's
# defaults. Histograms are queried through their _bucket, _sum and _count series.
WORKER_METRICS = {
    "kandinsky_batch_jobs_total",
    "kandinsky_batch_images_total",
    "kandinsky_batch_pipeline_loads_total",
    "kandinsky_batch_redeliveries_total",
    "kandinsky_batch_worker_busy",
    "kandinsky_batch_worker_info",
    "kandinsky_batch_last_progress_timestamp_seconds",
    "kandinsky_batch_gpu_memory_allocated_bytes",
    "kandinsky_batch_gpu_memory_reserved_bytes",
    "kandinsky_batch_gpu_memory_used_bytes",
    "kandinsky_batch_gpu_utilization_ratio",
}
HISTOGRAMS = {
    "kandinsky_batch_generation_seconds",
    "kandinsky_batch_image_seconds",
    "kandinsky_batch_upload_seconds",
    "kandinsky_batch_queue_wait_seconds",
    "kandinsky_batch_micro_batch_images",
}
API_METRICS = {
    "kandinsky_batch_queue_messages",
    "kandinsky_batch_queue_jobs",
    "kandinsky_batch_jobs_in_flight",
    "kandinsky_batch_busy_workers",
    "kandinsky_batch_oldest_queued_seconds",
    "kandinsky_batch_dead_letters",
    "kandinsky_batch_webhook_deliveries_pending",
}
STANDARD = {
    "process_start_time_seconds",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "up",
}
KNOWN = (
    WORKER_METRICS
    | API_METRICS
    | STANDARD
    | {h + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (identifiers that are no function,
    aggregation, keyword, label or duration)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![0-9.A-Za-z_:])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        if text[match.end() :].lstrip().startswith("(") or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def test_metric_names_finds_selectors_and_skips_the_rest() -> None:
    expr = 'histogram_quantile(0.9, sum by (le, mode) (rate(a_bucket{x="y"}[5m]))) / on (m) b or vector(0)'
    assert metric_names(expr) == {"a_bucket", "b"}


# --- Scrape wiring ------------------------------------------------------------------------------


def test_workers_serve_metrics_on_the_named_port_their_setting_gives(m: Manifests) -> None:
    for worker in m.workers():
        port = settings_from(worker_env(m, worker)).metrics_port
        assert port, f"{worker['metadata']['name']}: KANDINSKY_BATCH_METRICS_PORT is 0 (off)"
        ports = {p.get("name"): p["containerPort"] for p in main_container(worker).get("ports", [])}
        assert ports.get("metrics") == port, worker["metadata"]["name"]
        annotations = worker["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_api_pods_are_annotated_for_scraping_on_the_api_port(m: Manifests) -> None:
    api = m.get("Deployment", "kandinsky-api")
    settings = settings_from(container_env(m, main_container(api), EXTERNAL_SECRETS.get(m.overlay, {})))
    assert settings.api_metrics, "the API must serve /metrics"
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.api_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_prometheus_reaches_the_metrics_ports_and_nothing_else(m: Manifests) -> None:
    for worker in m.workers():
        w = endpoint(m, "Deployment", worker["metadata"]["name"])
        port = settings_from(worker_env(m, worker)).metrics_port
        assert allowed(m, PROMETHEUS, w, port), "Prometheus scrapes the workers"
        assert not allowed(m, PROMETHEUS, w, 8080), "only the metrics port"
        for other in (STRANGER, KEDA_OPERATOR, INTERNET):
            assert not allowed(m, other, w, port), other
    assert allowed(m, PROMETHEUS, endpoint(m, "Deployment", "kandinsky-api"), 8000)
    assert not allowed(m, PROMETHEUS, endpoint(m, "StatefulSet", "kandinsky-redis"), 6379)


def test_the_overlays_need_no_prometheus_operator(m: Manifests) -> None:
    """Operator kinds live in the optional component: without its CRDs `kubectl apply` of an
    overlay would fail."""
    assert not [d for d in m.docs if d["apiVersion"].startswith("monitoring.coreos.com/")]


@pytest.fixture(params=MONITORING_RENDERS)
def mon(request: pytest.FixtureRequest, variants: dict[str, Manifests]) -> Manifests:
    """An overlay with k8s/components/monitoring added."""
    return variants[request.param]


def monitoring_validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/$defs/{kind}", "$defs": SCHEMA["$defs"]})


def test_monitoring_objects_match_the_operator_schema(mon: Manifests) -> None:
    found = [d for d in mon.docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert sorted(d["kind"] for d in found) == ["PodMonitor", "PrometheusRule", "ServiceMonitor"]
    for doc in found:
        errors = [
            f"{'.'.join(map(str, e.path))}: {e.message}"
            for e in monitoring_validator(doc["kind"]).iter_errors(doc)
        ]
        assert not errors, f"{mon.name}: {doc['kind']}/{doc['metadata']['name']}: {errors}"


@pytest.mark.parametrize(
    ("kind", "name", "path", "value"),
    [
        ("PodMonitor", "kandinsky-worker", ["spec", "podMetricEndpoints"], []),  # a typo
        ("PodMonitor", "kandinsky-worker", ["spec", "podMetricsEndpoints", 0, "interval"], "15"),  # no unit
        ("ServiceMonitor", "kandinsky-api", ["spec", "endpoints", 0, "targetPort"], 8000),  # not ours
        ("PrometheusRule", "kandinsky-batch", ["spec", "groups", 0, "rules", 0, "fro"], "5m"),
    ],
)
def test_monitoring_schema_rejects_mistakes(
    variants: dict[str, Manifests], kind: str, name: str, path: list[Any], value: Any
) -> None:
    doc = copy.deepcopy(variants["gpu+monitoring"].get(kind, name))
    assert not list(monitoring_validator(kind).iter_errors(doc))
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert list(monitoring_validator(kind).iter_errors(doc))


def test_the_pod_monitor_scrapes_every_worker_on_its_metrics_port_and_nothing_else(mon: Manifests) -> None:
    (monitor,) = mon.of("PodMonitor")
    selector = monitor["spec"]["selector"]
    selected = [
        w for w, _ in mon.workloads() if "template" in w["spec"] and selector_matches(selector, pod_labels(w))
    ]
    assert sorted(w["metadata"]["name"] for w in selected) == sorted(
        w["metadata"]["name"] for w in mon.workers()
    )
    for endpoint_ in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint_.get("path", "/metrics") == "/metrics"
        for worker in selected:
            ports = {p.get("name"): p["containerPort"] for p in main_container(worker)["ports"]}
            assert ports[endpoint_["port"]] == settings_from(worker_env(mon, worker)).metrics_port


def test_the_service_monitor_scrapes_the_api_metrics(mon: Manifests) -> None:
    (monitor,) = mon.of("ServiceMonitor")
    selector = monitor["spec"]["selector"]
    services = [s for s in mon.of("Service") if selector_matches(selector, s["metadata"].get("labels", {}))]
    assert [s["metadata"]["name"] for s in services] == ["kandinsky-api"]
    api = main_container(mon.get("Deployment", "kandinsky-api"))
    api_port = settings_from(container_env(mon, api, EXTERNAL_SECRETS.get(mon.overlay, {}))).api_port
    service_ports = {p["name"]: p["targetPort"] for p in services[0]["spec"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    (scrape,) = monitor["spec"]["endpoints"]
    assert container_ports[service_ports[scrape["port"]]] == api_port
    assert scrape.get("path", "/metrics") == "/metrics"


def test_the_prometheus_rule_carries_exactly_the_rules_file(mon: Manifests) -> None:
    (rule,) = mon.of("PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"], (
        "prometheusrule.yaml's spec.groups must be rules.yaml's groups"
    )


def test_the_dashboard_configmap_is_dashboard_json_for_grafanas_sidecar(mon: Manifests) -> None:
    (cm,) = [
        c for c in mon.of("ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    assert cm["metadata"]["name"] == "kandinsky-batch-dashboard", "a fixed name: an edit replaces it"
    ((key, text),) = cm["data"].items()
    assert key.endswith(".json")
    assert json.loads(text) == json.loads(DASHBOARD.read_text())


# --- Alerts -------------------------------------------------------------------------------------


def promtool() -> str:
    return require_system_tool("promtool", INSTALL)


def alert_names() -> list[str]:
    return [
        r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r
    ]


def test_the_rules_file_passes_promtool_check() -> None:
    result = run([promtool(), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(alert_names())} rules found" in result.stdout


def test_the_alert_unit_tests_pass() -> None:
    result = run([promtool(), "test", "rules", str(ALERT_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert [str((ALERT_TESTS.parent / f).resolve()) for f in tests["rule_files"]] == [str(RULES.resolve())]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = set(alert_names())
    assert alerts == {
        "KandinskyBatchJobStalled",
        "KandinskyBatchDeadLettersGrowing",
        "KandinskyBatchQueueWaitTooLong",
        "KandinskyBatchWorkerRestartingOften",
        "KandinskyBatchFailureRateHigh",
        "KandinskyBatchQueueMetricsAbsent",
    }
    assert alerts - firing == set(), "alerts never shown firing"
    assert alerts - silent == set(), "alerts never shown silent"
    assert (firing | silent) - alerts == set(), "tests of alerts that do not exist"


def test_every_alert_has_a_severity_and_a_summary() -> None:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


# --- A real Prometheus, on synthetic series ----------------------------------------------------

STEP = 60
SAMPLES = 31  # half an hour, one sample a minute
API_PODS = ("10.0.1.1:8000", "10.0.1.2:8000")
QUEUES = ("text2img", "img2img", "interpolate", "inpaint")


@dataclass(frozen=True)
class Scenario:
    """What the API pods export for one namespace: per queue (queued jobs, busy workers), and
    what each group's query must then return (None: no result, an error for KEDA)."""

    queues: dict[str, tuple[int, int | None]]
    base: int | None
    inpaint: int | None


SCENARIOS = {
    # 6 + 4 + 0 = 10 queued -> ceil(10 / 8) = 2, plus 2 + 0 + 1 busy = 5; inpaint ceil(9/8) + 1
    "busy-and-queued": Scenario(
        {"text2img": (6, 2), "img2img": (4, 0), "interpolate": (0, 1), "inpaint": (9, 1)}, base=5, inpaint=3
    ),
    # the queues are empty but three workers still run: never below the busy workers
    "busy-only": Scenario(
        {"text2img": (0, 3), "img2img": (0, 0), "interpolate": (0, 0), "inpaint": (0, 1)}, 3, 1
    ),
    "idle": Scenario({q: (0, 0) for q in QUEUES}, base=0, inpaint=0),
    # one full message is one pod; one job more is a second
    "eight-queued": Scenario(
        {"text2img": (8, 0), "img2img": (0, 0), "interpolate": (0, 0), "inpaint": (0, 0)}, 1, 0
    ),
    "nine-queued": Scenario(
        {"text2img": (0, 0), "img2img": (9, 0), "interpolate": (0, 0), "inpaint": (1, 0)}, 2, 1
    ),
    # queue metrics without busy-worker series: the busy term counts 0
    "no-busy-series": Scenario(
        {"text2img": (3, None), "img2img": (0, None), "interpolate": (0, None), "inpaint": (0, None)}, 1, 0
    ),
    # nothing exported for this namespace (API down): no value at all
    "missing": Scenario({}, base=None, inpaint=None),
}


class OpenMetrics:
    """Builds an OpenMetrics text, one sample a minute from `start`, for promtool's backfill."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.families: dict[str, tuple[str, list[tuple[str, dict[str, str], Callable[[int], float]]]]] = {}

    def add(
        self, kind: str, family: str, sample: str, labels: dict[str, str], value: Callable[[int], float]
    ) -> None:
        self.families.setdefault(family, (kind, []))[1].append((sample, labels, value))

    def gauge(self, name: str, labels: dict[str, str], value: Callable[[int], float]) -> None:
        self.add("gauge", name, name, labels, value)

    def counter(self, name: str, labels: dict[str, str], value: Callable[[int], float]) -> None:
        self.add("counter", name.removesuffix("_total"), name, labels, value)

    def histogram(self, name: str, labels: dict[str, str], per_minute: int) -> None:
        """Observations of 0.5 s, 3 s and 20 s in equal thirds (cumulative buckets)."""
        for le, share in (("1", 1), ("5", 2), ("30", 3), ("+Inf", 3)):
            self.add(
                "histogram",
                name,
                f"{name}_bucket",
                {**labels, "le": le},
                lambda i, s=share: i * per_minute * s,
            )
        self.add("histogram", name, f"{name}_count", labels, lambda i: i * per_minute * 3)
        self.add("histogram", name, f"{name}_sum", labels, lambda i: i * per_minute * 23.5)

    def text(self) -> str:
        lines = []
        for family, (kind, samples) in self.families.items():
            lines.append(f"# TYPE {family} {kind}")
            for sample, labels, value in samples:
                rendered = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                for i in range(SAMPLES):
                    lines.append(f"{sample}{{{rendered}}} {value(i)} {self.start + i * STEP}")
        return "\n".join([*lines, "# EOF", ""])


def synthetic_series(start: int) -> str:
    om = OpenMetrics(start)
    prefix = "kandinsky_batch"
    # KEDA scenarios: every API pod exports the same values (max, not sum, must be taken).
    for namespace, scenario in SCENARIOS.items():
        for api in API_PODS:
            labels = {"namespace": namespace, "job": "kandinsky-api", "instance": api}
            for mode, (queued, busy) in scenario.queues.items():
                queue = {**labels, "queue": f"{prefix}.{mode}"}
                om.gauge(f"{prefix}_queue_jobs", queue, lambda i, v=queued: v)
                om.gauge(
                    f"{prefix}_jobs_in_flight", queue, lambda i, v=busy: 7 * (v or 0)
                )  # not the pod count
                if busy is not None:
                    om.gauge(f"{prefix}_busy_workers", queue, lambda i, v=busy: v)
    # The dashboard's namespace: every metric the code exports, moving.
    worker = {"namespace": "dash", "job": "kandinsky-batch/kandinsky-worker", "instance": "10.0.0.1:9100"}
    for outcome, code, per_minute in (
        ("succeeded", "", 10),
        ("failed", "cuda_oom", 1),
        ("handed_back", "", 0),
    ):
        om.counter(
            f"{prefix}_jobs_total",
            {**worker, "mode": "text2img", "outcome": outcome, "code": code},
            lambda i, r=per_minute: i * r,
        )
    om.counter(f"{prefix}_images_total", {**worker, "mode": "text2img"}, lambda i: 12 * i)
    om.counter(f"{prefix}_pipeline_loads_total", {**worker, "pipeline": "decoder"}, lambda i: 1 + i // 15)
    om.counter(f"{prefix}_redeliveries_total", {**worker, "reason": "lease_expired"}, lambda i: i // 5)
    for name in ("generation_seconds", "image_seconds", "queue_wait_seconds"):
        om.histogram(f"{prefix}_{name}", {**worker, "mode": "text2img"}, per_minute=4)
    om.histogram(f"{prefix}_upload_seconds", worker, per_minute=4)
    om.histogram(f"{prefix}_micro_batch_images", worker, per_minute=2)
    om.gauge(f"{prefix}_worker_busy", worker, lambda i: 1)
    om.gauge(f"{prefix}_last_progress_timestamp_seconds", worker, lambda i: start + i * STEP - 20)
    info = {"worker": "kandinsky-worker-base-0", "modes": "text2img,img2img,interpolate"}
    om.gauge(
        f"{prefix}_worker_info",
        {**worker, **info, "device": "cuda:0", "dtype": "float16", "version": "0.1.0"},
        lambda i: 1,
    )
    gpu = {**worker, "device": "cuda:0"}
    for name, value in (("allocated_bytes", 7e9), ("reserved_bytes", 9e9), ("used_bytes", 11e9)):
        om.gauge(f"{prefix}_gpu_memory_{name}", gpu, lambda i, v=value: v)
    om.gauge(f"{prefix}_gpu_utilization_ratio", gpu, lambda i: 0.9)
    om.gauge("process_start_time_seconds", worker, lambda i: start - 100 if i < 10 else start + 500)
    for api in API_PODS:
        labels = {"namespace": "dash", "job": "kandinsky-api", "instance": api}
        for mode in QUEUES:
            queue = {**labels, "queue": f"{prefix}.{mode}"}
            for priority, count in (("normal", 3), ("low", 1)):
                om.gauge(f"{prefix}_queue_messages", {**queue, "priority": priority}, lambda i, v=count: v)
            om.gauge(f"{prefix}_queue_jobs", queue, lambda i: 30)
            om.gauge(f"{prefix}_jobs_in_flight", queue, lambda i: 8)
            om.gauge(f"{prefix}_busy_workers", queue, lambda i: 1)
            om.gauge(f"{prefix}_oldest_queued_seconds", queue, lambda i: 60.0 * i)
        om.gauge(f"{prefix}_dead_letters", labels, lambda i: i // 10)
        om.gauge(f"{prefix}_webhook_deliveries_pending", labels, lambda i: 2)
    return om.text()


class PrometheusServer:
    def __init__(self, url: str, at: int) -> None:
        self.url = url
        self.at = at  # the time of the last synthetic sample

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at `at`; asserts HTTP 200 and status success (valid PromQL)."""
        body = urllib.parse.urlencode({"query": expr, "time": str(self.at)}).encode()
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query", data=body, timeout=30) as response:
                status, payload = response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            pytest.fail(f"Prometheus refused {expr!r}: {exc.code} {exc.read().decode()}")
        assert status == 200 and payload["status"] == "success", payload
        assert payload["data"]["resultType"] == "vector", payload
        return list(payload["data"]["result"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """`prometheus` on a free port, over a TSDB backfilled with synthetic_series()."""
    binary = require_system_tool("prometheus", INSTALL)
    work = tmp_path_factory.mktemp("prometheus")
    end = int(time.time()) // STEP * STEP - 2 * STEP
    start = end - (SAMPLES - 1) * STEP
    (work / "series.om").write_text(synthetic_series(start))
    backfill = run(
        [promtool(), "tsdb", "create-blocks-from", "openmetrics", str(work / "series.om"), str(work / "tsdb")]
    )
    assert backfill.returncode == 0, backfill.stdout + backfill.stderr
    (work / "prometheus.yml").write_text("global:\n  scrape_interval: 1m\n")
    port = free_port()
    log = (work / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (work / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready in 60 s"
            time.sleep(0.2)
        yield PrometheusServer(url, end)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_the_synthetic_series_are_loaded(prometheus: PrometheusServer) -> None:
    """Guards the tests below: an empty TSDB would make every `no result` case pass."""
    result = prometheus.query('count(kandinsky_batch_queue_jobs{namespace="busy-and-queued"})')
    assert [float(r["value"][1]) for r in result] == [len(API_PODS) * len(QUEUES)]


def keda_queries(m: Manifests) -> dict[str, str]:
    return {
        s["metadata"]["name"]: t["metadata"]["query"]
        for s in m.of("ScaledObject")
        for t in s["spec"]["triggers"]
        if t["type"] == "prometheus"
    }


@pytest.mark.parametrize("render", ["gpu", "dev-prometheus"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_keda_queries_give_the_replica_arithmetic(
    prometheus: PrometheusServer, variants: dict[str, Manifests], render: str, scenario: str
) -> None:
    m = variants[render]
    queries = keda_queries(m)
    assert set(queries) == {"kandinsky-worker-base", "kandinsky-worker-inpaint"}
    expected = {
        "kandinsky-worker-base": SCENARIOS[scenario].base,
        "kandinsky-worker-inpaint": SCENARIOS[scenario].inpaint,
    }
    for name, query in queries.items():
        assert parse_keda_query(query).namespaces == [m.namespace] * 2
        result = prometheus.query(query.replace(f'namespace="{m.namespace}"', f'namespace="{scenario}"'))
        if expected[name] is None:
            assert result == [], f"{name}: no data must be no value (an error for KEDA), not {result}"
        else:
            assert len(result) == 1, f"{name}: KEDA needs exactly one sample, got {result}"
            value = float(result[0]["value"][1])
            assert value == expected[name], (
                f"{name} in {scenario}: {value} replicas, expected {expected[name]}"
            )
            assert value == math.ceil(value), "threshold 1: the value is the replica count"


def test_the_alert_and_keda_expressions_name_only_exported_metrics(variants: dict[str, Manifests]) -> None:
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    exprs += keda_queries(variants["gpu"]).values()
    for expr in exprs:
        names = metric_names(expr)
        assert names and names <= KNOWN, f"unknown metrics {sorted(names - KNOWN)} in {expr!r}"


# --- The Grafana dashboard ----------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def test_the_dashboard_is_one_uid_with_a_datasource_and_namespace_variable() -> None:
    d = dashboard()
    assert d["uid"] == "kandinsky-batch"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert variables["namespace"]["includeAll"] and variables["namespace"]["allValue"] == ".*"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert '$namespace"' in target["expr"], (
                f"{panel['title']}: not filtered by the namespace variable"
            )


def test_the_dashboard_names_only_exported_metrics_and_covers_them() -> None:
    used: set[str] = set()
    for title, expr in dashboard_exprs():
        names = metric_names(expr)
        assert names and names <= KNOWN, f"{title}: unknown metrics {sorted(names - KNOWN)}"
        used |= names
    wanted = {
        "kandinsky_batch_images_total",  # throughput
        "kandinsky_batch_jobs_total",  # jobs by outcome, errors by code
        "kandinsky_batch_queue_jobs",
        "kandinsky_batch_queue_messages",
        "kandinsky_batch_oldest_queued_seconds",
        "kandinsky_batch_generation_seconds_bucket",
        "kandinsky_batch_image_seconds_bucket",
        "kandinsky_batch_upload_seconds_bucket",
        "kandinsky_batch_gpu_memory_allocated_bytes",
        "kandinsky_batch_gpu_memory_reserved_bytes",
        "kandinsky_batch_gpu_memory_used_bytes",
        "kandinsky_batch_gpu_utilization_ratio",
        "kandinsky_batch_busy_workers",
        "kandinsky_batch_dead_letters",
        "kandinsky_batch_webhook_deliveries_pending",
    }
    assert wanted - used == set()
    exprs = [expr for _, expr in dashboard_exprs()]
    assert any("by (outcome)" in e for e in exprs), "jobs by outcome"
    assert any("by (code" in e and 'outcome="failed"' in e for e in exprs), "errors by code"
    for histogram in ("generation_seconds", "image_seconds", "upload_seconds"):
        assert any("histogram_quantile(0.95, sum by (le" in e and histogram in e for e in exprs), histogram


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends: its variables filled in (the synthetic series' namespace is "dash")."""
    text = expr.replace("$__rate_interval", "5m").replace("$namespace", "dash")
    assert "$" not in text, f"a Grafana variable the test does not fill in: {expr!r}"
    return text


@pytest.mark.parametrize(("title", "expr"), dashboard_exprs())
def test_every_dashboard_query_parses_and_shows_data(
    prometheus: PrometheusServer, title: str, expr: str
) -> None:
    assert prometheus.query(grafana_to_promql(expr)), f"{title}: no data from {expr!r}"


def test_dashboard_queries_take_one_value_across_api_pods(prometheus: PrometheusServer) -> None:
    """Two API pods export 30 queued jobs for each queue: the panel shows 30, not 60."""
    (expr,) = [e for t, e in dashboard_exprs() if t == "Queued jobs by queue"]
    result = prometheus.query(grafana_to_promql(expr))
    assert {float(r["value"][1]) for r in result} == {30.0}


def test_an_empty_panel_would_be_caught(prometheus: PrometheusServer) -> None:
    """Guards the data test: a misspelt metric returns nothing rather than an error."""
    assert prometheus.query('kandinsky_batch_images_totl{namespace="dash"}') == []
