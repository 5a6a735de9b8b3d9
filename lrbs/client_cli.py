"""The client half of the `lrbs` command: submit, status, list, cancel, result, upload, plot (through `lrbs.Client`).

Human output by default, `--json` for scripts. Exit codes: 0 succeeded (or done), 1 the job failed or was
cancelled, 2 a bad spec or usage, 3 the service is unreachable. `--url` / `--token` default to LRBS_URL and
LRBS_TOKEN.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import httpx

from lrbs.client import Client, JobCancelled, JobFailed, LrbsError
from lrbs.contract.resources import Job, Progress
from lrbs.contract.results import BatchCandidate

OK, JOB_ENDED_BADLY, BAD_INPUT, UNREACHABLE = 0, 1, 2, 3

url_option = click.option("--url", envvar="LRBS_URL", default="http://127.0.0.1:8000", show_default=True,
                          help="The service (env LRBS_URL).")  # fmt: skip
token_option = click.option("--token", envvar="LRBS_TOKEN", default=None, help="An API key (env LRBS_TOKEN).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def service_command(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every client command takes (--url, --token, --json), and the client's errors turned into
    messages and exit codes."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except httpx.TransportError as exc:
            click.echo(f"error: cannot reach the service ({exc}); is it running? (--url, LRBS_URL)", err=True)
            sys.exit(UNREACHABLE)
        except LrbsError as exc:
            click.echo(f"error: {exc.detail}", err=True)
            for field in exc.errors:
                click.echo(f"  {field.get('field')}: {field.get('message')}", err=True)
            sys.exit(BAD_INPUT if exc.status in (400, 409, 413, 422) else JOB_ENDED_BADLY)

    return url_option(token_option(json_option(wrapper)))


def read_spec(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        loaded = yaml.safe_load(text)
    else:
        loaded = json.loads(text)
    if not isinstance(loaded, dict):
        raise click.UsageError(f"{path} must hold one job spec (an object), not {type(loaded).__name__}")
    return loaded


def describe(job: Job) -> str:
    lines = [f"job {job.id}: {job.state}"]
    rec = job.result.recommendation if job.result else None
    if rec is not None:
        lines += [
            f"  lr {rec.lr:.4g} ({rec.schedule}; safe {rec.lr_low:.3g} to {rec.lr_high:.3g}, "
            f"confidence {rec.confidence})",
            f"  why: {rec.reason}",
        ]
        if job.result and job.result.batch_advice:
            advice = job.result.batch_advice
            lines.append(f"  batch size {advice.batch_size} (lr {advice.lr:.4g})" if advice.lr else
                         f"  batch size {advice.batch_size}")  # fmt: skip
            lines += candidate_table(advice.candidates, advice.batch_size)
            dp = advice.data_parallel
            if dp is not None and dp.world_size > 1:
                lr = f", lr {dp.global_lr:.4g}" if dp.global_lr is not None else ""
                speed = f", predicted {dp.fleet_samples_per_s:.4g} samples/s" if dp.fleet_samples_per_s else ""
                lines.append(
                    f"  on {dp.world_size} devices: {dp.micro_batch_size} per device × {dp.grad_accumulation_steps} "
                    f"accumulation = global batch {dp.global_batch_size}{lr}{speed}"
                )
        lines += ["", rec.snippet]
    if job.error is not None:
        lines.append(f"  error ({job.error.kind}): {job.error.message}")
    return "\n".join(lines)


def candidate_table(candidates: list[BatchCandidate], chosen: int) -> list[str]:
    """The batch candidates side by side: memory, speed, LR, and time, steps and samples to a target relative to
    the chosen batch (marked *)."""

    def cell(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    rows = [("batch", "fits", "peak MiB", "samples/s", "lr", "time×", "steps×", "samples×")]
    for c in candidates:
        rows.append((
            f"{'*' if c.batch_size == chosen else ''}{c.batch_size}", "yes" if c.fits else "no",
            cell(c.peak_memory_mb, ".0f"), cell(c.samples_per_s, ".0f"), cell(c.lr, ".3g"),
            cell(c.relative_time_to_target, ".2f"), cell(c.relative_steps_to_target, ".2f"),
            cell(c.relative_samples_to_target, ".2f"),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["    " + "  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]


def show(job: Job, as_json: bool) -> None:
    click.echo(job.model_dump_json(indent=2) if as_json else describe(job))


BAR_WIDTH = 24


def progress_line(started: float) -> Callable[[Progress], None]:
    """One line, redrawn in place: phase, a bar, step/total, elapsed, the ETA of this phase, the latest LR/loss."""
    phase, phase_started = "", started

    def draw(progress: Progress) -> None:
        nonlocal phase, phase_started
        now = time.monotonic()
        if progress.phase != phase:
            phase, phase_started = progress.phase, now
        in_phase = now - phase_started
        filled = round(progress.fraction * BAR_WIDTH)
        bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}]"
        steps = f" {progress.step}/{progress.total}" if progress.total else ""
        eta = f", ETA {in_phase / progress.fraction - in_phase:.0f} s" if 0.02 < progress.fraction < 1 else ""
        latest = f"  lr {progress.lr:.3g} loss {progress.loss:.4g}" if progress.lr and progress.loss else ""
        line = f"{progress.phase:<12} {bar}{steps}  {now - started:.0f} s{eta}{latest}"
        click.echo(f"\r{line:<100}", nl=False, err=True)

    return draw


@click.command()
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--wait", is_flag=True, help="Follow the job to its end, with a progress line, then show the advice.")
@service_command
def submit(spec_file: Path, wait: bool, url: str, token: str | None, as_json: bool) -> None:
    """Submit the job spec in SPEC_FILE (JSON or YAML)."""
    client = Client(url, token)
    job = client.submit(read_spec(spec_file))
    if not wait:
        show(job, as_json)
        return
    try:
        job = client.wait(job, on_progress=None if as_json else progress_line(time.monotonic()))
    except (JobFailed, JobCancelled) as ended:
        click.echo("", err=True)
        show(ended.job, as_json)
        sys.exit(JOB_ENDED_BADLY)
    if not as_json:
        click.echo("", err=True)
    show(job, as_json)


@click.command()
@click.argument("job_id")
@service_command
def status(job_id: str, url: str, token: str | None, as_json: bool) -> None:
    """A job's state and progress."""
    job = Client(url, token).get(job_id)
    if as_json:
        click.echo(json.dumps({"id": job.id, "state": job.state, "progress": job.progress.model_dump()}))
    else:
        p = job.progress
        click.echo(f"job {job.id}: {job.state} ({p.phase} {p.step}/{p.total}, {p.fraction:.0%})")


@click.command("list")
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]))
@click.option("--label", "labels", multiple=True, help="key:value; repeat to require several.")
@click.option("--limit", type=int, default=50, show_default=True)
@service_command
def list_jobs(state: str | None, labels: tuple[str, ...], limit: int, url: str, token: str | None,
              as_json: bool) -> None:  # fmt: skip
    """Jobs, newest first."""
    jobs = []
    wanted = dict(label.partition(":")[::2] for label in labels)
    for job in Client(url, token).list(state=state, labels=wanted, summary=True):
        jobs.append(job)
        if len(jobs) >= limit:
            break
    if as_json:
        click.echo(json.dumps([{"id": j.id, "state": j.state, "created_at": j.created_at.isoformat()} for j in jobs]))
        return
    for j in jobs:
        rec = j.result.recommendation if j.result else None
        name = j.spec.name or ""
        click.echo(
            f"{j.id}  {j.state:<10} {j.created_at:%Y-%m-%d %H:%M:%S}  {name:<24} {f'lr {rec.lr:.3g}' if rec else ''}"
        )


@click.command()
@click.argument("job_id")
@service_command
def cancel(job_id: str, url: str, token: str | None, as_json: bool) -> None:
    """Cancel a queued or running job."""
    show(Client(url, token).cancel(job_id), as_json)


@click.command()
@click.argument("job_id")
@service_command
def result(job_id: str, url: str, token: str | None, as_json: bool) -> None:
    """A job's recommendation (exit 1 if it failed or was cancelled)."""
    job = Client(url, token).get(job_id)
    show(job, as_json)
    if job.state in ("failed", "cancelled"):
        sys.exit(JOB_ENDED_BADLY)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--target-column", default=None, help="CSV/Parquet: the label column (default target).")
@service_command
def upload(file: Path, target_column: str | None, url: str, token: str | None, as_json: bool) -> None:
    """Upload a dataset (.npz, .csv or .parquet) and print its id."""
    dataset = Client(url, token).upload_dataset(file, target_column)
    if as_json:
        click.echo(dataset.model_dump_json(indent=2))
    else:
        click.echo(f"dataset {dataset.id}: {dataset.shape.task}, samples {dataset.shapes['x'][0]}, "
                   f"input {list(dataset.shape.input_shape)}, outputs {dataset.shape.num_outputs}")  # fmt: skip


@click.command()
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write it; .svg or .png picks the format. Default: JOB_ID-PLOT.png.")  # fmt: skip
@click.option("--plot", "which", type=click.Choice(["lr_range", "batch_size"]), default="lr_range", show_default=True)
@service_command
def plot(job_id: str, output: Path | None, which: str, url: str, token: str | None, as_json: bool) -> None:
    """Save a finished job's plot: the range test (loss against LR, every rule's pick) or the batch-size probes."""
    output = output or Path(f"{job_id}-{which}.png")
    fmt = output.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise click.UsageError(f"--output must end in .png or .svg, not {output.name!r}")
    output.write_bytes(Client(url, token).plot(job_id, which, fmt))
    click.echo(json.dumps({"path": str(output)}) if as_json else f"wrote {output}")


COMMANDS = (submit, status, list_jobs, cancel, result, upload, plot)
