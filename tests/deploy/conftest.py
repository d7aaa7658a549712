from __future__ import annotations

from pathlib import Path

import pytest

from .kube import OVERLAYS, Manifests, render, render_variant

# Overlays as a user would change them (kube.render_variant): (overlay, components added,
# components removed).
VARIANTS = {
    "gpu+monitoring": ("gpu", ("monitoring",), ()),
    "gpu+redis-fallback": ("gpu", ("keda-redis-fallback",), ()),
    "dev-prometheus": ("dev", (), ("keda-redis-fallback",)),
    "dev+monitoring": ("dev", ("monitoring",), ()),
}


@pytest.fixture(scope="session")
def rendered() -> dict[str, Manifests]:
    """Every overlay rendered once by `kubectl kustomize` (about a second in all)."""
    return {overlay: Manifests(overlay, render(overlay)) for overlay in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def m(request: pytest.FixtureRequest, rendered: dict[str, Manifests]) -> Manifests:
    """One rendered overlay; tests using it run once per overlay."""
    return rendered[request.param]


@pytest.fixture(scope="session")
def variants(
    rendered: dict[str, Manifests], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Manifests]:
    """The overlays and the VARIANTS of them, each rendered once."""
    out = dict(rendered)
    for name, (overlay, add, remove) in VARIANTS.items():
        workdir: Path = tmp_path_factory.mktemp(name.replace("+", "-"))
        out[name] = Manifests(overlay, render_variant(overlay, workdir, add=add, remove=remove), name)
    return out


@pytest.fixture(params=[*OVERLAYS, *VARIANTS])
def any_render(request: pytest.FixtureRequest, variants: dict[str, Manifests]) -> Manifests:
    """An overlay or a variant of one; tests using it run once for each."""
    return variants[request.param]
