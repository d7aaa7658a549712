"""The API server's processes and what they use, read from /proc: for bench/api_load.py.

uvicorn's workers are children of the process the benchmark starts, so every figure is summed
over that process and all below it.
"""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """`pid` and every process below it (uvicorn's workers), by scanning /proc for parents."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def cpu_split(pid: int) -> tuple[float, float]:
    """CPU seconds of the server's processes: (event-loop threads, the rest: thread pool, exited threads)."""
    loop = total = 0.0
    for proc in tree(pid):
        try:
            total += _cpu_seconds(Path(f"/proc/{proc}/stat"))
            loop += _cpu_seconds(Path(f"/proc/{proc}/task/{proc}/stat"))
        except OSError:
            continue
    return loop, total - loop


def _cpu_seconds(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kb(pid: int, field_name: str) -> int:
    """The sum of one /proc/<pid>/status field (VmRSS, VmHWM) over the server's processes."""
    total = 0
    for proc in tree(pid):
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def reset_peak(pid: int) -> bool:
    """Reset VmHWM of the server's processes (`5` to clear_refs), so it then holds the upload's peak."""
    try:
        for proc in tree(pid):
            Path(f"/proc/{proc}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
