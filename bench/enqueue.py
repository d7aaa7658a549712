"""Enqueue rate: bulk submit (`Client.submit_batch` of a JSONL file) vs a naive loop of one Celery message per prompt.

Both run in the same process against the real Redis with no worker, so messages just queue. The naive loop
validates each prompt into a full JobSpec (every field spelled out) and sends it with `send_task`; it runs
on fewer prompts (`--naive-n`, half before the bulk submit and half after) and both are compared per
prompt. Each side is warmed up first. A second, instrumented bulk pass then splits the bulk time into its
phases, and one chunk's `send_task` is timed with and without Celery's argsrepr/kwargsrepr, to show where
the time goes.

Run: python bench/enqueue.py [--n 100000] [--naive-n 4000] [--chunk-size N] [--profile]
Target: bulk >= 30x the naive loop's prompts/s.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import pstats
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common
from _common import note, result

import kandinsky_batch.enqueue as enqueue_module
import producer.submit as submit_module
from kandinsky_batch.keys import MESSAGE_VERSION, TASK_NAME
from kandinsky_batch.schema import Mode
from kandinsky_batch.settings import Settings
from kandinsky_batch.wire import build_message
from producer.client import Client

TARGET_RATIO = 30.0


def write_jsonl(path: Path, texts: list[str]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for text in texts:
            fh.write(json.dumps({"prompt": text}, ensure_ascii=False) + "\n")


def bulk(client: Client, path: Path, batch_id: str | None = None) -> tuple[int, float]:
    """Submit the file as one batch; (jobs sent, seconds)."""
    started = time.perf_counter()
    res = client.submit_batch(path, batch_id=batch_id)
    elapsed = time.perf_counter() - started
    if res.errors or res.sent != len(res.indices):
        raise RuntimeError(f"bulk submit went wrong: {len(res.errors)} errors, {res.sent} sent")
    return res.sent, elapsed


def naive(client: Client, texts: list[str], batch_id: str) -> float:
    """One message per prompt, carrying its full spec; seconds for all of them."""
    queue = client.settings.queue_for(Mode.TEXT2IMG)
    started = time.perf_counter()
    for index, text in enumerate(texts):
        spec = submit_module.validate_spec({"prompt": text}, client.settings).with_seed()
        message = {
            "v": MESSAGE_VERSION,
            "batch_id": batch_id,
            "shared": {},
            "jobs": [{"index": index, "spec": spec.model_dump(mode="json")}],
        }
        client.app.send_task(TASK_NAME, kwargs=message, queue=queue)
    return time.perf_counter() - started


def timed(label: str, totals: defaultdict[str, float], fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - started

    return wrapper


def breakdown(settings: Settings, path: Path, warm: Path) -> None:
    """Bulk-submit the file again (new batch) with each phase timed; print each phase's share."""
    totals: defaultdict[str, float] = defaultdict(float)
    with Client(settings) as client:
        store = client.status_store
        store.submit = timed("record_and_push_lua", totals, store.submit)  # type: ignore[method-assign]
        modules = {
            "validate_spec": submit_module,
            "message_from_wires": enqueue_module,
            "task_envelope": enqueue_module,
        }
        originals = {name: getattr(module, name) for name, module in modules.items()}
        submitter_wait = submit_module.Submitter._wait_for_room
        wire = submit_module.JobSpec.wire
        try:
            submit_module.validate_spec = timed("validate_spec", totals, originals["validate_spec"])
            enqueue_module.message_from_wires = timed(
                "build_message", totals, originals["message_from_wires"]
            )
            enqueue_module.task_envelope = timed("build_envelope", totals, originals["task_envelope"])
            submit_module.Submitter._wait_for_room = timed("queue_llen_check", totals, submitter_wait)  # type: ignore[method-assign]
            submit_module.JobSpec.wire = timed("spec_wire_dump", totals, wire)  # type: ignore[method-assign]
            bulk(client, warm, batch_id="warm-breakdown")
            sent, elapsed = bulk(client, path, batch_id="breakdown")
        finally:
            for name, fn in originals.items():
                setattr(modules[name], name, fn)
            submit_module.Submitter._wait_for_room = submitter_wait  # type: ignore[method-assign]
            submit_module.JobSpec.wire = wire  # type: ignore[method-assign]
    note(f"bulk time by phase ({sent} prompts, {elapsed:.2f} s with timers):")
    rest = elapsed - sum(totals.values())
    for label, seconds in [*sorted(totals.items(), key=lambda kv: -kv[1]), ("other_read_parse_loop", rest)]:
        note(
            f"  {label:24s} {seconds:6.3f} s  {100 * seconds / elapsed:5.1f} %  {1e6 * seconds / sent:6.1f} us/prompt"
        )
        result(f"enqueue_bulk_phase_{label}", 1e6 * seconds / sent, "us/prompt")


def send_task_repr_cost(settings: Settings, texts: list[str], reps: int = 100) -> None:
    """What one chunk's `send_task` costs with Celery's default argsrepr/kwargsrepr and with them short."""
    jobs = [(i, submit_module.JobSpec(prompt=text, seed=i)) for i, text in enumerate(texts)]
    message = build_message("repr-cost", jobs)
    queue = f"{settings.queue_prefix}.repr-cost"
    with Client(settings) as client:
        for label, extra in (("default_repr", {}), ("short_repr", {"argsrepr": "", "kwargsrepr": "-"})):
            for _ in range(10):
                client.app.send_task(TASK_NAME, kwargs=message, queue=queue, **extra)
            started = time.perf_counter()
            for _ in range(reps):
                client.app.send_task(TASK_NAME, kwargs=message, queue=queue, **extra)
            per_message = (time.perf_counter() - started) / reps
            result(f"enqueue_send_task_{label}_ms_per_message", 1e3 * per_message, "ms")
            result(f"enqueue_send_task_{label}_us_per_prompt", 1e6 * per_message / len(jobs), "us/prompt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="prompts for the bulk submit")
    parser.add_argument("--naive-n", type=int, default=4_000, help="prompts for the naive loop")
    parser.add_argument("--chunk-size", type=int, default=None, help="jobs per message (default: settings)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one bulk submit")
    args = parser.parse_args(argv)

    redis_client = _common.connect()
    tag = _common.new_tag()
    _common.stop_on_sigterm()
    overrides: dict[str, Any] = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    settings = _common.bench_settings(tag, **overrides)
    _common.machine_note()
    note(f"redis {_common.REDIS_URL}, prefix {tag}, chunk_size {settings.chunk_size}")
    texts = _common.prompts(args.n, seed=1)
    try:
        with tempfile.TemporaryDirectory() as tmp, Client(settings) as client:
            path = Path(tmp) / "prompts.jsonl"
            write_jsonl(path, texts)
            warm = Path(tmp) / "warm.jsonl"
            write_jsonl(warm, _common.prompts(2 * settings.chunk_size, seed=2))

            # Warm-up: connections, Lua script load, kombu queue declaration, pydantic, JSON.
            bulk(client, warm, batch_id="warm-bulk")
            naive(client, texts[:100], "warm-naive")

            # Half the naive loop before the bulk submit and half after, so load drift hits both sides.
            half = args.naive_n // 2
            naive_s = naive(client, texts[:half], "naive-1")
            sent, bulk_s = bulk(client, path)
            naive_s += naive(client, texts[half : args.naive_n], "naive-2")
            naive_rate = args.naive_n / naive_s
            bulk_rate = sent / bulk_s
            queue = settings.queue_for(Mode.TEXT2IMG)
            note(f"queue {queue} holds {redis_client.llen(queue)} messages (no worker consumes them)")
            result("enqueue_naive_prompts_per_s", naive_rate, "prompts/s")
            result("enqueue_bulk_prompts_per_s", bulk_rate, "prompts/s")
            result("enqueue_bulk_vs_naive", bulk_rate / naive_rate, "x")
            result("enqueue_naive_us_per_prompt", 1e6 / naive_rate, "us/prompt")
            result("enqueue_bulk_us_per_prompt", 1e6 / bulk_rate, "us/prompt")
            verdict = "met" if bulk_rate / naive_rate >= TARGET_RATIO else "MISSED"
            note(f"target >= {TARGET_RATIO:g}x the naive loop: {verdict} ({bulk_rate / naive_rate:.1f}x)")

            if args.profile:
                profiler = cProfile.Profile()
                profiler.runcall(client.submit_batch, path, batch_id="profiled")
                pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
        # Cleared between the main run and the breakdown so Redis does not grow past what --n asked for.
        _common.cleanup(redis_client, tag)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "prompts.jsonl"
            write_jsonl(path, texts)
            warm = Path(tmp) / "warm.jsonl"
            write_jsonl(warm, _common.prompts(2 * settings.chunk_size, seed=2))
            breakdown(settings, path, warm)
        send_task_repr_cost(settings, texts[: settings.chunk_size])
    finally:
        _common.finish(redis_client, tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
