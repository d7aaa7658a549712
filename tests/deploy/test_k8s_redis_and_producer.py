"""The Redis StatefulSet (durable, never evicting) and the producer Job (bulk submission)."""

from __future__ import annotations

import re

from kandinsky_batch.schema import JobSpec

from .kube import EXTERNAL_SECRETS, Manifests, container_env, main_container, settings_from
from .tools import REPO

MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def to_bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity.strip())
    assert match, f"not a memory quantity: {quantity}"
    return int(match[1]) * MEMORY_UNITS.get(match[2], 1)


def redis_conf(m: Manifests) -> dict[str, str]:
    redis = m.get("StatefulSet", "kandinsky-redis")
    pod = redis["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    text = m.get("ConfigMap", volume["configMap"]["name"])["data"]["redis.conf"]
    pairs = (line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {key: value.strip() for key, value in pairs}


def test_redis_keeps_every_write_and_never_evicts(m: Manifests) -> None:
    conf = redis_conf(m)
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] in ("everysec", "always")
    assert conf["maxmemory-policy"] == "noeviction", "an evicted queue message is a lost job"


def test_redis_says_full_before_the_kernel_kills_it(m: Manifests) -> None:
    limit = main_container(m.get("StatefulSet", "kandinsky-redis"))["resources"]["limits"]["memory"]
    assert to_bytes(redis_conf(m)["maxmemory"]) <= 0.8 * to_bytes(limit)


def test_redis_data_lives_on_a_persistent_volume(m: Manifests) -> None:
    redis = m.get("StatefulSet", "kandinsky-redis")
    claims = {t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]}
    mounts = {v["mountPath"]: v["name"] for v in main_container(redis)["volumeMounts"]}
    assert mounts[redis_conf(m)["dir"]] in claims
    assert redis["spec"]["replicas"] == 1


def test_redis_requires_the_password_the_clients_use(m: Manifests) -> None:
    redis = main_container(m.get("StatefulSet", "kandinsky-redis"))
    secrets = EXTERNAL_SECRETS.get(m.overlay, {})
    password = container_env(m, redis, secrets)["REDISCLI_AUTH"]
    assert "--requirepass" in redis["args"]
    for worker in m.workers():
        env = container_env(m, main_container(worker), secrets)
        assert f"redis://:{password}@" in settings_from(env).redis_url


def submit_job(m: Manifests) -> dict:
    return m.get("Job", "kandinsky-submit")


def test_producer_job_submits_a_jsonl_file_it_mounts(m: Manifests) -> None:
    job = submit_job(m)
    c = main_container(job)
    assert c["args"][:2] == ["submit", "--file"]
    path = c["args"][2]
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [v for v in c["volumeMounts"] if path.startswith(v["mountPath"] + "/")]
    jobs = m.get("ConfigMap", volumes[mount["name"]]["configMap"]["name"])["data"][path.rsplit("/", 1)[1]]
    lines = [line for line in jobs.splitlines() if line.strip()]
    assert lines
    for line in lines:
        JobSpec.model_validate_json(line)


def test_producer_settings_parse_and_point_at_the_same_redis_as_the_workers(m: Manifests) -> None:
    secrets = EXTERNAL_SECRETS.get(m.overlay, {})
    producer = settings_from(container_env(m, main_container(submit_job(m)), secrets))
    for worker in m.workers():
        ours = settings_from(container_env(m, main_container(worker), secrets))
        assert (producer.redis_url, producer.queue_prefix) == (ours.redis_url, ours.queue_prefix)
        assert producer.storage_url == ours.storage_url


def test_producer_job_runs_in_dev_and_waits_to_be_started_elsewhere(m: Manifests) -> None:
    assert submit_job(m)["spec"]["suspend"] is (m.overlay != "dev")
    assert submit_job(m)["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_producer_image_is_the_slim_one(m: Manifests) -> None:
    assert main_container(submit_job(m))["image"].split(":")[0].endswith("kandinsky-batch-producer")


def test_k8s_example_batches_match_the_compose_examples() -> None:
    examples = REPO / "docker/examples"
    assert (REPO / "k8s/base/jobs.jsonl").read_bytes() == (examples / "jobs.jsonl").read_bytes()
    assert (REPO / "k8s/overlays/dev/jobs.jsonl").read_bytes() == (examples / "tiny.jsonl").read_bytes()
