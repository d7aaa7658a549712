"""The API server: `kandinsky-batch api` runs `create_app` on uvicorn. No torch is imported here.

It talks to Redis and storage through the SDK (`producer.client.Client`); Redis never faces the
callers. `create_app` makes the process's handles once (kept on `app.state`, handed to routes by
producer/api/deps.py) and includes every router of producer/api/routes/. The webhook dispatcher
(producer/api/webhooks/dispatcher.py) runs in the same process unless turned off.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry

from kandinsky_batch.settings import Settings, load_settings
from kandinsky_batch.store.apikeys import ApiKeys
from kandinsky_batch.store.webhooks import WebhookStore
from producer.api import problems, routes
from producer.api.async_store import AsyncStore
from producer.api.estimates import DrainRate
from producer.api.keyed_ids import KeyedBatchIds
from producer.api.limits import BodyLimit
from producer.api.metrics import QueueCollector
from producer.api.slots import Limits
from producer.api.webhooks.dispatcher import Dispatcher
from producer.client import Client

VERSION = "1"

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
    if settings.api_metrics:
        app.state.registry = CollectorRegistry(auto_describe=False)
        app.state.registry.register(QueueCollector(settings, client.status_store))
    for router in routes.routers(settings):
        app.include_router(router)
    return app


def operation_id(route: APIRoute) -> str:
    """A route's operationId is its function's name: what a generated client calls it (`get_job`)."""
    return route.name


def app_from_env() -> FastAPI:
    """The factory uvicorn's workers call (`--factory`): settings from the environment, once each."""
    return create_app(load_settings())
