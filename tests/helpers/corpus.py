"""A corpus of bad inputs: crafted images and the case tables of tests/integration/test_bad_inputs.py.

Each case says how it travels (CLI flags, a --file body, or a raw queue message) and
what must come of it: a refusal at submit whose stderr names the reason, or a failed
job with a code and a message naming the reason. `{inputs}` in a CLI argument is
replaced by the worker's allowed input folder when the test runs.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from kandinsky_batch.schema import Mode
from tests.helpers.images import data_url, image_bytes, png_url

MAX_INPUT_BYTES = 32 * 1024
MAX_INPUT_PIXELS = 128 * 128

TINY: dict[str, Any] = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}
TINY_FLAGS = ("--height", "64", "--width", "64", "--steps", "2", "--prior-steps", "2")


# -- crafted inputs ------------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims `width` x `height` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def noise_png(size: tuple[int, int] = (64, 64)) -> bytes:
    """Random pixels, so the compressed data is long enough to cut in the middle."""
    pixels = random.Random(0).randbytes(size[0] * size[1] * 3)
    buf = io.BytesIO()
    Image.frombytes("RGB", size, pixels).save(buf, format="PNG")
    return buf.getvalue()


GOOD_IMAGE = png_url((64, 64))
NOT_AN_IMAGE = data_url(b"this is plain text, not an image at all")
TRUNCATED_PNG = data_url(noise_png()[: len(noise_png()) * 3 // 5])
GIF = data_url(image_bytes((64, 64), fmt="GIF"), "image/gif")
BOMB = data_url(png_claiming(100_000, 100_000))  # 10 G pixels: past Pillow's own bomb limit
OVER_PIXEL_CAP = data_url(png_claiming(1000, 1000))  # 1 M pixels: under Pillow's, over the worker's cap
OVER_BYTE_CAP = data_url(b"\x89PNG\r\n\x1a\n" + random.Random(1).randbytes(MAX_INPUT_BYTES + 1000))
INVALID_BASE64 = "data:image/png;base64,@@@not*base64@@@"
NOT_BASE64_DATA_URL = "data:image/png,rawbytes"
SMALL_MASK = data_url(image_bytes((32, 32), mode="L"))


# -- the cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input and the outcome it must have."""

    expect: tuple[str, ...]  # substrings of the CLI's stderr, or of the failed job's error message
    code: str | None = None  # the failed job's error code; None: refused at submit
    argv: tuple[str, ...] = ()  # `submit` arguments (the tiny flags are added)
    lines: bytes | None = None  # a --file body
    suffix: str = ".jsonl"
    message: dict[str, Any] | None = None  # raw kwargs put straight onto the queue
    args: tuple[Any, ...] = ()  # raw positional args
    jobs: tuple[int, ...] = (0,)  # indices of the message's jobs that must fail
    worker: str = "main"  # "main": all modes, https inputs allowed; "plain": img2img only, defaults
    mode: Mode = Mode.TEXT2IMG  # the queue a raw message goes to


def param(id_: str, case: Case) -> Any:
    return pytest.param(case, id=id_)


def jsonl(*objs: Any) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def refused(id_: str, *expect: str, argv: tuple[str, ...] = (), lines: bytes | None = None, **kw: Any) -> Any:
    return param(id_, Case(expect=expect, argv=argv, lines=lines, **kw))


def fails(id_: str, code: str, *expect: str, argv: tuple[str, ...] = (), **kw: Any) -> Any:
    return param(id_, Case(expect=expect, code=code, argv=argv, **kw))


def img2img(image: str) -> tuple[str, ...]:
    return ("--prompt", "a fox", "--mode", "img2img", "--image", image)


def inpaint(image: str, mask: str) -> tuple[str, ...]:
    return ("--prompt", "a fox", "--mode", "inpaint", "--image", image, "--mask", mask)


def conditions(*weights: float) -> list[dict[str, Any]]:
    return [{"text": f"theme {i}", "weight": w} for i, w in enumerate(weights)]


FOX = ("--prompt", "a fox")

# Refused at submit: the CLI exits non-zero and its stderr names the field, line or reason.
SUBMIT_REFUSALS = [
    refused(
        "height-not-an-integer",
        "Invalid value for '--height'",
        "'tall' is not a valid integer",
        argv=(*FOX, "--height", "tall"),
    ),
    refused("unknown-mode", "Invalid value for '--mode'", "'sketch'", argv=(*FOX, "--mode", "sketch")),
    refused("unknown-option", "No such option", "--colour", argv=(*FOX, "--colour", "red")),
    refused("neither-prompt-nor-file", "give --prompt TEXT (repeatable) or --file PATH"),
    refused("empty-prompt", "mode text2img needs a non-empty 'prompt'", argv=("--prompt", "")),
    refused("blank-prompt", "mode text2img needs a non-empty 'prompt'", argv=("--prompt", "  \t ")),
    refused(
        "overlong-prompt", "prompt: String should have at most 2000 characters", argv=("--prompt", "x" * 2001)
    ),
    refused("height-zero", "height: Input should be greater than or equal to 64", argv=(*FOX, "--height=0")),
    refused(
        "width-negative", "width: Input should be greater than or equal to 64", argv=(*FOX, "--width=-64")
    ),
    refused(
        "height-not-multiple-of-64", "height: Input should be a multiple of 64", argv=(*FOX, "--height=100")
    ),
    refused(
        "width-over-max-side",
        "width: must be at most 1024, the maximum side (KANDINSKY_BATCH_MAX_SIDE)",
        argv=(*FOX, "--width=1088"),
    ),
    refused(
        "height-far-over-max-side",
        "height: must be at most 1024, the maximum side (KANDINSKY_BATCH_MAX_SIDE)",
        argv=(*FOX, "--height=8192"),
    ),
    refused(
        "guidance-nan",
        "guidance_scale: must be a finite number, not NaN",
        argv=(*FOX, "--guidance-scale=nan"),
    ),
    refused(
        "strength-infinite", "strength: must be a finite number, not infinity", argv=(*FOX, "--strength=inf")
    ),
    refused(
        "file-prior-guidance-nan-literal",
        "line 1: prior_guidance_scale: must be a finite number, not NaN",
        lines=b'{"prompt": "a fox", "prior_guidance_scale": NaN}\n',
    ),
    refused(
        "file-weight-minus-infinity",
        "line 1: conditions.0.weight: must be a finite number, not minus infinity",
        lines=b'{"mode": "interpolate", "conditions": [{"text": "a", "weight": -Infinity}, {"text": "b", "weight": 1}]}\n',
    ),
    refused(
        "file-malformed-control-character",
        "line 1: malformed JSON at column 14: Invalid control character",
        lines=b'{"prompt": "a\x01 fox"}\n',
    ),
    refused(
        "steps-zero",
        "num_inference_steps: Input should be greater than or equal to 1",
        argv=(*FOX, "--steps=0"),
    ),
    refused(
        "steps-over-limit",
        "num_inference_steps: Input should be less than or equal to 500",
        argv=(*FOX, "--steps=501"),
    ),
    refused(
        "prior-steps-negative",
        "prior_num_inference_steps: Input should be greater than or equal to 1",
        argv=(*FOX, "--prior-steps=-1"),
    ),
    refused("seed-negative", "seed: Input should be greater than or equal to 0", argv=(*FOX, "--seed=-1")),
    refused(
        "strength-zero",
        "strength: Input should be greater than 0",
        argv=(*img2img(GOOD_IMAGE), "--strength=0"),
    ),
    refused(
        "strength-over-one",
        "strength: Input should be less than or equal to 1",
        argv=(*img2img(GOOD_IMAGE), "--strength=1.5"),
    ),
    refused("img2img-without-image", "mode img2img needs 'image'", argv=(*FOX, "--mode", "img2img")),
    refused(
        "inpaint-without-mask",
        "mode inpaint needs 'mask'",
        argv=(*FOX, "--mode", "inpaint", "--image", GOOD_IMAGE),
    ),
    refused("text2img-with-image", "mode text2img takes no 'image'", argv=(*FOX, "--image", GOOD_IMAGE)),
    refused(
        "file-prompt-wrong-type", "line 1: prompt: Input should be a valid string", lines=jsonl({"prompt": 5})
    ),
    refused(
        "file-steps-wrong-type",
        "line 1: num_inference_steps: Input should be a valid integer",
        lines=jsonl({"prompt": "a fox", "num_inference_steps": "many"}),
    ),
    refused(
        "file-unknown-field",
        "line 1: colour: Extra inputs are not permitted",
        lines=jsonl({"prompt": "a fox", "colour": "red"}),
    ),
    refused("file-prompt-lone-surrogate", "line 1: prompt:", lines=b'{"prompt": "a \\ud800 fox"}\n'),
    refused(
        "file-interpolate-weights-all-zero",
        "line 1:",
        "interpolation weights must not all be zero",
        lines=jsonl({"mode": "interpolate", "conditions": conditions(0, 0)}),
    ),
    refused(
        "file-interpolate-weight-negative",
        "line 1: conditions.1.weight: Input should be greater than",
        lines=jsonl({"mode": "interpolate", "conditions": conditions(1, -1)}),
    ),
    refused(
        "file-interpolate-nine-conditions",
        "line 1: conditions: List should have at most 8 items",
        lines=jsonl({"mode": "interpolate", "conditions": conditions(*[1] * 9)}),
    ),
    refused(
        "file-interpolate-one-condition",
        "line 1: conditions: List should have at least 2 items",
        lines=jsonl({"mode": "interpolate", "conditions": conditions(1)}),
    ),
    refused(
        "file-mask-rectangle-inverted",
        "line 1: mask",
        "each rectangle is [x0, y0, x1, y1]",
        lines=jsonl({"prompt": "a fox", "mode": "inpaint", "image": GOOD_IMAGE, "mask": [[10, 10, 5, 5]]}),
    ),
    refused("file-not-utf8", "line 2: not UTF-8", lines=b"\n" + b'{"prompt": "caf\xe9"}\n'),
    refused("file-malformed-json", "line 1: malformed JSON", lines=b'{"prompt": "a fox",\n'),
    refused("file-line-not-an-object", "line 1: a job must be a JSON object, not list", lines=b"[1, 2]\n"),
    refused(
        "csv-without-prompt-column",
        "line 1: no 'prompt' column to take the prompts from (the file's columns: 'text', 'height')",
        lines=b"text,height\na fox,64\n",
        suffix=".csv",
    ),
]

# Accepted at submit (the producer cannot know), then failed by the worker with a code.
CLI_FAILURES = [
    fails(
        "image-not-an-image",
        "bad_input",
        "image: not a readable PNG, JPEG or WebP image",
        argv=img2img(NOT_AN_IMAGE),
    ),
    fails(
        "image-truncated-png",
        "bad_input",
        "image: not a readable PNG, JPEG or WebP image",
        "truncated",
        argv=img2img(TRUNCATED_PNG),
    ),
    fails("image-gif", "bad_input", "image: not a readable PNG, JPEG or WebP image", argv=img2img(GIF)),
    fails(
        "image-decompression-bomb", "bad_input", "image: refused as a decompression bomb", argv=img2img(BOMB)
    ),
    fails(
        "image-over-pixel-cap",
        "bad_input",
        f"image: 1000x1000 pixels is over the {MAX_INPUT_PIXELS}",
        argv=img2img(OVER_PIXEL_CAP),
    ),
    fails(
        "image-over-byte-cap",
        "bad_input",
        f"image: {MAX_INPUT_BYTES + 1008} bytes is over the {MAX_INPUT_BYTES} byte limit",
        argv=img2img(OVER_BYTE_CAP),
    ),
    fails("image-invalid-base64", "bad_input", "image: invalid base64", argv=img2img(INVALID_BASE64)),
    fails(
        "image-data-url-not-base64",
        "bad_input",
        "image: a data: URL must be base64",
        argv=img2img(NOT_BASE64_DATA_URL),
    ),
    fails("image-no-scheme", "bad_input", "image: unsupported URI scheme '(none)'", argv=img2img("fox.png")),
    fails(
        "image-http",
        "bad_input",
        "image: unsupported URI scheme 'http'",
        argv=img2img("http://93.184.216.34/fox.png"),
    ),
    fails(
        "image-https-loopback",
        "bad_input",
        "resolves to 127.0.0.1, a loopback address",
        argv=img2img("https://127.0.0.1/x.png"),
    ),
    fails(
        "image-https-private",
        "bad_input",
        "resolves to 10.0.0.1, a private address",
        argv=img2img("https://10.0.0.1/x.png"),
    ),
    fails(
        "image-https-metadata",
        "bad_input",
        "169.254.169.254, a cloud metadata address",
        argv=img2img("https://169.254.169.254/latest/meta-data"),
    ),
    fails(
        "image-https-ipv6-loopback",
        "bad_input",
        "resolves to ::1, a loopback address",
        argv=img2img("https://[::1]/x.png"),
    ),
    fails(
        "image-https-ipv4-mapped-loopback",
        "bad_input",
        "loopback (IPv4 127.0.0.1 inside IPv6)",
        argv=img2img("https://[::ffff:127.0.0.1]/x.png"),
    ),
    fails(
        "image-https-disabled",
        "bad_input",
        "image: https:// inputs are disabled on this worker",
        argv=img2img("https://93.184.216.34/fox.png"),
        worker="plain",
    ),
    fails(
        "image-file-outside-roots",
        "bad_input",
        "image: /etc/hostname is outside the allowed input folders",
        argv=img2img("file:///etc/hostname"),
    ),
    fails(
        "image-file-traversal",
        "bad_input",
        "is outside the allowed input folders",
        argv=img2img("file://{inputs}/../../../../../../etc/hostname"),
    ),
    fails(
        "image-file-missing",
        "bad_input",
        "image: cannot read",
        "No such file or directory",
        argv=img2img("file://{inputs}/missing.png"),
    ),
    fails(
        "image-file-is-a-directory",
        "bad_input",
        "is not a regular file",
        argv=img2img("file://{inputs}"),
    ),
    fails(
        "image-s3-elsewhere",
        "bad_input",
        "image: s3://other-bucket/fox.png is not in this worker's storage",
        argv=img2img("s3://other-bucket/fox.png"),
    ),
    fails(
        "mask-wrong-size",
        "bad_input",
        "mask is 32x32 but image is 64x64",
        argv=inpaint(GOOD_IMAGE, SMALL_MASK),
    ),
    fails(
        "mask-not-an-image",
        "bad_input",
        "mask: not a readable PNG, JPEG or WebP image",
        argv=inpaint(GOOD_IMAGE, NOT_AN_IMAGE),
    ),
    fails(
        "condition-image-corrupt",
        "bad_input",
        "condition image: not a readable PNG, JPEG or WebP image",
        lines=jsonl(
            {
                "mode": "interpolate",
                "conditions": [{"text": "a fox", "weight": 1}, {"image": TRUNCATED_PNG, "weight": 1}],
            }
        ),
    ),
]


def envelope(batch_id: str, *specs: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A message as the producer builds it, with `fields` replacing or adding envelope fields."""
    message: dict[str, Any] = {
        "v": 1,
        "batch_id": batch_id,
        "shared": dict(TINY),
        "jobs": [{"index": i, "spec": spec} for i, spec in enumerate(specs)],
    }
    message.update(fields)
    return message


def raw(id_: str, code: str, *expect: str, specs: tuple[dict[str, Any], ...] = (), **kw: Any) -> Any:
    fields = kw.pop("fields", {})
    return param(id_, Case(expect=expect, code=code, message=envelope(id_, *specs, **fields), **kw))


A_FOX = {"prompt": "a fox"}
BAD_SPEC = {"prompt": "a fox", "height": 65}  # fails fast at the second validation

# Raw messages that name their jobs: each named job fails with a code.
RAW_FAILURES = [
    raw(
        "raw-prompt-wrong-type",
        "invalid_spec",
        "prompt: Input should be a valid string",
        specs=({"prompt": 5},),
    ),
    raw(
        "raw-unknown-field",
        "invalid_spec",
        "colour: Extra inputs are not permitted",
        specs=({**A_FOX, "colour": "red"},),
    ),
    raw(
        "raw-shared-wrong-type",
        "invalid_spec",
        "height: Input should be a valid integer",
        specs=(A_FOX,),
        fields={"shared": {**TINY, "height": "tall"}},
    ),
    raw("raw-empty-prompt", "invalid_spec", "needs a non-empty 'prompt'", specs=({"prompt": ""},)),
    raw(
        "raw-overlong-prompt",
        "invalid_spec",
        "prompt: String should have at most 2000 characters",
        specs=({"prompt": "x" * 2001},),
    ),
    raw(
        "raw-width-over-max-side",
        "invalid_spec",
        "width: must be at most 1024",
        specs=({**A_FOX, "width": 2048},),
    ),
    raw(
        "raw-steps-zero",
        "invalid_spec",
        "num_inference_steps: Input should be greater than or equal to 1",
        specs=({**A_FOX, "num_inference_steps": 0},),
    ),
    raw(
        "raw-strength-out-of-range",
        "invalid_spec",
        "strength: Input should be less than or equal to 1",
        specs=({**A_FOX, "mode": "img2img", "image": GOOD_IMAGE, "strength": 7},),
    ),
    raw(
        "raw-inpaint-without-mask",
        "invalid_spec",
        "mode inpaint needs 'mask'",
        specs=({**A_FOX, "mode": "inpaint", "image": GOOD_IMAGE},),
    ),
    raw(
        "raw-interpolate-nine-conditions",
        "invalid_spec",
        "conditions: List should have at most 8 items",
        specs=({"mode": "interpolate", "conditions": conditions(*[1] * 9)},),
    ),
    raw(
        "raw-interpolate-weights-zero",
        "invalid_spec",
        "interpolation weights must not all be zero",
        specs=({"mode": "interpolate", "conditions": conditions(0, 0)},),
    ),
    raw(
        "raw-seed-negative",
        "invalid_spec",
        "seed: Input should be greater than or equal to 0",
        specs=({**A_FOX, "seed": -5},),
    ),
    raw(
        "raw-seed-not-an-integer",
        "invalid_spec",
        "seed: Input should be a valid integer",
        specs=({**A_FOX, "seed": "abc"},),
    ),
    raw(
        "raw-wrong-version",
        "bad_message",
        "unsupported message version 2 (expected 1)",
        specs=(A_FOX,),
        fields={"v": 2},
    ),
    raw(
        "raw-no-version",
        "bad_message",
        "unsupported message version None (expected 1)",
        specs=(BAD_SPEC,),
        fields={"v": None},
    ),
    raw(
        "raw-spec-not-an-object",
        "bad_message",
        "every entry of 'jobs' needs a 'spec' object",
        fields={"jobs": [{"index": 0, "spec": "a fox"}]},
    ),
    raw(
        "raw-entry-without-index",
        "bad_message",
        "integer 'index' in 0..",
        fields={"jobs": [{"index": 0, "spec": A_FOX}, {"spec": A_FOX}]},
    ),
    raw(
        "raw-duplicate-index",
        "bad_message",
        "its own integer 'index' in 0..",
        fields={"jobs": [{"index": 0, "spec": A_FOX}, {"index": 0, "spec": A_FOX}]},
    ),
    raw(
        "raw-negative-index",
        "bad_message",
        "integer 'index' in 0..",
        fields={"jobs": [{"index": 0, "spec": A_FOX}, {"index": -1, "spec": A_FOX}]},
    ),
    raw(
        "raw-shared-not-an-object",
        "bad_message",
        "'shared' must be an object",
        specs=(A_FOX,),
        fields={"shared": ["height", 64]},
    ),
    raw(
        "raw-index-too-large",
        "bad_message",
        "index",
        fields={"jobs": [{"index": 0, "spec": BAD_SPEC}, {"index": 10**20, "spec": BAD_SPEC}]},
    ),
    raw(
        "raw-mode-not-served",
        "unsupported_mode",
        "this worker serves img2img, not text2img",
        specs=(A_FOX,),
        worker="plain",
        mode=Mode.IMG2IMG,
    ),
    raw(
        "raw-image-not-an-image",
        "bad_input",
        "image: not a readable PNG, JPEG or WebP image",
        specs=({**A_FOX, "mode": "img2img", "image": NOT_AN_IMAGE},),
        mode=Mode.IMG2IMG,
    ),
    raw(
        "raw-image-https-disabled",
        "bad_input",
        "https:// inputs are disabled on this worker",
        specs=({**A_FOX, "mode": "img2img", "image": "https://93.184.216.34/fox.png"},),
        worker="plain",
        mode=Mode.IMG2IMG,
    ),
]

# Raw messages whose envelope names no job: nothing can be recorded; they must be consumed.
RAW_UNNAMED = [
    param(
        "no-batch-id", Case(expect=(), message={"v": 1, "shared": {}, "jobs": [{"index": 0, "spec": A_FOX}]})
    ),
    param("empty-batch-id", Case(expect=(), message=envelope("", A_FOX))),
    param("batch-id-not-a-string", Case(expect=(), message={**envelope("x", A_FOX), "batch_id": 7})),
    param("no-jobs", Case(expect=(), message={"v": 1, "batch_id": "no-jobs", "shared": {}})),
    param("jobs-not-a-list", Case(expect=(), message=envelope("jobs-not-a-list", jobs={"index": 0}))),
    param("jobs-empty", Case(expect=(), message=envelope("jobs-empty"))),
    param("no-entry-has-an-index", Case(expect=(), message=envelope("no-index", jobs=[{"spec": A_FOX}]))),
    param("empty-kwargs", Case(expect=(), message={})),
    param("unrelated-kwargs", Case(expect=(), message={"hello": "world"})),
    param("positional-garbage", Case(expect=(), args=("garbage",))),
    param("positional-and-kwargs", Case(expect=(), args=(1, 2), message=envelope("pos", A_FOX))),
]
