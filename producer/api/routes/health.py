"""`/healthz`, `/readyz` and `/metrics`: what probes and Prometheus read. No key is needed.

`/healthz` says the process can still serve (its event loop answers and its worker threads are
not stuck: producer/api/liveness.py), `/readyz` that Redis and storage answer. `/metrics` is a
router of its own, included only with `API_METRICS` on.
"""

from __future__ import annotations

import logging

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kandinsky_batch.errors import KandinskyBatchError
from producer.api import problems
from producer.api.deps import RegistryDep, Sdk
from producer.api.liveness import threads_move
from producer.api.models import Health, streamed
from producer.api.problems import Problem

log = logging.getLogger(__name__)
router = APIRouter()
metrics_router = APIRouter()


@metrics_router.get(
    "/metrics",
    summary="Queue metrics for Prometheus",
    response_class=Response,
    responses=streamed("text/plain", "The metrics, in Prometheus' text format."),
)
def metrics(registry: RegistryDep) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/healthz", summary="The process is up", response_model=Health, responses=problems.documented("5XX")
)
async def healthz(client: Sdk) -> dict[str, str]:  # on the event loop: never queued behind slow requests
    # A loop that no longer answers fails the probe by its timeout; stuck threads fail it here.
    timeout_s = client.settings.api_health_timeout_s
    if not await threads_move(timeout_s):
        log.warning("unhealthy: no worker thread came free in %s s", timeout_s)
        raise Problem(503, "Unhealthy", "the server's worker threads are stuck")
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Redis and storage answer",
    response_model=Health,
    responses=problems.documented("5XX"),
)
def readyz(client: Sdk) -> JSONResponse:
    # No key is needed here: what failed, and where, goes to the log, not to the caller.
    try:
        client.redis.ping()
    except (redis.RedisError, KandinskyBatchError, OSError, ValueError) as exc:
        log.warning("not ready: Redis: %s", exc)
        return problems.problem(503, "Not ready", "Redis is unreachable")
    try:
        client.storage.check()
    except (redis.RedisError, KandinskyBatchError, OSError, ValueError) as exc:
        log.warning("not ready: storage: %s", exc)
        return problems.problem(503, "Not ready", "storage is unreachable")
    return JSONResponse({"status": "ready"})
