"""docs/openapi.json is the API's own schema: clients generated from the copy match the server.

Regenerate it with: python -c "import json; from producer.api.app import create_app;
from kandinsky_batch.settings import Settings; print(json.dumps(create_app(Settings()).openapi(), indent=1))"
> docs/openapi.json
"""

from __future__ import annotations

import json
from pathlib import Path

from kandinsky_batch.settings import Settings
from producer.api.app import create_app

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_the_published_openapi_document_matches_the_server():
    served = create_app(Settings(redis_url="redis://127.0.0.1:1/0")).openapi()
    assert json.loads(DOC.read_text()) == served


def test_every_v1_route_asks_for_an_api_key():
    paths = json.loads(DOC.read_text())["paths"]
    v1 = {(path, method) for path, item in paths.items() if path.startswith("/v1") for method in item}
    assert v1
    for path, method in v1:
        assert paths[path][method].get("security"), (path, method)
