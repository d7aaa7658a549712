"""A model setting that names no model is one line naming the variable and its value, told before any load."""

from __future__ import annotations

from pathlib import Path

import pytest

from kandinsky_batch.errors import ModelUnavailable
from kandinsky_batch.schema import Mode
from kandinsky_batch.settings import Settings
from worker import pipelines
from worker.pipelines import PipelineCache, load_problem, source_problem


def test_a_missing_folder_is_no_such_folder(tmp_path: Path):
    missing = str(tmp_path / "nope")
    assert source_problem("decoder", missing) == (
        f"KANDINSKY_BATCH_DECODER_MODEL={missing}: no such folder (a local diffusers folder or a Hugging Face id)"
    )
    assert "no such folder" in str(source_problem("prior", "./models/prior"))


def test_a_file_or_a_folder_without_model_index_is_not_a_model(tmp_path: Path):
    (tmp_path / "weights.bin").write_bytes(b"")
    assert "a file, not a folder" in str(source_problem("inpaint", str(tmp_path / "weights.bin")))
    assert "no model_index.json" in str(source_problem("inpaint", str(tmp_path)))
    (tmp_path / "model_index.json").write_text("{}")
    assert source_problem("inpaint", str(tmp_path)) is None  # a folder: loading it tells the rest


def test_a_hub_id_is_left_to_its_load_unless_the_hub_is_off_and_it_is_not_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(pipelines.huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert source_problem("prior", "kandinsky-community/kandinsky-2-1-prior") is None
    monkeypatch.setattr(pipelines.huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(pipelines, "try_to_load_from_cache", lambda repo, name: None)
    problem = source_problem("prior", "kandinsky-community/kandinsky-2-1-prior")
    assert problem == (
        "KANDINSKY_BATCH_PRIOR_MODEL=kandinsky-community/kandinsky-2-1-prior: "
        "HF_HUB_OFFLINE is set and this Hugging Face id is not in the local cache"
    )


def test_a_hub_id_that_fails_to_load_names_the_setting_and_the_tiny_model(monkeypatch):
    monkeypatch.setattr(pipelines.huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    line = load_problem("decoder", "someone/some-model", OSError("We couldn't connect to the Hub"))
    assert line.startswith(
        "KANDINSKY_BATCH_DECODER_MODEL=someone/some-model: cannot load this Hugging Face id"
    )
    assert "unreachable or has no such model" in line and "kandinsky-batch models make-tiny DIR" in line


def test_every_wrong_path_of_the_served_modes_is_named_at_once(tmp_path: Path):
    settings = Settings(prior_model="/no/prior", decoder_model="/no/decoder", inpaint_model="/no/inpaint")
    cache = PipelineCache(settings)
    with pytest.raises(ModelUnavailable) as caught:
        cache.check_sources([Mode.TEXT2IMG, Mode.INPAINT])
    message = caught.value.message
    for name in ("PRIOR", "DECODER", "INPAINT"):
        assert f"KANDINSKY_BATCH_{name}_MODEL=/no/{name.lower()}: no such folder" in message
    assert "\n" not in message and "make-tiny" not in message  # paths, not hub ids: no hint about the hub
    with pytest.raises(ModelUnavailable) as caught:
        cache.check_sources([Mode.INPAINT])  # img2img's decoder is not needed: not named
    assert "DECODER" not in caught.value.message
    assert cache.loads == {}
