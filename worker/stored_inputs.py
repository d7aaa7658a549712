"""Each distinct inline input stored once per batch, so the metadata can name every input.

A `data:` image or mask is too big to repeat in every PNG and sidecar, so the worker stores its
bytes once under `B/inputs/<sha256>.<ext>` and the metadata names it by URI and sha256. Inputs
given by `file://`, `s3://` or `https://` stay where they are and get the sha256 of the bytes the
worker read, so a later reader can tell whether they changed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from kandinsky_batch.storage import input_key
from worker.generate import InputSource

Put = Callable[[str, bytes, str], str]  # (key, bytes, content type) -> URI
CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


class StoredInputs:
    """Stores inline inputs, remembering the last `remember` keys so a batch uploads each once."""

    def __init__(self, remember: int = 4096) -> None:
        self.remember = remember
        self._stored: OrderedDict[str, str] = OrderedDict()  # key -> URI

    def refs(self, batch_id: str, sources: list[InputSource], put: Put) -> list[dict[str, str]]:
        """One `{field, uri, sha256}` per input, storing each inline one not yet stored."""
        refs = []
        for source in sources:
            uri = source.uri
            if source.data is not None:
                key = input_key(batch_id, source.sha256, source.ext)
                uri = self._stored.get(key) or self._store(key, source, put)
            refs.append({"field": source.field, "uri": uri, "sha256": source.sha256})
        return refs

    def _store(self, key: str, source: InputSource, put: Put) -> str:
        assert source.data is not None
        uri = put(key, source.data, CONTENT_TYPES[source.ext])
        self._stored[key] = uri
        while len(self._stored) > self.remember:
            self._stored.popitem(last=False)
        return uri


def spec_with_refs(spec: dict[str, Any], refs: list[dict[str, str]]) -> dict[str, Any]:
    """The spec's wire form with each inline input replaced by the URI it is stored under."""
    out = dict(spec)
    if spec.get("conditions"):
        out["conditions"] = [dict(c) for c in spec["conditions"]]
    for ref in refs:
        path = ref["field"].split(".")
        if path[0] == "conditions":
            out["conditions"][int(path[1])]["image"] = ref["uri"]
        else:
            out[path[0]] = ref["uri"]
    return out
