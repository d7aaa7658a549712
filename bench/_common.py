"""Helpers shared by the benchmarks: RESULT lines, isolated settings, realistic prompts, Redis clean-up.

Not a benchmark itself. Every benchmark uses a fresh `kbb<hex>` key and queue prefix, so it can
share a Redis with tests and other benchmarks and delete exactly what it created.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from kandinsky_batch.settings import Settings

REDIS_URL = os.environ.get("KANDINSKY_BATCH_REDIS_URL", "redis://127.0.0.1:6379/0")

# Building blocks of LAION/DiffusionDB-like prompts: a subject, a scene, sometimes a style.
_SUBJECTS = [
    "a red fox",
    "an old lighthouse",
    "a bowl of ramen",
    "a steam locomotive",
    "a snow leopard",
    "a tiny robot",
    "a medieval castle",
    "a vintage bicycle",
    "a koi pond",
    "a hot air balloon",
    "an astronaut",
    "a cup of coffee",
    "a wooden sailboat",
    "a cozy cabin",
    "a city street",
    "a field of sunflowers",
    "a portrait of an old fisherman",
    "a golden retriever puppy",
]
_SCENES = [
    "in the snow",
    "at dawn",
    "on a rainy night",
    "under a starry sky",
    "in a misty forest",
    "by the sea",
    "in a busy market",
    "on the moon",
    "at golden hour",
    "in autumn",
    "in the desert",
    "on a kitchen table",
]
_STYLES = [
    "watercolor",
    "oil painting",
    "studio photo",
    "35mm film",
    "digital art",
    "pencil sketch",
    "ukiyo-e",
    "highly detailed",
    "4k",
    "soft light",
    "isometric",
    "trending on artstation",
]


def result(metric: str, value: float, unit: str) -> None:
    """One figure, in the one format the README and scripts read: `RESULT <metric> <value> <unit>`."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    print(f"RESULT {metric} {text} {unit}", flush=True)


def note(text: str) -> None:
    print(text, flush=True)


def machine_note() -> None:
    """Cores and load: other processes on a 2-core machine move the absolute numbers."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    note(f"machine: {os.cpu_count()} cores, load average {load}, python {sys.version.split()[0]}")


def stop_on_sigterm() -> None:
    """Turn SIGTERM (timeout, kill) into SystemExit, so the clean-up in `finally` still runs."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def new_tag() -> str:
    """A fresh prefix, kept short: key names are part of what `redis_footprint` measures (default `kb`)."""
    return "kbb" + uuid.uuid4().hex[:6]


def bench_settings(tag: str, **overrides: Any) -> Settings:
    """Settings isolated under `tag` (keys and queues), everything else from the environment."""
    values: dict[str, Any] = {"redis_url": REDIS_URL, "key_prefix": tag, "queue_prefix": tag}
    values.update(overrides)
    return Settings(**values)


def tiny_settings(tag: str, models: Path, root: Path, **overrides: Any) -> Settings:
    """Settings for a worker of the tiny model under `models` on the CPU, storing under `root`."""
    return bench_settings(
        tag,
        storage_url=(root / "store").as_uri(),
        prior_model=str(models / "prior"),
        decoder_model=str(models / "decoder"),
        inpaint_model=str(models / "inpaint"),
        device="cpu",
        dtype="float32",
        **overrides,
    )


def connect() -> redis.Redis:
    """The benchmark's Redis, or one clear line and exit 1 if it does not answer."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=30)
    try:
        client.ping()
    except redis.RedisError as exc:
        print(f"error: Redis is not reachable at {REDIS_URL}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    return client


def cleanup(client: redis.Redis, tag: str) -> int:
    """Delete every key that has `tag` in its name (ours: keys, queues, kombu bindings); return how many."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"*{tag}*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            deleted += int(client.unlink(*batch))
            batch = []
    if batch:
        deleted += int(client.unlink(*batch))
    return deleted


def finish(client: redis.Redis, tag: str) -> None:
    """What every benchmark does last, also on Ctrl-C: delete its keys and say how many."""
    note(f"cleaned up {cleanup(client, tag)} keys under {tag}")


def iter_prompts(seed: int = 0) -> Iterator[str]:
    """Dataset-like prompts of roughly 40-80 characters, without end: for inputs too big to hold."""
    rng = random.Random(seed)
    while True:
        text = f"{rng.choice(_SUBJECTS)} {rng.choice(_SCENES)}"
        for style in rng.sample(_STYLES, rng.randint(1, 3)):
            if len(text) + len(style) + 2 > 80:
                break
            text += f", {style}"
        if len(text) < 40:
            text += ", highly detailed"
        yield text


def prompts(n: int, seed: int = 0) -> list[str]:
    """`n` distinct dataset-like prompts of roughly 40-80 characters, the same for the same seed."""
    return list(itertools.islice(iter_prompts(seed), n))
