"""The README's tour runs as written: every bash and Python block of it, on `demo --serve`.

The two set-up commands are run by CI itself (`make test`) and by the demo test; here a real
`kandinsky-batch demo --serve` keeps Redis, a worker and the API up, and each block runs in a
fresh bash that sources the env file the demo wrote, exactly as the README tells a person to.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)


def tour_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## A five-minute tour")
    tour = text[start : text.index("\n## ", start + 1)]
    return BLOCK.findall(tour)


@pytest.fixture(scope="module")
def stack(redis_url: str, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`demo --serve` on the test Redis (its own prefixes), the tiny model copied in; its OUT folder."""
    out = tmp_path_factory.mktemp("tour") / "kandinsky-batch-demo"
    shutil.copytree(tiny_models, out / "models")
    tag = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KANDINSKY_BATCH_")}
    env.update(
        {
            "KANDINSKY_BATCH_REDIS_URL": redis_url,
            "KANDINSKY_BATCH_KEY_PREFIX": f"tour-{tag}",
            "KANDINSKY_BATCH_QUEUE_PREFIX": f"tour-{tag}",
            "KANDINSKY_BATCH_LOG_FORMAT": "text",
        }
    )
    log = (out.parent / "demo.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer.cli", "demo", "--serve", "--out", str(out), "--count", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=out.parent,
    )
    try:
        wait_for(lambda: (out / "env").exists() or proc.poll() is not None, 240, "the demo's env file")
        assert (out / "env").exists(), (out.parent / "demo.log").read_text()
        yield out
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        log.close()
        assert code == 0, (out.parent / "demo.log").read_text()
        assert not (out / "env").exists()


def run_block(stack: Path, kind: str, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """One block in a fresh bash that sourced the demo's env file, the venv's bin first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KANDINSKY_BATCH_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if kind == "python":
        script = cwd / "block.py"
        script.write_text(code)
        code = f"python {script}"
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f"source {stack / 'env'}\n{code}"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_tour_has_bash_curl_and_python_blocks():
    kinds = [kind for kind, _ in tour_blocks()]
    assert "python" in kinds and kinds.count("bash") >= 2
    assert any("curl" in code for _, code in tour_blocks())


@pytest.mark.parametrize("n", range(len(tour_blocks())))
def test_each_tour_block_runs_as_written(stack: Path, tmp_path: Path, n: int):
    kind, code = tour_blocks()[n]
    done = run_block(stack, kind, code, tmp_path)
    assert done.returncode == 0, (
        f"block {n} failed:\n{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    assert "Traceback" not in done.stderr
