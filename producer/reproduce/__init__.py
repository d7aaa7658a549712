"""`reproduce`: a standalone script that regenerates one stored image from its metadata.

The script imports torch and diffusers (and Pillow, which diffusers needs), never this project,
so it runs anywhere the models can be loaded. Its generation code is `script.txt` in this folder,
which mirrors the worker's own calls (worker/generate.py) for a micro-batch of one image; the
command only adds the parameters: spec, seed of that image, models and revisions, device, dtype,
and where each input image can be read, with its sha256.
"""

from __future__ import annotations

import json
import math
import pprint
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlparse

from kandinsky_batch.errors import BadInput, NotFound
from kandinsky_batch.schema import JobState, JobStatus, Mode, image_seed
from kandinsky_batch.storage import Storage

PARAMETERS_LINE = "P: dict = {}  # parameters\n"
# Spec fields each mode reads an input image from ("conditions.N.image" for interpolate's images).
_IMAGE_FIELDS = {Mode.IMG2IMG: ["image"], Mode.INPAINT: ["image"]}


def read_metadata(storage: Storage, job: JobStatus) -> dict[str, Any]:
    """The job's `B/J.json`, or NotFound/BadInput saying why there is none to use."""
    if job.state is not JobState.SUCCEEDED:
        raise BadInput(f"job {job.job_id} is {job.state.value}: only a succeeded job has images to reproduce")
    key = storage.key_for(job.metadata or "")
    if key is None:
        raise NotFound(f"job {job.job_id} has no metadata in this storage ({job.metadata})")
    try:
        meta = json.loads(storage.get(key))
    except KeyError:
        raise NotFound(f"the metadata of job {job.job_id} is gone from storage ({job.metadata})") from None
    except ValueError as exc:
        raise BadInput(f"the metadata of job {job.job_id} is not JSON: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("spec"), dict):
        raise BadInput(f"the metadata of job {job.job_id} has no spec")
    return meta


def needed_inputs(spec: dict[str, Any]) -> list[str]:
    """The spec fields whose images the generation reads."""
    mode = Mode(spec.get("mode", Mode.TEXT2IMG.value))
    fields = list(_IMAGE_FIELDS.get(mode, []))
    if mode is Mode.INPAINT and not isinstance(spec.get("mask"), list):
        fields.append("mask")
    if mode is Mode.INTERPOLATE:
        conditions = spec.get("conditions") or []
        fields += [f"conditions.{i}.image" for i, c in enumerate(conditions) if c.get("text") is None]
    return fields


def script_parameters(meta: dict[str, Any], image: int, locate: Callable[[str], str]) -> dict[str, Any]:
    """What the script needs: `locate` turns an input's URI into a path or URL the script can read.

    Metadata not in the form the worker writes is BadInput naming what is wrong, never a traceback.
    """
    try:
        return _parameters(meta, image, locate)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInput(
            f"the metadata is not in the form a worker writes ({type(exc).__name__}: {exc})"
        ) from None


def _parameters(meta: dict[str, Any], image: int, locate: Callable[[str], str]) -> dict[str, Any]:
    spec = meta["spec"]
    outputs = meta.get("outputs") or []
    if not 0 <= image < max(len(outputs), 1):
        raise BadInput(f"the job has {len(outputs)} images; --image must be in 0..{len(outputs) - 1}")
    refs = {ref["field"]: ref for ref in meta.get("inputs") or []}
    missing = [f for f in needed_inputs(spec) if f not in refs]
    if missing:
        raise BadInput(
            f"the metadata does not say where its input {', '.join(missing)} is stored "
            "(it was made by a worker that did not record inputs)"
        )
    return _finite(
        {
            "job_id": meta.get("job_id"),
            "batch_id": meta.get("batch_id"),
            "image": image,
            "seed": image_seed(int(meta["seed"]), image),
            "spec": spec,
            "models": meta["models"],
            "device": meta.get("device", "cpu"),
            "dtype": meta.get("dtype", "float32"),
            "torch_threads": meta.get("torch_threads"),
            "micro_batch_size": (meta.get("batch") or {}).get("size", 1),
            "output": outputs[image] if outputs else None,
            "inputs": [
                {"field": f, "location": locate(refs[f]["uri"]), "sha256": refs[f]["sha256"]}
                for f in needed_inputs(spec)
            ],
        }
    )


def _finite(value: Any) -> Any:
    """`value`, if it holds no NaN or infinity: those have no literal in Python source."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    if isinstance(value, dict | list):
        for inner in value.values() if isinstance(value, dict) else value:
            _finite(inner)
    return value


def locator(storage: Storage, expires_s: int) -> Callable[[str], str]:
    """Paths for local files, presigned URLs for this storage's objects, https URLs as they are."""

    def locate(uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            return unquote(parsed.path)
        if parsed.scheme in ("https", "http"):
            return uri
        key = storage.key_for(uri)
        if key is None:
            raise BadInput(f"input {uri} is not in this storage: set the storage the worker used")
        return storage.presign(key, expires_s)

    return locate


def render(parameters: dict[str, Any]) -> str:
    """The script: a header, the parameters as one JSON literal, then the fixed generation code."""
    body = resources.files(__package__).joinpath("script.txt").read_text()
    header, marker, code = body.partition(PARAMETERS_LINE)
    assert marker, "script.txt lost its parameters line"
    size = parameters["micro_batch_size"]
    note = (
        f"# Image {_comment(parameters['image'])} of job {_comment(parameters['job_id'])}; it ran in a "
        f"micro-batch of {_comment(size)} image(s),\n# so a rerun on the same device and libraries gives "
        f"{'the same bytes' if size == 1 else 'each pixel within one level of 255'}.\n"
    )
    # Every value reaches the source as its repr: quotes, newlines and NULs stay inside literals.
    literal = pprint.pformat(parameters, indent=1, width=100, sort_dicts=True)
    return f"{header}{note}P: dict = {literal}\n{code}"


def _comment(value: Any) -> str:
    """`value` as text for a comment line: as it is when printable, else its repr (never a line break)."""
    text = str(value)
    return text if isinstance(value, int | str) and text.isprintable() else ascii(text)
