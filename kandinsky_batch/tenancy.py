"""What a tenant's job may read: `data:` URIs, https URLs, and its own `sources/<tenant>/` objects.

A job submitted with an API key belongs to that key's tenant. Its inputs must never name
another tenant's stored outputs (or anything else of the storage or the worker's disk), so the
rule is an allow-list checked twice: at submit, where the caller gets a 422 naming the field,
and by the worker against the batch's recorded tenant. Jobs without a tenant (the SDK, the CLI
and open-format senders, who hold Redis and storage credentials already) keep the wider rules
of `worker/inputs.py`. Nothing here looks an object up, so a refusal says nothing about whether
it exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import urlparse

from kandinsky_batch.errors import InvalidSpec
from kandinsky_batch.schema import JobSpec

KeyFor = Callable[[str], "str | None"]  # a storage URI -> its key in this storage, or None


def sources_prefix(tenant: str) -> str:
    """The storage keys a tenant's jobs may read inputs from."""
    return f"sources/{tenant}/"


def input_uris(spec: JobSpec) -> Iterator[tuple[str, str]]:
    """(field, URI) of every input a spec names."""
    if spec.image is not None:
        yield "image", spec.image
    if isinstance(spec.mask, str):
        yield "mask", spec.mask
    for i, condition in enumerate(spec.conditions or []):
        if condition.image is not None:
            yield f"conditions.{i}.image", condition.image


def allowed_for(uri: str, tenant: str, key_for: KeyFor) -> bool:
    """Whether a job of `tenant` may read `uri`."""
    scheme = urlparse(uri).scheme
    if scheme in ("data", "https"):
        return True  # https URLs are checked against the SSRF rules when fetched
    try:
        key = key_for(uri)
    except ValueError:  # a path the OS cannot name (the schema refuses NUL; belt and braces)
        return False
    return key is not None and key.startswith(sources_prefix(tenant))


def check_inputs(spec: JobSpec, tenant: str, key_for: KeyFor) -> None:
    """InvalidSpec naming each input a job of `tenant` may not read; nothing for a spec that is fine."""
    refused = [field for field, uri in input_uris(spec) if not allowed_for(uri, tenant, key_for)]
    if refused:
        where = sources_prefix(tenant)
        raise InvalidSpec(
            "; ".join(
                f"{field}: a job of an API key may read only data: URIs, https:// URLs "
                f"and objects under {where} of this storage"
                for field in refused
            )
        )
