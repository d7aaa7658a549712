"""Our bulk envelope against Celery's own: the same message a worker pops from the same list."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
import redis

from kandinsky_batch.broker import make_celery
from kandinsky_batch.envelope import task_envelope
from kandinsky_batch.keys import TASK_NAME, kombu_list, queue_lists
from kandinsky_batch.settings import Settings

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("priority", [0, 1, 3, 9])
def test_the_envelope_matches_what_celery_sends(redis_url: str, priority: int):
    prefix = f"kbt-env-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=redis_url, queue_prefix=prefix, key_prefix=prefix)
    queue = f"{prefix}.text2img"
    kwargs = {"v": 1, "batch_id": "b", "shared": {}, "jobs": [{"index": 0, "spec": {"prompt": "Кошка ☃"}}]}
    client = redis.Redis.from_url(redis_url)
    app = make_celery(settings)
    try:
        app.send_task(TASK_NAME, kwargs=kwargs, queue=queue, priority=priority, argsrepr="()", kwargsrepr="r")
        target = kombu_list(queue, priority)
        theirs = json.loads(client.rpop(target) or b"{}")
        ours = json.loads(task_envelope(TASK_NAME, kwargs, queue, priority, kwargsrepr="r"))
        assert set(ours) == set(theirs)
        assert set(ours["headers"]) == set(theirs["headers"])
        # Celery also copies argsrepr/kwargsrepr and a reply_to into the properties; workers ignore them.
        assert set(ours["properties"]) == set(theirs["properties"]) - {"argsrepr", "kwargsrepr", "reply_to"}
        for part in ("headers", "properties"):
            for name in ("id", "root_id", "correlation_id", "delivery_tag", "origin", "reply_to"):
                theirs[part].pop(name, None)
                ours[part].pop(name, None)
        theirs["properties"].pop("argsrepr")
        theirs["properties"].pop("kwargsrepr")
        assert ours["headers"] == theirs["headers"]
        assert ours["properties"] == theirs["properties"]
        assert {k: v for k, v in ours.items() if k not in ("headers", "properties", "body")} == {
            k: v for k, v in theirs.items() if k not in ("headers", "properties", "body")
        }
        assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(theirs["body"]))
    finally:
        app.close()
        client.delete(*queue_lists(queue))
        client.close()
