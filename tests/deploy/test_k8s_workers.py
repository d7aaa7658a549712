"""Worker Deployments: modes, settings, GPUs, probes, shutdown, model cache, disruption budgets."""

from __future__ import annotations

from kandinsky_batch.schema import Mode

from .kube import Manifests, main_container, pod_labels, selector_matches, settings_from, worker_env
from .tools import REPO

CHECK = ["kandinsky-batch", "worker", "check"]


def test_worker_settings_parse_with_the_real_settings_class(m: Manifests) -> None:
    for worker in m.workers():
        settings = settings_from(worker_env(m, worker))
        assert settings.redis_url.startswith("redis://:") and "@kandinsky-redis:6379/" in settings.redis_url
        assert settings.storage_url.startswith("s3://")
        assert settings.worker_name, "each pod reports its own name as the worker id"


def test_every_mode_is_served_by_exactly_one_worker_group(m: Manifests) -> None:
    served = [settings_from(worker_env(m, w)).modes for w in m.workers()]
    flat = [mode for modes in served for mode in modes]
    assert sorted(flat) == sorted(Mode), f"{m.overlay}: modes per group {served}"


def test_text2img_img2img_and_interpolate_share_a_group(m: Manifests) -> None:
    """They share one prior + decoder in memory; inpaint adds its own decoder elsewhere."""
    groups = {w["metadata"]["name"]: set(settings_from(worker_env(m, w)).modes) for w in m.workers()}
    assert groups["kandinsky-worker-base"] == {Mode.TEXT2IMG, Mode.IMG2IMG, Mode.INTERPOLATE}
    assert groups["kandinsky-worker-inpaint"] == {Mode.INPAINT}


def test_termination_grace_outlasts_the_workers_shutdown_grace(m: Manifests) -> None:
    """SIGTERM -> finish the micro-batch or hand the jobs back within SHUTDOWN_GRACE_S;
    the pod must get that long plus room for the upload before SIGKILL."""
    for worker in m.workers():
        grace = settings_from(worker_env(m, worker)).shutdown_grace_s
        period = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert period >= grace + 30, f"{worker['metadata']['name']}: {period}s <= {grace}s + 30s"


def test_every_probe_runs_the_real_worker_check(m: Manifests) -> None:
    for worker in m.workers():
        c = main_container(worker)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["exec"]["command"] == CHECK, f"{worker['metadata']['name']}: {probe}"
            assert c[probe]["timeoutSeconds"] >= 10, "the check imports Python and pings Redis and storage"


def test_probes_allow_a_first_download_and_ride_out_short_outages(m: Manifests) -> None:
    minutes = 30 if m.overlay == "gpu" else 5
    for worker in m.workers():
        c = main_container(worker)
        startup = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
        assert startup >= minutes * 60, f"startup budget {startup}s < {minutes} min"
        liveness = c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"]
        assert liveness >= 180, f"liveness would restart workers after a {liveness}s Redis blip"


def test_gpu_workers_get_one_gpu_each_on_gpu_nodes(rendered: dict[str, Manifests]) -> None:
    m = rendered["gpu"]
    for worker in m.workers():
        pod = worker["spec"]["template"]["spec"]
        resources = main_container(worker)["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == "1", "one worker process per GPU"
        assert pod["nodeSelector"], "GPU pods must land on GPU nodes"
        assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
        settings = settings_from(worker_env(m, worker))
        assert settings.device.startswith("cuda")
        assert settings.dtype == "float16"


def test_gpu_workers_run_the_real_models(rendered: dict[str, Manifests]) -> None:
    m = rendered["gpu"]
    for worker in m.workers():
        settings = settings_from(worker_env(m, worker))
        assert settings.prior_model == "kandinsky-community/kandinsky-2-1-prior"
        assert settings.decoder_model == "kandinsky-community/kandinsky-2-1"
        assert settings.inpaint_model == "kandinsky-community/kandinsky-2-1-inpaint"


def test_dev_workers_run_the_tiny_model_on_cpu(rendered: dict[str, Manifests]) -> None:
    m = rendered["dev"]
    for worker in m.workers():
        pod = worker["spec"]["template"]["spec"]
        assert not any("nvidia.com/gpu" in str(c.get("resources")) for c in pod["containers"])
        (init,) = [c for c in pod["initContainers"] if c["name"] == "tiny-model"]
        assert init["args"][:2] == ["models", "make-tiny"]
        tiny_dir = init["args"][2]
        settings = settings_from(worker_env(m, worker))
        assert settings.device == "cpu"
        for part, model in (
            ("prior", settings.prior_model),
            ("decoder", settings.decoder_model),
            ("inpaint", settings.inpaint_model),
        ):
            assert model == f"{tiny_dir}/{part}"
        # the init container writes where the worker reads
        mounts = {v["name"]: v["mountPath"] for v in init["volumeMounts"]}
        worker_mounts = {v["name"]: v["mountPath"] for v in main_container(worker)["volumeMounts"]}
        (volume,) = [n for n, p in mounts.items() if tiny_dir.startswith(p + "/")]
        assert worker_mounts[volume] == mounts[volume]


def hf_home_from_dockerfile() -> str:
    text = (REPO / "docker/worker.Dockerfile").read_text(encoding="utf-8")
    (value,) = [line.split("HF_HOME=", 1)[1].split()[0] for line in text.splitlines() if "HF_HOME=" in line]
    return value


def test_gpu_workers_share_one_model_cache_volume(rendered: dict[str, Manifests]) -> None:
    """HF_HOME (set in the image) lies on one ReadWriteMany claim that every worker mounts."""
    m = rendered["gpu"]
    hf_home = hf_home_from_dockerfile()
    claims = set()
    for worker in m.workers():
        pod = worker["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (mount,) = [
            v for v in main_container(worker)["volumeMounts"] if hf_home.startswith(v["mountPath"] + "/")
        ]
        claims.add(volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])
    (claim,) = claims
    assert "ReadWriteMany" in m.get("PersistentVolumeClaim", claim)["spec"]["accessModes"]


def test_read_only_root_leaves_the_ready_file_and_tmp_writable(m: Manifests) -> None:
    for worker in m.workers():
        c = main_container(worker)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        mounted = [v["mountPath"] for v in c["volumeMounts"] if not v.get("readOnly")]
        ready = str(settings_from(worker_env(m, worker)).ready_file)
        assert "/tmp" in mounted
        assert any(ready.startswith(p + "/") for p in mounted), f"READY_FILE {ready} is not on a volume"
        assert any(hf_home_from_dockerfile().startswith(p + "/") for p in mounted), "HF_HOME is not writable"


def test_keda_owns_the_replica_count(m: Manifests) -> None:
    for worker in m.workers():
        assert "replicas" not in worker["spec"], "kubectl apply would reset what KEDA scaled"


def test_each_worker_group_has_a_budget_that_never_blocks_a_drain(m: Manifests) -> None:
    budgets = m.of("PodDisruptionBudget")
    for worker in m.workers():
        labels = pod_labels(worker)
        matching = [b for b in budgets if selector_matches(b["spec"]["selector"], labels)]
        assert len(matching) == 1, f"{worker['metadata']['name']}: {len(matching)} budgets"
        spec = matching[0]["spec"]
        assert "minAvailable" not in spec, "minAvailable blocks draining a node whose group has one pod"
        assert spec["maxUnavailable"] == 1
