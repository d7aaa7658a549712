"""The producer side against a real Redis and one real worker process: SDK, CLI, open format.

One module-scoped worker serves every test here (it takes seconds to start);
each test uses its own batch.
"""

from __future__ import annotations

import io
import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from PIL import Image
from rich.console import Console

from kandinsky_batch.batch_ids import batch_id_for_file
from kandinsky_batch.keys import TASK_NAME, job_id
from kandinsky_batch.manifest import manifest_lines, write_manifest
from kandinsky_batch.schema import BatchStatus, JobState, Mode
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import manifest_key
from kandinsky_batch.storage.file import file_root
from kandinsky_batch.wire import build_message, validate_spec
from producer.cli.main import main
from producer.client import Client
from producer.submit import Submitter, submit_lines
from producer.watch import EventCounter, watch
from tests.helpers.images import png_url

pytestmark = pytest.mark.integration

TINY: dict[str, Any] = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}
DOC = Path(__file__).resolve().parents[2] / "docs" / "message-format.md"


def path_of(uri: str) -> Path:
    return Path(urlparse(uri).path)


def tiny(prompt: str, **fields: Any) -> dict[str, Any]:
    return {"prompt": prompt, **TINY, **fields}


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return path


def wait_done(client: Client, batch_id: str, timeout: float = 120) -> BatchStatus:
    final = client.wait(batch_id, timeout=timeout, poll_s=0.1)
    assert isinstance(final, BatchStatus)
    return final


def assert_counters_exact(client: Client, batch_id: str) -> BatchStatus:
    """Counters add up to the total and equal the jobs' own states (read when nothing moves)."""
    batch = client.status_store.batch(batch_id)
    assert sum(batch.counts.values()) == batch.total
    states = [job.state for job in client.jobs(batch_id)]
    assert len(states) == batch.total
    assert batch.counts == {s: states.count(s) for s in JobState}
    return batch


def drain(client: Client) -> None:
    """Wait until the worker has read every message sent so far (one sentinel job behind them)."""
    sentinel = client.submit(tiny("sentinel"))
    assert client.wait(sentinel, timeout=120, poll_s=0.1).state is JobState.SUCCEEDED


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def mixed_batch(
    worker: Any, module_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[BatchStatus]]:
    """A JSONL batch of all four modes run to the end; the batch statuses seen while it ran."""
    image = png_url((64, 64))
    specs = [
        tiny("a red fox in the snow"),
        tiny("Кошка в космосе"),
        tiny("a watercolor house", mode="img2img", image=image),
        tiny("an oil painting", mode="img2img", image=image),
        tiny("a window", mode="inpaint", image=image, mask=[[16, 16, 48, 48]]),
        tiny("a door", mode="inpaint", image=image, mask=png_url((64, 64), mode="L")),
        {
            **TINY,
            "mode": "interpolate",
            "conditions": [{"text": "a cat", "weight": 0.3}, {"image": image, "weight": 0.7}],
        },
        {
            **TINY,
            "mode": "interpolate",
            "conditions": [{"text": "sea", "weight": 1}, {"text": "sky", "weight": 1}],
        },
    ]
    path = tmp_path_factory.mktemp("mixed") / "jobs.jsonl"
    path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in specs), encoding="utf-8")
    with Client(module_settings) as client:
        result = client.submit_batch(path)
        assert not result.errors and result.sent == len(specs)
        seen = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            seen.append(client.status_store.batch(result.batch_id))
            if seen[-1].done:
                break
            time.sleep(0.02)
    return result.batch_id, seen


def test_a_mixed_mode_batch_runs_to_the_end_with_exact_counters(mixed_batch, client: Client):
    batch_id, seen = mixed_batch
    # While it ran, every read of the counters added up to the total
    assert len(seen) >= 3 and not seen[0].done
    assert all(sum(b.counts.values()) == b.total == 8 for b in seen)
    assert any(b.counts[JobState.RUNNING] or b.counts[JobState.QUEUED] for b in seen)
    # At the end every job succeeded once, and the counters equal the jobs' states
    final = assert_counters_exact(client, batch_id)
    assert final.counts[JobState.SUCCEEDED] == 8 and final.done and final.finished_at
    jobs = list(client.jobs(batch_id))
    assert [j.spec["mode"] if j.spec and "mode" in j.spec else "text2img" for j in jobs] == [
        "text2img", "text2img", "img2img", "img2img", "inpaint", "inpaint", "interpolate", "interpolate",
    ]  # fmt: skip
    for job in jobs:
        assert job.attempts == 1 and job.error is None
        [png] = job.outputs
        with Image.open(path_of(png)) as image:
            assert image.size == (64, 64)


def test_results_write_a_manifest_and_download_every_output(mixed_batch, client, cli_env, capsys, tmp_path):
    batch_id, _ = mixed_batch
    manifest, images = tmp_path / "out.jsonl", tmp_path / "images"
    code, out, _ = run(
        capsys, "results", batch_id, "--manifest", str(manifest), "--download", str(images), "--json"
    )
    assert code == 0
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert [x["job_id"] for x in lines] == [job_id(batch_id, i) for i in range(8)]
    for line in lines:
        assert line["state"] == "succeeded" and line["error"] is None and line["attempts"] == 1
        assert line["spec"]["seed"] == line["seed"] and len(line["outputs"]) == 1
        copy = images / line["job_id"] / "0.png"
        assert copy.read_bytes() == path_of(line["outputs"][0]).read_bytes()
    printed = [json.loads(x) for x in out.splitlines()]
    assert [p["files"] for p in printed] == [[str(images / x["job_id"] / "0.png")] for x in lines]
    assert all(p["urls"] == p["outputs"] for p in printed)  # file:// outputs need no presigning
    # The worker-side writer puts the same lines in storage and records the manifest on the batch
    uri = write_manifest(client.status_store, client.storage, batch_id)
    assert uri == client.storage.uri(manifest_key(batch_id))
    assert client.status_store.batch(batch_id).manifest == uri
    assert [json.loads(x) for x in path_of(uri).read_text().splitlines()] == lines
    assert list(manifest_lines(client.status_store, batch_id)) == lines


def test_watch_on_a_finished_batch_prints_one_summary_line(mixed_batch, cli_env, capsys):
    batch_id, _ = mixed_batch
    code, out, _ = run(capsys, "watch", batch_id)
    assert code == 0
    [line] = out.splitlines()
    assert line.startswith(f"batch {batch_id}: 8 jobs:") and "succeeded 8" in line and "(done)" in line
    code, out, _ = run(capsys, "watch", batch_id, "--json", "--events")
    summary = json.loads(out)
    assert code == 0 and summary["done"] is True and summary["total"] == 8
    assert summary["counts"] == {"queued": 0, "running": 0, "succeeded": 8, "failed": 0, "canceled": 0}
    assert summary["jobs_per_s"] > 0


def test_status_shows_a_batch_table_and_a_running_jobs_progress(client: Client, cli_env, capsys):
    # Given a batch recorded without a message (nothing runs it), one job running at step 3 of 10
    batch = f"st{uuid.uuid4().hex[:10]}"
    client.status_store.create_jobs(batch, [(0, 1), (1, 2), (2, 3)])
    client.status_store.start(job_id(batch, 0), "w-test", 10, {"prompt": "x"})
    client.status_store.progress(job_id(batch, 0), 3, 10)
    code, out, _ = run(capsys, "status", job_id(batch, 0))
    assert code == 0 and "running" in out and "step 3/10" in out
    code, out, _ = run(capsys, "status", batch)
    assert code == 0 and f"batch {batch}" in out
    assert re.search(r"queued\W+2\W", out) and re.search(r"running\W+1\W", out)
    assert re.search(r"total\W+3\W", out)
    # When the batch is canceled, the running job counts as canceled too
    assert client.cancel(batch) == 3
    assert assert_counters_exact(client, batch).counts[JobState.CANCELED] == 3


def test_a_canceled_queued_job_never_runs(worker, client: Client, module_settings: Settings):
    # Given a job recorded as queued whose message is sent only after it was canceled
    batch = f"cq{uuid.uuid4().hex[:10]}"
    spec = validate_spec(tiny("never drawn", seed=7), module_settings)
    client.status_store.create_jobs(batch, [(0, 7)])
    assert client.cancel(job_id(batch, 0)) == 1
    client.app.send_task(
        TASK_NAME, kwargs=build_message(batch, [(0, spec)]), queue=module_settings.queue_for(Mode.TEXT2IMG)
    )
    # When the worker has read that message (a sentinel behind it succeeded)
    drain(client)
    # Then the job never started: canceled, no attempt, no output, nothing in storage
    job = client.status_store.job(job_id(batch, 0))
    assert job.state is JobState.CANCELED and job.attempts == 0 and job.outputs == []
    folder = file_root(module_settings.storage_url) / batch
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.jsonl"]  # no image, no metadata
    [line] = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    assert line["state"] == "canceled" and line["outputs"] == [] and line["attempts"] == 0
    assert client.cancel(job_id(batch, 0)) == 0  # a finished job is not canceled twice
    assert_counters_exact(client, batch)


def test_canceling_a_whole_batch_right_away_keeps_counters_exact(worker, client: Client):
    result = client.submit_batch([tiny(f"cancel me {i}") for i in range(20)])
    canceled = client.cancel(result.batch_id)
    # Right away: nothing is left queued or running, and the counters add up
    after = client.status_store.batch(result.batch_id)
    assert sum(after.counts.values()) == after.total == 20
    assert after.counts[JobState.QUEUED] == after.counts[JobState.RUNNING] == 0
    assert after.counts[JobState.CANCELED] == canceled > 0 and after.done
    assert after.manifest  # the cancel that finished the batch wrote its manifest
    # After the worker drained the queue: still only canceled or succeeded, canceled ones without outputs
    drain(client)
    final = assert_counters_exact(client, result.batch_id)
    assert final.counts == after.counts
    for job in client.jobs(result.batch_id):
        assert job.state in (JobState.CANCELED, JobState.SUCCEEDED)
        assert (job.outputs == []) == (job.state is JobState.CANCELED)


def test_resubmitting_the_same_file_runs_nothing_twice(worker, client: Client, tmp_path: Path):
    path = write_jsonl(tmp_path / "jobs.jsonl", [tiny(f"again {i}") for i in range(4)])
    first = client.submit_batch(path)
    assert first.sent == 4
    wait_done(client, first.batch_id)
    second = client.submit_batch(path)
    assert second.batch_id == first.batch_id and second.sent == 0 and second.skipped == 4
    assert (
        sum(client.status_store.fair.waiting(client.settings.queue_for(Mode.TEXT2IMG)).values()) == 0
    )  # none went out
    final = assert_counters_exact(client, first.batch_id)
    assert final.total == 4 and final.counts[JobState.SUCCEEDED] == 4
    assert [j.attempts for j in client.jobs(first.batch_id)] == [1, 1, 1, 1]


def test_a_resumed_submit_runs_every_job_exactly_once(worker, client, module_settings, tmp_path):
    lines = [tiny(f"resume {i}") for i in range(20)]
    path = write_jsonl(tmp_path / "jobs.jsonl", lines)
    batch = batch_id_for_file(path, {})
    # Given a submit that died at line 20: lines 1-16 went out (8 chunks of 2, one pipeline),
    # lines 17-19 were read but were still in memory
    small = module_settings.model_copy(update={"chunk_size": 2})
    interrupted = Submitter(small, client.status_store, batch)

    def dying() -> Iterator[tuple[int, Any]]:
        yield from enumerate(lines[:19], start=1)
        raise RuntimeError("the producer died here")

    with pytest.raises(RuntimeError):
        submit_lines(interrupted, dying(), {})
    assert interrupted.result.sent == 16
    seeds = [client.status_store.job(job_id(batch, i)).seed for i in range(16)]
    # When the whole file is submitted again
    again = client.submit_batch(path)
    # Then only what was never sent goes out, and every job runs once, with the seed it was sent with
    assert again.batch_id == batch and again.sent == 4 and again.skipped == 16
    final = wait_done(client, batch)
    assert final.total == 20 and final.counts[JobState.SUCCEEDED] == 20
    jobs = list(client.jobs(batch))
    assert [j.attempts for j in jobs] == [1] * 20 and all(j.state is JobState.SUCCEEDED for j in jobs)
    assert [j.seed for j in jobs[:16]] == seeds


BAD_FILE = b"".join(
    [
        json.dumps(tiny("good one")).encode() + b"\n",
        b'{"prompt": "broken",\n',
        b'{"prompt": "caf\xe9"}\n',
        json.dumps(tiny("bad height", height=100)).encode() + b"\n",
        b"\n",
        json.dumps(tiny("good two")).encode() + b"\n",
    ]
)


def assert_bad_lines_reported(err: str) -> None:
    assert "line 2: malformed JSON" in err
    assert "line 3: not UTF-8" in err
    assert "line 4: height: " in err and "multiple of 64" in err
    assert "line 1:" not in err and "line 6:" not in err


def test_submit_reports_bad_lines_by_number_and_still_sends_the_good_ones(
    worker, client, cli_env, capsys, tmp_path
):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(BAD_FILE)
    code, out, err = run(capsys, "submit", "--file", str(path), "--json")
    assert code == 1
    assert_bad_lines_reported(err)
    result = json.loads(out)
    assert result["job_ids"] == [job_id(result["batch_id"], 0), job_id(result["batch_id"], 5)]
    assert [e["line"] for e in result["errors"]] == [2, 3, 4]
    final = wait_done(client, result["batch_id"])
    assert final.total == 2 and final.counts[JobState.SUCCEEDED] == 2


def test_strict_submit_refuses_the_whole_file(cli_env, capsys, tmp_path, client: Client):
    path = tmp_path / "strict.jsonl"
    path.write_bytes(BAD_FILE + b'{"prompt": "only in the strict file"}\n')
    code, _, err = run(capsys, "submit", "--file", str(path), "--strict")
    assert code != 0
    assert_bad_lines_reported(err)
    assert "no job was submitted" in err
    assert main(["status", batch_id_for_file(path, {})]) == 2


@pytest.mark.parametrize("command", ["status", "cancel", "results", "watch", "retry-failed"])
@pytest.mark.parametrize("unknown", ["nosuchbatch", "nosuchbatch-3"])
def test_unknown_ids_are_not_found(cli_env, capsys, command: str, unknown: str):
    code, out, err = run(capsys, command, unknown)
    assert code == 2 and "not found" in err and out == ""
    assert "pending" not in err


def test_submit_wait_shows_progress_and_ends_with_a_summary(worker, cli_env, capsys):
    code, out, _ = run(capsys, "submit", "--prompt", "wait for me", "--height", "64", "--width", "64",
                       "--steps", "2", "--prior-steps", "2", "--wait")  # fmt: skip
    assert code == 0
    batch_id, summary = out.splitlines()
    assert summary.startswith(f"batch {batch_id}: 1 jobs:") and "succeeded 1" in summary


def test_retry_failed_sends_failed_jobs_again_with_their_spec(
    worker, client, module_settings, cli_env, capsys
):
    # Given a batch where job 0 failed on a missing input file (under the allowed storage folder)
    # and job 1 failed at the worker's validation, before any spec was stored
    missing = file_root(module_settings.storage_url) / "inputs" / f"{uuid.uuid4().hex}.png"
    result = client.submit_batch([tiny("later", mode="img2img", image=missing.as_uri(), seed=5)])
    batch = result.batch_id
    bad = {"v": 1, "batch_id": batch, "shared": {}, "jobs": [{"index": 1, "spec": tiny("x", height=65)}]}
    client.app.send_task(TASK_NAME, kwargs=bad, queue=module_settings.queue_for(Mode.TEXT2IMG))
    deadline = time.monotonic() + 120
    while client.status_store.batch(batch).counts[JobState.FAILED] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    first = client.status_store.job(job_id(batch, 0))
    assert first.state is JobState.FAILED and first.error and first.error.code == "bad_input"
    # When the input appears and the failed jobs are retried
    missing.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (10, 200, 30)).save(missing)
    code, out, err = run(capsys, "retry-failed", batch)
    # Then job 0 is sent again, job 1 is reported as not retryable, and the counters stay exact
    assert code == 1 and "retried 1 failed job" in out
    assert f"cannot retry {job_id(batch, 1)}: no stored spec" in err
    final = wait_done(client, batch)
    assert final.counts[JobState.SUCCEEDED] == 1 and final.counts[JobState.FAILED] == 1
    assert_counters_exact(client, batch)
    job = client.status_store.job(job_id(batch, 0))
    assert job.state is JobState.SUCCEEDED and job.attempts == 2 and job.error is None
    assert job.seed == 5 and len(job.outputs) == 1
    assert client.retry_failed(batch).retried == []  # nothing failed is retryable any more


def doc_example(name: str, settings: Settings) -> str:
    """The Python example `name` of docs/message-format.md, pointed at this test's Redis and prefixes."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"no example {name!r} in {DOC}"
    code = match.group(1)
    for var, value in [
        ("REDIS_URL", settings.redis_url),
        ("QUEUE_PREFIX", settings.queue_prefix),
        ("KEY_PREFIX", settings.key_prefix),
    ]:
        code, n = re.subn(rf"^{var} = .*$", f"{var} = {value!r}", code, count=1, flags=re.M)
        assert n == 1
    return code


def test_the_documented_send_task_example_runs_on_the_worker(worker, module_settings, capsys):
    scope: dict[str, Any] = {}
    exec(doc_example("send_task", module_settings), scope)
    jobs, batch = scope["jobs"], scope["batch"]
    assert [j["st"] for j in jobs.values()] == ["succeeded", "succeeded"]
    first, second = jobs.values()
    assert first["sd"] == "42" and second["sd"].isdigit()  # the worker fixed and recorded a seed
    assert all(path_of(json.loads(j["o"])[0]).exists() for j in jobs.values())
    assert batch["total"] == "2" and batch["succeeded"] == "2" and batch["ft"]
    assert "succeeded" in capsys.readouterr().out


def test_the_documented_raw_lpush_envelope_runs_on_the_worker(worker, module_settings, capsys):
    scope: dict[str, Any] = {}
    exec(doc_example("lpush", module_settings), scope)
    assert scope["job"]["st"] == "succeeded"
    assert path_of(json.loads(scope["job"]["o"])[0]).exists()


def test_watch_draws_a_live_bar_and_counts_images_from_the_event_stream(client: Client):
    # Given a batch of 3 jobs (2 images each) that a stand-in worker thread finishes while we watch
    store = client.status_store
    batch = f"wl{uuid.uuid4().hex[:10]}"
    store.create_jobs(batch, [(i, i) for i in range(3)])

    def finish_one(n: int) -> None:
        job = job_id(batch, n)
        store.start(job, "w-test", 2, {"prompt": "x"})
        store.succeed(job, [f"file:///x/{n}/0.png", f"file:///x/{n}/1.png"], "file:///x.json")

    ticks = iter(range(100))

    def sleep(_: float) -> None:
        n = next(ticks)
        if n < 3:
            finish_one(n)
        time.sleep(0.01)

    buf = io.StringIO()
    screen = Console(file=buf, force_terminal=True, width=160)
    counter = EventCounter(store, batch)
    summary = watch(store, batch, console=screen, interval_s=0.01, counter=counter, sleep=sleep)
    # Then it returns once the batch is done, with every image counted once
    assert summary.batch.done and summary.batch.counts[JobState.SUCCEEDED] == 3
    assert summary.images == 6 and summary.images_per_s and summary.images_per_s > 0
    assert batch in buf.getvalue() and "3/3" in buf.getvalue() and "succeeded 3" in buf.getvalue()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from tests.helpers.s3server import running_s3_server

    with running_s3_server() as url:
        yield url


def test_results_on_s3_give_fresh_presigned_urls_and_download(
    s3_endpoint: str, module_settings: Settings, tmp_path: Path
):
    from tests.helpers.s3server import REGION, TEST_KEY, create_bucket

    bucket = create_bucket(s3_endpoint)
    settings = module_settings.model_copy(
        update={
            "storage_url": f"s3://{bucket}/out",
            "s3_endpoint_url": s3_endpoint,
            "s3_region": REGION,
            "s3_access_key_id": TEST_KEY,
            "s3_secret_access_key": TEST_KEY,
            "presign_expiry_s": 600,
        }
    )
    with Client(settings) as client:
        # Given a job that succeeded with two images stored in S3 (written as a worker would)
        batch = f"s3{uuid.uuid4().hex[:10]}"
        job = job_id(batch, 0)
        client.status_store.create_jobs(batch, [(0, 9)])
        client.status_store.start(job, "w-test", 2, {"prompt": "x", "seed": 9})
        bodies = [b"png-zero", b"png-one"]
        uris = [client.storage.put(f"{batch}/{job}/{k}.png", b, "image/png") for k, b in enumerate(bodies)]
        client.status_store.succeed(job, uris, client.storage.uri(f"{batch}/{job}.json"))
        # When its results are asked for, with a download folder
        [res] = client.results(batch, download_to=tmp_path)
        # Then each output has a presigned URL that plain HTTP can fetch, and a local copy
        assert res.outputs == uris and res.state is JobState.SUCCEEDED
        for url, body in zip(res.urls, bodies, strict=True):
            assert url.startswith(s3_endpoint) and "X-Amz-Expires=600" in url
            with urllib.request.urlopen(url, timeout=10) as answer:
                assert answer.read() == body
        assert [Path(f).read_bytes() for f in res.files] == bodies
        assert res.files == [str(tmp_path / job / "0.png"), str(tmp_path / job / "1.png")]
        # And the manifest lands in the bucket as JSON lines
        uri = write_manifest(client.status_store, client.storage, batch)
        assert uri == f"s3://{bucket}/out/{batch}/manifest.jsonl"
        [line] = [json.loads(x) for x in client.storage.get(manifest_key(batch)).decode().splitlines()]
        assert line["outputs"] == uris and line["seed"] == 9 and line["state"] == "succeeded"
