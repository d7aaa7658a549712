"""Redis bytes per queued prompt (queue message + job status) after a bulk submit of `--n` prompts.

The headline is the INFO `used_memory` delta around `Client.submit_batch` of a JSONL file of dataset-like
prompts (~40-80 characters), divided by `--n`. It is then broken down with MEMORY USAGE: the batch's
status record strings (a queued job has no hash of its own), the queue list, the batch hash, and every
other key of the run; what is left is Redis' own keyspace overhead (the main hash table). A naive baseline (one Celery message per prompt with its full
spec, no status) is measured first on `--naive-n` prompts. No worker runs: the messages just queue.
Other clients of the same Redis move `used_memory` too; the exact MEMORY USAGE sum is printed beside it.

Run: python bench/redis_footprint.py [--n 100000] [--naive-n 5000] [--chunk-size N]
Target: <= 300 bytes per queued prompt.
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
from pathlib import Path
from typing import Any

import _common
import redis
from _common import note, result

from kandinsky_batch.keys import MESSAGE_VERSION, TASK_NAME, Keys
from kandinsky_batch.schema import Mode
from kandinsky_batch.wire import validate_spec
from producer.client import Client

TARGET_BYTES = 300


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def memory_usage(client: redis.Redis, key: str | bytes) -> int:
    """Exact bytes of one key (SAMPLES 0: every element of a list or hash is counted)."""
    return int(client.memory_usage(key, samples=0) or 0)


def naive_bytes(client: Client, redis_client: redis.Redis, texts: list[str]) -> float:
    """Bytes per prompt of one full-spec Celery message per prompt on its own queue (no status at all)."""
    queue = f"{client.settings.queue_prefix}.naive"
    client.app.send_task(TASK_NAME, kwargs={"warm": True}, queue=queue)  # declare the queue first
    redis_client.delete(queue)
    before = used_memory(redis_client)
    for index, text in enumerate(texts):
        spec = validate_spec({"prompt": text}, client.settings).with_seed().model_dump(mode="json")
        message = {
            "v": MESSAGE_VERSION,
            "batch_id": "naive",
            "shared": {},
            "jobs": [{"index": index, "spec": spec}],
        }
        client.app.send_task(TASK_NAME, kwargs=message, queue=queue)
    delta = used_memory(redis_client) - before
    exact = memory_usage(redis_client, queue)
    redis_client.delete(queue)
    result("footprint_naive_used_memory_bytes_per_prompt", delta / len(texts), "B/prompt")
    result("footprint_naive_queue_bytes_per_prompt", exact / len(texts), "B/prompt")
    return delta / len(texts)


def message_anatomy(redis_client: redis.Redis, queue: str, n: int) -> None:
    """Where a queue message's bytes go: Celery headers and properties, the base64 body, the prompts."""
    raw_messages: list[bytes] = redis_client.lrange(queue, 0, 9)  # type: ignore[assignment]
    raw = sum(len(m) for m in raw_messages)
    jobs = body_b64 = body_json = prompt_chars = headers = reprs = 0
    for message in raw_messages:
        envelope = json.loads(message)
        body_b64 += len(envelope["body"])
        decoded = base64.b64decode(envelope["body"])
        body_json += len(decoded)
        _args, kwargs, _embed = json.loads(decoded)
        jobs += len(kwargs["jobs"])
        prompt_chars += sum(len(j["spec"].get("prompt", "").encode()) for j in kwargs["jobs"])
        headers += len(json.dumps(envelope["headers"])) + len(json.dumps(envelope["properties"]))
        reprs += len(json.dumps(envelope["headers"].get("argsrepr", ""))) + len(
            json.dumps(envelope["headers"].get("kwargsrepr", ""))
        )
    note(f"message anatomy over {len(raw_messages)} messages ({jobs} jobs):")
    for label, value in (
        ("raw_message", raw),
        ("celery_headers_and_properties", headers),
        ("celery_argsrepr_kwargsrepr", reprs),
        ("body_base64", body_b64),
        ("body_json", body_json),
        ("prompt_text", prompt_chars),
    ):
        result(f"footprint_message_{label}_bytes_per_prompt", value / jobs, "B/prompt")
    sample = json.loads(base64.b64decode(json.loads(raw_messages[0])["body"]))[1]["jobs"][0]
    note(f"  one job entry in the body: {json.dumps(sample)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="prompts to submit")
    parser.add_argument("--naive-n", type=int, default=5_000, help="prompts for the naive baseline")
    parser.add_argument("--chunk-size", type=int, default=None, help="jobs per message (default: settings)")
    args = parser.parse_args(argv)

    redis_client = _common.connect()
    tag = _common.new_tag()
    _common.stop_on_sigterm()
    overrides: dict[str, Any] = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    # Messages never wait for room here: the queue limit counts messages, and this is one batch.
    settings = _common.bench_settings(tag, queue_high_water=10**9, **overrides)
    keys = Keys(settings.key_prefix)
    queue = settings.queue_for(Mode.TEXT2IMG)
    _common.machine_note()
    note(f"redis {_common.REDIS_URL}, prefix {tag}, chunk_size {settings.chunk_size}, n {args.n}")
    texts = _common.prompts(args.n, seed=3)
    note(f"prompts: mean {sum(map(len, texts)) / len(texts):.1f} characters, e.g. {texts[0]!r}")
    try:
        with tempfile.TemporaryDirectory() as tmp, Client(settings) as client:
            naive = naive_bytes(client, redis_client, texts[: args.naive_n])

            # Warm-up in its own batch: Lua script, kombu bindings, connections exist before we measure.
            client.submit_batch([{"prompt": t} for t in _common.prompts(8, seed=4)], batch_id="warm")
            path = Path(tmp) / "prompts.jsonl"
            path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts), encoding="utf-8")
            keys_before = int(redis_client.dbsize())
            before = used_memory(redis_client)
            res = client.submit_batch(path)
            after = used_memory(redis_client)
            keys_after = int(redis_client.dbsize())
            assert res.sent == args.n and not res.errors, (res.sent, res.errors[:3])
            per_prompt = (after - before) / args.n
            note(f"submitted batch {res.batch_id}: {res.sent} jobs, {redis_client.llen(queue)} messages")
            note(f"dbsize grew by {keys_after - keys_before} keys (others may share this Redis)")
            result("footprint_used_memory_bytes_per_prompt", per_prompt, "B/prompt")
            result("footprint_vs_naive", per_prompt / naive, "x")

            job_hashes = sum(
                1 for _ in redis_client.scan_iter(match=keys.job(f"{res.batch_id}-*"), count=5000)
            )
            record_keys = list(
                redis_client.scan_iter(match=f"{keys.records_prefix(res.batch_id)}*", count=5000)
            )
            record_bytes = sum(memory_usage(redis_client, key) for key in record_keys)
            queue_bytes = memory_usage(redis_client, queue)
            batch_bytes = memory_usage(redis_client, keys.batch(res.batch_id))
            mine = {queue.encode(), keys.batch(res.batch_id).encode(), *record_keys}
            others = sum(
                memory_usage(redis_client, key)
                for key in redis_client.scan_iter(match=f"*{tag}*", count=5000)
                if key not in mine
            )
            counted = record_bytes + queue_bytes + batch_bytes + others
            note(f"job hashes of the batch (none until a worker receives a job): {job_hashes}")
            note(f"record strings: {len(record_keys)} keys")
            result("footprint_status_records_bytes_per_prompt", record_bytes / args.n, "B/prompt")
            result("footprint_queue_list_bytes_per_prompt", queue_bytes / args.n, "B/prompt")
            result("footprint_batch_hash_bytes", batch_bytes, "B")
            result("footprint_other_keys_bytes", others, "B")
            result("footprint_memory_usage_sum_bytes_per_prompt", counted / args.n, "B/prompt")
            result(
                "footprint_keyspace_overhead_bytes_per_prompt",
                (after - before - counted) / args.n,
                "B/prompt",
            )
            message_anatomy(redis_client, queue, args.n)

            verdict = "met" if per_prompt <= TARGET_BYTES else "MISSED"
            note(f"target <= {TARGET_BYTES} B/prompt: {verdict} ({per_prompt:.0f} B/prompt)")
    finally:
        _common.finish(redis_client, tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
