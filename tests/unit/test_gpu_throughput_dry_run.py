"""bench/gpu_throughput.py --dry-run: the full-size model's counts, checked against the published ones.

The GPU benchmark is only as right as the architecture it builds from `bench/kandinsky21/`; the dry run
builds it on the meta device, so a CPU can check it is the real one (a ~1.22 B-parameter UNet, ~4.0
TFLOP per guided 768-px step) and that the per-image sum adds up. Without CUDA a real run must say so
and exit 2 rather than fail halfway.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "bench/gpu_throughput.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def results(stdout: str) -> dict[str, float]:
    out = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            _, metric, value, _unit = line.split()
            out[metric] = float(value)
    return out


@pytest.fixture(scope="module")
def dry() -> dict[str, float]:
    proc = run("--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results(proc.stdout)


def test_parameter_counts_are_the_published_ones(dry: dict[str, float]) -> None:
    assert 1.15e9 <= dry["unet_params"] <= 1.30e9
    assert dry["inpaint_unet_params"] > dry["unet_params"]  # 9 input channels instead of 4
    assert 0.95e9 <= dry["prior_params"] <= 1.10e9  # "Diffusion Image Prior — 1B"
    assert 0.53e9 <= dry["text_encoder_params"] <= 0.59e9  # XLM-Roberta-Large-Vit-L-14, 560M
    assert 0.06e9 <= dry["movq_params"] <= 0.075e9  # MoVQ, 67M
    # CLIP ViT-L/14, 427M: vision tower and text tower together.
    assert 0.40e9 <= dry["prior_image_encoder_params"] + dry["prior_text_encoder_params"] <= 0.45e9


def test_unet_step_flops(dry: dict[str, float]) -> None:
    assert 3.5 <= dry["unet_step_cfg_768_tflop"] <= 4.5
    ratio = dry["unet_step_cfg_768_tflop"] / dry["unet_step_cfg_512_tflop"]
    assert 2.0 <= ratio <= 2.6  # 2.25x the pixels, attention a little more than linear


def test_image_flops_add_up(dry: dict[str, float]) -> None:
    step = dry["unet_step_cfg_768_tflop"]
    # At 768 px and 100 steps the UNet is all but 5 % of an image's work.
    assert 100 * step <= dry["image_768_100_steps_tflop"] <= 1.05 * 100 * step
    for side in (512, 768):
        step = dry[f"unet_step_cfg_{side}_tflop"]
        image = dry[f"image_{side}_100_steps_tflop"]
        rest = (
            dry["prior_steps"] * dry["prior_step_cfg_tflop"]
            + dry[f"movq_decode_{side}_tflop"]
            + dry["prior_text_encoder_cfg_tflop"]
            + dry["prior_image_encoder_zero_embed_tflop"]
            + dry["text_encoder_cfg_tflop"]
        )
        assert rest > 0
        assert image == pytest.approx(100 * step + rest, rel=5e-3)  # RESULT lines carry 4 digits
        assert dry[f"image_{side}_50_steps_tflop"] == pytest.approx(50 * step + rest, rel=5e-3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit; this machine has CUDA")
def test_without_cuda_a_real_run_exits_2_with_a_message() -> None:
    proc = run("--quick")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "needs CUDA" in proc.stderr
    assert "RESULT" not in proc.stdout
