"""`python -m worker` (also `lrbs worker`): pull jobs from an lrbs service and run them."""

import logging

import click


@click.command()
@click.option("--url", envvar="LRBS_URL", default="http://127.0.0.1:8000", show_default=True,
              help="The service's base URL (env LRBS_URL).")
@click.option("--token", envvar="LRBS_WORKER_TOKEN", required=True,
              help="The service's worker token (env LRBS_WORKER_TOKEN).")
@click.option("--worker-id", default=None, help="Name shown on jobs this worker runs (default host-pid).")
@click.option("--max-jobs", type=int, default=None, help="Exit after this many jobs (default: run forever).")
@click.option("--wait", "wait_seconds", type=float, default=20.0, show_default=True,
              help="Long-poll: seconds one claim waits for a job.")
def main(url: str, token: str, worker_id: str | None, max_jobs: int | None, wait_seconds: float) -> None:
    """Pull jobs from an lrbs service, run their probes with PyTorch, report the results."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from worker.runner import Worker  # torch loads here, not when --help is asked

    Worker(url, token, worker_id=worker_id, wait_seconds=wait_seconds).run_forever(max_jobs=max_jobs)


if __name__ == "__main__":
    main()
