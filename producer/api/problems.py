"""Errors as `application/problem+json` (RFC 9457): a status, a title, a detail, and the bad fields.

Every error the API answers goes through here, so a client reads one shape whatever went wrong,
and nothing it sends produces a 500 with a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from kandinsky_batch.errors import InvalidSpec, NotFound
from producer.api.models import ProblemDocument

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"
SCHEMAS = "#/components/schemas/"


def documented(*ranges: str) -> dict[int | str, dict[str, Any]]:
    """A route's error answers (`"4XX"`, `"5XX"`) for its `responses`: problem documents."""
    schema = {"$ref": f"{SCHEMAS}{ProblemDocument.__name__}"}
    return {
        r: {"description": "A problem document (RFC 9457)", "content": {PROBLEM: {"schema": schema}}}
        for r in ranges
    }


ERRORS = documented("4XX", "5XX")  # every /v1 route: a bad request, a key, a limit, Redis away


class Problem(Exception):
    """An answer other than success, raised anywhere inside a request."""

    def __init__(
        self, status: int, title: str, detail: str = "", headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.headers, self.extra = status, title, detail, headers, extra


def problem(
    status: int, title: str, detail: str = "", headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = {**({"WWW-Authenticate": "Bearer"} if status == 401 else {}), **(headers or {})}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _field(error: dict[str, Any]) -> str:
    """The field an error names: `height`, or `body` for a body that is not a JSON object at all."""
    if error.get("type") == "json_invalid":
        return "body"
    return ".".join(str(p) for p in error["loc"] if p != "body") or "body"


def install(app: FastAPI) -> None:
    """Answer every error of `app` with a problem document, and publish its schema."""
    _publish(app)

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(InvalidSpec)
    async def _invalid(_: Request, exc: InvalidSpec) -> JSONResponse:
        fields = [part.split(":", 1)[0].strip() for part in exc.message.split("; ")]
        return problem(422, "Invalid job spec", exc.message, code=exc.code, fields=fields)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return problem(404, "Not found", exc.message)

    @app.exception_handler(RequestValidationError)
    async def _request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _field(e), "message": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "Invalid request", detail, errors=errors, fields=[e["field"] for e in errors])

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), "")

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error answering a request", exc_info=exc)
        return problem(500, "Internal error", f"{type(exc).__name__}; the server's log has the details")

    @app.exception_handler(redis.RedisError)
    async def _redis(_: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("Redis unavailable: %s", exc)
        return problem(503, "Service unavailable", "the job store is not reachable; retry later")


def _publish(app: FastAPI) -> None:
    """Put `ProblemDocument` in the OpenAPI components that `documented` refers to.

    FastAPI files a response model under the route's own media type (application/json), and
    problems have theirs, so the routes name the schema and it is added here.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schema = ProblemDocument.model_json_schema(ref_template=SCHEMAS + "{model}", mode="serialization")
        for name, nested in {**schema.pop("$defs", {}), ProblemDocument.__name__: schema}.items():
            if schemas.setdefault(name, nested) != nested:
                raise RuntimeError(f"two schemas named {name} in the OpenAPI document")
        return document

    app.openapi = openapi  # type: ignore[method-assign]
