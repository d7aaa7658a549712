"""The API server: `kandinsky-batch api` runs `create_app` on uvicorn. No torch is imported here.

It talks to Redis and storage through the SDK (`producer.client.Client`); Redis never faces the
callers. `/healthz` says the process is up, `/readyz` that Redis and storage answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from kandinsky_batch.errors import KandinskyBatchError
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.apikeys import ApiKeys
from producer.api import batches, jobs, problems
from producer.client import Client

VERSION = "1"


def create_app(settings: Settings) -> FastAPI:
    client = Client(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        client.close()

    app = FastAPI(title="kandinsky-batch", version=VERSION, lifespan=lifespan)
    app.state.client = client
    app.state.keys = ApiKeys(client.redis, client.status_store.keys)
    problems.install(app)
    app.include_router(jobs.router)
    app.include_router(batches.router)

    @app.get("/healthz", summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Redis and storage answer")
    def readyz() -> JSONResponse:
        try:
            client.redis.ping()
            client.storage.check()
        except (redis.RedisError, KandinskyBatchError, OSError, ValueError) as exc:
            return problems.problem(503, "Not ready", str(exc))
        return JSONResponse({"status": "ready"})

    return app


def app_from_env() -> FastAPI:
    """The factory uvicorn's workers call (`--factory`): settings from the environment, once each."""
    return create_app(Settings())
