"""The long chaos run: real workers and a Redis of their own (AOF, appendfsync always) under random
faults for `--duration` seconds, then a drain and every check (tests/helpers/chaos.py).

Figures: jobs, faults by kind, lost, duplicated (ran on two workers at once), late writes (a file
written after its job succeeded, or by a worker other than the one the status names), drain time.
Exits 1 if any check failed. Run from the repository root (it imports `tests.helpers.chaos`):

    .venv/bin/python bench/chaos.py [--duration 300] [--workers 3] [--min-gap 3] [--max-gap 8] [--seed N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import machine_note, note, result

from tests.helpers.chaos import FAULTS, chaos_run
from worker.tiny import make_tiny


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of faults")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--min-gap", type=float, default=3.0, help="seconds between faults, at least")
    parser.add_argument("--max-gap", type=float, default=8.0, help="seconds between faults, at most")
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    machine_note()
    note(f"chaos: {args.duration:.0f} s of faults, {args.workers} workers, a fault every "
         f"{args.min_gap}-{args.max_gap} s, seed {seed}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kb-chaos-") as folder:
        root = Path(folder)
        models = make_tiny(root / "models")
        with chaos_run(root / "run", models, workers=args.workers, seed=seed) as chaos:
            report = chaos.run(args.duration, (args.min_gap, args.max_gap), args.drain_timeout)
    for line in report.lines():
        note(line)
    result("chaos_jobs", report.jobs, "jobs")
    for kind in FAULTS:
        result(f"chaos_faults_{kind}", report.faults[kind], "faults")
    result("chaos_lost", report.lost, "jobs")
    result("chaos_duplicated", report.duplicated, "jobs")
    result("chaos_late_writes", report.late_writes, "files")
    result("chaos_writes_fenced_off", report.fenced, "times")
    result("chaos_problems", len(report.problems), "problems")
    result("chaos_drain", report.drain_s, "s")
    return 0 if not report.problems and not (report.lost or report.duplicated or report.late_writes) else 1


if __name__ == "__main__":
    sys.exit(main())
