"""The mixed batch the export tests make, the samples its export must hold, and reading shards back."""

from __future__ import annotations

import gc
import hashlib
import warnings
from pathlib import Path
from typing import Any

import webdataset as wds

from tests.helpers.export_batch import Planned, png

N = 250
SHARD = 100  # three shards: 0-99, 100-199, 200-249


def plan(i: int) -> Planned:
    """A mix: two-image jobs, failures, cancels, a missing and a garbage image, scores or none."""
    images = 2 if i % 10 == 3 else 1
    score: float | list[float] | None = None if i % 4 == 0 else round(i % 20 / 20, 2)
    if images == 2 and score is not None:
        score = [score, round(1 - score, 2)]
    outcome = "failed:bad_input" if i % 37 == 5 else "canceled" if i % 53 == 7 else "succeeded"
    broken = {44: "missing", 77: "garbage"}.get(i, "")
    prompt = "Кошка в космосе, акварель" if i == 11 else f"a red fox number {i} in the snow"
    return Planned(i, prompt, 5000 + 7 * i, images, outcome, score, broken)


PLAN = [plan(i) for i in range(N)]


def score_of(p: Planned, k: int) -> float | None:
    return p.clip_score[k] if isinstance(p.clip_score, list) else p.clip_score


def expected(min_score: float | None = None) -> list[dict[str, Any]]:
    """Every sample the export should write, in order: (key, caption, seed, score, sha256)."""
    out = []
    for p in PLAN:
        for k in range(p.images if p.outcome == "succeeded" else 0):
            score = score_of(p, k)
            if (k == 0 and p.broken) or (min_score is not None and (score is None or score < min_score)):
                continue
            out.append(
                {
                    "key": f"{p.index:09d}_{k}",
                    "caption": p.prompt,
                    "seed": p.seed,
                    "clip_score": score,
                    "sha256": hashlib.sha256(png(p.index, k)).hexdigest(),
                }
            )
    return out


def read_wds(tars: list[str]) -> list[dict[str, Any]]:
    """Every sample of the tars, decoded by the webdataset library, in order.

    webdataset leaves its last tar's file object to the garbage collector: it is collected
    here, where the ResourceWarning that pytest would turn into an error is ignored.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        samples = list(wds.WebDataset(tars, shardshuffle=False).decode())
        gc.collect()
    return samples


def shard_files(out: Path, suffix: str) -> list[str]:
    return [str(p) for p in sorted(out.glob(f"*{suffix}"))]
