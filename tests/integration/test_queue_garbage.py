"""Any bytes on a queue: each item is dropped with one warning, or fails its jobs with a code, and
the one worker process reads past all of them with no restart and no reconnect.

A table of malformed items of every kind (types, encodings, envelope fields, bodies, sizes) goes
onto a real worker's queue, raw, with LPUSH; a good job after them must still succeed.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kandinsky_batch.keys import TASK_NAME, JobRef
from kandinsky_batch.schema import JobState, Mode
from producer.client import Client
from tests.conftest import WorkerProcess, make_settings

pytestmark = pytest.mark.integration

TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def item(queue: str, body: Any = None, *, raw_body: str | None = None, **overrides: Any) -> bytes:
    """A message as kombu's Redis transport stores it, with the parts a case wants broken."""
    if raw_body is None:
        raw_body = base64.b64encode(json.dumps(body).encode()).decode()
    envelope: dict[str, Any] = {
        "body": raw_body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": TASK_NAME, "id": str(uuid.uuid4()), "retries": 0},
        "properties": {
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    for key, value in overrides.items():
        if value is None:
            envelope.pop(key, None)
        elif isinstance(value, dict) and isinstance(envelope.get(key), dict):
            envelope[key] = {**envelope[key], **value}
        else:
            envelope[key] = value
    return json.dumps(envelope).encode()


def call(kwargs: Any) -> list[Any]:
    return [[], kwargs, EMBED]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# Each case: (id, item maker). All are dropped (one warning each); none names a job.
DROPPED: list[tuple[str, Callable[[str], bytes]]] = [
    ("empty", lambda q: b""),
    ("not-json", lambda q: b"this is not JSON"),
    ("not-utf8", lambda q: b"\xff\xfe\x00garbage"),
    ("json-list", lambda q: b"[1, 2, 3]"),
    ("json-string", lambda q: b'"a string"'),
    ("json-number", lambda q: b"42"),
    ("json-null", lambda q: b"null"),
    ("json-true", lambda q: b"true"),
    ("json-object-not-envelope", lambda q: b"{}"),
    ("kombu-unacked-shape", lambda q: json.dumps([{"body": "x"}, "", q]).encode()),
    ("deeply-nested", lambda q: nested(100_000)),
    ("body-a-number", lambda q: json.dumps({**json.loads(item(q, call({}))), "body": 5}).encode()),
    ("body-not-base64", lambda q: item(q, raw_body="!!! not base64 !!!")),
    ("body-base64-not-json", lambda q: item(q, raw_body=b64(b"{not json"))),
    ("body-base64-not-utf8", lambda q: item(q, raw_body=b64(b"\xff\xfe\xfd"))),
    ("body-deeply-nested", lambda q: item(q, raw_body=b64(nested(100_000)))),
    ("body-a-list-of-two", lambda q: item(q, [[], {}])),
    ("body-an-object", lambda q: item(q, {"batch_id": "x", "jobs": []})),
    ("body-kwargs-a-list", lambda q: item(q, [[], [1, 2], {}])),
    ("body-args-not-a-list", lambda q: item(q, [{}, {}, {}])),
    ("body-embed-a-string", lambda q: item(q, [[], {}, "x"])),
    ("body-encoding-unknown", lambda q: item(q, call({}), properties={"body_encoding": "rot13"})),
    (
        "pickle-content-type",
        lambda q: item(q, call({}), **{"content-type": "application/x-python-serialize"}),
    ),
    ("yaml-content-type", lambda q: item(q, call({}), **{"content-type": "application/x-yaml"})),
    ("no-content-type", lambda q: item(q, call({}), **{"content-type": None})),
    ("binary-content-encoding", lambda q: item(q, call({}), **{"content-encoding": "binary"})),
    ("no-headers", lambda q: item(q, call({}), headers=None)),
    ("headers-a-string", lambda q: item(q, call({}), headers="x")),
    ("no-task-header", lambda q: item(q, call({}), headers={"task": None})),
    ("unknown-task", lambda q: item(q, call({}), headers={"task": "no.such.task"})),
    ("task-id-a-number", lambda q: item(q, call({}), headers={"id": 7})),
    ("no-properties", lambda q: item(q, call({}), properties=None)),
    ("properties-a-list", lambda q: item(q, call({}), properties=[1])),
    ("no-delivery-info", lambda q: item(q, call({}), properties={"delivery_info": None})),
    ("no-delivery-tag", lambda q: item(q, call({}), properties={"delivery_tag": None})),
    ("priority-a-string", lambda q: item(q, call({}), properties={"priority": "high"})),
    ("oversized-body", lambda q: item(q, raw_body="A" * (65 * 1024 * 1024))),
    # Envelopes of our task whose call is not ours: the task reads and drops them.
    ("kwargs-empty", lambda q: item(q, call({}))),
    (
        "batch-id-a-path",
        lambda q: item(q, call({"v": 1, "batch_id": "../../x", "jobs": [{"index": 0, "spec": {}}]})),
    ),
    ("batch-id-with-slash", lambda q: item(q, call({"v": 1, "batch_id": "a/b", "jobs": []}))),
    ("batch-id-too-long", lambda q: item(q, call({"v": 1, "batch_id": "b" * 65, "jobs": []}))),
    ("jobs-not-a-list", lambda q: item(q, call({"v": 1, "batch_id": "b", "jobs": {"index": 0}}))),
]


@pytest.fixture(scope="module")
def worker(
    redis_url: str, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    root = tmp_path_factory.mktemp("garbage")
    proc = WorkerProcess(make_settings(redis_url, tiny_models, root, modes=["text2img"]), root / "w.log")
    proc.start()
    yield proc
    proc.stop()


def test_every_malformed_item_is_dropped_once_and_the_same_worker_goes_on(worker: WorkerProcess):
    settings = worker.settings
    queue = settings.queue_for(Mode.TEXT2IMG)
    pid = worker.proc.pid if worker.proc else None
    with Client(settings) as client:
        # Given every malformed item on the queue, then jobs whose message names them
        for _, make in DROPPED:
            client.redis.lpush(queue, make(queue))
        bad_index = {"v": 1, "batch_id": f"ix-{uuid.uuid4().hex[:6]}", "shared": TINY,
                     "jobs": [{"index": 0, "spec": {"prompt": "fine"}}, {"index": "1", "spec": {}}]}  # fmt: skip
        client.redis.lpush(queue, item(queue, call(bad_index)))
        bad_spec = {"v": 1, "batch_id": f"sp-{uuid.uuid4().hex[:6]}", "shared": {},
                    "jobs": [{"index": 0, "spec": {"prompt": "x", "height": 65}}]}  # fmt: skip
        client.redis.lpush(queue, item(queue, call(bad_spec)))
        # And a good job last
        good = client.submit({"prompt": "after the garbage", **TINY})
        deadline = time.monotonic() + 120
        while client.status_store.state(good) not in (JobState.SUCCEEDED, JobState.FAILED):
            assert worker.alive(), worker.log()
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.2)
        # Then it succeeded, in the same process, which never reconnected or logged a traceback
        assert client.status_store.state(good) is JobState.SUCCEEDED
        assert worker.alive() and worker.proc is not None and worker.proc.pid == pid
        log = worker.log_path.read_text(errors="replace")
        assert "Connection to broker lost" not in log and "Traceback" not in log
        # Each malformed item was dropped with one warning, or failed its jobs with a code
        dropped = [line for line in log.splitlines() if "WARNING" in line and "dropp" in line]
        assert len(dropped) == len(DROPPED), "\n".join(dropped)
        jobs = {i: client.status_store.job(JobRef(bad_index["batch_id"], i)) for i in (0,)}
        assert jobs[0].state is JobState.FAILED and jobs[0].error and jobs[0].error.code == "bad_message"
        spec_job = client.status_store.job(JobRef(bad_spec["batch_id"], 0))
        assert spec_job.error is not None and spec_job.error.code == "invalid_spec"
        assert sum(client.status_store.fair.waiting(queue).values()) == 0
