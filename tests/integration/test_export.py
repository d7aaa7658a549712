"""`kandinsky-batch export`: batches made through the real store (and one by a real worker),
exported to file and S3 storage, read back with the `webdataset` library and pyarrow."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest
import redis
from click.testing import CliRunner

from kandinsky_batch.keys import Keys, job_id
from kandinsky_batch.schema import JobState
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import open_storage
from kandinsky_batch.store.status import StatusStore
from producer.cli.base import CliContext
from producer.cli.export import export
from producer.client import Client
from producer.export import ExportError, export_batch
from tests.helpers.export_batch import Planned, finish, png, write_batch
from tests.helpers.export_expect import PLAN, SHARD, N, expected, read_wds, score_of, shard_files
from tests.helpers.s3server import client as s3_client
from tests.helpers.s3server import create_bucket, running_s3_server

pytestmark = pytest.mark.integration


def settings_for(root: Path, redis_url: str, **overrides: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    values = {"redis_url": redis_url, "storage_url": (root / "store").as_uri(), "key_prefix": f"kbt-ex-{tag}"}
    return Settings(**{**values, **overrides})


@pytest.fixture(scope="module")
def made(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str]]:
    """The mixed batch, made once for the module (the tests only read it)."""
    settings = settings_for(tmp_path_factory.mktemp("export"), redis_url)
    client = redis.Redis.from_url(redis_url)
    store = StatusStore(client, Keys(settings.key_prefix), ttl_s=3600)
    write_batch(store, open_storage(settings), "mixed", PLAN)
    yield settings, "mixed"
    for key in client.scan_iter(f"{settings.key_prefix}:*"):
        client.delete(key)
    client.close()


def run_cli(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(export, list(args), obj=CliContext(settings))
    return result.exit_code, result.output


def test_webdataset_shards_read_back_with_webdataset_and_pyarrow(made, tmp_path: Path):
    settings, batch = made
    out = tmp_path / "wds"
    summary = export_batch(settings, batch, out.as_uri(), "webdataset", shard_size=SHARD, threads=4)
    assert summary.shards_written == [0, 1, 2] and summary.shards_skipped == []
    want = expected()
    tars = shard_files(out, ".tar")
    assert [Path(t).name for t in tars] == ["00000.tar", "00001.tar", "00002.tar"]
    # every sample, in order, through the webdataset library's own decoding
    got = read_wds(tars)
    assert [s["__key__"] for s in got] == [w["key"] for w in want]
    for sample, w in zip(got, want, strict=True):
        meta = sample["json"]
        assert sample["txt"] == w["caption"] == meta["caption"]
        assert (meta["seed"], meta["clip_score"], meta["sha256"]) == (w["seed"], w["clip_score"], w["sha256"])
        assert hashlib.sha256(sample["png"]).hexdigest() == w["sha256"]
        assert meta["models"]["decoder"] == {"id": "kandinsky-community/kandinsky-2-1", "revision": "d4e5f6"}
        assert (meta["width"], meta["height"], meta["batch_id"]) == (16, 16, batch)
        assert meta["job_id"] == job_id(batch, meta["index"]) and meta["spec"]["prompt"] == w["caption"]
    # the parquet beside each tar: one row per sample of that tar, the same values
    rows = [r for t in shard_files(out, ".parquet") for r in pq.read_table(t).to_pylist()]
    assert [(r["key"], r["caption"], r["seed"], r["clip_score"], r["sha256"]) for r in rows] == [
        (w["key"], w["caption"], w["seed"], w["clip_score"], w["sha256"]) for w in want
    ]
    # the stats count what was not exported, by shard
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    assert sum(s["samples"] for s in stats) == len(want) == summary.counts.samples
    assert sum(s["jobs"] for s in stats) == N
    failed = sum(p.outcome.startswith("failed") for p in PLAN)
    canceled = sum(p.outcome == "canceled" for p in PLAN)
    assert sum(s["failed"] for s in stats) == failed and sum(s["canceled"] for s in stats) == canceled
    assert stats[0]["missing_output"] == 2 and stats[0]["failures_by_code"]["missing_output"] == 2
    assert summary.counts.failures_by_code == {"bad_input": failed, "missing_output": 2}
    assert [s["first_index"] for s in stats] == [0, 100, 200]


def test_two_exports_give_identical_bytes(made, tmp_path: Path):
    settings, batch = made
    for name in ("a", "b"):
        export_batch(settings, batch, (tmp_path / name).as_uri(), shard_size=SHARD, threads=3)
    for suffix in (".tar", ".parquet"):
        a, b = shard_files(tmp_path / "a", suffix), shard_files(tmp_path / "b", suffix)
        assert [Path(x).name for x in a] == [Path(x).name for x in b] and len(a) == 3
        assert [Path(x).read_bytes() for x in a] == [Path(x).read_bytes() for x in b]
    with tarfile.open(shard_files(tmp_path / "a", ".tar")[0]) as tar:
        member = tar.getmembers()[0]
        assert (member.mtime, member.uid, member.gid, member.uname, member.mode) == (0, 0, 0, "", 0o644)


def test_a_rerun_rewrites_only_the_shard_whose_files_are_gone(made, tmp_path: Path):
    settings, batch = made
    out = tmp_path / "resume"
    export_batch(settings, batch, out.as_uri(), shard_size=SHARD)

    def stamps() -> dict[str, tuple[int, int]]:
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("0*")}

    before = stamps()
    for path in out.glob("00001*"):
        path.unlink()
    code, text = run_cli(settings, batch, "--to", out.as_uri(), "--shard-size", str(SHARD), "--json")
    assert code == 0, text
    summary = json.loads(text)
    assert (summary["shards_written"], summary["shards_skipped"]) == ([1], [0, 2])
    after = stamps()
    assert set(after) == set(before)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {"00001.tar", "00001.parquet", "00001_stats.json"}
    # --overwrite rewrites every shard
    code, text = run_cli(settings, batch, "--to", out.as_uri(), "--shard-size", str(SHARD), "--overwrite")
    assert code == 0, text
    assert all(stamps()[name] != after[name] for name in after)
    # other options over the same shards are refused, never mixed in
    code, text = run_cli(settings, batch, "--to", out.as_uri(), "--shard-size", "50")
    assert code == 2 and "other options" in text


def test_min_clip_score_leaves_out_lower_and_unscored_images(made, tmp_path: Path):
    settings, batch = made
    out = tmp_path / "clip"
    summary = export_batch(settings, batch, out.as_uri(), shard_size=SHARD, min_clip_score=0.5)
    want = expected(min_score=0.5)
    got = read_wds(shard_files(out, ".tar"))
    assert [(s["__key__"], s["json"]["clip_score"]) for s in got] == [
        (w["key"], w["clip_score"]) for w in want
    ]
    assert all(w["clip_score"] >= 0.5 for w in want) and len(want) > 50
    scores = [score_of(p, k) for p in PLAN if p.outcome == "succeeded" for k in range(p.images)]
    assert summary.counts.filtered == sum(1 for x in scores if x is None or x < 0.5)


def test_parquet_format_holds_the_image_bytes(made, tmp_path: Path):
    settings, batch = made
    out = tmp_path / "pq"
    export_batch(settings, batch, out.as_uri(), "parquet", shard_size=SHARD, image_format="webp")
    assert not list(out.glob("*.tar"))
    rows = [r for t in shard_files(out, ".parquet") for r in pq.read_table(t).to_pylist()]
    assert [r["key"] for r in rows] == [w["key"] for w in expected()]
    for r in rows:
        assert r["format"] == "webp" and r["image"][:4] == b"RIFF" and r["image"][8:12] == b"WEBP"
        assert hashlib.sha256(r["image"]).hexdigest() == r["sha256"]
        assert json.loads(r["spec"])["seed"] == r["seed"] and r["image_seed"] == r["seed"] + r["image_index"]


def test_files_format_writes_images_and_sidecars_under_readable_names(made, tmp_path: Path):
    settings, batch = made
    out = tmp_path / "files"
    export_batch(settings, batch, out.as_uri(), "files", shard_size=SHARD, image_format="jpg")
    assert (out / "00000" / "000000001_0_a-red-fox-number-1-in-the-snow.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert (out / "00000" / "000000001_0_a-red-fox-number-1-in-the-snow.txt").read_text() == PLAN[1].prompt
    names = sorted(p.name for p in (out / "00000").iterdir() if p.suffix == ".json")
    assert names[0] == "000000000_0_a-red-fox-number-0-in-the-snow.json"
    assert "000000011_0.json" in names  # a caption with no ASCII letters: the key alone
    images = [p for d in sorted(out.glob("0000?")) for p in sorted(d.glob("*.jpg"))]
    assert [p.name[:11] for p in images] == [w["key"] for w in expected()]
    assert json.loads((out / "00002_stats.json").read_text())["jobs"] == 50


def test_export_to_s3_in_parts(redis_url: str, tmp_path: Path):
    """Big images, so a shard's tar goes up as a multipart upload to a real S3 endpoint."""
    settings = settings_for(tmp_path, redis_url, s3_region="us-east-1", s3_access_key_id="test")
    settings = settings.model_copy(update={"s3_secret_access_key": "test", "s3_addressing_style": "path"})
    client = redis.Redis.from_url(redis_url)
    store = StatusStore(client, Keys(settings.key_prefix), ttl_s=600)
    jobs = [Planned(i, f"big {i}", 10 + i, images=2, size=768, clip_score=0.9) for i in range(5)]
    write_batch(store, open_storage(settings), "big", jobs)
    with running_s3_server() as endpoint:
        bucket = create_bucket(endpoint)
        s3 = settings.model_copy(update={"s3_endpoint_url": endpoint})
        summary = export_batch(s3, "big", f"s3://{bucket}/datasets/big", shard_size=3)
        head = s3_client(endpoint).head_object(Bucket=bucket, Key="datasets/big/00000.tar")
        assert head["ETag"].strip('"').endswith("-2")  # 6 noise PNGs of ~1.7 MB: two 8 MiB parts
        assert summary.shards_written == [0, 1] and summary.counts.samples == 10
        raw = s3_client(endpoint).get_object(Bucket=bucket, Key="datasets/big/00000.tar")["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            names = tar.getnames()
            image = tar.extractfile("000000002_1.png").read()  # type: ignore[union-attr]
        assert names[:3] == ["000000000_0.png", "000000000_0.txt", "000000000_0.json"] and len(names) == 18
        assert image == png(2, 1, 768)
        listed = s3_client(endpoint).list_objects_v2(Bucket=bucket, Prefix="datasets/big/")["Contents"]
        assert {o["Key"].rsplit("/", 1)[1] for o in listed} >= {
            "00001.tar",
            "00001.parquet",
            "00001_stats.json",
        }
        again = export_batch(s3, "big", f"s3://{bucket}/datasets/big", shard_size=3)
        assert again.shards_skipped == [0, 1] and again.shards_written == []
    for key in client.scan_iter(f"{settings.key_prefix}:*"):
        client.delete(key)


def test_bad_input_gives_a_clear_error_and_never_a_traceback(made, tmp_path: Path):
    settings, batch = made
    code, text = run_cli(settings, "no-such-batch", "--to", (tmp_path / "x").as_uri())
    assert code == 2 and "batch 'no-such-batch' not found" in text and "Traceback" not in text
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, text = run_cli(settings, batch, "--to", (blocker / "out").as_uri())
    assert code == 1 and "is not writable" in text
    code, text = run_cli(settings, batch, "--to", "ftp://host/out")
    assert code == 2 and "unsupported storage URL" in text
    with pytest.raises(ExportError, match="unknown format"):
        export_batch(settings, batch, (tmp_path / "y").as_uri(), "zip")


def test_a_running_batch_is_refused_unless_finished_only(redis_url: str, tmp_path: Path):
    settings = settings_for(tmp_path, redis_url)
    client = redis.Redis.from_url(redis_url)
    store = StatusStore(client, Keys(settings.key_prefix), ttl_s=600)
    jobs = [
        Planned(i, f"p{i}", i, outcome="succeeded" if i < 6 else "running" if i < 8 else "queued")
        for i in range(10)
    ]
    write_batch(store, open_storage(settings), "live", jobs)
    out = (tmp_path / "live").as_uri()
    code, text = run_cli(settings, "live", "--to", out)
    assert code == 2 and "not finished (6 of 10 jobs)" in text and "--finished-only" in text
    code, text = run_cli(settings, "live", "--to", out, "--finished-only", "--shard-size", "5", "--json")
    assert code == 0, text
    assert json.loads(text)["samples"] == 6 and json.loads(text)["unfinished"] == 4
    # once the batch is done, a rerun rewrites only the shard that held unfinished jobs
    for p in jobs[6:8]:
        store.succeed(job_id("live", p.index), [], "")
    for p in jobs[8:]:
        finish(store, open_storage(settings), "live", Planned(p.index, p.prompt, p.seed))
    assert store.batch("live").done
    code, text = run_cli(settings, "live", "--to", out, "--shard-size", "5", "--json")
    summary = json.loads(text)
    assert (summary["shards_written"], summary["shards_skipped"]) == ([1], [0])
    assert summary["samples"] == 3 and summary["missing_output"] == 2  # two jobs succeeded with no image
    for key in client.scan_iter(f"{settings.key_prefix}:*"):
        client.delete(key)


def test_a_batch_run_by_a_real_worker_exports_what_it_generated(
    module_settings: Settings, request: pytest.FixtureRequest, tmp_path: Path
):
    """Tiny-model jobs, one img2img whose input is missing (bad_input), one canceled before it ran."""
    tiny = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}
    specs: list[dict[str, Any]] = [{"prompt": f"a lighthouse number {i}", **tiny} for i in range(24)]
    specs[5]["num_images"] = 2
    specs.append({"mode": "img2img", "prompt": "redraw", "image": (tmp_path / "gone.png").as_uri(), **tiny})
    with Client(module_settings) as client:
        submitted = client.submit_batch(specs)
        assert client.cancel(submitted.job_ids[3]) == 1  # no worker yet: it never runs
        request.getfixturevalue("worker")
        final = client.wait(submitted.batch_id, timeout=300)
        assert final.counts[JobState.SUCCEEDED] == 23 and final.counts[JobState.FAILED] == 1
        store = client.status_store
        out = tmp_path / "real"
        summary = export_batch(module_settings, submitted.batch_id, out.as_uri(), shard_size=10, threads=2)
        assert summary.shards_written == [0, 1, 2] and summary.counts.samples == 24
        assert summary.counts.failures_by_code == {"bad_input": 1} and summary.counts.canceled == 1
        samples = read_wds(shard_files(out, ".tar"))
        want = [
            (f"{i:09d}_{k}", specs[i]["prompt"])
            for i in range(24)
            if i != 3
            for k in range(specs[i].get("num_images", 1))
        ]
        assert [(s["__key__"], s["txt"]) for s in samples] == want
        for sample in samples:
            meta, job = sample["json"], store.job(sample["json"]["job_id"])
            stored = Path(urlparse(job.outputs[meta["image_index"]]).path).read_bytes()
            assert sample["png"] == stored and meta["sha256"] == hashlib.sha256(stored).hexdigest()
            assert meta["seed"] == job.seed and meta["image_seed"] == job.seed + meta["image_index"]
            assert meta["models"]["prior"]["id"] == module_settings.prior_model
            assert isinstance(meta["clip_score"], float) and meta["clip_score"] >= 0  # scored by the worker
            assert (meta["width"], meta["height"]) == (64, 64)
