"""The printed reproduce script is valid, lint-clean Python whatever the prompt holds.

Its parameters are a literal in the script's source, so a prompt with quotes, backslashes, newlines
or `'''` must come back unchanged, never break the script or run as code.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from typing import Any

import pytest

from kandinsky_batch.errors import BadInput
from producer.reproduce import needed_inputs, render, script_parameters

HOSTILE = [
    "a fox",
    'it\'s "quoted" and \'\'\'tripled\'\'\' and """again"""',
    "back\\slash \\n not a newline\nbut this is",
    "__import__('os').system('echo pwned')",
    "ünïcødé 🦊 \u2028 separator",
]


def meta(prompt: str, **spec: Any) -> dict[str, Any]:
    return {
        "job_id": "b-0",
        "batch_id": "b",
        "spec": {"mode": "text2img", "prompt": prompt, "negative_prompt": None, **spec},
        "seed": 4294967295,
        "models": {"prior": {"id": "p", "revision": None}, "decoder": {"id": "d", "revision": "abc"}},
        "outputs": ["file:///x/b/b-0/0.png", "file:///x/b/b-0/1.png"],
        "batch": {"size": 2},
    }


def literal_of(script: str) -> dict[str, Any]:
    """The value the script's `P: dict = ...` line assigns, read without running the script."""
    tree = ast.parse(script)
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "P":
            assert node.value is not None
            value: dict[str, Any] = ast.literal_eval(node.value)
            return value
    raise AssertionError("no P = ... line")


@pytest.mark.parametrize("prompt", HOSTILE)
def test_any_prompt_round_trips_through_the_script_literal(prompt: str) -> None:
    params = script_parameters(meta(prompt), 1, lambda uri: uri)
    script = render(params)
    assert literal_of(script)["spec"]["prompt"] == prompt
    assert literal_of(script) == params


def test_image_k_gets_seed_plus_k_wrapping_at_two_to_the_32() -> None:
    assert script_parameters(meta("a"), 0, str)["seed"] == 4294967295
    assert script_parameters(meta("a"), 1, str)["seed"] == 0


def test_the_rendered_script_passes_ruff() -> None:
    script = render(script_parameters(meta(HOSTILE[1]), 0, str))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--isolated",
            "--select",
            "E,F,W",
            "--line-length",
            "120",
            "--stdin-filename",
            "reproduce.py",
            "-",
        ],
        input=script,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("spec", "fields"),
    [
        ({"mode": "img2img"}, ["image"]),
        ({"mode": "inpaint", "mask": [[0, 0, 1, 1]]}, ["image"]),
        ({"mode": "inpaint", "mask": "data:..."}, ["image", "mask"]),
        (
            {"mode": "interpolate", "conditions": [{"text": "a"}, {"image": "x"}, {"image": "y"}]},
            ["conditions.1.image", "conditions.2.image"],
        ),
    ],
)
def test_needed_inputs_names_every_image_a_mode_reads(spec: dict[str, Any], fields: list[str]) -> None:
    assert needed_inputs(spec) == fields


def test_metadata_without_input_references_is_refused_with_the_reason() -> None:
    old = meta("a", mode="img2img", strength=0.5)
    with pytest.raises(BadInput, match="does not say where its input image is stored"):
        script_parameters(old, 0, str)


@pytest.mark.parametrize(
    "broken",
    [
        {"spec": {"mode": "sculpture"}},
        {"spec": {"mode": "text2img"}, "seed": "x", "models": {}},
        {"spec": {"mode": "interpolate", "conditions": [7]}, "seed": 1, "models": {}},
        {"spec": {"mode": "img2img"}, "seed": 1, "models": {}, "inputs": [{"sha256": "0"}]},
        {"spec": {"mode": "text2img"}, "models": {}},
    ],
)
def test_metadata_in_another_form_is_refused_with_a_reason_not_a_traceback(broken: dict[str, Any]) -> None:
    with pytest.raises(BadInput, match="not in the form a worker writes"):
        script_parameters(broken, 0, str)


# Everything that can end a line, a string or a comment in Python source, or format a string.
NASTY = "x\n'''\"\"\"\\ {a} }{ %s \x00 \r \x0c \x1b[2J \u2028 \x85 \udc80 # import os"


def nasty_meta() -> dict[str, Any]:
    """Metadata with a hostile string in every field the script embeds (as stored metadata could be)."""
    return {
        "job_id": f"{NASTY}-0",
        "batch_id": NASTY,
        "spec": {"mode": "img2img", "prompt": NASTY, "negative_prompt": NASTY, "image": NASTY, NASTY: NASTY},
        "seed": 7,
        "models": {name: {"id": NASTY, "revision": NASTY} for name in ("prior", "decoder", NASTY)},
        "device": NASTY,
        "dtype": NASTY,
        "torch_threads": NASTY,
        "outputs": [NASTY],
        "batch": {"size": NASTY},
        "inputs": [{"field": "image", "uri": NASTY, "sha256": NASTY}],
    }


def test_hostile_values_in_every_embedded_field_give_a_script_that_compiles_and_keeps_them_as_data() -> None:
    params = script_parameters(nasty_meta(), 0, lambda uri: f"/inputs/{uri}")
    script = render(params)
    compile(script, "reproduce.py", "exec")  # a SyntaxError fails the test
    literal = literal_of(script)
    assert literal == params
    assert literal["job_id"] == f"{NASTY}-0" and literal["batch_id"] == NASTY
    assert (literal["device"], literal["dtype"], literal["torch_threads"]) == (NASTY, NASTY, NASTY)
    assert literal["output"] == NASTY and literal["micro_batch_size"] == NASTY
    assert literal["models"][NASTY] == {"id": NASTY, "revision": NASTY}
    assert literal["spec"][NASTY] == NASTY and literal["spec"]["prompt"] == NASTY
    assert literal["inputs"] == [{"field": "image", "location": f"/inputs/{NASTY}", "sha256": NASTY}]
    # and nothing was added to the program: the same statements as a script of plain values
    plain_meta = meta("a fox", mode="img2img", image="i")
    plain_meta["inputs"] = [{"field": "image", "uri": "file:///i.png", "sha256": "0" * 64}]
    plain = render(script_parameters(plain_meta, 0, str))
    assert [type(n) for n in ast.parse(script).body] == [type(n) for n in ast.parse(plain).body]
    # and the note above the parameters stays two comment lines
    lines = script.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("# Image 0 of job "))
    assert lines[first + 1].startswith("# so a rerun") and lines[first + 2].startswith("P: dict = ")


@pytest.mark.parametrize("number", [float("nan"), float("inf"), -float("inf")])
def test_a_number_with_no_python_literal_is_refused_not_written(number: float) -> None:
    broken = meta("a") | {"spec": {"mode": "text2img", "prompt": "a", "guidance_scale": number}}
    with pytest.raises(BadInput, match="not in the form a worker writes"):
        script_parameters(broken, 0, str)
