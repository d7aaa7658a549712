"""The job contract: limits, mode rules, seeds, compact wire form."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kandinsky_batch.errors import InvalidSpec
from kandinsky_batch.schema import TERMINAL_STATES, JobSpec, JobState, Mode
from kandinsky_batch.settings import Settings
from kandinsky_batch.wire import validate_spec

IMG = "data:image/png;base64,iVBORw0KGgo="


def test_defaults_follow_diffusers():
    spec = JobSpec(prompt="a cat")
    assert spec.mode is Mode.TEXT2IMG
    assert (spec.height, spec.width) == (512, 512)
    assert spec.num_inference_steps == 100
    assert spec.prior_num_inference_steps == 25
    assert spec.guidance_scale == 4.0
    assert spec.seed is None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"prompt": "x", "height": 100}, "height"),
        ({"prompt": "x", "width": 0}, "width"),
        ({"prompt": "x", "width": -64}, "width"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "x", "num_images": 9}, "num_images"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "guidance_scale": "high"}, "guidance_scale"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ({"prompt": "x" * 2001}, "prompt"),
    ],
)
def test_invalid_field_is_named_in_the_error(data, field):
    with pytest.raises(InvalidSpec) as err:
        validate_spec(data, Settings())
    assert field in err.value.message


def test_configured_max_side_is_enforced_at_submit():
    with pytest.raises(InvalidSpec, match=r"height: .*at most 512"):
        validate_spec({"prompt": "x", "height": 576}, Settings(max_side=512))
    assert validate_spec({"prompt": "x", "height": 512}, Settings(max_side=512)).height == 512


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"prompt": "   "}, "non-empty 'prompt'"),
        ({"mode": "img2img", "prompt": "x"}, "needs 'image'"),
        ({"mode": "text2img", "prompt": "x", "image": IMG}, "takes no 'image'"),
        ({"mode": "inpaint", "prompt": "x", "image": IMG}, "needs 'mask'"),
        ({"mode": "img2img", "prompt": "x", "image": IMG, "strength": 0}, "strength"),
        ({"mode": "interpolate"}, "needs 'conditions'"),
        ({"mode": "interpolate", "conditions": [{"text": "a", "weight": 1}]}, "at least 2"),
        (
            {"mode": "interpolate", "conditions": [{"text": "a", "weight": 0}, {"text": "b", "weight": 0}]},
            "zero",
        ),
        ({"mode": "interpolate", "conditions": [{"text": "a", "weight": 1}, {"weight": 1}]}, "exactly one"),
        ({"mode": "inpaint", "prompt": "x", "image": IMG, "mask": [[10, 10, 5, 20]]}, "rectangle"),
        ({"mode": "paint", "prompt": "x"}, "mode"),
    ],
)
def test_inputs_must_match_the_mode(data, reason):
    with pytest.raises(ValidationError, match=reason):
        JobSpec.model_validate(data)


def test_every_mode_accepts_its_inputs():
    conds = [{"text": "a", "weight": 0.5}, {"image": IMG, "weight": 0.5}]
    JobSpec(mode=Mode.IMG2IMG, prompt="x", image=IMG, strength=0.5)
    JobSpec(mode=Mode.INPAINT, prompt="x", image=IMG, mask=[(0, 0, 32, 32)])
    JobSpec.model_validate({"mode": "interpolate", "conditions": conds})


def test_any_utf8_prompt_is_accepted():
    assert JobSpec(prompt="宇宙里的猫 🐱 Кошка").prompt.startswith("宇宙")


def test_seed_is_fixed_once_and_kept():
    spec = JobSpec(prompt="x").with_seed()
    assert spec.seed is not None
    assert spec.with_seed().seed == spec.seed
    assert JobSpec(prompt="x", seed=7).with_seed().seed == 7


def test_wire_form_leaves_out_defaults():
    assert JobSpec(prompt="x", seed=3).wire() == {"prompt": "x", "seed": 3}


def test_spec_is_frozen():
    spec = JobSpec(prompt="x")
    with pytest.raises(ValidationError):
        spec.prompt = "y"  # type: ignore[misc]


def test_terminal_states():
    assert frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED}) == TERMINAL_STATES
    assert JobState.RUNNING not in TERMINAL_STATES
