"""GPU time and its cost: a micro-batch's generation time shared among its images, added up exactly.

A worker times each micro-batch's generate call (not idle time, not storing) and gives each image
an equal share; a job's share is its images' shares. Redis adds integers exactly however many
times it adds them, so the store counts micro-seconds and billionths of the currency
(`keys.Spent`), and the metadata's figures are those integers read as seconds and as money: the
sums over a batch or a tenant equal the sums over their jobs' metadata, within float rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kandinsky_batch.keys import Spent
from kandinsky_batch.schema import Mode

US_PER_S = 1_000_000
NANO_PER_UNIT = 1_000_000_000
S_PER_HOUR = 3600
MODES = frozenset(m.value for m in Mode)


@dataclass(frozen=True)
class GpuShare:
    """One job's share of its micro-batch's generation: micro-seconds, and its cost in billionths
    (None when no `COST_PER_GPU_HOUR` is set)."""

    us: int
    cost_n: int | None = None

    @property
    def seconds(self) -> float:
        return self.us / US_PER_S

    @property
    def cost(self) -> float | None:
        return None if self.cost_n is None else self.cost_n / NANO_PER_UNIT


def share(micro_batch_us: int, images: int, mine: int, cost_per_gpu_hour: float | None) -> GpuShare:
    """The share of `mine` of a micro-batch's `images` images, priced at `cost_per_gpu_hour`."""
    us = round(micro_batch_us * mine / images) if images else 0
    if cost_per_gpu_hour is None:
        return GpuShare(us)
    return GpuShare(us, round(us * cost_per_gpu_hour * NANO_PER_UNIT / (US_PER_S * S_PER_HOUR)))


def spent_of(fields: Mapping[str, str]) -> dict[str, Any]:
    """`gpu_seconds`, `cost` and `by_mode` from a batch's or a tenant's hash (the `Spent` counters).

    A cost is null where no counted job had one (no `COST_PER_GPU_HOUR` on its worker).
    """
    us: dict[str, int] = {}
    cost_n: dict[str, int] = {}
    for name, value in fields.items():
        for prefix, into in ((Spent.GPU_US, us), (Spent.COST_N, cost_n)):
            mode = name[len(prefix.value) :]
            if name.startswith(prefix.value) and mode in MODES:
                into[mode] = int(value)
    by_mode = {
        mode: {"gpu_seconds": us.get(mode, 0) / US_PER_S, "cost": _money(cost_n.get(mode))}
        for mode in sorted(us.keys() | cost_n.keys())
    }
    total_cost = sum(cost_n.values()) if cost_n else None
    return {"gpu_seconds": sum(us.values()) / US_PER_S, "cost": _money(total_cost), "by_mode": by_mode}


def _money(nano: int | None) -> float | None:
    return None if nano is None else nano / NANO_PER_UNIT
