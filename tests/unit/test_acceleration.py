"""The GPU options' decisions: batch buckets, channels_last's auto, and when TF32 is touched."""

from __future__ import annotations

import pytest
import torch

from kandinsky_batch.settings import Settings
from worker.acceleration import apply_tf32, batch_buckets, bucket_for, resolve_channels_last, tf32_decision

CUDA = torch.device("cuda:0")
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("cap", "buckets"),
    [
        (1, [1]),
        (2, [1, 2]),
        (4, [1, 2, 4]),
        (6, [1, 2, 4, 6]),
        (8, [1, 2, 4, 8]),
        (64, [1, 2, 4, 8, 16, 32, 64]),
    ],
)
def test_buckets_are_powers_of_two_up_to_the_cap(cap: int, buckets: list[int]) -> None:
    assert batch_buckets(cap) == buckets


def test_a_batch_is_padded_to_the_smallest_bucket_that_holds_it() -> None:
    assert [bucket_for(n, 8) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert [bucket_for(n, 6) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]
    assert bucket_for(9, 8) == 9  # past the cap (never sent by the engine): as it is


def test_tf32_is_turned_on_from_ampere_on_only() -> None:
    assert tf32_decision(True, CUDA, (8, 0)) is True
    assert tf32_decision(True, CUDA, (9, 0)) is True
    assert tf32_decision(False, CUDA, (8, 6)) is False  # switched off when the setting says so
    assert tf32_decision(True, CUDA, (7, 5)) is None  # no TF32 before Ampere: flags left alone
    assert tf32_decision(True, CPU, None) is None


def test_tf32_on_the_cpu_leaves_torchs_flags_as_they_are() -> None:
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    assert apply_tf32(True, CPU) is None
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags


def test_channels_last_auto_is_on_for_cuda_only() -> None:
    assert resolve_channels_last("auto", CUDA) is True
    assert resolve_channels_last("auto", CPU) is False
    assert resolve_channels_last("true", CPU) is True
    assert resolve_channels_last("false", CUDA) is False


def test_the_gpu_settings_default_and_parse_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert (defaults.compile, defaults.channels_last, defaults.tf32) == ("none", "auto", True)
    monkeypatch.setenv("KANDINSKY_BATCH_COMPILE", "ALL")
    monkeypatch.setenv("KANDINSKY_BATCH_CHANNELS_LAST", "False")
    monkeypatch.setenv("KANDINSKY_BATCH_TF32", "false")
    env = Settings()
    assert (env.compile, env.channels_last, env.tf32) == ("all", "false", False)
    passed_on = {k: v for k, v in env.as_env().items() if k.endswith(("_COMPILE", "_CHANNELS_LAST", "_TF32"))}
    assert passed_on == {
        "KANDINSKY_BATCH_COMPILE": "all",
        "KANDINSKY_BATCH_CHANNELS_LAST": "false",
        "KANDINSKY_BATCH_TF32": "False",
    }
