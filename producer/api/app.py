"""The API server: `kandinsky-batch api` runs `create_app` on uvicorn. No torch is imported here.

It talks to Redis and storage through the SDK (`producer.client.Client`); Redis never faces the
callers. `/healthz` says the process can still serve (its event loop answers and its worker
threads are not stuck: producer/api/liveness.py), `/readyz` that Redis and storage answer. The
webhook dispatcher (producer/api/webhooks/dispatcher.py) runs in the same process unless turned off.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kandinsky_batch.errors import KandinskyBatchError
from kandinsky_batch.settings import Settings, load_settings
from kandinsky_batch.store.apikeys import ApiKeys
from kandinsky_batch.store.webhooks import WebhookStore
from producer.api import batches, jobs, problems, tenants
from producer.api.async_store import AsyncStore
from producer.api.estimates import DrainRate
from producer.api.keyed_ids import KeyedBatchIds
from producer.api.limits import BodyLimit
from producer.api.liveness import threads_move
from producer.api.metrics import QueueCollector
from producer.api.models import Health, streamed
from producer.api.problems import Problem
from producer.api.slots import Limits
from producer.api.webhooks.dispatcher import Dispatcher
from producer.client import Client

VERSION = "1"
log = logging.getLogger(__name__)


REDIS_RETRIES = 3  # about a second of retries: a caller gets 503 soon, not after half a minute


def create_app(settings: Settings) -> FastAPI:
    client = Client(settings, redis_retries=REDIS_RETRIES)
    dispatcher = Dispatcher(settings, client.redis, client.status_store) if settings.webhooks else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Everything loaded so far lives as long as the process: out of the collector's sight,
        # a full collection no longer walks it (those walks held requests up to ~80 ms).
        gc.collect()
        gc.freeze()
        if dispatcher is not None:
            dispatcher.start()
        yield
        if dispatcher is not None:
            dispatcher.stop()
        await app.state.store.close()
        app.state.limits.close()
        client.close()

    app = FastAPI(
        title="kandinsky-batch", version=VERSION, lifespan=lifespan, generate_unique_id_function=operation_id
    )
    app.state.client = client
    app.state.keys = ApiKeys(client.redis, client.status_store.keys)
    app.state.store = AsyncStore(settings, app.state.keys, client.status_store, REDIS_RETRIES)
    app.state.webhooks = WebhookStore(client.redis, client.status_store.keys)
    app.state.batch_ids = KeyedBatchIds(app.state.store.redis, client.status_store.keys)
    app.state.drain = DrainRate(client.status_store)
    app.state.limits = Limits.from_settings(settings)
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    problems.install(app)
    app.include_router(jobs.router)
    app.include_router(batches.router)
    app.include_router(tenants.router)

    if settings.api_metrics:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(QueueCollector(settings, client.status_store))

        @app.get(
            "/metrics",
            summary="Queue metrics for Prometheus",
            response_class=Response,
            responses=streamed("text/plain", "The metrics, in Prometheus' text format."),
        )
        def metrics() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/healthz", summary="The process is up", response_model=Health, responses=problems.documented("5XX")
    )
    async def healthz() -> dict[str, str]:  # on the event loop: never queued behind slow requests
        # A loop that no longer answers fails the probe by its timeout; stuck threads fail it here.
        if not await threads_move(settings.api_health_timeout_s):
            log.warning("unhealthy: no worker thread came free in %s s", settings.api_health_timeout_s)
            raise Problem(503, "Unhealthy", "the server's worker threads are stuck")
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Redis and storage answer",
        response_model=Health,
        responses=problems.documented("5XX"),
    )
    def readyz() -> JSONResponse:
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

    return app


def operation_id(route: APIRoute) -> str:
    """A route's operationId is its function's name: what a generated client calls it (`get_job`)."""
    return route.name


def app_from_env() -> FastAPI:
    """The factory uvicorn's workers call (`--factory`): settings from the environment, once each."""
    return create_app(load_settings())
