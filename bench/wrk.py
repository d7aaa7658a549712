"""HTTP load from wrk (Debian's `wrk`), for bench/api_load.py.

On a 2-core machine the load generator shares the cores with the server. Python clients cost
~0.7-1.2 ms of CPU per request (httpx, measured in api_load's own runs), which caps what a
server can be shown to do near 1,000 requests/s; wrk costs a few microseconds. Each request
is made by a Lua `request()` function, so bodies and paths can differ per request.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


@dataclass(frozen=True)
class WrkRun:
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    cpu_s: float  # wrk's own CPU (user + system)

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx


def available() -> bool:
    return shutil.which("wrk") is not None


def lua_script(method: str, paths: list[str], headers: dict[str, str], body: str | None) -> str:
    """A wrk script: request n goes to paths[n % len]; `body` may hold `{n}`, replaced by n."""
    lines = [f"wrk.method = {json.dumps(method)}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    lines.append("local paths = {" + ", ".join(json.dumps(p) for p in paths) + "}")
    lines.append("local n = 0")
    if body is None:
        make_body = "nil"
    else:
        before, _, after = body.partition("{n}")
        make_body = f"{json.dumps(before)} .. n .. {json.dumps(after)}" if "{n}" in body else json.dumps(body)
    lines.append("request = function()")
    lines.append("  n = n + 1")
    lines.append(f"  return wrk.format(nil, paths[(n % #paths) + 1], nil, {make_body})")
    lines.append("end")
    return "\n".join(lines) + "\n"


def run(url: str, script: str, connections: int, seconds: float) -> WrkRun:
    """`connections` keep-alive connections for `seconds`, one wrk thread; its report parsed."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "load.lua"
        path.write_text(script)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "-s",
                str(path),
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        ).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return parse(out, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))


def parse(report: str, cpu_s: float) -> WrkRun:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", report)
    if done is None:
        raise ValueError(f"no request count in wrk's report:\n{report}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report)
    return WrkRun(
        requests=int(done.group(1)),
        seconds=float(done.group(2)) * UNITS_MS[done.group(3)] / 1e3,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        p50_ms=_quantile(report, "50%"),
        p99_ms=_quantile(report, "99%"),
        cpu_s=cpu_s,
    )


def _quantile(report: str, label: str) -> float:
    found = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s|m)\s*$", report, re.MULTILINE)
    if found is None:
        raise ValueError(f"no {label} latency in wrk's report:\n{report}")
    return float(found.group(1)) * UNITS_MS[found.group(2)]
