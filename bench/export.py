"""Export throughput and memory: a batch of small PNGs (made through the store, not generated)
exported to WebDataset shards, from file storage and from a loopback S3 (moto's server).

Each export runs in a fresh child process that reports its own images/s, its RSS when the export
starts and its peak RSS (VmHWM), so the growth is the export's alone. The baseline, in the same
run: a plain loop copying the same image files into one tar (no Redis, no sidecars, no parquet).
The growth is measured at two batch sizes (`--small-n`, `--n`): flat memory means equal growth.

Targets: >= 1000 images/s from file storage; RSS growth < 300 MB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    bench_settings,
    connect,
    finish,
    iter_prompts,
    machine_note,
    new_tag,
    note,
    result,
    stop_on_sigterm,
)
from kandinsky_batch.keys import Keys
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import open_storage
from kandinsky_batch.store.status import StatusStore
from tests.helpers.export_batch import plain, write_batch

TARGET_RATE, TARGET_GROWTH_MB = 1000.0, 300.0


def memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(batch_id: str, to: str, threads: int, shard_size: int) -> None:
    """One export in this process (settings from the environment); one JSON line of figures."""
    from producer.export import export_batch

    settings = Settings()
    start_rss = memory_mb("VmRSS")
    started = time.perf_counter()
    summary = export_batch(settings, batch_id, to, shard_size=shard_size, threads=threads, overwrite=True)
    seconds = time.perf_counter() - started
    peak = memory_mb("VmHWM")
    figures = {"images": summary.counts.samples, "s": seconds, "rss_start_mb": start_rss, "rss_peak_mb": peak}
    print(json.dumps(figures), flush=True)


def run_child(settings: Settings, batch_id: str, to: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, **settings.as_env()}
    argv = [sys.executable, __file__, "--child", batch_id, to, "--threads", str(args.threads)]
    argv += ["--shard-size", str(args.shard_size)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def plain_copy(root: Path, batch_id: str, dest: Path) -> float:
    """Images/s of a bare loop reading every image file of the batch into one tar."""
    files = sorted((root / batch_id).glob("*/0.png"))
    started = time.perf_counter()
    with tarfile.open(dest, "w") as tar:
        for path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(f"{path.parent.name}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return len(files) / (time.perf_counter() - started)


def make(settings: Settings, client: redis.Redis, batch_id: str, n: int) -> float:
    """Make a batch of `n` one-image jobs; return the seconds it took."""
    started = time.perf_counter()
    store = StatusStore(client, Keys(settings.key_prefix), ttl_s=3600)
    write_batch(store, open_storage(settings), batch_id, plain(n, iter_prompts(1)))
    return time.perf_counter() - started


def report(name: str, figures: dict[str, Any]) -> float:
    rate = figures["images"] / figures["s"]
    growth = figures["rss_peak_mb"] - figures["rss_start_mb"]
    note(
        f"{name}: {figures['images']} images in {figures['s']:.1f} s, RSS {figures['rss_start_mb']:.0f} -> "
        f"peak {figures['rss_peak_mb']:.0f} MB"
    )
    result(f"export_{name}_images_per_s", rate, "images/s")
    result(f"export_{name}_rss_growth_mb", growth, "MB")
    return growth


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def s3_part(args: argparse.Namespace, tag: str, client: redis.Redis, file_rate: float) -> None:
    """The same export with the batch's objects, and the shards, in a moto server (its own process)."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        from tests.helpers.s3server import client as s3_client
        from tests.helpers.s3server import create_bucket

        deadline = time.monotonic() + 30
        while True:
            try:
                bucket = create_bucket(endpoint, "kbb")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        s3 = bench_settings(
            tag,
            storage_url=f"s3://{bucket}/out",
            s3_endpoint_url=endpoint,
            s3_region="us-east-1",
            s3_access_key_id="test",
            s3_secret_access_key="test",
            s3_addressing_style="path",
        )
        note(f"s3: made {args.s3_n} jobs in {make(s3, client, 's3', args.s3_n):.1f} s")
        rate = report("s3", run_child(s3, "s3", f"s3://{bucket}/export", args))
        result("export_s3_vs_file", rate / file_rate, "x")
        s3_client(endpoint).close()
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--small-n", type=int, default=5_000)
    parser.add_argument(
        "--s3-n", type=int, default=5_000
    )  # moto takes ~120 puts/s here: 20k jobs take ~6 min to make
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("BATCH", "TO"))
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.threads, args.shard_size)
        return
    stop_on_sigterm()
    machine_note()
    client = connect()
    tag = new_tag()
    work = Path(tempfile.mkdtemp(prefix="kbb-export-"))
    try:
        settings = bench_settings(tag, storage_url=(work / "store").as_uri())
        for batch_id, n in (("small", args.small_n), ("big", args.n)):
            note(f"{batch_id}: made {n} jobs in {make(settings, client, batch_id, n):.1f} s")
        baseline = max(plain_copy(work / "store", "big", work / f"plain-{i}.tar") for i in range(2))
        result("export_plain_copy_images_per_s", baseline, "images/s")
        small = report("file_small", run_child(settings, "small", (work / "out-small").as_uri(), args))
        big_figures = run_child(settings, "big", (work / "out-big").as_uri(), args)
        big = report("file", big_figures)
        rate = big_figures["images"] / big_figures["s"]
        result("export_file_vs_plain_copy", rate / baseline, "x")
        result("export_rss_growth_difference_mb", big - small, "MB")
        note(
            f"targets: file >= {TARGET_RATE:.0f} images/s: {'met' if rate >= TARGET_RATE else 'NOT met'}; "
            f"RSS growth < {TARGET_GROWTH_MB:.0f} MB: {'met' if max(big, small) < TARGET_GROWTH_MB else 'NOT met'}"
        )
        if not args.skip_s3:
            s3_part(args, tag, client, rate)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        finish(client, tag)


if __name__ == "__main__":
    main()
