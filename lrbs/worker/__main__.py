"""`python -m lrbs.worker` (also `lrbs worker`): pull jobs from an lrbs service and run them."""

import os
from pathlib import Path

import click


def threads_each(workers: int) -> int:
    """--threads for each of `workers` workers sharing this machine's cores: an equal share, at least one."""
    return max(1, (os.cpu_count() or 1) // workers)


@click.command()
@click.option(
    "--url",
    envvar="LRBS_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="The service's base URL (env LRBS_URL).",
)
@click.option(
    "--token", envvar="LRBS_WORKER_TOKEN", required=True, help="The service's worker token (env LRBS_WORKER_TOKEN)."
)
@click.option("--worker-id", default=None, help="Name shown on jobs this worker runs (default host-pid).")
@click.option("--max-jobs", type=int, default=None, help="Exit after this many jobs (default: run forever).")
@click.option(
    "--wait",
    "wait_seconds",
    type=float,
    default=20.0,
    show_default=True,
    help="Long-poll: seconds one claim waits for a job.",
)
@click.option(
    "--plugin-modules",
    envvar="LRBS_PLUGIN_MODULES",
    default="",
    show_default=True,
    help="Comma-separated module prefixes whose plugins jobs may run (env LRBS_PLUGIN_MODULES); "
    "nothing else is ever imported.",
)
@click.option(
    "--cache-dir",
    envvar="LRBS_CACHE_DIR",
    type=click.Path(path_type=Path),
    default=None,
    help="Where downloaded datasets are kept by hash (default ~/.cache/lrbs/datasets).",
)
@click.option(
    "--memory-headroom",
    envvar="LRBS_MEMORY_HEADROOM",
    type=click.FloatRange(0, 0.9),
    default=0.1,
    show_default=True,
    help="Share of memory the batch-size advice keeps free (env LRBS_MEMORY_HEADROOM).",
)
@click.option(
    "--log-format",
    envvar="LRBS_LOG_FORMAT",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line, with the job id on each line about a job (env LRBS_LOG_FORMAT).",
)
@click.option(
    "--job-memory-gb",
    envvar="LRBS_JOB_MEMORY_GB",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Memory ceiling of one job's process; past it the job is stopped and fails (env LRBS_JOB_MEMORY_GB; "
    "default 80% of the machine's memory).",
)
@click.option(
    "--threads",
    envvar="LRBS_WORKER_THREADS",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="CPU threads each job's PyTorch may use (env LRBS_WORKER_THREADS; 0: PyTorch's default, one per core). "
    "Workers sharing a machine's CPUs should split them: two workers on 8 cores, 4 each.",
)
def main(
    url: str,
    token: str,
    worker_id: str | None,
    max_jobs: int | None,
    wait_seconds: float,
    plugin_modules: str,
    cache_dir: Path | None,
    memory_headroom: float,
    log_format: str,
    job_memory_gb: float | None,
    threads: int,
) -> None:
    """Pull jobs from an lrbs service, run their probes with PyTorch, report the results."""
    from lrbs import logs

    logs.configure(log_format)
    os.environ["LRBS_LOG_FORMAT"] = log_format  # the job processes log the same way
    os.environ["LRBS_WORKER_THREADS"] = str(threads)  # and use as many threads
    from lrbs.worker.plugins import PluginPolicy  # torch loads with the runner, not when --help is asked
    from lrbs.worker.runner import Worker

    Worker(
        url,
        token,
        worker_id=worker_id,
        wait_seconds=wait_seconds,
        policy=PluginPolicy.parse(plugin_modules),
        cache_dir=cache_dir,
        memory_headroom=memory_headroom,
        job_memory_gb=job_memory_gb,
    ).run_forever(max_jobs=max_jobs)


if __name__ == "__main__":
    main()
