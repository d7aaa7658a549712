"""The gpu_* metrics: absent off CUDA (not zeros), and which families a reading gives.

The collector's reads are torch's and NVML's own, so on a machine without CUDA only the CPU path
runs for real; `gpu_families` (readings -> families) is plain data and runs everywhere. The last
test reads a real CUDA device and runs only where there is one.
"""

from __future__ import annotations

import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest

from worker.metrics import GpuCollector, GpuReading, gpu_families

ALL = {
    "kandinsky_batch_gpu_memory_allocated_bytes",
    "kandinsky_batch_gpu_memory_reserved_bytes",
    "kandinsky_batch_gpu_utilization_ratio",
    "kandinsky_batch_gpu_memory_used_bytes",
}


def values(families) -> dict[str, tuple[dict[str, str], float]]:
    return {f.name: (f.samples[0].labels, f.samples[0].value) for f in families}


def test_a_cpu_worker_exports_no_gpu_series_at_all():
    collector = GpuCollector(torch.device("cpu"))
    assert collector.read() is None and list(collector.collect()) == []
    registry = CollectorRegistry()
    registry.register(collector)
    assert generate_latest(registry) == b""


def test_no_reading_no_family():
    assert gpu_families("cuda:0", None) == []


def test_torch_figures_alone_when_nvml_does_not_load():
    got = values(gpu_families("cuda:1", GpuReading(allocated_bytes=10, reserved_bytes=20)))
    assert got == {
        "kandinsky_batch_gpu_memory_allocated_bytes": ({"device": "cuda:1"}, 10.0),
        "kandinsky_batch_gpu_memory_reserved_bytes": ({"device": "cuda:1"}, 20.0),
    }


def test_all_four_with_nvml():
    reading = GpuReading(allocated_bytes=1, reserved_bytes=2, used_bytes=3, utilization_ratio=0.42)
    got = values(gpu_families("cuda:0", reading))
    assert set(got) == ALL
    assert got["kandinsky_batch_gpu_utilization_ratio"] == ({"device": "cuda:0"}, 0.42)
    assert got["kandinsky_batch_gpu_memory_used_bytes"][1] == 3.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_device_is_read_for_real():
    collector = GpuCollector(torch.device("cuda"))
    held = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    got = values(collector.collect())
    assert got["kandinsky_batch_gpu_memory_allocated_bytes"][0] == {"device": "cuda:0"}
    assert got["kandinsky_batch_gpu_memory_allocated_bytes"][1] >= held.numel()
    assert got["kandinsky_batch_gpu_memory_reserved_bytes"][1] >= held.numel()
    if collector.nvml:
        assert 0 <= got["kandinsky_batch_gpu_utilization_ratio"][1] <= 1
        assert got["kandinsky_batch_gpu_memory_used_bytes"][1] >= held.numel()
