"""`Client` (Redis) and `HttpClient` (the HTTP API) make the same calls: every method of the `Sdk`
Protocol, with its parameter names, kinds and defaults (mypy holds the types, in producer/cli/base.py).

A parameter one client has beyond the Protocol's must have a default, so a caller of `Sdk` never
has to know which client it holds.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from producer.client import Client
from producer.http_client import HttpClient
from producer.sdk import NotOverHttp, Sdk

METHODS = sorted(
    name
    for name, member in vars(Sdk).items()
    if callable(member) and (not name.startswith("_") or name in ("__enter__", "__exit__"))
)


def parameters(method: Callable[..., Any]) -> list[inspect.Parameter]:
    return list(inspect.signature(method).parameters.values())


def test_the_protocol_has_the_calls_the_cli_makes():
    assert {"submit", "submit_batch", "status", "batch", "wait", "cancel", "retry_failed"} <= set(METHODS)
    assert {"results", "iter_results", "jobs", "statuses", "download", "manifest_lines"} <= set(METHODS)


@pytest.mark.parametrize("sdk", [Client, HttpClient], ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", METHODS)
def test_each_client_has_every_method_with_the_protocols_parameters(sdk: type, name: str):
    wanted = parameters(getattr(Sdk, name))
    found = parameters(getattr(sdk, name))
    shared = [p for p in found if p.name in {w.name for w in wanted}]
    assert [p.name for p in shared] == [w.name for w in wanted], f"{sdk.__name__}.{name}"
    for want, have in zip(wanted, shared, strict=True):
        assert have.kind == want.kind, f"{sdk.__name__}.{name}({have.name}) is {have.kind}, not {want.kind}"
        if want.default is not inspect.Parameter.empty:
            assert have.default is not inspect.Parameter.empty, (
                f"{sdk.__name__}.{name}({have.name}) has no default"
            )
            if want.default is not Ellipsis:
                assert have.default == want.default, f"{sdk.__name__}.{name}({have.name})"
    extra = [p for p in found if p not in shared and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert all(p.default is not inspect.Parameter.empty for p in extra), f"{sdk.__name__}.{name}: {extra}"


def test_a_refusal_names_the_parameter_or_the_flag_it_came_from():
    exc = NotOverHttp("batch_id", "{} does not work over the HTTP API (it names the batches)")
    assert isinstance(exc, ValueError) and exc.parameter == "batch_id"
    assert str(exc) == "batch_id does not work over the HTTP API (it names the batches)"
    assert exc.naming("--batch-id") == "--batch-id does not work over the HTTP API (it names the batches)"


def no_request(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"a refused call sent {request.method} {request.url}")


@pytest.mark.parametrize(
    ("source", "options", "parameter", "said"),
    [
        ("list", {"batch_id": "b1"}, "batch_id", "it names the batches"),
        ("list", {"strict": True}, "strict", "it sends every valid line"),
        ("list", {"seeds_per_prompt": 2}, "seeds_per_prompt", "a line is one job"),
        ("jobs.csv", {}, "jobs", "not CSV"),
        ("jobs.parquet", {}, "jobs", "not Parquet"),
        ("list", {"prompt_column": "caption"}, "prompt_column", "JSONL"),
    ],
)
def test_what_the_http_api_cannot_do_is_refused_before_any_request(
    tmp_path: Path, source: str, options: dict[str, Any], parameter: str, said: str
):
    jobs: list[dict[str, Any]] | Path = [{"prompt": "x"}]
    if source != "list":
        jobs = tmp_path / source
        jobs.write_text("prompt\nx\n")
    with HttpClient("http://127.0.0.1:1", "kb_any") as client:
        client.http = httpx.Client(base_url="http://127.0.0.1:1", transport=httpx.MockTransport(no_request))
        with pytest.raises(NotOverHttp) as refused:
            client.submit_batch(jobs, **options)
        assert refused.value.parameter == parameter and said in str(refused.value)
        with pytest.raises(NotOverHttp, match="without their spec"):
            client.manifest_lines("b1")
