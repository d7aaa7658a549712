"""A micro-batch's GPU time shared per image, priced, and read back from the store's counters."""

from __future__ import annotations

from kandinsky_batch.gpu_time import GpuShare, share, spent_of


def test_a_jobs_share_is_its_images_part_of_the_micro_batch_and_priced_at_the_rate():
    assert share(1_000_000, 4, 1, None) == GpuShare(250_000)
    assert share(1_000_000, 3, 2, None).us == 666_667
    priced = share(3_600_000_000, 2, 1, 2.0)  # half of a GPU-hour at 2 per hour
    assert priced.seconds == 1800.0 and priced.cost == 1.0
    assert share(0, 0, 0, 1.0) == GpuShare(0, 0)


def test_a_cost_is_exact_to_a_billionth_of_seconds_times_rate():
    for us in (1, 999, 61_234, 12_345_678_901):
        for rate in (0.01, 2.5, 3.6, 97.13):
            got = share(us, 1, 1, rate)
            assert got.cost is not None
            assert abs(got.cost - got.seconds * rate / 3600) <= 0.5e-9


def test_spent_of_reads_the_counters_per_mode_and_ignores_other_fields():
    fields = {
        "total": "3",
        "succeeded": "3",
        "gpu_us:text2img": "1500000",
        "cost_n:text2img": "1041667",
        "gpu_us:img2img": "500000",
        "gpu_us:unknown": "7",
    }
    assert spent_of(fields) == {
        "gpu_seconds": 2.0,
        "cost": 0.001041667,
        "by_mode": {
            "img2img": {"gpu_seconds": 0.5, "cost": None},
            "text2img": {"gpu_seconds": 1.5, "cost": 0.001041667},
        },
    }
    assert spent_of({"total": "1"}) == {"gpu_seconds": 0.0, "cost": None, "by_mode": {}}
