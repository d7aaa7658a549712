"""docker/compose.yaml, checked without a Docker engine: structure, references, settings.

`docker compose config` runs too where a Compose v2 exists (not here: only the docker client
is installed, without the compose plugin), so the structural checks below carry the load.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from kandinsky_batch.schema import JobSpec
from kandinsky_batch.settings import Settings

from .kube import settings_from
from .test_dockerfiles import PRODUCER, final_stage

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"
HERE = COMPOSE_FILE.parent
TOP_LEVEL = {"name", "services", "volumes", "networks", "configs", "secrets", "include", "models"}
CHECK = ["CMD", "kandinsky-batch", "worker", "check"]
PARTS = {
    "redis",
    "minio",
    "minio-init",
    "api",
    "worker-gpu",
    "worker-cpu",
    "tiny-model",
    "producer",
    "flower",
}


def interpolate(value: Any) -> Any:
    """Compose's `${VAR:-default}` with nothing set (the defaults a fresh checkout gets)."""
    if isinstance(value, str):
        value = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}", lambda g: g[2] or "", value)
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))  # also resolves << merge keys
    return interpolate(data)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if n.startswith("worker-")}


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration))


def test_compose_file_has_only_known_top_level_keys(compose: dict[str, Any]) -> None:
    unknown = {k for k in compose if not k.startswith("x-")} - TOP_LEVEL
    assert not unknown, f"unknown top-level keys {unknown} (the obsolete `version` among them?)"
    assert compose["name"] == "kandinsky-batch"


def test_the_stack_has_every_part(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= PARTS


def test_every_reference_resolves(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                assert (HERE / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
        if "build" in service:
            context = HERE / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file(), f"{name}: no Dockerfile"
            assert (context / "pyproject.toml").is_file(), f"{name}: the build context is not the repo root"


def test_redis_keeps_every_write_and_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])


def test_bucket_is_created_for_the_storage_url(services: dict[str, dict[str, Any]]) -> None:
    init = services["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(init["command"])
    for name, service in services.items():
        storage = env_of(service).get("KANDINSKY_BATCH_STORAGE_URL")
        if storage:
            bucket = urlsplit(storage).netloc
            assert re.search(rf"mc mb --ignore-existing \w+/{re.escape(bucket)}\b", script), name
            assert service["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_every_setting_is_a_real_one_and_parses(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        env = env_of(service)
        if any(k.startswith("KANDINSKY_BATCH_") for k in env):
            settings = settings_from(env)
            assert urlsplit(settings.redis_url).hostname == "redis", name
            if "KANDINSKY_BATCH_STORAGE_URL" in env:  # Flower needs Redis only
                assert urlsplit(settings.s3_endpoint_url or "").hostname == "minio", name


def test_gpu_worker_reserves_a_gpu_and_runs_the_real_models(services: dict[str, dict[str, Any]]) -> None:
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    settings = settings_from(env_of(gpu))
    assert settings.device.startswith("cuda")
    defaults = Settings.model_fields
    for field in ("prior_model", "decoder_model", "inpaint_model"):
        assert getattr(settings, field) == defaults[field].default, "the real weights from the Hub"


def test_cpu_worker_runs_the_tiny_model_that_tiny_model_writes(services: dict[str, dict[str, Any]]) -> None:
    cpu, tiny = services["worker-cpu"], services["tiny-model"]
    assert cpu["profiles"] == tiny["profiles"] == ["cpu"]
    assert "deploy" not in cpu
    assert tiny["command"][:2] == ["models", "make-tiny"]
    tiny_dir = tiny["command"][2]
    settings = settings_from(env_of(cpu))
    assert settings.device == "cpu"
    assert (settings.prior_model, settings.decoder_model, settings.inpaint_model) == tuple(
        f"{tiny_dir}/{part}" for part in ("prior", "decoder", "inpaint")
    )
    assert cpu["depends_on"]["tiny-model"]["condition"] == "service_completed_successfully"
    shared = {v.split(":")[0] for v in cpu["volumes"]} & {v.split(":")[0] for v in tiny["volumes"]}
    assert shared, "the worker must see the volume the model was written to"
    assert cpu["image"] == tiny["image"] and cpu["build"] == tiny["build"]
    assert "download.pytorch.org/whl/cpu" in cpu["build"]["args"]["TORCH_INDEX_URL"]


def test_workers_report_health_with_the_real_check(services: dict[str, dict[str, Any]]) -> None:
    for name, worker in workers(services).items():
        assert worker["healthcheck"]["test"] == CHECK, name


def test_workers_get_time_to_finish_or_hand_back_their_jobs(services: dict[str, dict[str, Any]]) -> None:
    for name, worker in workers(services).items():
        grace = settings_from(env_of(worker)).shutdown_grace_s
        assert seconds(worker["stop_grace_period"]) >= grace + 15, name


def test_workers_api_and_producer_run_read_only_without_capabilities(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in [*workers(services), "tiny-model", "producer", "api"]:
        service = services[name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "/tmp" in service["tmpfs"], name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_ports_are_published_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_producer_submits_an_example_batch(services: dict[str, dict[str, Any]]) -> None:
    producer = services["producer"]
    assert producer["command"][:2] == ["submit", "--file"]
    mount_source, mount_target = producer["volumes"][0].split(":")[:2]
    default_file = HERE / mount_source / Path(producer["command"][2]).relative_to(mount_target)
    assert default_file.is_file()
    assert producer["build"]["dockerfile"] == "docker/producer.Dockerfile", "the slim image, no torch"


def test_api_runs_kandinsky_batch_api_from_the_producer_image(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    (entrypoint,) = [json.loads(rest) for keyword, rest in final_stage(PRODUCER) if keyword == "ENTRYPOINT"]
    assert [*api.get("entrypoint", entrypoint), *api["command"]] == ["kandinsky-batch", "api"]
    assert api["build"]["dockerfile"] == "docker/producer.Dockerfile", "the slim image, no torch"
    assert api["image"] == services["producer"]["image"]
    assert "profiles" not in api, "the API starts with every profile"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"


def test_api_is_published_on_loopback_only_at_the_port_it_listens_on(
    services: dict[str, dict[str, Any]],
) -> None:
    api = services["api"]
    settings = settings_from(env_of(api))
    assert settings.api_host == "0.0.0.0", "the default (127.0.0.1) is unreachable from the host"
    (port,) = api["ports"]
    host_ip, host_port, container_port = str(port).split(":")
    assert host_ip == "127.0.0.1"
    assert (int(host_port), int(container_port)) == (8000, settings.api_port)


def run_healthcheck(code: str, url: str, status: int) -> int:
    """Run the check's python against a local server answering `status`; its exit code."""

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == urlsplit(url).path else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Answer) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            local = code.replace(url, f"http://127.0.0.1:{server.server_port}{urlsplit(url).path}")
            return subprocess.run([sys.executable, "-c", local], capture_output=True, timeout=30).returncode
        finally:
            server.shutdown()


def test_api_healthcheck_asks_the_api_with_the_images_python(services: dict[str, dict[str, Any]]) -> None:
    """The producer image has python (no curl); the check must fail on a 503, not only on no answer."""
    check = services["api"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    code = check[3]
    (url,) = re.findall(r"http://[^'\"]+", code)
    parts = urlsplit(url)
    assert parts.path in ("/readyz", "/healthz")
    assert parts.port == settings_from(env_of(services["api"])).api_port
    assert run_healthcheck(code, url, 200) == 0
    assert run_healthcheck(code, url, 503) != 0, "an unready API must turn the container unhealthy"


@pytest.mark.parametrize("example", sorted((HERE / "examples").glob("*.jsonl")), ids=lambda p: p.name)
def test_example_batches_are_valid_job_specs(example: Path) -> None:
    lines = [line for line in example.read_text(encoding="utf-8").splitlines() if line.strip()]
    specs = [JobSpec.model_validate_json(line) for line in lines]
    assert {spec.mode for spec in specs} == {"text2img", "img2img", "inpaint", "interpolate"}


def test_redis_requires_a_password_and_every_client_url_carries_it(
    services: dict[str, dict[str, Any]],
) -> None:
    command = services["redis"]["command"]
    password = command[command.index("--requirepass") + 1]
    assert password and env_of(services["redis"])["REDISCLI_AUTH"] == password
    clients = [s for s in services.values() if "KANDINSKY_BATCH_REDIS_URL" in env_of(s)]
    assert clients
    for service in clients:
        url = urlsplit(env_of(service)["KANDINSKY_BATCH_REDIS_URL"])
        assert (url.hostname, url.password) == ("redis", password)


def test_flower_runs_the_workers_app_behind_a_profile_on_loopback(
    services: dict[str, dict[str, Any]],
) -> None:
    flower = services["flower"]
    assert flower["profiles"] == ["flower"]
    assert flower["entrypoint"][:4] == ["celery", "-A", "producer.flower", "flower"]
    assert all(str(p).startswith("127.0.0.1:") for p in flower["ports"])
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"
