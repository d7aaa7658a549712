"""docs/openapi.json is the API's own schema: clients generated from the copy match the server.

Regenerate it with: python -c "import json; from producer.api.app import create_app;
from kandinsky_batch.settings import Settings; print(json.dumps(create_app(Settings()).openapi(), indent=1))"
> docs/openapi.json
"""

from __future__ import annotations

import json
from pathlib import Path

from kandinsky_batch.schema import JobSpec
from kandinsky_batch.settings import Settings
from producer.api.app import create_app
from producer.api.webhooks.fields import WEBHOOK_FIELDS

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


def test_every_json_answer_is_a_named_schema_and_every_error_a_problem_document():
    doc = json.loads(DOC.read_text())
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status, answer in operation["responses"].items():
                for media_type, content in answer.get("content", {}).items():
                    if media_type == "application/json":
                        assert "$ref" in content["schema"], (path, method, status)
                    if status in ("4XX", "5XX"):
                        assert media_type == "application/problem+json", (path, method, status)
                        assert content["schema"]["$ref"].endswith("/ProblemDocument"), (path, method)
            assert "4XX" in operation["responses"] or not path.startswith("/v1"), (path, method)


def test_the_job_request_is_the_job_spec_with_its_webhook_and_times_say_their_unit():
    doc = json.loads(DOC.read_text())
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"] == "#/components/schemas/JobRequest"
    schemas = doc["components"]["schemas"]
    assert set(schemas["JobRequest"]["properties"]) == set(JobSpec.model_fields) | set(WEBHOOK_FIELDS)
    for view, field in [("JobView", "created_at"), ("PageJob", "finished_at"), ("BatchView", "created_at")]:
        assert "epoch seconds" in schemas[view]["properties"][field]["description"], (view, field)
