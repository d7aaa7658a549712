"""Schemathesis against the live API: property-based requests from docs/openapi.json, bounded in
examples and time. No request gives a 5xx (the server stays up throughout), and every answer is
what the document says: its status, its media type and its schema (problem documents included)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)


def test_generated_requests_never_get_a_server_error(server: str, acme_key: str, tmp_path: Path):
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli, "schemathesis is a dev dependency"
    run = subprocess.run(
        [cli, "run", f"{server}/openapi.json", "-H", f"Authorization: Bearer {acme_key}",
         "--checks", ",".join(CHECKS), "--max-examples", "10", "--seed", "1",
         "--request-timeout", "20"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "passed" in run.stdout
    assert httpx.get(f"{server}/healthz", timeout=10).status_code == 200
