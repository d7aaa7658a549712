"""The API's routes live in producer/api/routes/, one APIRouter per module, all of them served.

A route module takes what it shares with others from producer/api/deps.py, never from another
route module, so a route is added by touching its own module (docs/architecture.md).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute

from kandinsky_batch.settings import Settings
from producer.api import routes
from producer.api.app import create_app

ROUTES = Path(routes.__file__).parent
MODULES = sorted(path.stem for path in ROUTES.glob("*.py") if path.stem != "__init__")
SETTINGS = Settings(redis_url="redis://127.0.0.1:1/0", api_metrics=True)


@pytest.mark.parametrize("name", MODULES)
def test_every_route_module_has_a_router_that_the_app_includes(name: str):
    module = importlib.import_module(f"producer.api.routes.{name}")
    routers = [value for value in vars(module).values() if isinstance(value, APIRouter)]
    assert routers, f"producer/api/routes/{name}.py has no APIRouter"
    included = routes.routers(SETTINGS)
    assert [r for r in routers if r not in included] == [], f"routers of {name}.py left out of routers()"


@pytest.mark.parametrize("name", MODULES)
def test_a_route_module_imports_no_other_route_module(name: str):
    tree = ast.parse((ROUTES / f"{name}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
    others = {f"producer.api.routes.{other}" for other in MODULES if other != name} | {"producer.api.routes"}
    assert imported & others == set()


def served(settings: Settings) -> set[str]:
    """The operations the app serves, by operationId (their functions' names)."""
    paths = create_app(settings).openapi()["paths"]
    return {operation["operationId"] for item in paths.values() for operation in item.values()}


def test_every_route_the_app_serves_comes_from_a_route_module():
    defined = {
        route.name
        for router in routes.routers(SETTINGS)
        for route in router.routes
        if isinstance(route, APIRoute) and route.endpoint.__module__.startswith("producer.api.routes.")
    }
    assert served(SETTINGS) == defined


def test_metrics_is_served_only_when_turned_on():
    assert "metrics" in served(SETTINGS)
    assert "metrics" not in served(SETTINGS.model_copy(update={"api_metrics": False}))
