"""How the CLI shows a job or a batch: a table and bars on a terminal, one JSON object with --json."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.table import Table

from kandinsky_batch.schema import BatchStatus, JobState, JobStatus
from producer.watch import summarize


def all_succeeded(batch: BatchStatus) -> bool:
    """Every job of the batch succeeded (the exit-0 rule of wait, watch and submit --wait)."""
    return batch.counts.get(JobState.SUCCEEDED, 0) == batch.total


def print_status(st: JobStatus | BatchStatus, as_json: bool) -> None:
    if as_json:
        data = st.model_dump(mode="json")
        if isinstance(st, BatchStatus):
            data["done"] = st.done
        click.echo(json.dumps(data))
        return
    out = Console()
    if isinstance(st, BatchStatus):
        summary = summarize(st)
        caption = "done" if st.done else f"{st.finished}/{st.total} finished"
        if summary.elapsed_s is not None:
            caption += f" · {summary.elapsed_s:.1f} s"
        if summary.jobs_per_s:
            caption += f" · {summary.jobs_per_s:.2f} jobs/s"
        table = Table(title=f"batch {st.batch_id}", caption=caption)
        table.add_column("state")
        table.add_column("jobs", justify="right")
        table.add_column("%", justify="right")
        for state, n in st.counts.items():
            table.add_row(state.value, str(n), f"{100 * n / st.total:.0f}" if st.total else "-")
        table.add_row("total", str(st.total), "100", style="bold")
        out.print(table)
        if st.gpu_seconds:
            spent = f"gpu {st.gpu_seconds:.3f} s"
            if st.cost is not None:
                spent += f" · cost {st.cost:.6f}"
            out.print(spent, markup=False)
        if st.manifest:
            out.print(f"manifest {st.manifest}", markup=False, soft_wrap=True)
        return
    line = f"job {st.job_id}: {st.state.value} (attempts {st.attempts}, seed {st.seed})"
    out.print(line, markup=False)
    if st.state is JobState.RUNNING and st.progress.total:
        out.print(ProgressBar(total=st.progress.total, completed=st.progress.step, width=30), end=" ")
        out.print(f"step {st.progress.step}/{st.progress.total}")
    for uri in st.outputs:
        out.print(f"  {uri}", markup=False, soft_wrap=True)
    if st.error:
        out.print(f"  error {st.error.code}: {st.error.message}", markup=False, soft_wrap=True)
