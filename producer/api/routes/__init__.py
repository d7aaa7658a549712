"""The API's routes: one module per area, each with one APIRouter, its routes and their helpers.

A route module takes what it needs from producer/api/deps.py and its documents from
producer/api/models.py, never from another route module. `create_app` includes the routers listed
here, in this order (the order of docs/openapi.json's paths): a new area is a module and a line.
"""

from __future__ import annotations

from fastapi import APIRouter

from kandinsky_batch.settings import Settings
from producer.api.routes import batches, health, jobs, tenants, webhooks


def routers(settings: Settings) -> list[APIRouter]:
    """Every router the API serves; `/metrics` only with `API_METRICS` on."""
    metrics = [health.metrics_router] if settings.api_metrics else []
    return [jobs.router, batches.router, tenants.router, webhooks.router, *metrics, health.router]
