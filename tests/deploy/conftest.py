from __future__ import annotations

import pytest

from .kube import OVERLAYS, Manifests, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, Manifests]:
    """Every overlay rendered once by `kubectl kustomize` (about a second in all)."""
    return {overlay: Manifests(overlay, render(overlay)) for overlay in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def m(request: pytest.FixtureRequest, rendered: dict[str, Manifests]) -> Manifests:
    """One rendered overlay; tests using it run once per overlay."""
    return rendered[request.param]
